"""What a user writes: transformations and productions (pydantic, ``extra="forbid"``)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from osa_grid.core import templates
from osa_grid.core.metadata import KEY_PATTERN, MetaValue, check_metadata
from osa_grid.core.stepenv import check_names
from osa_grid.errors import OsaGridError

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
SOFTWARE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}(==[A-Za-z0-9][A-Za-z0-9.+!_-]{0,63})?$"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)?\s*$")
_DURATION_UNITS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
FailureKind = Literal[
    "failed", "timeout", "oom", "output", "storage", "clash", "lost", "cancelled", "node_fail"
]


MAX_WALLTIME = timedelta(days=365)


def _duration(value: Any) -> Any:
    """Wall times are written ``90``, ``30s``, ``10m``, ``2h`` or ``1d``."""
    if isinstance(value, bool):
        raise ValueError("a duration cannot be true or false")
    if isinstance(value, int | float):
        return _seconds(float(value))
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return _seconds(float(match.group(1)) * _DURATION_UNITS[match.group(2)])
        if not value.startswith("P"):  # ISO 8601 (as stored in the catalog) is left to pydantic
            raise ValueError(f"{value!r} is not a duration (use e.g. 90, 30s, 10m, 2h, 1d)")
    return value


def _seconds(seconds: float) -> timedelta:
    if not seconds <= MAX_WALLTIME.total_seconds():  # also refuses NaN and infinity
        raise ValueError(f"a duration of {seconds} s is out of range (at most {MAX_WALLTIME.days} days)")
    return timedelta(seconds=seconds)


def _text(value: Any) -> Any:
    """YAML reads ``version: 1.0`` as a float; versions are text."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def _template(value: str) -> str:
    with _as_value_error():
        templates.fields(value)
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]
Template = Annotated[str, AfterValidator(_template)]
Text = Annotated[str, BeforeValidator(_text), Field(pattern=r"^[\x21-\x7e]{1,64}$")]


@contextmanager
def _as_value_error() -> Iterator[None]:
    """pydantic reports ValueErrors with the field's location; our own errors would escape it."""
    try:
        yield
    except OsaGridError as exc:
        raise ValueError(str(exc)) from exc


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(Strict):
    cores: int = Field(1, ge=1, le=1024, strict=True)
    memory_gb: float = Field(1.0, gt=0, le=4096)
    walltime: Duration = timedelta(hours=1)

    @field_validator("walltime")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value.total_seconds() <= 0:
            raise ValueError("walltime must be positive")
        return value

    def scaled(self, memory: float, walltime: float) -> Resources:
        return self.model_copy(
            update={"memory_gb": self.memory_gb * memory, "walltime": self.walltime * walltime}
        )


class Step(Strict):
    argv: list[Template] = Field(min_length=1)
    env: dict[str, Template] = Field(default_factory=dict)
    # Variables the step takes from the environment where its job runs, beyond the safe base of
    # core/stepenv.py (a grid proxy: ``X509_USER_PROXY``); ``NAME*`` takes every name beginning so.
    inherit: list[str] = Field(default_factory=list)
    resources: Resources = Resources()
    # Python distributions whose versions are recorded in the provenance of every task; ``lstchain==0.12.3``
    # also pins the version the step needs (a campaign refuses to mix versions, see core/campaign.py).
    software: list[Annotated[str, Field(pattern=SOFTWARE_PATTERN)]] = Field(default_factory=list)
    # A container image the step runs in (for backends that run containers; recorded in provenance).
    container: str | None = Field(None, min_length=1, max_length=512)

    @property
    def pins(self) -> dict[str, str]:
        """Pinned versions: distribution -> version."""
        pinned: dict[str, str] = {}
        for entry in self.software:
            name, pin, version = entry.partition("==")
            if pin:
                pinned[name] = version
        return pinned

    @property
    def distributions(self) -> list[str]:
        return [entry.split("==", 1)[0] for entry in self.software]

    @field_validator("argv")
    @classmethod
    def _argv_templates(cls, argv: list[str]) -> list[str]:
        for element in argv:
            if element != "{inputs}" and "inputs" in {f.name for f in templates.fields(element)}:
                raise ValueError("{inputs} expands to several arguments: it must be an argv element alone")
        return argv

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for key in env:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                raise ValueError(f"environment variable name {key!r} is not valid")
        return env

    @field_validator("inherit")
    @classmethod
    def _inherit_names(cls, names: list[str]) -> list[str]:
        return check_names(names)


class Grouping(Strict):
    mode: Literal["per_file", "by_run", "by_size", "all"] = "per_file"
    # by_run: the keys that name a run, and the metadata key holding how many files a complete run has.
    keys: list[str] = Field(default_factory=lambda: ["run_id"], min_length=1)
    size_key: str | None = "n_subruns"
    # by_size: files per task.
    size: int | None = Field(None, ge=1, strict=True)
    # What to do with incomplete groups once every upstream task has finished.
    flush: Literal["never", "when_upstream_done"] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Grouping:
        if self.mode == "by_size" and self.size is None:
            raise ValueError("grouping by_size needs 'size' (files per task)")
        if self.mode != "by_size" and self.size is not None:
            raise ValueError(f"'size' only applies to by_size grouping, not {self.mode}")
        return self

    @property
    def flush_policy(self) -> Literal["never", "when_upstream_done"]:
        if self.flush is not None:
            return self.flush
        return "never" if self.mode == "by_run" else "when_upstream_done"


class Output(Strict):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    file_name: Template
    # With the version, a new version of the transformation writes new LFNs (never over the old products).
    directory: Template = "{production}/v{version}"
    metadata: dict[str, MetaValue] = Field(default_factory=dict)
    # Input metadata keys passed on to the output ("all" = every key the inputs have in common).
    inherit: Literal["all", "none"] | list[str] = "all"
    # A JSON object the step writes next to the output ({output.NAME.metadata}): figures it measured
    # (event rates, pedestal stability ...) added to the output's metadata.
    metadata_file: Template | None = None
    # Checked before the product is registered: the file opens and has the content of its kind
    # (osa_grid/data/verify.py); a product that fails the check fails the task (failure class "output").
    verify: Literal["json", "csv", "hdf5", "fits", "dl3"] | None = None

    @field_validator("file_name")
    @classmethod
    def _file_name(cls, value: str) -> str:
        with _as_value_error():
            templates.check_file_name(templates.static_text(value))
        return value

    @field_validator("directory")
    @classmethod
    def _directory(cls, value: str) -> str:
        if value.startswith("/") or ".." in value.split("/"):
            raise ValueError(f"directory {value!r} must be relative and stay inside the store")
        if value:
            with _as_value_error():
                templates.check_relative_path(templates.static_text(value).rstrip("/"))
        return value

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, bool):
                    raise ValueError(f"metadata {key}: booleans are not a metadata type")
                if not isinstance(item, int | float | str | date | datetime):
                    raise ValueError(f"metadata {key}: {type(item).__name__} is not a metadata type")
            with _as_value_error():
                return check_metadata(value)
        return value

    @field_validator("inherit")
    @classmethod
    def _inherit_keys(cls, value: Any) -> Any:
        if isinstance(value, list):
            for key in value:
                if not KEY_PATTERN.match(key):
                    raise ValueError(f"{key!r} is not a metadata key")
        return value


class RetryRule(Strict):
    exit_codes: list[Annotated[int, Field(strict=True)]] | None = None
    failures: list[FailureKind] | None = None
    action: Literal["retry", "veto"] = "retry"
    scale_memory: float = Field(1.0, gt=0)
    scale_walltime: float = Field(1.0, gt=0)

    def matches(self, kind: str, exit_code: int | None) -> bool:
        if self.failures is not None and kind not in self.failures:
            return False
        return self.exit_codes is None or exit_code in self.exit_codes


class RetryPolicy(Strict):
    max_attempts: int = Field(3, ge=1, le=100, strict=True)
    rules: list[RetryRule] = Field(default_factory=list)
    # Two failures in a row with the same error: another try would fail the same way, so veto.
    veto_repeated_error: bool = False


class InputSpec(Strict):
    query: str = Field(min_length=1)
    parents: list[str] = Field(default_factory=list, alias="from")
    # Side inputs: name -> a query template rendered with the task's common metadata, e.g.
    # calibration: "data_level = CALIB and run_id = {pedcal_run}". A task waits (created) until every
    # need matches a file (the newest is used); its path is {needs.NAME} in the step's templates.
    needs: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], Template] = Field(
        default_factory=dict
    )

    @field_validator("parents", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class Transformation(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    version: Text = "1"
    description: str = ""
    input: InputSpec
    step: Step
    grouping: Grouping = Grouping()
    outputs: list[Output] = Field(default_factory=list)
    retry: RetryPolicy = RetryPolicy()

    @field_validator("outputs")
    @classmethod
    def _unique_outputs(cls, outputs: list[Output]) -> list[Output]:
        names = [o.name for o in outputs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"output names must be unique: {', '.join(duplicates)}")
        return outputs


class Production(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    version: Text = "1"
    description: str = ""
    # Values every template of the production may use, e.g. {night_dir} and {prod_id} in output directories.
    parameters: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], MetaValue] = Field(
        default_factory=dict
    )
    transformations: list[Transformation] = Field(min_length=1)

    def transformation(self, name: str) -> Transformation:
        for transformation in self.transformations:
            if transformation.name == name:
                return transformation
        raise KeyError(name)
