"""The catalog: one class over SQLAlchemy, the same on SQLite and PostgreSQL.

Every method that changes state runs in one transaction and appends to the event log in it,
so the log and the state never disagree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from operator import attrgetter
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import ColumnElement

from osa_grid.catalog import querysql
from osa_grid.catalog import schema as s
from osa_grid.catalog.engines import WRITER_OPTION, create_engine, reserve_ids, serialize_registrations
from osa_grid.catalog.migrate import upgrade
from osa_grid.catalog.querysql import ESTIMATE_CAP as CAP
from osa_grid.catalog.querysql import SortKey, compile_query
from osa_grid.catalog.values import collect, metadata_row, row_value
from osa_grid.core import query as querylang
from osa_grid.core.metadata import MetaValue
from osa_grid.core.planner import FileRecord, PlannedTask
from osa_grid.core.states import ACTIVE, UNFINISHED, TaskState, check_transition
from osa_grid.errors import AlreadyRegistered, BadInput, CatalogError, LeaseHeld, UnknownProduction
from osa_grid.ports import NewFile, Replica

INPUT_ROLE = "input"
_CHUNK = 500  # rows per IN (...) list: well under SQLite's bound-parameter limit
# Files spread over at most this many times their number of ids are read by one id-range scan.
DENSE_RANGE_FACTOR = 4


def utcnow() -> datetime:
    return datetime.now(UTC)


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True)
class TaskRow:
    task_id: str
    production: str
    transformation: str
    group_key: str
    state: TaskState
    attempt: int
    failures: int
    backend: str | None
    job_id: str | None
    exit_code: int | None
    error: str | None
    workdir: str | None
    resources: dict[str, Any] | None
    updated_at: datetime


@dataclass(frozen=True)
class CatalogFile:
    id: int
    lfn: str
    size: int
    checksum: str
    created_at: datetime
    task_id: str | None
    metadata: dict[str, MetaValue]
    replicas: tuple[Replica, ...]

    def record(self) -> FileRecord:
        return FileRecord(self.id, self.lfn, self.metadata)


@dataclass(frozen=True)
class CampaignRow:
    name: str
    production: str
    file: str | None
    definition: dict[str, Any]
    digest: str
    status: str  # active, stopped, cancelled, done
    kill_requested: bool
    backend: str
    limits: dict[str, Any]
    expected: dict[str, int] | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Completion:
    """Everything a finished task leaves behind, recorded in one transaction."""

    task_id: str
    outputs: Sequence[NewFile]
    provenance: Mapping[str, Any]


@dataclass(frozen=True)
class Claim:
    """What claiming a task's output LFNs found (``Catalog.claim_lfns``)."""

    # LFN -> who has it ("registered already, made by task ... (production/transformation)"); if any,
    # nothing is claimed.
    clashes: Mapping[str, str]
    # LFNs this task (an earlier attempt) or a task that gave up claimed before: what such an attempt left
    # at the LFN's place is no registered product and may be replaced.
    reclaimed: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Failure:
    task_id: str
    target: TaskState  # READY (retry), FAILED or VETOED
    exit_code: int | None
    error: str
    resources: Mapping[str, Any] | None
    provenance: Mapping[str, Any] | None


@dataclass(frozen=True)
class Group:
    """Files and bytes sharing one combination of values (None: files without the key)."""

    values: tuple[MetaValue | None, ...]
    files: int
    size: int


@dataclass(frozen=True)
class Dataset:
    name: str
    query: str
    description: str | None
    created_at: datetime
    frozen_at: datetime | None  # None: a live query
    files: int
    size: int


@dataclass(frozen=True)
class RunLevel:
    """One run's files of one data level in a night."""

    run_id: MetaValue
    data_level: str | None
    files: int
    subruns: int
    size: int
    n_subruns: int | None
    run_type: str | None
    source: str | None


@dataclass(frozen=True)
class UpstreamLevel:
    tasks: list[TaskRow]
    inputs: list[tuple[str, int, str]]  # (task id, file id, role)
    attempts: list[dict[str, Any]]  # provenance rows


@dataclass(frozen=True)
class Upstream:
    """A file and everything upstream of it: files by id (without replicas), and every task level."""

    root: int
    files: dict[int, CatalogFile]
    level: UpstreamLevel


class Catalog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str) -> Catalog:
        engine = create_engine(url)
        try:
            upgrade(engine)
        except sa.exc.OperationalError as exc:
            raise CatalogError(f"cannot open the catalog at {engine.url!r}: {exc.orig}") from exc
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A writing transaction (on SQLite it takes the write lock at once: writers never interleave)."""
        with (
            self.engine.connect().execution_options(**{WRITER_OPTION: True}) as connection,
            connection.begin(),
        ):
            yield connection

    # ---------------------------------------------------------------- events
    @staticmethod
    def _event(
        conn: Connection,
        kind: str,
        production: str | None = None,
        task_id: str | None = None,
        from_state: str | None = None,
        to_state: str | None = None,
        **detail: Any,
    ) -> None:
        if production is None and task_id is not None:
            production = conn.scalar(sa.select(s.tasks.c.production).where(s.tasks.c.task_id == task_id))
        conn.execute(
            sa.insert(s.events).values(
                at=utcnow(),
                production=production,
                task_id=task_id,
                kind=kind,
                from_state=from_state,
                to_state=to_state,
                detail=detail or None,
            )
        )

    def record_event(self, kind: str, production: str | None = None, **detail: Any) -> None:
        """An event that is not a task's state change (a night closed, a deadline missed)."""
        with self.transaction() as conn:
            self._event(conn, kind, production, **detail)

    def record_task_event(self, kind: str, task_id: str, **detail: Any) -> None:
        with self.transaction() as conn:
            self._event(conn, kind, None, task_id, **detail)

    def events(self, task_id: str | None = None, production: str | None = None) -> list[dict[str, Any]]:
        statement = sa.select(s.events).order_by(s.events.c.id)
        if task_id is not None:
            statement = statement.where(s.events.c.task_id == task_id)
        if production is not None:
            statement = statement.where(s.events.c.production == production)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(statement)]

    # ---------------------------------------------------------------- files
    def register_files(self, new_files: Sequence[NewFile], task_id: str | None = None) -> list[int]:
        with self.transaction() as conn:
            return self._insert_files(conn, new_files, task_id)

    def _insert_files(
        self,
        conn: Connection,
        new_files: Sequence[NewFile],
        task_id: str | None,
        owners: Sequence[str | None] | None = None,
    ) -> list[int]:
        """Files, metadata and replicas; ``owners`` gives each file its own producing task."""
        if not new_files:
            return []
        lfns = [f.lfn for f in new_files]
        if len(set(lfns)) != len(lfns):
            raise BadInput("the same LFN is given twice in one registration")
        _check_lengths(new_files)
        serialize_registrations(conn)
        # Ids drawn up front let every table go in through the driver's bulk path (no INSERT ... RETURNING).
        ids = reserve_ids(conn, s.files, len(new_files))
        now = utcnow()
        created = _bound(conn, s.files.c.created_at, now)
        made_by = list(owners) if owners is not None else [task_id] * len(new_files)
        typed = _TypedRows(self._shared_keys(conn))
        typed.add(ids, new_files)
        set_ids = self._store_sets(conn, typed)
        columns: list[str] = ["id", "lfn", "size", "checksum", "created_at"]
        rows: list[tuple[Any, ...]] = [
            (file_id, f.lfn, f.size, f.checksum, created) for file_id, f in zip(ids, new_files, strict=True)
        ]
        # A column every file leaves NULL stays out: a None costs more to bind than the row (see _TypedRows).
        if made_by.count(None) != len(made_by):
            columns.append("task_id")
            rows = [(*row, owner) for row, owner in zip(rows, made_by, strict=True)]
        if set_ids:
            columns.append("set_id")
            rows = [
                (*row, None if members is None else set_ids[members])
                for row, members in zip(rows, typed.sets, strict=True)
            ]
        self._insert_file_rows(conn, columns, rows)
        for value_columns, metadata in typed.tables():
            insert_bound(conn, s.file_metadata, value_columns, metadata)
        self._note_metadata_keys(conn, s.metadata_keys, typed.keys)
        replicated = _bound(conn, s.replicas.c.created_at, now)
        replicas = [
            (file_id, r.store, r.pfn, r.state, replicated)
            for file_id, f in zip(ids, new_files, strict=True)
            for r in f.replicas
        ]
        insert_bound(conn, s.replicas, _REPLICA_COLUMNS, replicas)
        return ids

    def _insert_file_rows(
        self, conn: Connection, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
    ) -> None:
        """The files rows; an LFN already registered is refused by the UNIQUE constraint, named, and undone.

        The constraint does the check a query per 500 LFNs did before, at no cost when nothing clashes.
        """
        try:
            with conn.begin_nested():
                insert_bound(conn, s.files, columns, rows)
        except (sa.exc.IntegrityError, conn.dialect.dbapi.IntegrityError) as exc:  # type: ignore[union-attr]
            existing = self._existing_lfns(conn, [row[1] for row in rows])
            if not existing:
                raise CatalogError(f"registering {len(rows)} file(s) failed: {exc}") from exc
            raise AlreadyRegistered(existing) from None

    def claim_lfns(self, outputs: Mapping[str, Sequence[str]]) -> dict[str, Claim]:
        """Claim the LFNs of tasks' products (task id -> LFNs) before any of them is stored.

        Each task gets all its LFNs or none. Under the registration lock, so a claim never passes a
        registration: an LFN registered already, or claimed by another task that may still register it (an
        earlier task of ``outputs`` too), is a clash. A claim held by a task that finished without registering
        it (failed, vetoed, cancelled) is taken over.
        """
        wanted = [lfn for lfns in outputs.values() for lfn in lfns]
        if not wanted:
            return {task_id: Claim({}) for task_id in outputs}
        with self.transaction() as conn:
            serialize_registrations(conn)
            registered = self._registered_by(conn, wanted)
            holders = {
                lfn: (holder, description, state)
                for lfn, holder, description, state in self._claims(conn, wanted)
            }
            described = self._task_descriptions(conn, list(outputs))
            claims = {
                task_id: self._claim(task_id, described.get(task_id, task_id), lfns, registered, holders)
                for task_id, lfns in outputs.items()
            }
            taken = [
                lfn for task_id, claim in claims.items() if not claim.clashes for lfn in outputs[task_id]
            ]
            for chunk in _chunks(taken):
                conn.execute(sa.delete(s.lfn_claims).where(s.lfn_claims.c.lfn.in_(chunk)))
            now = utcnow()
            rows = [
                {"lfn": lfn, "task_id": task_id, "claimed_at": now}
                for task_id, claim in claims.items()
                if not claim.clashes
                for lfn in outputs[task_id]
            ]
            if rows:
                conn.execute(sa.insert(s.lfn_claims), rows)
            return claims

    @staticmethod
    def _claim(
        task_id: str,
        description: str,
        lfns: Sequence[str],
        registered: Mapping[str, str],
        holders: dict[str, tuple[str, str, str | None]],
    ) -> Claim:
        """One task's claim, against what is registered and claimed (``holders`` gets its LFNs if it wins)."""
        if len(set(lfns)) != len(lfns):
            twice = sorted({lfn for lfn in lfns if lfns.count(lfn) > 1})
            return Claim({lfn: f"also the LFN of another output of task {task_id}" for lfn in twice})
        clashes: dict[str, str] = {}
        reclaimed: set[str] = set()
        for lfn in lfns:
            if lfn in registered:
                clashes[lfn] = registered[lfn]
            elif lfn in holders:
                holder, holder_description, state = holders[lfn]
                if holder == task_id or state is None or TaskState(state) not in UNFINISHED:
                    reclaimed.add(lfn)
                else:
                    clashes[lfn] = f"claimed by task {holder_description}, which is storing it"
        if clashes:
            return Claim(clashes)
        for lfn in lfns:
            holders[lfn] = (task_id, description, TaskState.SUBMITTED.value)
        return Claim({}, frozenset(reclaimed))

    @staticmethod
    def _registered_by(conn: Connection, lfns: Sequence[str]) -> dict[str, str]:
        """The registered LFNs among ``lfns``, each with the task that made it."""
        found: dict[str, str] = {}
        for chunk in _chunks(lfns):
            statement = (
                sa.select(s.files.c.lfn, s.files.c.task_id, _task_description())
                .outerjoin(s.tasks, s.tasks.c.task_id == s.files.c.task_id)
                .where(s.files.c.lfn.in_(chunk))
            )
            for lfn, task, description in conn.execute(statement):
                maker = (
                    f"task {description or task}" if task is not None else "a registration outside any task"
                )
                found[lfn] = f"registered already, made by {maker}"
        return found

    @staticmethod
    def _task_descriptions(conn: Connection, task_ids: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for chunk in _chunks(task_ids):
            statement = sa.select(s.tasks.c.task_id, _task_description()).where(s.tasks.c.task_id.in_(chunk))
            found.update({row[0]: row[1] for row in conn.execute(statement)})
        return found

    @staticmethod
    def _claims(conn: Connection, lfns: Sequence[str]) -> list[tuple[str, str, str, str | None]]:
        """Claims on ``lfns``: (LFN, claiming task, its description, its state or None if it is gone)."""
        rows: list[tuple[str, str, str, str | None]] = []
        for chunk in _chunks(lfns):
            statement = (
                sa.select(s.lfn_claims.c.lfn, s.lfn_claims.c.task_id, _task_description(), s.tasks.c.state)
                .outerjoin(s.tasks, s.tasks.c.task_id == s.lfn_claims.c.task_id)
                .where(s.lfn_claims.c.lfn.in_(chunk))
            )
            rows += [(r[0], r[1], r[2] or r[1], r[3]) for r in conn.execute(statement)]
        return rows

    def known_lfns(self, lfns: Sequence[str]) -> set[str]:
        """Which of these LFNs are registered already."""
        with self.engine.connect() as conn:
            return self._existing_lfns(conn, lfns)

    def _existing_lfns(self, conn: Connection, lfns: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for chunk in _chunks(lfns):
            found |= set(conn.scalars(sa.select(s.files.c.lfn).where(s.files.c.lfn.in_(chunk))))
        return found

    def files_by_id(self, ids: Sequence[int], conn: Connection | None = None) -> list[CatalogFile]:
        if conn is None:
            with self.engine.connect() as own:
                return self.files_by_id(ids, own)
        found: list[CatalogFile] = []
        for chunk in _chunks(list(ids)):
            rows = conn.execute(sa.select(s.files).where(s.files.c.id.in_(chunk))).all()
            metadata = collect(metadata_rows(conn, chunk, set_of={row.id: row.set_id for row in rows}))
            replicas: dict[int, list[Replica]] = {}
            lfn_of = {row.id: row.lfn for row in rows}
            for rep in conn.execute(sa.select(s.replicas).where(s.replicas.c.file_id.in_(chunk))):
                replicas.setdefault(rep.file_id, []).append(
                    Replica(lfn_of[rep.file_id], rep.store, rep.pfn, rep.state)
                )
            found += [
                CatalogFile(
                    r.id,
                    r.lfn,
                    r.size,
                    r.checksum,
                    r.created_at,
                    r.task_id,
                    metadata.get(r.id, {}),
                    tuple(replicas.get(r.id, ())),
                )
                for r in rows
            ]
        order = {file_id: index for index, file_id in enumerate(ids)}
        return sorted(found, key=lambda f: order[f.id])

    def file(self, lfn: str) -> CatalogFile | None:
        with self.engine.connect() as conn:
            file_id = conn.scalar(sa.select(s.files.c.id).where(s.files.c.lfn == lfn))
            if file_id is None:
                return None
            return self.files_by_id([file_id], conn)[0]

    def query(
        self,
        text: str,
        after_id: int = 0,
        limit: int | None = None,
        conn: Connection | None = None,
        up_to_id: int | None = None,
    ) -> list[CatalogFile]:
        """Files matching a metadata query, in registration order (ids in ``(after_id, up_to_id]``)."""
        if conn is None:
            with self.engine.connect() as own:
                return self.query(text, after_id, limit, own, up_to_id)
        node = querylang.parse(text)
        statement = (
            sa.select(s.files.c.id)
            .where(self._where(conn, node, after_id), s.files.c.id > after_id)
            .order_by(s.files.c.id)
            .limit(limit)
        )
        if up_to_id is not None:
            statement = statement.where(s.files.c.id <= up_to_id)
        return self.files_by_id(list(conn.scalars(statement)), conn)

    def planning_batch(
        self, text: str, after_id: int, up_to_id: int, limit: int, keys: Collection[str] | None = None
    ) -> tuple[list[FileRecord], int]:
        """At most ``limit`` files matching a query with ids in ``(after_id, up_to_id]``, as planner records.

        Returns them with the id planning has read up to. What planning needs only, in two range scans
        (the matching ids, then the metadata of that id range): no replicas, no IN lists. ``keys``: the
        metadata keys to read (the grouping's; ``None``: all of them), so that a per-file plan, which
        groups nothing, reads no metadata at all.
        """
        node = querylang.parse(text)
        with self.engine.connect() as conn:
            statement = (
                sa.select(s.files.c.id, s.files.c.lfn)
                .where(self._where(conn, node, after_id), s.files.c.id > after_id, s.files.c.id <= up_to_id)
                .order_by(s.files.c.id)
                .limit(limit)
            )
            lfns: dict[int, str] = dict(conn.execute(statement).all())
            if not lfns:
                return [], up_to_id
            metadata: dict[int, dict[str, MetaValue]] = {file_id: {} for file_id in lfns}
            if keys is None or keys:
                for file_id, key, vtype, vint, vnum, vstr in self._metadata_rows(conn, list(lfns), keys):
                    found = metadata.get(file_id)
                    if found is not None:  # a range also holds files the query did not match
                        found[key] = row_value(vtype, vint, vnum, vstr)
            last = max(lfns)
        read_up_to = last if len(lfns) == limit else up_to_id
        return [FileRecord(i, lfn, metadata[i]) for i, lfn in lfns.items()], read_up_to

    @staticmethod
    def _metadata_rows(conn: Connection, ids: Sequence[int], keys: Collection[str] | None) -> Sequence[Any]:
        """Metadata rows (all keys, or ``keys``) of files by ascending ids: one range scan when they are
        dense, else IN lists."""
        # Fetched whole: row by row, the driver's fetch costs more than SQLite's scan.
        if (ids[-1] - ids[0] + 1) <= DENSE_RANGE_FACTOR * len(ids):
            return metadata_rows(conn, ids, keys, as_range=True)
        return [row for chunk in _chunks(ids) for row in metadata_rows(conn, chunk, keys)]

    def newest_match(self, node: querylang.Node) -> int | None:
        """The id of the newest file matching a query (the last registered), None if none does."""
        with self.engine.connect() as conn:
            return conn.scalar(sa.select(sa.func.max(s.files.c.id)).where(self._where(conn, node)))

    def count(self, text: str) -> int:
        return self.count_matching(querylang.parse(text))

    def max_file_id(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.scalar(sa.select(sa.func.max(s.files.c.id))) or 0)

    # ---------------------------------------------------------------- metadata queries at scale
    def metadata_keys(self) -> dict[str, set[str]]:
        """Every metadata key files have had, with the stored types of its values (no table scan)."""
        found: dict[str, set[str]] = {}
        with self.engine.connect() as conn:
            for table in (s.metadata_keys, s.set_metadata_keys):
                for key, vtype in conn.execute(sa.select(table.c.key, table.c.vtype)):
                    found.setdefault(key, set()).add(vtype)
        return found

    @staticmethod
    def _note_metadata_keys(conn: Connection, table: sa.Table, pairs: set[tuple[str, str]]) -> None:
        if not pairs:
            return
        # Registrations are serialized (serialize_registrations), so read-then-insert cannot race.
        known = {(row.key, row.vtype) for row in conn.execute(sa.select(table))}
        new = sorted(pairs - known)
        if new:
            conn.execute(sa.insert(table), [{"key": key, "vtype": vtype} for key, vtype in new])

    @staticmethod
    def _shared_keys(conn: Connection) -> set[str]:
        return set(conn.scalars(sa.select(s.shared_metadata_keys.c.key)))

    def _store_sets(self, conn: Connection, typed: _TypedRows) -> dict[frozenset[tuple[Any, ...]], int]:
        """The set id of each distinct set of a registration: found by digest, or added with its rows.

        Two sets Python tells apart may be stored alike (the two sides of a DST fold): they share a digest,
        and so one set.
        """
        digests = typed.distinct_sets()
        if not digests:
            return {}
        wanted = sorted(set(digests.values()))
        found: dict[str, int] = {}
        for chunk in _chunks(wanted):
            statement = sa.select(s.metadata_sets.c.digest, s.metadata_sets.c.id).where(
                s.metadata_sets.c.digest.in_(chunk)
            )
            found.update((digest, int(set_id)) for digest, set_id in conn.execute(statement))
        new = [digest for digest in wanted if digest not in found]
        new_sets = dict(zip(new, reserve_ids(conn, s.metadata_sets, len(new)), strict=True)) if new else {}
        insert_bound(conn, s.metadata_sets, ("id", "digest"), [(i, d) for d, i in new_sets.items()])
        for columns, rows in typed.set_rows(new_sets):
            insert_bound(conn, s.set_metadata, columns, rows)
        self._note_metadata_keys(conn, s.set_metadata_keys, typed.set_keys)
        found.update(new_sets)
        return {members: found[digest] for members, digest in digests.items()}

    def count_matching(self, node: querylang.Node) -> int:
        with self.engine.connect() as conn:
            statement = sa.select(sa.func.count()).select_from(s.files).where(self._where(conn, node))
            return int(conn.scalar(statement) or 0)

    def match(
        self, node: querylang.Node, sort: Sequence[SortKey] = (), limit: int | None = None
    ) -> list[tuple[int, str]]:
        """(id, LFN) of the matching files, sorted in the database (registration order by default)."""
        with self.engine.connect() as conn:
            places = self._key_places(conn)
            source, order = querysql.sorted_files(sort, places)
            statement = (
                sa.select(s.files.c.id, s.files.c.lfn)
                .select_from(source)
                .where(self._where(conn, node, places=places))
                .order_by(*order)
                .limit(limit)
            )
            return [(int(file_id), str(lfn)) for file_id, lfn in conn.execute(statement).all()]

    def match_keys(self, node: querylang.Node) -> list[str]:
        """The metadata keys the matching files have, sorted."""
        with self.engine.connect() as conn:
            where = self._where(conn, node)
            own = sa.select(s.file_metadata.c.key).where(
                s.file_metadata.c.file_id.in_(sa.select(s.files.c.id).where(where))
            )
            shared = sa.select(s.set_metadata.c.key).where(
                s.set_metadata.c.set_id.in_(sa.select(s.files.c.set_id).where(where))
            )
            return sorted(set(conn.scalars(sa.union(own, shared))))

    def group_counts(self, node: querylang.Node, keys: Sequence[str]) -> list[Group]:
        """Files and bytes per combination of values of ``keys`` (None: files without the key)."""
        with self.engine.connect() as conn:
            places = self._key_places(conn)
            statement = querysql.grouped_files(keys, places).where(self._where(conn, node, places=places))
            return [
                Group(
                    tuple(
                        row_value(*row[4 * i : 4 * i + 4]) if row[4 * i] else None for i in range(len(keys))
                    ),
                    int(row.files),
                    int(row.bytes or 0),
                )
                for row in conn.execute(statement)
            ]

    def _where(
        self,
        conn: Connection,
        node: querylang.Node,
        after_id: int = 0,
        places: querysql.KeyPlaces | None = None,
    ) -> ColumnElement[bool]:
        """The query as SQL: datasets resolved, driven from its most selective part (see querysql)."""
        node, frozen = self._resolve_datasets(conn, node, ())
        places = places or self._key_places(conn)
        node = querysql.prepare(node, places)
        if after_id and self._estimate(conn, sa.select(s.files.c.id).where(s.files.c.id > after_id)) < CAP:
            # Few files since the cursor (a planner pass): checking each of them is the cheapest plan.
            return compile_query(node, querysql.Plan(datasets=frozen, after_id=after_id, places=places))
        plan = querysql.plan_query(node, lambda rows: self._estimate(conn, rows), frozen, after_id, places)
        return compile_query(node, plan)

    @staticmethod
    def _key_places(conn: Connection) -> querysql.KeyPlaces:
        """Which keys have values per file, which in metadata sets (two small tables, no scan)."""
        return querysql.KeyPlaces(
            frozenset(conn.scalars(sa.select(s.metadata_keys.c.key).distinct())),
            frozenset(conn.scalars(sa.select(s.set_metadata_keys.c.key).distinct())),
        )

    @staticmethod
    def _estimate(conn: Connection, rows: sa.Select[Any] | sa.CompoundSelect) -> int:
        return int(conn.scalar(querysql.capped_count(rows)) or 0)

    def _resolve_datasets(
        self, conn: Connection, node: querylang.Node, seen: tuple[str, ...]
    ) -> tuple[querylang.Node, dict[str, int]]:
        """Inline the queries of live datasets (recursively); frozen ones stay, by id."""
        names = querylang.datasets(node)
        if not names:
            return node, {}
        rows = {
            row.name: row for row in conn.execute(sa.select(s.datasets).where(s.datasets.c.name.in_(names)))
        }
        unknown = sorted(names - set(rows))
        if unknown:
            raise BadInput(f"unknown dataset {unknown[0]!r} (osa-grid datasets list shows them)")
        frozen: dict[str, int] = {}

        def inline(leaf: querylang.InDataset) -> querylang.Node:
            row = rows[leaf.name]
            if row.frozen_at is not None:
                frozen[leaf.name] = int(row.id)
                return leaf
            if leaf.name in seen:
                raise BadInput(f"datasets refer to each other in a cycle: {' -> '.join([*seen, leaf.name])}")
            inner, inner_frozen = self._resolve_datasets(conn, querylang.parse(row.query), (*seen, leaf.name))
            frozen.update(inner_frozen)
            return inner

        return querylang.replace_datasets(node, inline), frozen

    # ---------------------------------------------------------------- datasets
    def create_dataset(
        self, name: str, query: str, description: str | None = None, frozen: bool = False
    ) -> Dataset:
        """A named query; ``frozen`` also stores the files it matches now (in one transaction)."""
        querylang.check_dataset_name(name)
        node = querylang.parse(query)
        with self.transaction() as conn:
            if conn.scalar(sa.select(s.datasets.c.id).where(s.datasets.c.name == name)) is not None:
                raise BadInput(f"a dataset named {name!r} exists already")
            if name in querylang.datasets(node):
                raise BadInput(f"dataset {name!r} cannot be defined by itself")
            self._resolve_datasets(conn, node, (name,))  # its datasets exist and form no cycle
            dataset_id = conn.scalar(
                sa.insert(s.datasets)
                .values(
                    name=name, query=querylang.to_text(node), description=description, created_at=utcnow()
                )
                .returning(s.datasets.c.id)
            )
            self._event(conn, "dataset_created", None, dataset=name, query=querylang.to_text(node))
            if frozen:
                self._freeze(conn, int(dataset_id), name, node)
        return self.dataset(name)

    def freeze_dataset(self, name: str) -> Dataset:
        """Store the files the dataset's query matches now: from then on, its file list is fixed."""
        with self.transaction() as conn:
            row = self._dataset_row(conn, name)
            if row.frozen_at is not None:
                raise BadInput(
                    f"dataset {name!r} was frozen at {row.frozen_at:%Y-%m-%d %H:%M:%S} UTC already"
                )
            self._freeze(conn, int(row.id), name, querylang.parse(row.query))
        return self.dataset(name)

    def _freeze(self, conn: Connection, dataset_id: int, name: str, node: querylang.Node) -> None:
        # INSERT ... SELECT: the file list never travels through Python, whatever its size.
        members = sa.select(sa.literal(dataset_id, s.datasets.c.id.type), s.files.c.id).where(
            self._where(conn, node)
        )
        conn.execute(sa.insert(s.dataset_files).from_select(["dataset_id", "file_id"], members))
        conn.execute(sa.update(s.datasets).where(s.datasets.c.id == dataset_id).values(frozen_at=utcnow()))
        count = conn.scalar(sa.select(sa.func.count()).where(s.dataset_files.c.dataset_id == dataset_id))
        self._event(conn, "dataset_frozen", None, dataset=name, files=int(count or 0))

    def delete_dataset(self, name: str) -> None:
        with self.transaction() as conn:
            row = self._dataset_row(conn, name)
            users = [
                other.name
                for other in conn.execute(sa.select(s.datasets.c.name, s.datasets.c.query))
                if other.name != name and name in querylang.datasets(querylang.parse(other.query))
            ]
            if users:
                raise BadInput(f"dataset {name!r} is used by dataset(s) {', '.join(sorted(users))}")
            conn.execute(sa.delete(s.dataset_files).where(s.dataset_files.c.dataset_id == row.id))
            conn.execute(sa.delete(s.datasets).where(s.datasets.c.id == row.id))
            self._event(conn, "dataset_deleted", None, dataset=name)

    def datasets(self) -> list[Dataset]:
        with self.engine.connect() as conn:
            names = list(conn.scalars(sa.select(s.datasets.c.name).order_by(s.datasets.c.name)))
        return [self.dataset(name) for name in names]

    def dataset(self, name: str) -> Dataset:
        with self.engine.connect() as conn:
            row = self._dataset_row(conn, name)
            if row.frozen_at is not None:
                members = sa.select(s.dataset_files.c.file_id).where(s.dataset_files.c.dataset_id == row.id)
            else:
                members = sa.select(s.files.c.id).where(self._where(conn, querylang.parse(row.query)))
            totals = sa.select(sa.func.count(), sa.func.sum(s.files.c.size)).where(s.files.c.id.in_(members))
            files, size = conn.execute(totals).one()
        return Dataset(
            name=row.name,
            query=row.query,
            description=row.description,
            created_at=row.created_at,
            frozen_at=row.frozen_at,
            files=int(files or 0),
            size=int(size or 0),
        )

    @staticmethod
    def _dataset_row(conn: Connection, name: str) -> Any:
        row = conn.execute(sa.select(s.datasets).where(s.datasets.c.name == name)).first()
        if row is None:
            raise BadInput(f"unknown dataset {name!r} (osa-grid datasets list shows them)")
        return row

    # ---------------------------------------------------------------- nights and provenance
    def run_summary(self, night: str) -> list[RunLevel]:
        """Files, sub-runs and bytes per run and data level of a night (``night`` as YYYY-MM-DD)."""
        node = querylang.Comparison("night", "=", night)
        with self.engine.connect() as conn:
            places = self._key_places(conn)
            statement = querysql.runs_of_night(places).where(self._where(conn, node, places=places))
            return [
                RunLevel(
                    run_id=row_value(row.run_vtype, row.run_vint, row.run_vnum, row.run_vstr),
                    data_level=row.data_level,
                    files=int(row.files),
                    subruns=int(row.subruns),
                    size=int(row.bytes or 0),
                    n_subruns=row.n_subruns,
                    run_type=row.run_type,
                    source=row.source,
                )
                for row in conn.execute(statement)
            ]

    def upstream(self, lfn: str) -> Upstream | None:
        """Everything upstream of a file down to files no task made, read level by level in bulk.

        One connection, a few queries per level (files with their metadata; tasks, input edges and
        attempts), however wide the level: a run's 150 sub-runs cost what one does.
        """
        with self.engine.connect() as conn:
            root = conn.scalar(sa.select(s.files.c.id).where(s.files.c.lfn == lfn))
            if root is None:
                return None
            found = Upstream(int(root), {}, UpstreamLevel([], [], []))
            frontier, seen_tasks = [int(root)], set[str]()
            while frontier:
                new_files = self._files_with_metadata(conn, frontier)
                found.files.update(new_files)
                task_ids = sorted({f.task_id for f in new_files.values() if f.task_id} - seen_tasks)
                seen_tasks.update(task_ids)
                level = self._upstream_level(conn, task_ids)
                found.level.tasks.extend(level.tasks)
                found.level.inputs.extend(level.inputs)
                found.level.attempts.extend(level.attempts)
                frontier = sorted({file_id for _, file_id, _ in level.inputs} - set(found.files))
            return found

    def upstream_level(self, task_ids: Sequence[str]) -> UpstreamLevel:
        """The tasks, their input edges (with roles) and their attempts' provenance, in bulk."""
        with self.engine.connect() as conn:
            return self._upstream_level(conn, task_ids)

    @staticmethod
    def _upstream_level(conn: Connection, task_ids: Sequence[str]) -> UpstreamLevel:
        level = UpstreamLevel([], [], [])
        for chunk in _chunks(list(task_ids)):
            tasks = sa.select(s.tasks).where(s.tasks.c.task_id.in_(chunk))
            level.tasks.extend(_task_row(r) for r in conn.execute(tasks).all())
            inputs = sa.select(s.task_inputs).where(s.task_inputs.c.task_id.in_(chunk))
            level.inputs.extend((r.task_id, int(r.file_id), r.role) for r in conn.execute(inputs).all())
            rows = (
                sa.select(s.provenance).where(s.provenance.c.task_id.in_(chunk)).order_by(s.provenance.c.id)
            )
            level.attempts.extend(dict(r._mapping) for r in conn.execute(rows).all())
        return level

    @staticmethod
    def _files_with_metadata(conn: Connection, ids: Sequence[int]) -> dict[int, CatalogFile]:
        """Files and their metadata in one query per chunk (no replicas: provenance does not need them)."""
        found: dict[int, CatalogFile] = {}
        own, shared = s.file_metadata, s.set_metadata
        values = ("key", "vtype", "vint", "vnum", "vstr")
        for chunk in _chunks(list(ids)):
            # One statement a level: each file with its own rows (or none), then the rows of their sets,
            # each set once (the file columns NULL).
            with_own = (
                sa.select(
                    *(s.files.c[name] for name in _WALKED_FILE_COLUMNS), *(own.c[name] for name in values)
                )
                .select_from(s.files.outerjoin(own, own.c.file_id == s.files.c.id))
                .where(s.files.c.id.in_(chunk))
            )
            blanks = [sa.null().label(name) for name in _WALKED_FILE_COLUMNS[:-1]]
            of_sets = sa.select(*blanks, shared.c.set_id, *(shared.c[name] for name in values)).where(
                shared.c.set_id.in_(sa.select(s.files.c.set_id).where(s.files.c.id.in_(chunk)))
            )
            set_values: dict[int, dict[str, MetaValue]] = {}
            set_of: dict[int, int] = {}
            rows: Sequence[Any] = conn.execute(sa.union_all(with_own, of_sets)).all()
            for row in rows:
                file_id, lfn, size, checksum, created_at, task_id, set_id, key, vtype, vint, vnum, vstr = row
                if file_id is None:
                    set_values.setdefault(set_id, {})[key] = row_value(vtype, vint, vnum, vstr)
                    continue
                item = found.get(file_id)
                if item is None:
                    item = found[file_id] = CatalogFile(
                        file_id, lfn, size, checksum, created_at, task_id, {}, ()
                    )
                    if set_id is not None:
                        set_of[file_id] = set_id
                if key is not None:
                    item.metadata[key] = row_value(vtype, vint, vnum, vstr)
            for file_id, set_id in set_of.items():
                found[file_id].metadata.update(set_values.get(set_id, {}))
        return found

    def file_ids(self, lfns: Sequence[str]) -> dict[str, int]:
        with self.engine.connect() as conn:
            found: dict[str, int] = {}
            for chunk in _chunks(list(lfns)):
                statement = sa.select(s.files.c.lfn, s.files.c.id).where(s.files.c.lfn.in_(chunk))
                found.update({row.lfn: int(row.id) for row in conn.execute(statement)})
            return found

    # ---------------------------------------------------------------- productions
    def save_production(self, name: str, definition: dict[str, Any], digest: str, source: str | None) -> bool:
        """Store or update a production and its transformations; True when the definition changed."""
        now = utcnow()
        with self.transaction() as conn:
            old = conn.scalar(sa.select(s.productions.c.digest).where(s.productions.c.name == name))
            if old is None:
                conn.execute(
                    sa.insert(s.productions).values(
                        name=name,
                        definition=definition,
                        digest=digest,
                        source=source,
                        created_at=now,
                        updated_at=now,
                    )
                )
                self._event(conn, "production_created", name, digest=digest)
            elif old != digest:
                conn.execute(
                    sa.update(s.productions)
                    .where(s.productions.c.name == name)
                    .values(definition=definition, digest=digest, source=source, updated_at=now)
                )
                self._event(conn, "production_updated", name, old_digest=old, digest=digest)
            for transformation in definition["transformations"]:
                self._ensure_transformation(
                    conn, name, transformation["name"], str(transformation["version"])
                )
            return old != digest

    @staticmethod
    def _ensure_transformation(conn: Connection, production: str, name: str, version: str) -> None:
        where = (s.transformations.c.production == production) & (s.transformations.c.name == name)
        current = conn.execute(sa.select(s.transformations.c.version).where(where)).first()
        if current is None:
            conn.execute(
                sa.insert(s.transformations).values(production=production, name=name, version=version)
            )
        elif current.version != version:
            # A new version sees every file again: its tasks have other ids.
            conn.execute(sa.update(s.transformations).where(where).values(version=version, cursor=0))
            tid = conn.scalar(sa.select(s.transformations.c.id).where(where))
            conn.execute(sa.delete(s.pending_inputs).where(s.pending_inputs.c.transformation_id == tid))

    def production_definition(self, name: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            definition = conn.scalar(
                sa.select(s.productions.c.definition).where(s.productions.c.name == name)
            )
        if definition is None:
            raise UnknownProduction(f"no production named {name!r} in the catalog ({self.describe_url()})")
        return dict(definition)

    def production_names(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.scalars(sa.select(s.productions.c.name).order_by(s.productions.c.name)))

    def describe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    # ---------------------------------------------------------------- planning
    def transformation_cursor(self, production: str, name: str) -> tuple[int, int]:
        """(transformation row id, cursor) of a transformation."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(s.transformations.c.id, s.transformations.c.cursor).where(
                    (s.transformations.c.production == production) & (s.transformations.c.name == name)
                )
            ).first()
        if row is None:
            raise UnknownProduction(
                f"transformation {name!r} of production {production!r} is not in the catalog"
            )
        return int(row.id), int(row.cursor)

    def move_cursor(self, transformation_id: int, cursor: int) -> None:
        with self.transaction() as conn:
            conn.execute(
                sa.update(s.transformations)
                .where(s.transformations.c.id == transformation_id)
                .values(cursor=cursor)
            )

    def pending_files(self, transformation_id: int) -> list[FileRecord]:
        with self.engine.connect() as conn:
            ids = list(
                conn.scalars(
                    sa.select(s.pending_inputs.c.file_id).where(
                        s.pending_inputs.c.transformation_id == transformation_id
                    )
                )
            )
            return [f.record() for f in self.files_by_id(ids, conn)]

    def waiting_counts(self, production: str) -> dict[str, int]:
        """Files waiting in open groups, per transformation."""
        statement = (
            sa.select(s.transformations.c.name, sa.func.count())
            .join(s.pending_inputs, s.pending_inputs.c.transformation_id == s.transformations.c.id)
            .where(s.transformations.c.production == production)
            .group_by(s.transformations.c.name)
        )
        with self.engine.connect() as conn:
            return {name: int(n) for name, n in conn.execute(statement)}

    def record_plan(
        self,
        production: str,
        transformation_id: int,
        tasks: Sequence[PlannedTask],
        pending: Sequence[tuple[FileRecord, str]],
        cursor: int,
        initial_state: TaskState = TaskState.READY,
    ) -> int:
        """Create planned tasks (existing ids are left alone), replace the waiting files, move the cursor.

        Returns the number of tasks that were new; only those get input rows and a ``created`` event.
        """
        with self.transaction() as conn:
            created = self._insert_new_tasks(conn, _PlanRows(conn, production, initial_state), tasks)
            conn.execute(
                sa.delete(s.pending_inputs).where(s.pending_inputs.c.transformation_id == transformation_id)
            )
            if pending:
                bulk_insert(
                    conn,
                    s.pending_inputs,
                    [
                        {"transformation_id": transformation_id, "file_id": f.id, "group_key": g}
                        for f, g in pending
                    ],
                )
            conn.execute(
                sa.update(s.transformations)
                .where(s.transformations.c.id == transformation_id)
                .values(cursor=cursor)
            )
            return created

    def _insert_new_tasks(self, conn: Connection, rows: _PlanRows, tasks: Sequence[PlannedTask]) -> int:
        """Insert the tasks whose ids are not in the catalog yet; returns how many.

        A plan is new as a rule (the cursor moves in the transaction that records it), so it is inserted
        as it is; only when an id already exists (a cursor moved back, a plan recorded twice) is the
        insert undone and the new tasks picked out. Sorted by id, the rows go into each index keyed by
        task id in one ordered sweep instead of at random places.
        """
        ordered = sorted(tasks, key=_TASK_ID)
        if not ordered:
            return 0
        try:
            with conn.begin_nested():
                rows.insert(ordered)
            return len(ordered)
        except (sa.exc.IntegrityError, conn.dialect.dbapi.IntegrityError):  # type: ignore[union-attr]
            known = self._existing_task_ids(conn, [t.task_id for t in ordered])
            new = [t for t in ordered if t.task_id not in known]
            if new:
                rows.insert(new)
            return len(new)

    @staticmethod
    def _existing_task_ids(conn: Connection, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for chunk in _chunks(list(ids)):
            found |= set(conn.scalars(sa.select(s.tasks.c.task_id).where(s.tasks.c.task_id.in_(chunk))))
        return found

    # ---------------------------------------------------------------- tasks
    def tasks(
        self,
        production: str,
        states: Sequence[TaskState] | None = None,
        transformation: str | None = None,
        limit: int | None = None,
    ) -> list[TaskRow]:
        statement = sa.select(s.tasks).where(s.tasks.c.production == production)
        if states is not None:
            statement = statement.where(s.tasks.c.state.in_([st.value for st in states]))
        if transformation is not None:
            statement = statement.where(s.tasks.c.transformation == transformation)
        statement = statement.order_by(s.tasks.c.created_at, s.tasks.c.task_id).limit(limit)
        with self.engine.connect() as conn:
            return [_task_row(row) for row in conn.execute(statement)]

    def task(self, task_id: str) -> TaskRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(s.tasks).where(s.tasks.c.task_id == task_id)).first()
        return None if row is None else _task_row(row)

    def task_counts(
        self, production: str, states: Collection[TaskState] | None = None
    ) -> dict[str, dict[str, int]]:
        """Tasks per transformation and state (of the given states only, if any)."""
        statement = (
            sa.select(s.tasks.c.transformation, s.tasks.c.state, sa.func.count())
            .where(s.tasks.c.production == production)
            .group_by(s.tasks.c.transformation, s.tasks.c.state)
        )
        if states is not None:
            statement = statement.where(s.tasks.c.state.in_(sorted(state.value for state in states)))
        counts: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for name, state, n in conn.execute(statement):
                counts.setdefault(name, {})[state] = int(n)
        return counts

    def unfinished_counts(self, production: str) -> dict[str, dict[str, int]]:
        """``task_counts`` of the unfinished states only: bounded by what is in flight, not by history."""
        return self.task_counts(production, UNFINISHED)

    def task_inputs(self, task_ids: Sequence[str]) -> dict[str, list[CatalogFile]]:
        """The files each task was planned from, sorted by LFN (side inputs are in ``task_needs``)."""
        result: dict[str, list[CatalogFile]] = {task_id: [] for task_id in task_ids}
        for task_id, role, found in self._task_files(task_ids):
            if role == INPUT_ROLE:
                result[task_id].append(found)
        for inputs in result.values():
            inputs.sort(key=lambda f: f.lfn)
        return result

    def task_needs(self, task_ids: Sequence[str]) -> dict[str, dict[str, CatalogFile]]:
        """The side inputs resolved for each task, by need name."""
        result: dict[str, dict[str, CatalogFile]] = {task_id: {} for task_id in task_ids}
        for task_id, role, found in self._task_files(task_ids):
            if role != INPUT_ROLE:
                result[task_id][role] = found
        return result

    def _task_files(self, task_ids: Sequence[str]) -> list[tuple[str, str, CatalogFile]]:
        with self.engine.connect() as conn:
            rows: list[tuple[str, str, int]] = []
            for chunk in _chunks(list(task_ids)):
                statement = sa.select(s.task_inputs).where(s.task_inputs.c.task_id.in_(chunk))
                rows += [(row.task_id, row.role, row.file_id) for row in conn.execute(statement)]
            files = {f.id: f for f in self.files_by_id(sorted({fid for _, _, fid in rows}), conn)}
        return [(task_id, role, files[file_id]) for task_id, role, file_id in rows]

    def resolve_needs(self, resolved: Mapping[str, Mapping[str, int]]) -> None:
        """Record each task's side inputs (need name -> file id) and make it ready, in one transaction."""
        with self.transaction() as conn:
            for task_id, needs in resolved.items():
                self._transition(conn, task_id, TaskState.READY, expect=[TaskState.CREATED])
                conn.execute(
                    sa.insert(s.task_inputs),
                    [
                        {"task_id": task_id, "file_id": file_id, "role": role}
                        for role, file_id in needs.items()
                    ],
                )
                self._event(conn, "ready", None, task_id, "created", "ready", needs=dict(needs))

    def veto_created(self, reasons: Mapping[str, str]) -> None:
        """Tasks that wait for a side input nothing can produce any more."""
        with self.transaction() as conn:
            for task_id, reason in reasons.items():
                self._transition(conn, task_id, TaskState.VETOED, expect=[TaskState.CREATED], error=reason)
                self._event(conn, "vetoed", None, task_id, "created", "vetoed", reason=reason)

    def tasks_with_key(self, production: str, key: str) -> list[tuple[TaskRow, int | None]]:
        """Every task of a production with the integer value of ``key`` its inputs share (e.g. run_id)."""
        inputs = s.task_inputs
        of_task = (inputs.c.task_id == s.tasks.c.task_id) & (inputs.c.role == INPUT_ROLE)
        own = s.file_metadata
        shared = s.set_metadata
        own_value = (
            sa.select(sa.func.min(own.c.vint))
            .join(inputs, inputs.c.file_id == own.c.file_id)
            .where(of_task & (own.c.key == key))
            .scalar_subquery()
        )
        set_value = (
            sa.select(sa.func.min(shared.c.vint))
            .select_from(
                inputs.join(s.files, s.files.c.id == inputs.c.file_id).join(
                    shared, shared.c.set_id == s.files.c.set_id
                )
            )
            .where(of_task & (shared.c.key == key))
            .scalar_subquery()
        )
        value = sa.func.coalesce(own_value, set_value)  # the inputs share it: in their rows or their set
        statement = sa.select(s.tasks, value.label("key_value")).where(s.tasks.c.production == production)
        with self.engine.connect() as conn:
            return [(_task_row(row), row.key_value) for row in conn.execute(statement)]

    def values_by(self, production: str, key: str, by: str) -> dict[int, MetaValue]:
        """The newest value of ``key`` among the production's files, per integer value of ``by`` (a run)."""
        with self.engine.connect() as conn:
            places = self._key_places(conn)
            source, value = querysql.join_value(s.files, key, "value", places)
            source, group = querysql.join_value(source, by, "grp", places)
            source, owner = querysql.join_value(source, "production", "owner", places)
            statement = (
                sa.select(group.vint, value.vtype, value.vint, value.vnum, value.vstr)
                .select_from(source)
                .where(value.vtype.is_not(None), group.vtype.is_not(None), owner.vstr == production)
                .order_by(s.files.c.id)
            )
            return {
                run: row_value(vtype, vint, vnum, vstr)
                for run, vtype, vint, vnum, vstr in conn.execute(statement)
                if run is not None
            }

    def task_outputs(self, task_id: str) -> list[CatalogFile]:
        with self.engine.connect() as conn:
            ids = list(conn.scalars(sa.select(s.files.c.id).where(s.files.c.task_id == task_id)))
            return self.files_by_id(ids, conn)

    def provenance(self, task_id: str) -> list[dict[str, Any]]:
        statement = (
            sa.select(s.provenance).where(s.provenance.c.task_id == task_id).order_by(s.provenance.c.id)
        )
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(statement)]

    def _transition(
        self,
        conn: Connection,
        task_id: str,
        target: TaskState,
        expect: Sequence[TaskState] | None = None,
        **values: Any,
    ) -> TaskState:
        current_text = conn.scalar(sa.select(s.tasks.c.state).where(s.tasks.c.task_id == task_id))
        if current_text is None:
            raise BadInput(f"unknown task {task_id}")
        current = TaskState(current_text)
        if expect is not None and current not in expect:
            raise CatalogError(f"task {task_id} is {current}, expected one of {', '.join(expect)}")
        check_transition(task_id, current, target)
        conn.execute(
            sa.update(s.tasks)
            .where(s.tasks.c.task_id == task_id)
            .values(state=target.value, updated_at=utcnow(), **values)
        )
        return current

    @staticmethod
    def _current_rows(
        conn: Connection, task_ids: Sequence[str], target: TaskState, expect: Sequence[TaskState] | None
    ) -> dict[str, Any]:
        """The rows of many tasks in one SELECT per chunk, each checked against its move to ``target``."""
        found: dict[str, Any] = {}
        columns = (
            s.tasks.c.task_id,
            s.tasks.c.state,
            s.tasks.c.attempt,
            s.tasks.c.failures,
            s.tasks.c.production,
        )
        for chunk in _chunks(list(task_ids)):
            found.update(
                {
                    row.task_id: row
                    for row in conn.execute(sa.select(*columns).where(s.tasks.c.task_id.in_(chunk)))
                }
            )
        for task_id in task_ids:
            row = found.get(task_id)
            if row is None:
                raise BadInput(f"unknown task {task_id}")
            current = TaskState(row.state)
            if expect is not None and current not in expect:
                raise CatalogError(f"task {task_id} is {current}, expected one of {', '.join(expect)}")
            check_transition(task_id, current, target)
        return found

    def _transition_many(
        self,
        conn: Connection,
        task_ids: Sequence[str],
        target: TaskState,
        expect: Sequence[TaskState] | None,
        kind: str,
        details: Mapping[str, Mapping[str, Any]] | None = None,
        per_task: Mapping[str, Mapping[str, Any]] | None = None,
        before: Mapping[str, Any] | None = None,
        **values: Any,
    ) -> Mapping[str, Any]:
        """Move many tasks to ``target`` with one event each: a few statements whatever their number.

        ``values`` are set on every task, ``per_task`` on one task each (the same keys for all);
        ``before``: the rows ``_current_rows`` returned for this move, when the caller read them already.
        Returns the rows as they were before the move.
        """
        if not task_ids:
            return {}
        if before is None:
            before = self._current_rows(conn, task_ids, target, expect)
        now = utcnow()
        if per_task:
            keys = sorted(next(iter(per_task.values())))
            conn.execute(
                sa.update(s.tasks)
                .where(s.tasks.c.task_id == sa.bindparam("b_task_id"))
                .values(
                    state=target.value, updated_at=now, **values, **{k: sa.bindparam(f"b_{k}") for k in keys}
                ),
                [{"b_task_id": t, **{f"b_{k}": per_task[t][k] for k in keys}} for t in task_ids],
            )
        else:
            for chunk in _chunks(list(task_ids)):
                conn.execute(
                    sa.update(s.tasks)
                    .where(s.tasks.c.task_id.in_(chunk))
                    .values(state=target.value, updated_at=now, **values)
                )
        conn.execute(
            sa.insert(s.events),
            [
                {
                    "at": now,
                    "production": before[t].production,
                    "task_id": t,
                    "kind": kind,
                    "from_state": before[t].state,
                    "to_state": target.value,
                    "detail": dict(details[t]) if details and details.get(t) else None,
                }
                for t in task_ids
            ],
        )
        return before

    def reserve_submissions(self, backend: str, workdirs: Mapping[str, str]) -> list[TaskRow]:
        """READY -> SUBMITTED before the backend is called: a crash now leaves a task without job id."""
        ids = list(workdirs)
        with self.transaction() as conn:
            before = self._current_rows(conn, ids, TaskState.SUBMITTED, [TaskState.READY])
            attempts = {task_id: int(row.attempt or 0) + 1 for task_id, row in before.items()}
            self._transition_many(
                conn,
                ids,
                TaskState.SUBMITTED,
                [TaskState.READY],
                "submitting",
                details={t: {"attempt": attempts[t]} for t in ids},
                per_task={t: {"attempt": attempts[t], "workdir": workdirs[t]} for t in ids},
                before=before,
                backend=backend,
                job_id=None,
                exit_code=None,
            )
            return self._rows(conn, ids)

    @staticmethod
    def _rows(conn: Connection, task_ids: Sequence[str]) -> list[TaskRow]:
        rows: list[TaskRow] = []
        for chunk in _chunks(list(task_ids)):
            rows += [
                _task_row(r) for r in conn.execute(sa.select(s.tasks).where(s.tasks.c.task_id.in_(chunk)))
            ]
        order = {task_id: index for index, task_id in enumerate(task_ids)}
        return sorted(rows, key=lambda r: order[r.task_id])

    def record_job_ids(self, job_ids: Mapping[str, str]) -> None:
        if not job_ids:
            return
        with self.transaction() as conn:
            conn.execute(
                sa.update(s.tasks)
                .where(s.tasks.c.task_id == sa.bindparam("b_task_id"))
                .values(job_id=sa.bindparam("b_job_id"), updated_at=utcnow()),
                [{"b_task_id": t, "b_job_id": j} for t, j in job_ids.items()],
            )
            production_of: dict[str, str] = {}
            for chunk in _chunks(list(job_ids)):
                statement = sa.select(s.tasks.c.task_id, s.tasks.c.production).where(
                    s.tasks.c.task_id.in_(chunk)
                )
                production_of.update({row.task_id: row.production for row in conn.execute(statement)})
            unknown = set(job_ids) - set(production_of)
            if unknown:
                raise CatalogError(f"job ids given for unknown tasks: {', '.join(sorted(unknown)[:5])}")
            conn.execute(
                sa.insert(s.events),
                [
                    {
                        "at": utcnow(),
                        "production": production_of[t],
                        "task_id": t,
                        "kind": "submitted",
                        "detail": {"job_id": j},
                    }
                    for t, j in job_ids.items()
                ],
            )

    def mark_running(self, task_ids: Sequence[str]) -> None:
        if not task_ids:
            return
        with self.transaction() as conn:
            self._transition_many(conn, task_ids, TaskState.RUNNING, [TaskState.SUBMITTED], "running")

    def complete(self, completion: Completion) -> None:
        """Register outputs, provenance and DONE in one transaction."""
        self.complete_many([completion])

    def complete_many(self, completions: Sequence[Completion], started: Sequence[str] = ()) -> None:
        """Outputs, provenance and DONE of many tasks in one transaction: all of them or none.

        ``started``: other tasks whose jobs were seen running, marked so in the same transaction (the
        shepherd learns both in one poll: one write transaction a pass instead of two).
        """
        if not completions and not started:
            return
        ids = [c.task_id for c in completions]
        with self.transaction() as conn:
            self._transition_many(conn, started, TaskState.RUNNING, [TaskState.SUBMITTED], "running")
            if not completions:
                return
            self._transition_many(
                conn,
                ids,
                TaskState.DONE,
                list(ACTIVE),
                "done",
                details={c.task_id: {"outputs": [f.lfn for f in c.outputs]} for c in completions},
                exit_code=0,
            )
            outputs = [(f, c.task_id) for c in completions for f in c.outputs]
            self._insert_files(conn, [f for f, _ in outputs], None, [t for _, t in outputs])
            # Registered: the files rows hold the LFNs now.
            for chunk in _chunks(ids):
                conn.execute(sa.delete(s.lfn_claims).where(s.lfn_claims.c.task_id.in_(chunk)))
            conn.execute(
                sa.insert(s.provenance), [{"task_id": c.task_id, **c.provenance} for c in completions]
            )

    def fail(self, failure: Failure) -> None:
        with self.transaction() as conn:
            previous = self._transition(conn, failure.task_id, TaskState.FAILED, expect=list(ACTIVE))
            failures = int(
                conn.scalar(sa.select(s.tasks.c.failures).where(s.tasks.c.task_id == failure.task_id)) or 0
            )
            values: dict[str, Any] = {
                "exit_code": failure.exit_code,
                "error": failure.error[:4000],
                "failures": failures + 1,
                "job_id": None,
            }
            if failure.resources is not None:
                values["resources"] = dict(failure.resources)
            conn.execute(sa.update(s.tasks).where(s.tasks.c.task_id == failure.task_id).values(**values))
            if failure.provenance is not None:
                conn.execute(sa.insert(s.provenance).values(task_id=failure.task_id, **failure.provenance))
            self._event(
                conn,
                "failed",
                None,
                failure.task_id,
                previous.value,
                "failed",
                exit_code=failure.exit_code,
                error=failure.error[:1000],
            )
            if failure.target != TaskState.FAILED:
                self._transition(conn, failure.task_id, failure.target)
                self._event(conn, failure.target.value, None, failure.task_id, "failed", failure.target.value)

    def requeue_lost(self, task_ids: Sequence[str], reason: str) -> None:
        """A job the backend no longer knows (the shepherd died): run it again, not counted as a failure."""
        with self.transaction() as conn:
            self._transition_many(
                conn,
                task_ids,
                TaskState.READY,
                list(ACTIVE),
                "lost",
                details={t: {"reason": reason} for t in task_ids},
                job_id=None,
            )

    def set_states(
        self,
        production: str,
        source: Sequence[TaskState],
        target: TaskState,
        kind: str,
        task_ids: Sequence[str] | None = None,
        transformation: str | None = None,
        reset_failures: bool = False,
    ) -> list[TaskRow]:
        """Operator actions (retry, cancel, veto) on every matching task; returns the changed rows."""
        changed = [
            row
            for row in self.tasks(production, states=source, transformation=transformation)
            if task_ids is None or row.task_id in task_ids
        ]
        with self.transaction() as conn:
            for row in changed:
                extra: dict[str, Any] = {"failures": 0, "error": None} if reset_failures else {}
                self._transition(conn, row.task_id, target, expect=source, **extra)
                self._event(conn, kind, production, row.task_id, row.state.value, target.value)
        return changed

    # ---------------------------------------------------------------- campaigns
    def create_campaign(self, row: CampaignRow) -> None:
        with self.transaction() as conn:
            if conn.scalar(sa.select(s.campaigns.c.name).where(s.campaigns.c.name == row.name)) is not None:
                raise BadInput(f"a campaign named {row.name!r} exists already")
            conn.execute(sa.insert(s.campaigns).values(**vars(row)))
            self._event(conn, "campaign_submitted", row.production, campaign=row.name, backend=row.backend)

    def campaign(self, name: str) -> CampaignRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(s.campaigns).where(s.campaigns.c.name == name)).first()
        return None if row is None else CampaignRow(**row._mapping)

    def campaign_names(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.scalars(sa.select(s.campaigns.c.name).order_by(s.campaigns.c.name)))

    def update_campaign(self, name: str, kind: str, **values: Any) -> None:
        """Change a campaign's status, backend or flags; ``kind`` names the event logged with it."""
        with self.transaction() as conn:
            production = conn.scalar(sa.select(s.campaigns.c.production).where(s.campaigns.c.name == name))
            if production is None:
                raise BadInput(f"no campaign named {name!r} in the catalog ({self.describe_url()})")
            conn.execute(
                sa.update(s.campaigns).where(s.campaigns.c.name == name).values(updated_at=utcnow(), **values)
            )
            self._event(conn, kind, production, campaign=name, **{k: str(v) for k, v in values.items()})

    def step_durations(self, transformation: str, version: str, limit: int = 1000) -> list[float]:
        """Seconds of the newest successful attempts of a transformation at this version, any production."""
        statement = (
            sa.select(s.provenance.c.started_at, s.provenance.c.ended_at)
            .join(s.tasks, s.tasks.c.task_id == s.provenance.c.task_id)
            .join(
                s.transformations,
                (s.transformations.c.production == s.tasks.c.production)
                & (s.transformations.c.name == s.tasks.c.transformation),
            )
            .where(
                (s.tasks.c.transformation == transformation)
                & (s.transformations.c.version == version)
                & (s.provenance.c.exit_code == 0)
                & s.provenance.c.started_at.is_not(None)
                & s.provenance.c.ended_at.is_not(None)
            )
            .order_by(s.provenance.c.id.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [(end - start).total_seconds() for start, end in conn.execute(statement)]

    def done_times(self, production: str, since: datetime) -> list[tuple[str, datetime]]:
        """(transformation, when) of every task of the production that finished since ``since``."""
        statement = (
            sa.select(s.tasks.c.transformation, s.events.c.at)
            .join(s.tasks, s.tasks.c.task_id == s.events.c.task_id)
            .where(
                (s.events.c.production == production) & (s.events.c.kind == "done") & (s.events.c.at >= since)
            )
        )
        with self.engine.connect() as conn:
            return [(str(name), at) for name, at in conn.execute(statement)]

    # ---------------------------------------------------------------- leases
    def acquire_lease(self, name: str, holder: str, ttl: timedelta, dead_holder: str | None = None) -> None:
        """Take the lease, or renew it; the lease of ``dead_holder`` (known to be dead) may be taken over."""
        now = utcnow()
        with self.transaction() as conn:
            row = conn.execute(sa.select(s.leases).where(s.leases.c.name == name).with_for_update()).first()
            if row is None:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            sa.insert(s.leases).values(
                                name=name, holder=holder, acquired_at=now, expires_at=now + ttl
                            )
                        )
                except sa.exc.IntegrityError:
                    raise LeaseHeld(f"{name} was taken by another shepherd just now") from None
                self._event(conn, "lease_acquired", None, None, holder=holder, lease=name)
                return
            takeover = row.holder != holder
            if takeover and row.expires_at > now and row.holder != dead_holder:
                raise LeaseHeld(
                    f"{name} is held by {row.holder} until {row.expires_at:%Y-%m-%d %H:%M:%S} UTC: "
                    "another shepherd is running it"
                )
            # Compare-and-set: only if nobody changed the lease since it was read.
            changed = conn.execute(
                sa.update(s.leases)
                .where(
                    (s.leases.c.name == name)
                    & (s.leases.c.holder == row.holder)
                    & (s.leases.c.expires_at == row.expires_at)
                )
                .values(holder=holder, expires_at=now + ttl)
            )
            if changed.rowcount != 1:
                raise LeaseHeld(f"{name} was taken by another shepherd just now")
            if takeover:
                self._event(
                    conn, "lease_taken_over", None, None, holder=holder, previous=row.holder, lease=name
                )

    def lease_holder(self, name: str) -> tuple[str, datetime] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(s.leases).where(s.leases.c.name == name)).first()
        return None if row is None else (row.holder, row.expires_at)

    def release_lease(self, name: str, holder: str) -> None:
        with self.transaction() as conn:
            conn.execute(sa.delete(s.leases).where((s.leases.c.name == name) & (s.leases.c.holder == holder)))


def metadata_rows(
    conn: Connection,
    ids: Sequence[int],
    keys: Collection[str] | None = None,
    *,
    as_range: bool = False,
    set_of: Mapping[int, int | None] | None = None,
) -> list[tuple[Any, ...]]:
    """(file_id, key, vtype, vint, vnum, vstr) of files ``ids`` (or of every file from the first to the
    last, ``as_range``): their own rows, then their set's, each set read once however many files share
    it (``set_of``: each file's set id, when the caller has read it already)."""

    def files_wanted(column: sa.ColumnElement[Any]) -> ColumnElement[bool]:
        return column.between(ids[0], ids[-1]) if as_range else column.in_(ids)

    own, shared = s.file_metadata, s.set_metadata
    statement = sa.select(own.c.file_id, own.c.key, own.c.vtype, own.c.vint, own.c.vnum, own.c.vstr)
    statement = statement.where(files_wanted(own.c.file_id))
    if keys is not None:
        statement = statement.where(own.c.key.in_(sorted(keys)))
    found: list[tuple[Any, ...]] = [tuple(row) for row in conn.execute(statement).all()]
    if set_of is None:
        members = sa.select(s.files.c.id, s.files.c.set_id).where(
            files_wanted(s.files.c.id), s.files.c.set_id.is_not(None)
        )
        set_of = dict(conn.execute(members).all())
    rows_of_set: dict[int, list[tuple[Any, ...]]] = {}
    for chunk in _chunks(sorted({set_id for set_id in set_of.values() if set_id is not None})):
        statement = sa.select(
            shared.c.set_id, shared.c.key, shared.c.vtype, shared.c.vint, shared.c.vnum, shared.c.vstr
        )
        statement = statement.where(shared.c.set_id.in_(chunk))
        if keys is not None:
            statement = statement.where(shared.c.key.in_(sorted(keys)))
        for set_id, *values in conn.execute(statement).all():
            rows_of_set.setdefault(set_id, []).append(tuple(values))
    found += [
        (file_id, *values)
        for file_id, set_id in set_of.items()
        if set_id is not None
        for values in rows_of_set.get(set_id, ())
    ]
    return found


_REPLICA_COLUMNS = ("file_id", "store", "pfn", "state", "created_at")
# The files columns of a provenance walk's rows, set_id last (the one the rows of sets fill too).
_WALKED_FILE_COLUMNS = ("id", "lfn", "size", "checksum", "created_at", "task_id", "set_id")


class _TypedRows:
    """Metadata rows for one registration, as driver-ready tuples, each distinct (key, value) typed once.

    The files registered together share most of their values (a run's night, source, zenith...):
    half of the time of a bulk registration went into checking the same values again, and most of
    the rest into building a dict per row.

    The rows are kept apart by the value columns they fill, and each kind is inserted without the
    columns it leaves NULL: Python 3.11's sqlite3 binds a None through its adapter look-up (failed
    attribute look-ups that each format an AttributeError), which cost more than the rest of the
    row's insert, and every row has two or three of them.

    The ``shared`` keys go to metadata sets instead (``schema.metadata_sets``): each file gets the
    signature of its shared values, and each distinct signature becomes one set.
    """

    VALUE_COLUMNS: ClassVar[dict[str, tuple[str, ...]]] = {
        "int": ("key", "vtype", "vint", "vnum"),
        "float": ("key", "vtype", "vnum"),
        "text": ("key", "vtype", "vstr"),
    }

    def __init__(self, shared: Collection[str] = ()) -> None:
        # signature -> (kind, the row without its file or set id)
        self.typed: dict[tuple[Any, ...], tuple[str, tuple[Any, ...]]] = {}
        self.keys: set[tuple[str, str]] = set()  # (key, vtype) of every file row made
        self.set_keys: set[tuple[str, str]] = set()  # (key, vtype) of every shared value
        self.rows: dict[str, list[tuple[Any, ...]]] = {kind: [] for kind in self.VALUE_COLUMNS}
        self.shared = frozenset(shared)
        self.sets: list[frozenset[tuple[Any, ...]] | None] = []  # per file, the signature of its set

    def add(self, ids: Sequence[int], new_files: Sequence[NewFile]) -> None:
        typed = self.typed
        known = typed.get
        shared = self.shared
        appends = {kind: rows.append for kind, rows in self.rows.items()}
        for file_id, new_file in zip(ids, new_files, strict=True):
            head = (file_id,)
            in_set = []
            for item in new_file.metadata.items():
                value = item[1]
                kind = type(value)
                # 1 == 1.0 == True are stored apart, hence the type; equal floats other than 0.0 == -0.0
                # have the same bits, and equal strs, ints and dates are the same value.
                try:
                    if kind in _PLAIN or (kind is float and value):
                        signature: tuple[Any, ...] = (item, kind)
                    else:
                        signature = _signature(item, kind)
                    found = known(signature)
                except TypeError:  # unhashable, so no metadata value: _typed says why
                    found = self._typed(*item)
                if found is None:
                    found = typed[signature] = self._typed(*item)
                if item[0] in shared:
                    in_set.append(signature)
                else:
                    appends[found[0]](head + found[1])
            self.sets.append(frozenset(in_set) if in_set else None)

    def tables(self, head: str = "file_id") -> list[tuple[tuple[str, ...], list[tuple[Any, ...]]]]:
        """(columns, rows) of each kind of file row, in the order of the ids within each."""
        return [((head, *self.VALUE_COLUMNS[kind]), rows) for kind, rows in self.rows.items() if rows]

    def distinct_sets(self) -> dict[frozenset[tuple[Any, ...]], str]:
        """Each distinct set of the registration, with its digest (what identifies it in the catalog)."""
        found: dict[frozenset[tuple[Any, ...]], str] = {}
        for members in self.sets:
            if members is not None and members not in found:
                found[members] = _set_digest(self.typed[member][1] for member in members)
        return found

    def set_rows(self, new_sets: Mapping[str, int]) -> list[tuple[tuple[str, ...], list[tuple[Any, ...]]]]:
        """(columns, rows) of each kind of set_metadata row for the new sets (digest -> id), each once."""
        one_per_digest = {digest: members for members, digest in self.distinct_sets().items()}
        rows: dict[str, list[tuple[Any, ...]]] = {kind: [] for kind in self.VALUE_COLUMNS}
        for digest, set_id in new_sets.items():
            for member in one_per_digest[digest]:
                kind, values = self.typed[member]
                rows[kind].append((set_id, *values))
        return [(("set_id", *self.VALUE_COLUMNS[kind]), found) for kind, found in rows.items() if found]

    def _typed(self, key: str, value: object) -> tuple[str, tuple[Any, ...]]:
        row = metadata_row(0, key, value)
        vtype = row["vtype"]
        (self.set_keys if key in self.shared else self.keys).add((key, vtype))
        kind = vtype if vtype in ("int", "float") else "text"
        return kind, tuple(row[column] for column in self.VALUE_COLUMNS[kind])


def _set_digest(rows: Iterable[tuple[Any, ...]]) -> str:
    """sha256 of a set's typed rows in key order: equal sets, equal digests (floats by their exact repr)."""
    return hashlib.sha256(repr(sorted(rows)).encode()).hexdigest()


_PLAIN = frozenset([str, int, date])


def _signature(item: tuple[str, object], kind: type) -> tuple[Any, ...]:
    """What tells apart two equal values stored differently, beyond the type (see ``_TypedRows.add``)."""
    value = item[1]
    if isinstance(value, float):  # 0.0 == -0.0: the bits
        return (item, kind, value.hex())
    if isinstance(value, datetime):  # the two sides of a fold compare equal in their own time zone
        return (item, kind, value.fold)
    return (item, kind)


_TASK_ID = attrgetter("task_id")


class _PlanRows:
    """The rows planned tasks leave: the task, its input edges and its ``created`` event.

    Built as tuples for the driver, with what every row of a plan shares (production, state, the
    timestamp) bound once per plan: per row, SQLAlchemy's parameter handling and the timestamp's
    bind processing cost more than the insert itself.
    """

    TASK_COLUMNS = (
        *("task_id", "transformation", "group_key"),  # per task
        *("production", "state", "attempt", "failures", "created_at", "updated_at"),  # the plan's
    )
    INPUT_COLUMNS = ("task_id", "file_id", "role")
    EVENT_COLUMNS = ("task_id", "at", "production", "kind", "to_state")

    def __init__(self, conn: Connection, production: str, state: TaskState) -> None:
        self.conn = conn
        now = utcnow()
        created = _bound(conn, s.tasks.c.created_at, now)
        self.task_shared = (production, state.value, 0, 0, created, created)
        self.event_shared = (_bound(conn, s.events.c.at, now), production, "created", state.value)
        per_row = [s.tasks.c[name] for name in self.TASK_COLUMNS[:3]] + [s.task_inputs.c.file_id]
        for column in per_row:  # the values that differ per row go to the driver as they are
            if _bind_processor(conn, column) is not None:
                raise CatalogError(f"{column.table.name}.{column.name} needs bind processing")

    def insert(self, tasks: Sequence[PlannedTask]) -> None:
        task_shared, event_shared = self.task_shared, self.event_shared
        insert_bound(
            self.conn,
            s.tasks,
            self.TASK_COLUMNS,
            [(t.task_id, t.transformation, t.group_key, *task_shared) for t in tasks],
        )
        insert_bound(
            self.conn,
            s.task_inputs,
            self.INPUT_COLUMNS,
            [(t.task_id, f.id, INPUT_ROLE) for t in tasks for f in t.inputs],
        )
        insert_bound(self.conn, s.events, self.EVENT_COLUMNS, [(t.task_id, *event_shared) for t in tasks])


def _bind_processor(conn: Connection, column: sa.Column[Any]) -> Callable[[Any], Any] | None:
    return column.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)


def _bound(conn: Connection, column: sa.Column[Any], value: Any) -> Any:
    """A value as the column's type hands it to the driver."""
    process = _bind_processor(conn, column)
    return process(value) if process else value


def insert_bound(
    conn: Connection, table: sa.Table, columns: Sequence[str], values: Sequence[tuple[Any, ...]]
) -> None:
    """Insert rows of values already bound (see ``_bound``) through the driver's fastest path.

    COPY on PostgreSQL, the driver's executemany elsewhere, in the caller's transaction.
    """
    if not values:
        return
    quote = conn.dialect.identifier_preparer.quote
    names = ", ".join(quote(c) for c in columns)
    if conn.dialect.name == "postgresql":
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        with cursor.copy(f"COPY {quote(table.name)} ({names}) FROM STDIN") as copy:
            for value in values:
                copy.write_row(value)
        return
    marker = _PLACEHOLDERS[str(conn.dialect.paramstyle)]
    conn.exec_driver_sql(
        f"INSERT INTO {quote(table.name)} ({names}) VALUES ({', '.join([marker] * len(columns))})",
        list(values),
    )


_PLACEHOLDERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}


def bulk_insert(conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert many rows through the driver's fastest path, in the caller's transaction.

    COPY on PostgreSQL, the driver's own executemany elsewhere: SQLAlchemy's per-row parameter
    handling costs more than the database's insert at 10^5 rows. Values go through each column
    type's bind processing (timestamps, JSON) exactly as with ``conn.execute(insert, rows)``.
    """
    if not rows:
        return
    columns = list(rows[0])
    convert = [_bind_processor(conn, table.c[c]) for c in columns]
    values = [
        tuple(f(row[c]) if f else row[c] for c, f in zip(columns, convert, strict=True)) for row in rows
    ]
    insert_bound(conn, table, columns, values)


def _max_length(column: sa.Column[Any]) -> int | None:
    return getattr(column.type, "length", None)


# The text columns a registration fills from NewFile / Replica attributes of the same names.
_FILE_TEXT = (s.files.c.lfn, s.files.c.checksum)
_REPLICA_TEXT = (s.replicas.c.store, s.replicas.c.pfn, s.replicas.c.state)


def _check_lengths(new_files: Sequence[NewFile]) -> None:
    """Every database must refuse the same values, with a clear message (SQLite would store anything).

    The longest value of each column is found in C (``max(map(len, ...))``, a tenth of the time of a
    check per file); only when one is too long, or is no text, are the files gone through one by one,
    for the message about the first culprit.
    """
    replicas = [replica for new_file in new_files for replica in new_file.replicas]
    try:
        fits = all(
            _fits(column, map(attrgetter(column.name), items))
            for columns, items in ((_FILE_TEXT, new_files), (_REPLICA_TEXT, replicas))
            for column in columns
        )
    except (TypeError, AttributeError):  # no text: the check per file fails as it always did
        fits = False
    if not fits:
        for new_file in new_files:
            _check_file_lengths(new_file)


def _fits(column: sa.Column[Any], values: Iterable[str]) -> bool:
    length = _max_length(column)
    return length is None or max(map(len, values), default=0) <= length


def _check_file_lengths(new_file: NewFile) -> None:
    checks: list[tuple[sa.Column[Any], str]] = [
        (s.files.c.lfn, new_file.lfn),
        (s.files.c.checksum, new_file.checksum),
    ]
    for replica in new_file.replicas:
        checks += [
            (s.replicas.c.store, replica.store),
            (s.replicas.c.pfn, replica.pfn),
            (s.replicas.c.state, replica.state),
        ]
    for column, value in checks:
        length = _max_length(column)
        if length is not None and len(value) > length:
            where = f"{column.table.name}.{column.name}"
            raise BadInput(f"{where} of {new_file.lfn[:80]!r} is longer than {length} characters")


def _task_description() -> sa.ColumnElement[str]:
    """``<task id> (<production>/<transformation>)``, as a clash names the task that has an LFN."""
    return (s.tasks.c.task_id + " (" + s.tasks.c.production + "/" + s.tasks.c.transformation + ")").label(
        "description"
    )


def _task_row(row: Any) -> TaskRow:
    return TaskRow(
        task_id=row.task_id,
        production=row.production,
        transformation=row.transformation,
        group_key=row.group_key,
        state=TaskState(row.state),
        attempt=row.attempt,
        failures=row.failures,
        backend=row.backend,
        job_id=row.job_id,
        exit_code=row.exit_code,
        error=row.error,
        workdir=row.workdir,
        resources=row.resources,
        updated_at=row.updated_at,
    )
