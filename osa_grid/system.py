"""Facts about this machine and its processes (I/O helpers shared by services and backends)."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

# Private state (the commands, environments and logs of tasks; the catalog's file): this user only.
PRIVATE_DIRECTORY_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def process_start_ticks(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot, or None when there is no such process.

    Together with the pid it names a process uniquely: a recycled pid has another start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its closing one.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def process_identity(pid: int | None = None) -> str:
    """host:pid:start-ticks of a process (this one by default)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{process_start_ticks(pid)}"


def _local_process(identity: str) -> tuple[int, str] | None:
    """(pid, start ticks) of an identity of this host; None for another host or a malformed identity."""
    try:
        host, pid_text, ticks_text = identity.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return None
    return (pid, ticks_text) if host == socket.gethostname() else None


def identity_is_dead(identity: str) -> bool:
    """True only when the identity names a process on this host that no longer exists."""
    local = _local_process(identity)
    return local is not None and str(process_start_ticks(local[0])) != local[1]


def identity_is_alive(identity: str) -> bool:
    """True only when the identity names a process on this host that still runs (not a recycled pid)."""
    local = _local_process(identity)
    return local is not None and str(process_start_ticks(local[0])) == local[1]


def total_memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1024 * 1024)
    except OSError:
        return None
    return None


@dataclass
class DeferredInterrupt:
    """Whether a SIGINT (Ctrl-C) arrived while it was deferred."""

    received: bool = False


@contextmanager
def interrupts_deferred() -> Iterator[DeferredInterrupt]:
    """Ctrl-C is recorded, not raised, while the block runs; the caller reads ``received`` after it.

    For a commit whose outcome must be known: a KeyboardInterrupt raised inside it (or just after it,
    before the result is reported) leaves the user unable to tell whether it went through. Python installs
    signal handlers only in the main thread; elsewhere the block runs unprotected.
    """
    deferred = DeferredInterrupt()
    if threading.current_thread() is not threading.main_thread():
        yield deferred
        return

    def record(signum: int, frame: FrameType | None) -> None:
        deferred.received = True

    previous = signal.signal(signal.SIGINT, record)
    try:
        yield deferred
    finally:
        # None: the handler was not set from Python; Python's own one is what raises KeyboardInterrupt.
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


def private_directory(path: Path, tighten: bool = False) -> bool:
    """Make the directory, readable by this user only (its missing parents get the usual modes).

    An existing directory keeps its mode unless ``tighten`` (for directories named by osa-grid itself, never
    one an operator chose: that may be shared, or /tmp). Returns whether others can still enter it.
    """
    path = Path(path)
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=PRIVATE_DIRECTORY_MODE, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077 and tighten:
        path.chmod(PRIVATE_DIRECTORY_MODE)
        return False
    return bool(mode & 0o077)


def write_private_file(path: Path, text: str) -> None:
    """Write the file readable by this user only, atomically: a reader sees all of it or nothing."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
