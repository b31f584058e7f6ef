"""Staging requests in the catalog: one row per file asked to come online, with state, age and error."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from osa_grid.catalog import schema as s
from osa_grid.catalog.store import Catalog, utcnow
from osa_grid.core.states import TERMINAL
from osa_grid.ports import Replica, StageState, StageStatus

LIVE = (StageState.NEW, StageState.REQUESTED, StageState.STUCK, StageState.ONLINE)


@dataclass(frozen=True)
class StagingRow:
    file_id: int
    lfn: str
    size: int
    state: StageState
    request_id: str | None
    error: str | None
    requested_at: datetime | None
    updated_at: datetime


def staging_rows(catalog: Catalog, states: Sequence[StageState] | None = None) -> list[StagingRow]:
    statement = sa.select(s.staging_requests, s.files.c.lfn, s.files.c.size).join(
        s.files, s.files.c.id == s.staging_requests.c.file_id
    )
    if states is not None:
        statement = statement.where(s.staging_requests.c.state.in_([st.value for st in states]))
    with catalog.engine.connect() as conn:
        return [
            StagingRow(
                row.file_id,
                row.lfn,
                row.size,
                StageState(row.state),
                row.request_id,
                row.error,
                row.requested_at,
                row.updated_at,
            )
            for row in conn.execute(statement.order_by(s.staging_requests.c.file_id))
        ]


def reserve(catalog: Catalog, file_ids: Sequence[int]) -> None:
    """Rows in state NEW before the data manager is asked: a crash after this is resumed, not repeated."""
    now = utcnow()
    with catalog.transaction() as conn:
        known = set(
            conn.scalars(
                sa.select(s.staging_requests.c.file_id).where(s.staging_requests.c.file_id.in_(file_ids))
            )
        )
        fresh = [f for f in file_ids if f not in known]
        if fresh:
            conn.execute(
                sa.insert(s.staging_requests),
                [
                    {"file_id": f, "state": StageState.NEW.value, "created_at": now, "updated_at": now}
                    for f in fresh
                ],
            )
        if known:
            conn.execute(
                sa.update(s.staging_requests)
                .where(s.staging_requests.c.file_id.in_(known))
                .values(state=StageState.NEW.value, request_id=None, error=None, updated_at=now)
            )
        Catalog._event(conn, "staging_reserved", None, files=len(file_ids))


def record_requests(catalog: Catalog, request_ids: Mapping[int, str]) -> None:
    now = utcnow()
    with catalog.transaction() as conn:
        for file_id, request_id in request_ids.items():
            conn.execute(
                sa.update(s.staging_requests)
                .where(s.staging_requests.c.file_id == file_id)
                .values(
                    state=StageState.REQUESTED.value, request_id=request_id, requested_at=now, updated_at=now
                )
            )
        Catalog._event(conn, "staging_requested", None, files=len(request_ids))


def record_statuses(catalog: Catalog, statuses: Mapping[int, StageStatus]) -> None:
    """New states of requests; an online file gets its disk replica in the catalog."""
    now = utcnow()
    with catalog.transaction() as conn:
        for file_id, status in statuses.items():
            conn.execute(
                sa.update(s.staging_requests)
                .where(s.staging_requests.c.file_id == file_id)
                .values(state=status.state.value, error=status.error or None, updated_at=now)
            )
            if status.replica is not None:
                _put_replica(conn, file_id, status.replica)
            if status.state == StageState.STUCK:
                Catalog._event(conn, "staging_stuck", None, file_id=file_id, error=status.error)


def _put_replica(conn: sa.Connection, file_id: int, replica: Replica) -> None:
    conn.execute(
        sa.delete(s.replicas).where((s.replicas.c.file_id == file_id) & (s.replicas.c.store == replica.store))
    )
    conn.execute(
        sa.insert(s.replicas).values(
            file_id=file_id, store=replica.store, pfn=replica.pfn, state=replica.state, created_at=utcnow()
        )
    )


def releasable(catalog: Catalog) -> list[StagingRow]:
    """Online files every task of which (any production) is finished: their staged copy can go."""
    online = staging_rows(catalog, [StageState.ONLINE])
    if not online:
        return []
    busy = (
        sa.select(s.task_inputs.c.file_id)
        .join(s.tasks, s.tasks.c.task_id == s.task_inputs.c.task_id)
        .where(
            s.task_inputs.c.file_id.in_([r.file_id for r in online])
            & s.tasks.c.state.not_in([st.value for st in TERMINAL])
        )
    )
    with catalog.engine.connect() as conn:
        needed = set(conn.scalars(busy))
    return [r for r in online if r.file_id not in needed]


def mark_released(catalog: Catalog, file_ids: Sequence[int], stores: Sequence[str]) -> None:
    """Released: the staged copy may disappear at any time, so it is no replica to read any more."""
    with catalog.transaction() as conn:
        conn.execute(
            sa.update(s.staging_requests)
            .where(s.staging_requests.c.file_id.in_(file_ids))
            .values(state=StageState.RELEASED.value, updated_at=utcnow())
        )
        conn.execute(
            sa.delete(s.replicas).where(s.replicas.c.file_id.in_(file_ids) & s.replicas.c.store.in_(stores))
        )
        Catalog._event(conn, "staging_released", None, files=len(file_ids))


def stuck_inputs(catalog: Catalog, production: str) -> list[StagingRow]:
    """Stuck requests of files that unfinished tasks of the production wait for, with their reasons."""
    waiting = (
        sa.select(s.task_inputs.c.file_id)
        .join(s.tasks, s.tasks.c.task_id == s.task_inputs.c.task_id)
        .where((s.tasks.c.production == production) & s.tasks.c.state.not_in([st.value for st in TERMINAL]))
    )
    with catalog.engine.connect() as conn:
        needed = set(conn.scalars(waiting))
    return [r for r in staging_rows(catalog, [StageState.STUCK]) if r.file_id in needed]
