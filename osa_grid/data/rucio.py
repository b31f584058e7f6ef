"""The Rucio data manager (rucio-clients): raw data on tape, staging rules, products on a DL3 RSE.

Files keep their osa-grid LFN as DID name in one scope; metadata goes in Rucio's JSON metadata under the
CTAO data-model names (``osa_grid.data.ctao_metadata``). Staging a file is a replication rule from the tape
RSE to the processing cache with activity ``Staging`` and a lifetime; its rule id is the request id.
Every Rucio failure becomes a ``DataServiceError`` saying what was asked of which server.
"""

from __future__ import annotations

import configparser
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from osa_grid.config import Settings
from osa_grid.core import query as querylang
from osa_grid.core.metadata import MetaValue
from osa_grid.core.outages import RUCIO
from osa_grid.data.checksums import adler32
from osa_grid.data.ctao_metadata import ctao_key, ctao_value, from_ctao, to_ctao
from osa_grid.data.local import LocalStore
from osa_grid.errors import BadInput, DataServiceError, DataServiceUnavailable, InputFileMissing, OutputClash
from osa_grid.ports import NewFile, Replica, ServiceHealth, StageState, StageStatus

STAGING_ACTIVITY = "Staging"
STAGING_COMMENT = "osa-grid staging"
_RULE_STATES = {
    "OK": StageState.ONLINE,
    "REPLICATING": StageState.REQUESTED,
    "INJECT": StageState.REQUESTED,
    "WAITING_APPROVAL": StageState.REQUESTED,
    "STUCK": StageState.STUCK,
    "SUSPENDED": StageState.STUCK,
}
_OPERATORS = {"=": "", "!=": ".ne", "<": ".lt", "<=": ".lte", ">": ".gt", ">=": ".gte"}
T = TypeVar("T")


@dataclass(frozen=True)
class RawFile:
    """A raw file to register: where its bytes are now, its LFN and its osa-grid metadata."""

    path: Path
    lfn: str
    metadata: Mapping[str, MetaValue]


class RucioStore:
    name = "rucio"
    stages = True

    def __init__(
        self,
        products: Path,
        scope: str,
        tape_rse: str,
        cache_rse: str,
        output_rse: str,
        output_levels: Sequence[str],
        config: Path | None = None,
        url: str | None = None,
        auth_url: str | None = None,
        account: str | None = None,
    ) -> None:
        # Products are written to local disk first (atomically, like the local store), then published.
        self.local = LocalStore(products)
        self.scope = scope
        self.tape_rse = tape_rse
        self.cache_rse = cache_rse
        self.output_rse = output_rse
        self.output_levels = set(output_levels)
        self.config = config
        self.url = url
        self.auth_url = auth_url or url
        self.account = account
        self._client: Any = None
        self._disk: dict[str, bool] = {}
        self.health = ServiceHealth(RUCIO, self.server)

    # ------------------------------------------------------------------ connection
    @property
    def server(self) -> str:
        return self.url or f"the Rucio server of {self.config or os.environ.get('RUCIO_CONFIG', 'rucio.cfg')}"

    def client(self) -> Any:
        if self._client is None:
            self._client = self._call("connect", self._connect)
        return self._client

    def _connect(self) -> Any:
        try:
            from rucio.client import Client
        except ImportError as exc:
            raise BadInput(
                "the rucio data manager needs rucio-clients: pip install 'osa-grid[rucio]'"
            ) from exc
        # rucio-clients reads RUCIO_CONFIG once per process: our file's values are passed explicitly instead.
        options = _client_options(self.config) if self.config is not None else {}
        creds = {k: options[k] for k in ("username", "password") if k in options}
        return Client(
            rucio_host=self.url or options.get("rucio_host"),
            auth_host=self.auth_url or options.get("auth_host"),
            account=self.account or options.get("account"),
            auth_type=options.get("auth_type"),
            creds=creds or None,
            ca_cert=options.get("ca_cert"),
        )

    def _call(self, what: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One Rucio call, its failures as DataServiceError naming the server and the action."""
        from rucio.common import exception as rucio_errors

        try:
            result = function(*args, **kwargs)
        except (rucio_errors.CannotAuthenticate, rucio_errors.AccessDenied) as exc:
            self.health.answered()
            raise DataServiceError(f"{what}: {self.server} refused our credentials: {_reason(exc)}") from exc
        except (rucio_errors.RucioException, OSError) as exc:
            text = _reason(exc)
            if isinstance(exc, OSError | rucio_errors.ServerConnectionException) or "connect" in text.lower():
                message = f"{what}: {self.server} is unreachable: {text}"
                self.health.not_reached(message)
                raise DataServiceUnavailable(message) from exc
            self.health.answered()
            raise DataServiceError(f"{what}: {self.server} answered: {text}") from exc
        self.health.answered()
        return result

    # ------------------------------------------------------------------ files
    def did(self, lfn: str) -> dict[str, str]:
        return {"scope": self.scope, "name": lfn}

    def is_disk(self, rse: str) -> bool:
        if rse not in self._disk:
            info = self._call(f"get RSE {rse}", self.client().get_rse, rse)
            self._disk[rse] = info.get("rse_type") != "TAPE"
        return self._disk[rse]

    def online(self, replica: Replica) -> bool:
        if replica.store == self.local.name:
            return self.local.online(replica)
        return replica.state == "available" and self.is_disk(replica.store)

    def locate(self, lfn: str, replicas: Sequence[Replica]) -> Path:
        for replica in sorted(replicas, key=lambda r: r.store != self.local.name):
            if self.online(replica):
                path = Path(urlparse(replica.pfn).path) if "://" in replica.pfn else Path(replica.pfn)
                if path.is_file():
                    return path
        raise InputFileMissing(f"{lfn}: no replica on disk (is it still being staged?)")

    def store(self, source: Path, lfn: str, replace: bool = False) -> Replica:
        return self.local.store(source, lfn, replace)

    def discard(self, lfn: str) -> None:
        self.local.discard(lfn)  # only stored, not published yet: ``register`` publishes

    def register_raw(self, files: Sequence[RawFile], rse: str, dataset_of: Callable[[RawFile], str]) -> int:
        """Put raw files on an RSE (bytes at their PFN), register replicas with checksums, metadata, datasets.

        Files already registered are left alone; returns how many were new.
        """
        client = self.client()
        known = self._existing([f.lfn for f in files])
        new = [f for f in files if f.lfn not in known]
        if not new:
            return 0
        pfns = self._call(
            f"lfns2pfns on {rse}", client.lfns2pfns, rse, [f"{self.scope}:{f.lfn}" for f in new]
        )
        records = []
        for raw in new:
            target = Path(urlparse(pfns[f"{self.scope}:{raw.lfn}"]).path)
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                shutil.copyfile(raw.path, target)
            records.append(
                {**self.did(raw.lfn), "bytes": raw.path.stat().st_size, "adler32": adler32(raw.path)}
            )
        self._call(f"add {len(records)} replicas on {rse}", client.add_replicas, rse, records)
        self._set_metadata([(f.lfn, f.metadata) for f in new])
        by_dataset: dict[str, list[str]] = {}
        for raw in new:
            by_dataset.setdefault(dataset_of(raw), []).append(raw.lfn)
        for dataset, lfns in by_dataset.items():
            self._attach(dataset, lfns)
        return len(new)

    def _existing(self, lfns: Sequence[str]) -> dict[str, str]:
        """The names among ``lfns`` Rucio knows, with their adler32."""
        found = self._call(
            "list replicas",
            lambda: list(self.client().list_replicas([self.did(lfn) for lfn in lfns], all_states=True)),
        )
        return {entry["name"]: str(entry.get("adler32") or "") for entry in found}

    def _set_metadata(self, items: Sequence[tuple[str, Mapping[str, MetaValue]]]) -> None:
        dids = [{**self.did(lfn), "meta": to_ctao(metadata)} for lfn, metadata in items]
        for start in range(0, len(dids), 500):
            self._call("set metadata", self.client().set_dids_metadata_bulk, dids[start : start + 500])

    def _attach(self, dataset: str, lfns: Sequence[str]) -> None:
        from rucio.common.exception import DataIdentifierAlreadyExists, FileAlreadyExists

        client = self.client()
        try:
            self._call(f"add dataset {dataset}", client.add_dataset, self.scope, dataset)
        except DataServiceError as exc:
            if not isinstance(exc.__cause__, DataIdentifierAlreadyExists):
                raise
        try:
            self._call(
                f"attach to {dataset}", client.attach_dids, self.scope, dataset, [self.did(n) for n in lfns]
            )
        except DataServiceError as exc:
            if not isinstance(exc.__cause__, FileAlreadyExists):
                raise

    # ------------------------------------------------------------------ resolve
    def resolve(self, query: str) -> list[NewFile]:
        return self.describe(self.search(querylang.parse(query), None))

    def search(self, node: querylang.Node, limit: int | None) -> list[str]:
        """The names of the files whose metadata match (``osa-grid query --where rucio``), sorted."""
        filters = rucio_filters(node)
        names = self._call(
            "list dids", lambda: list(self.client().list_dids(self.scope, filters, did_type="file"))
        )
        # Several filter groups (an "or") may list a file more than once.
        found = sorted(set(names))
        return found if limit is None else found[:limit]

    def describe(self, lfns: Sequence[str]) -> list[NewFile]:
        """Files with their size, checksum, osa-grid metadata and every replica Rucio has."""
        if not lfns:
            return []
        client = self.client()
        dids = [self.did(lfn) for lfn in lfns]
        replicas = self._call(
            "list replicas", lambda: list(client.list_replicas(dids, schemes=["file"], all_states=True))
        )
        metadata = self._call(
            "get metadata", lambda: list(client.get_metadata_bulk(dids, inherit=False, plugin="JSON"))
        )
        meta_of = {m.get("name"): from_ctao(m) for m in metadata}
        files = []
        for entry in sorted(replicas, key=lambda e: e["name"]):
            name = entry["name"]
            states = entry.get("states") or {}
            copies = tuple(
                Replica(name, rse, pfns[0], "available" if states.get(rse) == "AVAILABLE" else "unavailable")
                for rse, pfns in sorted((entry.get("rses") or {}).items())
                if pfns
            )
            files.append(
                NewFile(name, int(entry["bytes"] or 0), entry["adler32"] or "", meta_of.get(name, {}), copies)
            )
        return files

    # ------------------------------------------------------------------ staging
    def stage(self, lfns: Sequence[str], lifetime: int) -> dict[str, str]:
        """One rule per file (a bulk call), tape -> cache; rules already made for a file are found again."""
        from rucio.common.exception import DuplicateRule

        existing = self.staging_rules(lfns)
        missing = [lfn for lfn in lfns if lfn not in existing]
        if missing:
            try:
                ids = self._call(
                    f"stage {len(missing)} files",
                    self.client().add_replication_rule,
                    [self.did(lfn) for lfn in missing],
                    1,
                    self.cache_rse,
                    lifetime=lifetime,
                    source_replica_expression=self.tape_rse,
                    activity=STAGING_ACTIVITY,
                    grouping="NONE",
                    comment=STAGING_COMMENT,
                )
                existing.update(zip(missing, ids, strict=True))
            except DataServiceError as exc:
                if not isinstance(exc.__cause__, DuplicateRule):
                    raise
                existing.update(self.staging_rules(missing))  # made meanwhile by a shepherd that died
        return {lfn: existing[lfn] for lfn in lfns if lfn in existing}

    def staging_rules(self, lfns: Sequence[str]) -> dict[str, str]:
        """The live staging rules of our account on these files, by LFN."""
        client = self.client()
        wanted = set(lfns)
        account = self.account or client.account
        rules = self._call(
            "list rules",
            lambda: list(
                client.list_replication_rules(
                    {"scope": self.scope, "account": account, "rse_expression": self.cache_rse}
                )
            ),
        )
        # A released (or deleted) rule only waits for the judge-cleaner: it is no request to reuse.
        now = datetime.now(UTC).replace(tzinfo=None)  # Rucio answers naive UTC datetimes
        return {
            rule["name"]: rule["id"]
            for rule in rules
            if rule["name"] in wanted
            and rule.get("activity") == STAGING_ACTIVITY
            and not (isinstance(rule.get("expires_at"), datetime) and rule["expires_at"] <= now)
        }

    def stage_status(self, requests: Mapping[str, str]) -> dict[str, StageStatus]:
        from rucio.common.exception import RuleNotFound

        client = self.client()
        statuses: dict[str, StageStatus] = {}
        online: list[str] = []
        for lfn, rule_id in requests.items():
            try:
                rule = self._call(f"get rule {rule_id}", client.get_replication_rule, rule_id)
            except DataServiceError as exc:
                if not isinstance(exc.__cause__, RuleNotFound):
                    raise
                statuses[lfn] = StageStatus(StageState.STUCK, f"rule {rule_id} no longer exists")
                continue
            state = _RULE_STATES.get(str(rule["state"]), StageState.REQUESTED)
            if state == StageState.ONLINE:
                online.append(lfn)
            else:
                # Rucio's finisher writes a failed transfer's reason in ``error``; a site transfer agent can
                # only reach the rule's comment (``transfer``), so a comment other than ours is the reason.
                comment = rule.get("comments") or ""
                error = rule.get("error") or (comment if comment != STAGING_COMMENT else "")
                if state == StageState.STUCK:
                    error = f"rule {rule_id} is {rule['state']}: {error or 'no reason given'}"
                statuses[lfn] = StageStatus(state, error)
        for found in self.describe(online):
            cache = [r for r in found.replicas if r.store == self.cache_rse and r.state == "available"]
            statuses[found.lfn] = StageStatus(StageState.ONLINE, "", cache[0] if cache else None)
        return statuses

    def release(self, request_ids: Sequence[str]) -> None:
        """A rule whose lifetime ends now: the judge-cleaner removes it, the reaper the cached copy."""
        from rucio.common.exception import RuleNotFound

        for rule_id in request_ids:
            try:
                self._call(
                    f"release rule {rule_id}", self.client().update_replication_rule, rule_id, {"lifetime": 0}
                )
            except DataServiceError as exc:
                if not isinstance(exc.__cause__, RuleNotFound):
                    raise

    # ------------------------------------------------------------------ products
    def register(self, files: Sequence[NewFile], dataset: str) -> list[NewFile]:
        """Upload the products of the configured data levels to the output RSE, with metadata and dataset."""
        chosen = [f for f in files if f.metadata.get("data_level") in self.output_levels]
        if not chosen:
            return list(files)
        client = self.client()
        known = self._existing([f.lfn for f in chosen])
        for new_file in chosen:
            published = known.get(new_file.lfn)
            # The same bytes: published by an attempt that died before it was recorded. Other bytes: a file of
            # the scope that is not this product, and a published file is never replaced.
            if published is not None and published.lower() != new_file.checksum.lower():
                raise OutputClash(
                    f"{new_file.lfn} is in Rucio scope {self.scope} already with adler32 {published}, "
                    f"not this product's {new_file.checksum}: it is not replaced"
                )
        pfns = self._call(
            f"lfns2pfns on {self.output_rse}",
            client.lfns2pfns,
            self.output_rse,
            [f"{self.scope}:{f.lfn}" for f in chosen],
        )
        added: dict[str, Replica] = {}
        records = []
        for new_file in chosen:
            pfn = pfns[f"{self.scope}:{new_file.lfn}"]
            added[new_file.lfn] = Replica(new_file.lfn, self.output_rse, pfn)
            if new_file.lfn in known:
                continue
            source = self.local.locate(new_file.lfn, new_file.replicas)
            _copy_atomically(source, Path(urlparse(pfn).path))
            records.append({**self.did(new_file.lfn), "bytes": new_file.size, "adler32": new_file.checksum})
        if records:
            self._call(
                f"add {len(records)} replicas on {self.output_rse}",
                client.add_replicas,
                self.output_rse,
                records,
            )
        self._set_metadata([(f.lfn, _publishable(f.metadata)) for f in chosen])
        self._attach(dataset, [f.lfn for f in chosen])
        return [
            NewFile(f.lfn, f.size, f.checksum, f.metadata, (*f.replicas, added[f.lfn]))
            if f.lfn in added
            else f
            for f in files
        ]


def _client_options(config: Path) -> dict[str, str]:
    parser = configparser.ConfigParser()
    try:
        with config.open() as handle:
            parser.read_file(handle)
    except (OSError, configparser.Error) as exc:
        raise BadInput(f"cannot read the Rucio client configuration {config}: {exc}") from exc
    return dict(parser["client"]) if parser.has_section("client") else {}


def _publishable(metadata: Mapping[str, object]) -> dict[str, MetaValue]:
    return {k: v for k, v in metadata.items() if isinstance(v, int | float | str) and not isinstance(v, bool)}


def _copy_atomically(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.part")
    shutil.copyfile(source, partial)
    os.replace(partial, target)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text.removeprefix("An unknown exception occurred. ").removeprefix("Details: ")[:500]


def rucio_filters(node: querylang.Node) -> list[dict[str, Any]]:
    """A query as Rucio's list_dids filters: a list of AND groups (OR between them).

    Supported: comparisons (but globs), ``in`` lists and ranges, combined with and/or; others are refused.
    """
    groups: list[dict[str, Any]] = [{}]
    if isinstance(node, querylang.Or):
        return [group for item in node.items for group in rucio_filters(item)]
    items = node.items if isinstance(node, querylang.And) else (node,)
    for item in items:
        if isinstance(item, querylang.Comparison) and item.op in _OPERATORS:
            groups = [{**g, ctao_key(item.key) + _OPERATORS[item.op]: ctao_value(item.value)} for g in groups]
        elif isinstance(item, querylang.Range) and not item.negated:
            key = ctao_key(item.key)
            groups = [
                {**g, f"{key}.gte": ctao_value(item.low), f"{key}.lte": ctao_value(item.high)} for g in groups
            ]
        elif isinstance(item, querylang.InList) and not item.negated:
            key = ctao_key(item.key)
            groups = [{**g, key: ctao_value(value)} for g in groups for value in item.values]
        elif isinstance(item, querylang.Or | querylang.And):
            groups = [{**g, **sub} for g in groups for sub in rucio_filters(item)]
        else:
            raise BadInput(
                f"Rucio's list_dids filters cannot express {querylang.to_text(item)!r}: they have "
                "comparisons, 'in' lists and ranges joined by and/or, but no globs (~), 'not', 'exists' "
                "or datasets (--where catalog answers it)"
            )
    return groups


def transfer(store: RucioStore, rse: str | None = None) -> int:
    """The site transfer agent (FTS's stand-in for RSEs on local directories): do the queued transfers.

    For every lock still replicating on a local RSE (``rse``, default: any), copy the bytes from an available
    replica to the destination PFN and mark the replica available; Rucio then sets the lock and the rule OK,
    as it would when FTS reports a finished transfer. Returns the number of files copied.
    """
    client = store.client()
    rules = store._call("list rules", lambda: list(client.list_replication_rules({"state": "R"})))
    copied = 0
    for rule in rules:
        locks = store._call(
            f"locks of rule {rule['id']}", lambda r=rule: list(client.list_replica_locks(r["id"]))
        )
        for lock in locks:
            if lock["state"] != "REPLICATING" or (rse is not None and lock["rse"] != rse):
                continue
            did = {"scope": lock["scope"], "name": lock["name"]}
            entries = store._call(
                "list replicas",
                lambda d=did: list(client.list_replicas([d], schemes=["file"], all_states=True)),
            )
            sources = [
                pfns[0]
                for entry in entries
                for source_rse, pfns in (entry.get("rses") or {}).items()
                if pfns
                and source_rse != lock["rse"]
                and (entry.get("states") or {}).get(source_rse) == "AVAILABLE"
            ]
            if not sources:
                continue  # nothing to copy from yet: the rule stays replicating (and may get stuck)
            destination = store._call(
                "lfns2pfns", client.lfns2pfns, lock["rse"], [f"{lock['scope']}:{lock['name']}"]
            )
            target = Path(urlparse(next(iter(destination.values()))).path)
            try:
                _copy_atomically(Path(urlparse(sources[0]).path), target)
            except OSError as exc:
                # What FTS reports for a failed transfer: the rule is stuck, with the reason, until repaired.
                reason = f"transfer of {lock['name']} to {lock['rse']} failed: {exc}"
                store._call(
                    f"mark rule {rule['id']} stuck",
                    client.update_replication_rule,
                    rule["id"],
                    {"state": "STUCK", "comment": reason[:250]},
                )
                continue
            store._call(
                "mark replica available",
                client.update_replicas_states,
                lock["rse"],
                [{**did, "state": "A"}],
            )
            copied += 1
    return copied


def from_settings(settings: Settings) -> RucioStore:
    return RucioStore(
        settings.data_directory,
        settings.rucio_scope,
        settings.rucio_tape_rse,
        settings.rucio_cache_rse,
        settings.rucio_output_rse,
        settings.rucio_output_levels,
        config=settings.rucio_config,
        url=settings.rucio_url,
        auth_url=settings.rucio_auth_url,
        account=settings.rucio_account,
    )
