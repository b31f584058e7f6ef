"""The night's list of runs: the RunSummary ECSV and the legacy whitespace NightSummary.txt. Pure parsing."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import yaml

from osa_grid.core import yaml_limits
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


def parse_run_summary(text: str, source: str) -> NightRuns:
    """A RunSummary ECSV (with or without the newer data_format/evb_preprocessing columns)."""
    runs: list[RunInfo] = []
    ignored: list[IgnoredRun] = []
    for where, row in _ecsv_rows(text, source, "RunSummary", REQUIRED_COLUMNS):
        start = _ns_timestamp(row["run_start"], where) if "run_start" in row else None
        evb = evb_preprocessing_label(row.get("evb_preprocessing", "NONE"))
        _add(runs, ignored, row["run_id"], row["n_subruns"], row["run_type"], start, where, evb)
    return NightRuns(tuple(runs), tuple(ignored))


def parse_run_catalog(text: str, source: str) -> dict[int, RunSource]:
    """The site's run catalog ECSV: ``run_id, source_name, source_ra, source_dec[, wobble]`` (deg)."""
    found: dict[int, RunSource] = {}
    for where, row in _ecsv_rows(text, source, "run catalog", CATALOG_COLUMNS):
        run_id = _integer(row["run_id"], "run_id", where)
        try:
            ra, dec = float(row["source_ra"]), float(row["source_dec"])
        except ValueError:
            raise BadInput(f"{where}: source_ra and source_dec must be numbers (deg)") from None
        found[run_id] = RunSource(row["source_name"].strip(), ra, dec, row.get("wobble", "").strip())
    return found


def evb_preprocessing_label(text: str) -> str:
    """One word for what the event builder did: NONE, GAIN_SELECTION or PE_CALIBRATION (which implies it).

    lstchain writes the flags' integer value; some RunSummary files list the flags' names instead
    (``"['BASELINE', 'GAIN_SELECTION']"``).
    """
    value = text.strip()
    if value.isdigit():
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
    runs: list[RunInfo] = []
    ignored: list[IgnoredRun] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        where = f"{source}:{number}"
        if len(fields) < 5:
            raise BadInput(f"{where}: expected 'run subruns type date time ...', got {line.strip()!r}")
        start = _date_time(fields[3], fields[4], where)
        _add(runs, ignored, fields[0], fields[1], fields[2], start, where)
    return NightRuns(tuple(runs), tuple(ignored))


def parse_summary(text: str, source: str) -> NightRuns:
    """Either format, told apart by the ECSV signature line."""
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


def _add(
    runs: list[RunInfo],
    ignored: list[IgnoredRun],
    run_text: str,
    subruns_text: str,
    type_text: str,
    start: datetime | None,
    where: str,
    evb_preprocessing: str = "NONE",
) -> None:
    run_id = _integer(run_text, "run_id", where)
    n_subruns = _integer(subruns_text, "n_subruns", where)
    if run_id < 0 or n_subruns < 0:
        raise BadInput(f"{where}: run_id and n_subruns must not be negative")
    run_type = _TYPE_ALIASES.get(type_text.strip().upper())
    if run_type is None:
        ignored.append(IgnoredRun(run_id, type_text, f"run type {type_text!r} is not processed"))
    elif any(r.run_id == run_id for r in runs):
        raise BadInput(f"{where}: run {run_id} is listed twice")
    else:
        runs.append(RunInfo(run_id, n_subruns, run_type, start, evb_preprocessing))


def _integer(text: str, name: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BadInput(f"{where}: {name} {text!r} is not a whole number") from None


def _ns_timestamp(text: str, where: str) -> datetime | None:
    if text.strip().lower() in ("", "nan", "none", "--"):
        return None
    try:
        return datetime.fromtimestamp(int(text) / 1e9, tz=UTC)
    except (ValueError, OverflowError, OSError):
        raise BadInput(f"{where}: run_start {text!r} is not a timestamp in nanoseconds") from None


def _date_time(day: str, time: str, where: str) -> datetime | None:
    if "nan" in (day.lower(), time.lower()):
        return None
    try:
        return datetime.fromisoformat(f"{day}T{time}").replace(tzinfo=UTC)
    except ValueError:
        raise BadInput(f"{where}: {day} {time} is not a date and time") from None
