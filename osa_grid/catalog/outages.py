"""Outages of remote services in the catalog: one row per service while it lasts, events when it matters.

The row outlives the shepherd that wrote it, so an outage's start and its one alert are shared by every
shepherd and every restart; ``osa-grid status`` reads it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from osa_grid.catalog import schema as s
from osa_grid.catalog.store import Catalog
from osa_grid.core.outages import Outage

table = s.service_outages


def outages(catalog: Catalog) -> list[Outage]:
    """The services not reached now, by name."""
    with catalog.engine.connect() as conn:
        return [_outage(row) for row in conn.execute(sa.select(table).order_by(table.c.service))]


def note_outage(
    catalog: Catalog, service: str, url: str, error: str, now: datetime, noticed_by: str | None = None
) -> Outage:
    """Record a failed attempt: the outage starts (with an event) or goes on with this error."""
    with catalog.transaction() as conn:
        if _update(conn, service, url, error, now):
            return _read(conn, service)
        try:
            with conn.begin_nested():
                conn.execute(
                    sa.insert(table).values(
                        service=service, url=url, since=now, last_error=error, last_failure_at=now
                    )
                )
        except sa.exc.IntegrityError:
            _update(conn, service, url, error, now)  # another shepherd saw it go down at the same time
            return _read(conn, service)
        Catalog._event(
            conn, "service_outage_started", None, service=service, url=url, error=error, noticed_by=noticed_by
        )
        return _read(conn, service)


def claim_alert(catalog: Catalog, outage: Outage, now: datetime) -> bool:
    """True for the one caller that records the outage's alert (compare-and-set), with its event."""
    with catalog.transaction() as conn:
        claimed = conn.execute(
            sa.update(table)
            .where(
                (table.c.service == outage.service)
                & (table.c.since == outage.since)
                & table.c.alerted_at.is_(None)
            )
            .values(alerted_at=now)
        )
        if claimed.rowcount != 1:
            return False
        Catalog._event(
            conn,
            "service_outage_alert",
            None,
            service=outage.service,
            url=outage.url,
            since=outage.since.isoformat(),
            error=outage.last_error,
        )
        return True


def end_outage(catalog: Catalog, service: str, now: datetime, noticed_by: str | None = None) -> Outage | None:
    """The service answered: its outage ends (with an event). None when none was recorded."""
    with catalog.engine.connect() as conn:  # a read first: a service that was up costs no write
        if conn.scalar(sa.select(table.c.service).where(table.c.service == service)) is None:
            return None
    with catalog.transaction() as conn:
        row = conn.execute(sa.select(table).where(table.c.service == service)).first()
        if row is None:
            return None  # another shepherd saw it come back first
        conn.execute(sa.delete(table).where(table.c.service == service))
        ended = _outage(row)
        Catalog._event(
            conn,
            "service_outage_over",
            None,
            service=service,
            url=ended.url,
            since=ended.since.isoformat(),
            down_seconds=round(ended.lasted(now).total_seconds()),
            alerted=ended.alerted_at is not None,
            noticed_by=noticed_by,
        )
        return ended


def _update(conn: sa.Connection, service: str, url: str, error: str, now: datetime) -> bool:
    changed = conn.execute(
        sa.update(table)
        .where(table.c.service == service)
        .values(url=url, last_error=error, last_failure_at=now)
    )
    return changed.rowcount == 1


def _read(conn: sa.Connection, service: str) -> Outage:
    return _outage(conn.execute(sa.select(table).where(table.c.service == service)).one())


def _outage(row: Any) -> Outage:
    return Outage(row.service, row.url, row.since, row.last_error, row.last_failure_at, row.alerted_at)
