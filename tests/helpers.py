"""Small builders shared by the tests (``from tests.helpers import ...``)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

from osa_grid.core.loading import build_production, parse_yaml
from osa_grid.core.models import Production
from osa_grid.ports import NewFile, Replica


def checksum_of(data: bytes) -> str:
    """adler32 as 8 hex digits, the way ``osa_grid.data.checksums`` writes it."""
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def make_file(
    lfn: str,
    *,
    size: int | None = None,
    checksum: str | None = None,
    replicas: Sequence[Replica] = (),
    **metadata: Any,
) -> NewFile:
    """A file to register; size and checksum are derived from the LFN unless given.

    ``size``, ``checksum`` and ``replicas`` are keyword-only, so they cannot be metadata keys here.
    """
    content = lfn.encode()
    return NewFile(
        lfn=lfn,
        size=len(content) * 1000 if size is None else size,
        checksum=checksum_of(content) if checksum is None else checksum,
        metadata=metadata,
        replicas=tuple(replicas),
    )


def lst_subrun_lfn(run_id: int, subrun_id: int, stream: int = 1, level: str = "R0") -> str:
    if level == "R0":
        return f"/lst/R0/LST-1.{stream}.Run{run_id:05d}.{subrun_id:04d}.fits.fz"
    return f"/lst/{level}/{level.lower()}_LST-1.Run{run_id:05d}.{subrun_id:04d}.h5"


def lst_subrun(
    run_id: int,
    subrun_id: int,
    *,
    night: date = date(2024, 1, 15),
    level: str = "R0",
    n_subruns: int = 3,
    source: str = "Crab",
    replicas: Sequence[Replica] = (),
    **extra: Any,
) -> NewFile:
    """One LST-1 sub-run file with the metadata the nightly registration gives it."""
    metadata: dict[str, Any] = {
        "telescope": "LST-1",
        "night": night,
        "run_id": run_id,
        "subrun_id": subrun_id,
        "n_subruns": n_subruns,
        "run_type": "DATA",
        "data_level": level,
        "source": source,
        "zenith": 21.5 + run_id % 7,
        "start": datetime(night.year, night.month, night.day, 21, 0, subrun_id % 60, tzinfo=UTC),
    }
    metadata.update(extra)
    return make_file(lst_subrun_lfn(run_id, subrun_id, level=level), replicas=replicas, **metadata)


# Two chained transformations, written the way a user writes them (no include: pure text).
TOY_PRODUCTION_YAML = """\
name: test-chain
version: "1"
description: per sub-run calibration, then one merge per complete run
transformations:
  - name: calibrate
    version: "1.0"
    input:
      query: data_level = R0 and run_type = DATA
    step:
      argv: ["{python}", "-m", "osa_grid.steps.toy", "calibrate", "{input}", "{output.dl1}"]
      resources: {cores: 1, memory_gb: 0.2, walltime: 5m}
    grouping: {mode: per_file}
    outputs:
      - name: dl1
        file_name: "dl1_LST-1.Run{run_id:05d}.{subrun_id:04d}.csv"
        directory: "{production}/DL1/{night}"
        metadata: {data_level: DL1}
    retry: {max_attempts: 2}
  - name: merge
    version: "1.0"
    input:
      query: data_level = DL1
      from: calibrate
    step:
      argv: ["{python}", "-m", "osa_grid.steps.toy", "merge", "{output.dl1_run}", "{inputs}"]
    grouping: {mode: by_run, keys: [run_id], size_key: n_subruns}
    outputs:
      - name: dl1_run
        file_name: "dl1_LST-1.Run{run_id:05d}.csv"
        directory: "{production}/DL1/{night}"
        metadata: {data_level: DL1_RUN}
        inherit: [night, run_id, run_type, source, n_subruns]
"""


def toy_production_yaml(name: str = "test-chain", merge_version: str = "1.0") -> str:
    """The toy production's text under another name, or with another version of ``merge``."""
    head, merge = TOY_PRODUCTION_YAML.split("  - name: merge\n")
    head = head.replace("name: test-chain\n", f"name: {name}\n", 1)
    merge = merge.replace('version: "1.0"', f'version: "{merge_version}"', 1)
    return f"{head}  - name: merge\n{merge}"


def production_from_yaml(text: str = TOY_PRODUCTION_YAML, source: str = "test-chain.yaml") -> Production:
    return build_production(parse_yaml(text, source))


def provenance_record(
    attempt: int = 1, *, job_id: str | None = "job-1", exit_code: int | None = 0
) -> dict[str, Any]:
    """A provenance row's values, as the shepherd writes them."""
    return {
        "attempt": attempt,
        "argv": ["python", "-m", "osa_grid.steps.toy", "calibrate", "in.fits.fz", "out.csv"],
        "env": {"OMP_NUM_THREADS": "1"},
        "software": {"osa-grid": "0.1.0", "python": "3.11"},
        "config_digest": "0" * 64,
        "host": "testhost",
        "backend": "local",
        "job_id": job_id,
        "started_at": datetime(2024, 1, 16, 3, 0, tzinfo=UTC),
        "ended_at": datetime(2024, 1, 16, 3, 5, tzinfo=UTC),
        "exit_code": exit_code,
    }
