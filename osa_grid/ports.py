"""The small protocols between the core and the outside world."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Protocol, runtime_checkable

from osa_grid.core.models import Resources


class Clock(Protocol):
    def now(self) -> datetime: ...


@dataclass(frozen=True)
class JobSpec:
    """One task attempt as a backend sees it: a command to run, where, with what."""

    task_id: str
    argv: Sequence[str]
    env: Mapping[str, str]  # the step's declared environment, on top of the safe base (core/stepenv.py)
    workdir: Path
    stdout: Path
    stderr: Path
    resources: Resources
    name: str = ""  # production/transformation, for the scheduler's job name
    # The step's software environment: pinned versions (distribution -> version) and a container image, for
    # backends that set up the environment per job (a grid job's JDL).
    software: Mapping[str, str] = field(default_factory=dict)
    container: str | None = None
    # The input files' LFNs (a grid job's InputData).
    input_lfns: Sequence[str] = ()
    # Names (or NAME* patterns) the step takes from the environment where it runs, beyond the safe base.
    inherit: Sequence[str] = ()


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    LOST = "lost"  # the backend does not know the job (any more)


@dataclass(frozen=True)
class JobStatus:
    state: JobState
    exit_code: int | None = None
    # failed, timeout, oom, cancelled, node_fail, lost: matched by retry rules.
    failure: str | None = None
    message: str = ""
    started_at: datetime | None = None
    ended_at: datetime | None = None


@dataclass(frozen=True)
class Capabilities:
    # Jobs go on when the shepherd exits (a batch system); a local pool's jobs do not.
    detached: bool
    arrays: bool = False
    dependencies: bool = False
    shared_filesystem: bool = True


class ServiceHealth:
    """What a client of a remote service (Rucio, DiracX) saw at its last call: reached or not, and why.

    Kept in memory by the client, updated at every call; the shepherd reads it after each pass to keep the
    catalog's record of outages (``osa_grid.services.outages``). ``calls`` tells a new answer from an old one.
    """

    def __init__(self, service: str, url: str) -> None:
        self.service = service
        self.url = url
        self.reached: bool | None = None  # None: not asked yet
        self.error = ""
        self.calls = 0

    def answered(self) -> None:
        self.reached, self.error = True, ""
        self.calls += 1

    def not_reached(self, error: str) -> None:
        self.reached, self.error = False, error
        self.calls += 1


@runtime_checkable
class WatchedService(Protocol):
    """A backend or data manager that depends on a remote service and reports whether it reaches it."""

    health: ServiceHealth


class Backend(Protocol):
    name: str
    capabilities: Capabilities

    def submit(self, jobs: Sequence[JobSpec]) -> list[str]:
        """Start the jobs; returns one job id per job, in order."""
        ...

    def poll(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """Status of every given job; unknown ids are LOST."""
        ...

    def cancel(self, job_ids: Sequence[str]) -> None: ...

    def adopt(self, task_ids: Sequence[str]) -> dict[str, str]:
        """Job ids of jobs already submitted for these tasks (found by the identity they carry).

        Called for tasks reserved before a crash whose job id was never recorded: a batch system may have
        accepted the job all the same, and it must not run twice.
        """
        ...

    def wait_any(self, timeout: float) -> None:
        """Block until a job may have changed state, or ``timeout`` seconds."""
        ...

    def free_slots(self) -> int:
        """How many more jobs may be submitted now (a bound, not a promise)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Replica:
    lfn: str
    store: str
    pfn: str
    state: str = "available"


@dataclass(frozen=True)
class StoredFile:
    lfn: str
    size: int
    checksum: str  # adler32, 8 hex digits
    replica: Replica


@dataclass(frozen=True)
class NewFile:
    lfn: str
    size: int
    checksum: str
    metadata: Mapping[str, object]
    replicas: Sequence[Replica] = field(default_factory=tuple)


class StageState(StrEnum):
    NEW = "new"  # recorded, not yet asked for (a crash here is resumed without a duplicate request)
    REQUESTED = "requested"
    ONLINE = "online"
    STUCK = "stuck"  # the data manager cannot bring it online now (its reason is in the error)
    RELEASED = "released"


@dataclass(frozen=True)
class StageStatus:
    state: StageState
    error: str = ""
    replica: Replica | None = None  # the online copy, once there is one


class DataManager(Protocol):
    name: str
    # Inputs may be offline (on tape): tasks wait in STAGING until the data manager brings them online.
    stages: bool

    def locate(self, lfn: str, replicas: Sequence[Replica]) -> Path:
        """A local path the payload can read the file from."""
        ...

    def store(self, source: Path, lfn: str, replace: bool = False) -> Replica:
        """Move a finished product into the store atomically; returns its replica.

        Never over a file already at the LFN's place (``OutputClash``), unless ``replace``: the caller claimed
        the LFN and that file is what an earlier attempt of the same task left unregistered. Any trouble of
        the storage is a ``StorageError``.
        """
        ...

    def discard(self, lfn: str) -> None:
        """Remove a product ``store`` put in place that will not be registered (its task failed meanwhile)."""
        ...

    def online(self, replica: Replica) -> bool:
        """Whether a job can read this replica now (disk, available)."""
        ...

    def resolve(self, query: str) -> list[NewFile]:
        """The files the data manager knows that match a metadata query, with their replicas."""
        ...

    def stage(self, lfns: Sequence[str], lifetime: int) -> dict[str, str]:
        """Ask for files to be brought online for ``lifetime`` seconds; returns a request id per LFN.

        A file already asked for keeps its request (found again, never made twice).
        """
        ...

    def stage_status(self, requests: Mapping[str, str]) -> dict[str, StageStatus]:
        """The state of staging requests (LFN -> request id), by LFN."""
        ...

    def release(self, request_ids: Sequence[str]) -> None:
        """The staged copies are no longer needed: let them expire."""
        ...

    def register(self, files: Sequence[NewFile], dataset: str) -> list[NewFile]:
        """Publish stored products (metadata, dataset); returns them with any replicas this added."""
        ...
