"""The night's list of runs: the RunSummary ECSV and the legacy whitespace NightSummary.txt. Pure parsing."""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import yaml

from osa_grid.core import yaml_limits
from osa_grid.core.metadata import check_metadata
from osa_grid.errors import BadInput

RunType = Literal["DRS4", "PEDCALIB", "DATA"]
# The legacy file says CALI where the RunSummary says PEDCALIB.
_TYPE_ALIASES: dict[str, RunType] = {
    "DRS4": "DRS4",
    "PEDCALIB": "PEDCALIB",
    "CALI": "PEDCALIB",
    "DATA": "DATA",
}
REQUIRED_COLUMNS = ("run_id", "n_subruns", "run_type")
CATALOG_COLUMNS = ("run_id", "source_name", "source_ra", "source_dec")
# Event-builder pre-processing (ctapipe_io_lst's EVBPreprocessingFlag bits): lstchain's RunSummary holds the
# flags' integer value, osa-grid's metadata one word that the transformations' queries select on.
_EVB_GAIN_SELECTION, _EVB_PE_CALIBRATION = 1, 64
# Run ids have 5 digits and sub-run ids 4 in the file names: anything larger is a broken file, refused where
# it is read rather than deep inside a later catalog query.
MAX_RUN_ID = 99_999
MAX_SUBRUNS = 10_000
# Only ASCII digits: int() and float() also read "1_807" and "١٨٠٧" (Arabic-Indic digits) as 1807.
# 19 digits hold any 64-bit value this module reads (a run start in ns) and keep int() off huge numbers.
_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]{1,19}")
_DECIMAL_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


@dataclass(frozen=True)
class RunInfo:
    run_id: int
    n_subruns: int
    run_type: RunType
    start: datetime | None = None
    # NONE: raw two-gain data; GAIN_SELECTION / PE_CALIBRATION: what the event builder did already.
    # Files without the column predate the event builder's pre-processing: raw.
    evb_preprocessing: str = "NONE"


@dataclass(frozen=True)
class RunSource:
    """What a data run observed (LST-1's TCU database; the site's RunCatalog_YYYYMMDD.ecsv)."""

    name: str
    ra_deg: float
    dec_deg: float
    wobble: str = ""

    def metadata(self) -> dict[str, str | float]:
        """The keys the DL3 step and the nightly table read from a data run's files."""
        found: dict[str, str | float] = {
            "source": self.name,
            "source_ra": self.ra_deg,
            "source_dec": self.dec_deg,
        }
        return {**found, "wobble": self.wobble} if self.wobble else found


@dataclass(frozen=True)
class IgnoredRun:
    run_id: int
    run_type: str
    reason: str


@dataclass(frozen=True)
class NightRuns:
    runs: tuple[RunInfo, ...]
    ignored: tuple[IgnoredRun, ...] = ()


class SummaryNotReady(BadInput):
    """An empty run summary: still being written (or cut). A long-running shepherd reads it again later."""


@dataclass(frozen=True)
class RunChange:
    """How a run of the night differs between what was recorded and the summary just read."""

    run_id: int
    kind: str  # added, grown, dropped, shrunk, type_changed
    detail: str

    @property
    def is_problem(self) -> bool:
        """Changes the night does not follow (it keeps what it recorded): the operators are told."""
        return self.kind not in ("added", "grown")


def reconcile(known: Sequence[RunInfo], read: NightRuns) -> tuple[tuple[RunInfo, ...], list[RunChange]]:
    """The night's runs after reading its summary again, and what changed.

    New runs are added and a run's sub-runs may grow; a run is never dropped: one that disappears from the
    summary, changes type or loses sub-runs keeps what was recorded (sub-runs may already be processed) and
    the change is returned for the operators.
    """
    now = {run.run_id: run for run in read.runs}
    ignored = {run.run_id: run for run in read.ignored}
    kept: list[RunInfo] = []
    changes: list[RunChange] = []
    for old in known:
        new = now.pop(old.run_id, None)
        if new is None:
            why = (
                f"now of type {ignored[old.run_id].run_type!r}"
                if old.run_id in ignored
                else "no longer listed"
            )
            kind = "type_changed" if old.run_id in ignored else "dropped"
            changes.append(RunChange(old.run_id, kind, f"{old.run_type} run {old.run_id}: {why}; kept"))
            kept.append(old)
        elif new.run_type != old.run_type:
            detail = (
                f"{old.run_type} run {old.run_id} is now listed as {new.run_type}; kept as {old.run_type}"
            )
            changes.append(RunChange(old.run_id, "type_changed", detail))
            kept.append(old)
        elif new.n_subruns < old.n_subruns:
            detail = f"run {old.run_id}: n_subruns {new.n_subruns} < {old.n_subruns} recorded; kept"
            changes.append(RunChange(old.run_id, "shrunk", detail))
            kept.append(old)
        else:
            if new.n_subruns > old.n_subruns:
                detail = f"run {old.run_id}: n_subruns {old.n_subruns} -> {new.n_subruns}"
                changes.append(RunChange(old.run_id, "grown", detail))
            kept.append(new)
    for new in now.values():
        changes.append(
            RunChange(new.run_id, "added", f"{new.run_type} run {new.run_id}, {new.n_subruns} sub-runs")
        )
        kept.append(new)
    return tuple(sorted(kept, key=lambda r: r.run_id)), changes


def run_record(run: RunInfo) -> dict[str, object]:
    """A run as recorded in the catalog's events (JSON)."""
    return {
        "run_id": run.run_id,
        "n_subruns": run.n_subruns,
        "run_type": run.run_type,
        "start": run.start.isoformat() if run.start else None,
        "evb_preprocessing": run.evb_preprocessing,
    }


def run_from_record(record: dict[str, object]) -> RunInfo:
    start = record.get("start")
    run_type = _TYPE_ALIASES[str(record["run_type"])]
    return RunInfo(
        int(str(record["run_id"])),
        int(str(record["n_subruns"])),
        run_type,
        datetime.fromisoformat(start) if isinstance(start, str) else None,
        str(record.get("evb_preprocessing", "NONE")),
    )


def parse_run_summary(text: str, source: str) -> NightRuns:
    """A RunSummary ECSV (with or without the newer data_format/evb_preprocessing columns)."""
    found = _RunList()
    for where, row in _ecsv_rows(text, source, "RunSummary", REQUIRED_COLUMNS):
        start = _ns_timestamp(row["run_start"], where) if "run_start" in row else None
        evb = evb_preprocessing_label(row.get("evb_preprocessing", "NONE"))
        found.add(row["run_id"], row["n_subruns"], row["run_type"], start, where, evb)
    return found.night_runs()


def parse_run_catalog(text: str, source: str) -> dict[int, RunSource]:
    """The site's run catalog ECSV: ``run_id, source_name, source_ra, source_dec[, wobble]`` (deg).

    A run listed twice with the same values is one run; listed twice with different values it is refused.
    """
    found: dict[int, RunSource] = {}
    first_at: dict[int, str] = {}
    for where, row in _ecsv_rows(text, source, "run catalog", CATALOG_COLUMNS):
        run_id = _run_id(row["run_id"], where)
        run_source = _run_source(row, where)
        if found.get(run_id, run_source) != run_source:
            raise BadInput(
                f"{where}: run {run_id} is listed twice, differently (first at {first_at[run_id]})"
            )
        found[run_id] = run_source
        first_at.setdefault(run_id, where)
    return found


def _run_source(row: dict[str, str], where: str) -> RunSource:
    texts = (row["source_ra"].strip(), row["source_dec"].strip())
    if not all(_DECIMAL_NUMBER.fullmatch(text) for text in texts):
        raise BadInput(f"{where}: source_ra and source_dec must be numbers (deg)")
    ra, dec = (float(text) for text in texts)
    if not -90 <= dec <= 90 or not math.isfinite(ra):
        raise BadInput(f"{where}: source_ra {ra} and source_dec {dec} are not a sky position (deg)")
    found = RunSource(row["source_name"].strip(), ra, dec, row.get("wobble", "").strip())
    try:
        check_metadata(found.metadata())  # registered with the run's files: refuse here, naming the line
    except BadInput as exc:
        raise BadInput(f"{where}: {exc}") from None
    return found


def evb_preprocessing_label(text: str) -> str:
    """One word for what the event builder did: NONE, GAIN_SELECTION or PE_CALIBRATION (which implies it).

    lstchain writes the flags' integer value; some RunSummary files list the flags' names instead
    (``"['BASELINE', 'GAIN_SELECTION']"``).
    """
    value = text.strip()
    if value.isascii() and value.isdigit():
        flags = int(value)
        pe, gain = bool(flags & _EVB_PE_CALIBRATION), bool(flags & _EVB_GAIN_SELECTION)
    else:
        names = set(re.findall(r"[A-Za-z_]+", value.upper()))
        pe, gain = "PE_CALIBRATION" in names, "GAIN_SELECTION" in names
    if pe:
        return "PE_CALIBRATION"
    return "GAIN_SELECTION" if gain else "NONE"


def _ecsv_rows(
    text: str, source: str, what: str, required: Sequence[str]
) -> Iterator[tuple[str, dict[str, str]]]:
    """(where, column -> text) for every row of an ECSV table holding the ``required`` columns."""
    header, body, first_line = _split_ecsv(text, source)
    delimiter = str(header.get("delimiter", " ")) if isinstance(header, dict) else " "
    if len(delimiter) != 1 or delimiter in '"\r\n':
        raise BadInput(f"{source}: the ECSV delimiter must be one character, not {delimiter!r}")
    reader = csv.reader(io.StringIO(body), delimiter=delimiter, skipinitialspace=delimiter == " ")
    rows = [row for row in reader if row]
    if not rows:
        raise BadInput(f"{source}: the {what} has no column names")
    columns = rows[0]
    missing = [c for c in required if c not in columns]
    if missing:
        raise BadInput(f"{source}:{first_line}: the {what} lacks the column(s) {', '.join(missing)}")
    for offset, row in enumerate(rows[1:], start=1):
        where = f"{source}:{first_line + offset}"
        if len(row) != len(columns):
            raise BadInput(f"{where}: {len(row)} values for {len(columns)} columns")
        yield where, dict(zip(columns, row, strict=True))


def parse_night_summary(text: str, source: str) -> NightRuns:
    """The legacy NightSummary.txt: ``run subruns type date time ...`` (timing fields may be nan)."""
    found = _RunList()
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        where = f"{source}:{number}"
        if len(fields) < 5:
            raise BadInput(f"{where}: expected 'run subruns type date time ...', got {line.strip()!r}")
        start = _date_time(fields[3], fields[4], where)
        found.add(fields[0], fields[1], fields[2], start, where)
    return found.night_runs()


def parse_summary(text: str, source: str) -> NightRuns:
    """Either format, told apart by the ECSV signature line.

    An empty file is refused: a summary is written at once with at least its header, so an empty one is still
    being written or was cut. A header without rows is a night without runs (yet).
    """
    if not text.strip():
        raise SummaryNotReady(f"{source}: the run summary is empty (still being written, or broken)")
    if text.lstrip().startswith("# %ECSV"):
        return parse_run_summary(text, source)
    return parse_night_summary(text, source)


def _split_ecsv(text: str, source: str) -> tuple[object, str, int]:
    header_lines: list[str] = []
    body_lines: list[str] = []
    first_line = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("#") and not body_lines:
            header_lines.append(line[2:] if line.startswith("# ") else line[1:])
        elif line.strip():
            first_line = first_line or number
            body_lines.append(line)
    if not header_lines or not header_lines[0].startswith("%ECSV"):
        raise BadInput(f"{source}:1: not an ECSV file (no '# %ECSV' line)")
    try:
        header = yaml_limits.safe_load("\n".join(header_lines[1:])) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        # The header's YAML starts on the file's second line (after "# %ECSV").
        where = f"{source}:{mark.line + 2}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise BadInput(f"{where}: the ECSV header is not valid YAML: {problem}") from exc
    return header, "\n".join(body_lines), first_line


class _RunList:
    """The runs of a summary as its rows are read; a run listed twice is refused, naming both lines."""

    def __init__(self) -> None:
        self.runs: list[RunInfo] = []
        self.ignored: list[IgnoredRun] = []
        self.first_at: dict[int, str] = {}

    def add(
        self,
        run_text: str,
        subruns_text: str,
        type_text: str,
        start: datetime | None,
        where: str,
        evb_preprocessing: str = "NONE",
    ) -> None:
        run_id = _run_id(run_text, where)
        n_subruns = _integer(subruns_text, "n_subruns", where)
        if not 0 <= n_subruns <= MAX_SUBRUNS:
            raise BadInput(f"{where}: n_subruns {n_subruns} is not between 0 and {MAX_SUBRUNS}")
        if run_id in self.first_at:
            raise BadInput(f"{where}: run {run_id} is listed twice (first at {self.first_at[run_id]})")
        self.first_at[run_id] = where
        run_type = _TYPE_ALIASES.get(type_text.strip().upper())
        if run_type is None:
            self.ignored.append(IgnoredRun(run_id, type_text, f"run type {type_text!r} is not processed"))
        else:
            self.runs.append(RunInfo(run_id, n_subruns, run_type, start, evb_preprocessing))

    def night_runs(self) -> NightRuns:
        return NightRuns(tuple(self.runs), tuple(self.ignored))


def _integer(text: str, name: str, where: str) -> int:
    if not _WHOLE_NUMBER.fullmatch(text.strip()):
        raise BadInput(f"{where}: {name} {text!r:.40} is not a whole number (at most 19 ASCII digits 0-9)")
    return int(text)


def _run_id(text: str, where: str) -> int:
    run_id = _integer(text, "run_id", where)
    if not 0 <= run_id <= MAX_RUN_ID:
        raise BadInput(f"{where}: run_id {text.strip()!r} is not between 0 and {MAX_RUN_ID} (5 digits)")
    return run_id


def _ns_timestamp(text: str, where: str) -> datetime | None:
    if text.strip().lower() in ("", "nan", "none", "--"):
        return None
    try:
        return datetime.fromtimestamp(_integer(text, "run_start", where) / 1e9, tz=UTC)
    except (BadInput, OverflowError, OSError, ValueError):
        raise BadInput(f"{where}: run_start {text!r:.40} is not a timestamp in nanoseconds") from None


def _date_time(day: str, time: str, where: str) -> datetime | None:
    if "nan" in (day.lower(), time.lower()):
        return None
    try:
        return datetime.fromisoformat(f"{day}T{time}").replace(tzinfo=UTC)
    except ValueError:
        raise BadInput(f"{where}: {day} {time} is not a date and time") from None
