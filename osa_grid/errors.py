"""Typed errors of osa-grid.

Library code raises these; only the CLI turns them into messages and exit codes
(``BadInput`` and its subclasses exit with 2, every other ``OsaGridError`` with 1).
"""

from __future__ import annotations


class OsaGridError(Exception):
    """Base class of every error osa-grid raises on purpose."""

    exit_code = 1


class BadInput(OsaGridError):
    """Something a user wrote (a file, a query, an argument) is wrong."""

    exit_code = 2


class QuerySyntaxError(BadInput):
    """A metadata query does not parse; carries the position for a caret display."""

    def __init__(self, message: str, text: str, position: int) -> None:
        self.reason = message
        self.text = text
        self.position = position
        caret = " " * position + "^"
        super().__init__(f"{message} at position {position}:\n  {text}\n  {caret}")


class ProductionInvalid(BadInput):
    """A production or transformation definition fails validation."""


class CampaignInvalid(BadInput):
    """A campaign file fails validation, or a campaign command does not fit the campaign's state."""


class TemplateError(BadInput):
    """A command or file-name template cannot be rendered."""


class UnsafeName(BadInput):
    """A name built from metadata would escape its directory or contains forbidden characters."""


class InputFileMissing(BadInput):
    """A file given to register or process does not exist."""


class AlreadyRegistered(BadInput):
    """Files of a registration whose LFNs the catalog holds already; ``lfns`` names every one of them."""

    def __init__(self, lfns: set[str]) -> None:
        self.lfns = frozenset(lfns)
        shown = ", ".join(sorted(lfns)[:5])
        super().__init__(f"{len(lfns)} file(s) are already registered: {shown}")


class UnknownProduction(BadInput):
    """A production name that the catalog does not know."""


class LeaseHeld(OsaGridError):
    """Another shepherd holds the lease on this production."""


class CatalogError(OsaGridError):
    """The catalog cannot be opened or is inconsistent."""


class OutputCheckFailed(OsaGridError):
    """A step exited 0 but one of its declared outputs is missing or empty."""


class StorageError(OsaGridError):
    """A product could not be put into the store (disk full, permissions, store unreachable)."""


class OutputClash(StorageError):
    """A product's LFN is taken: registered or claimed by another task, or a file is at its place already."""


class DataServiceError(OsaGridError):
    """The data management service (Rucio) is down, refuses our credentials, or answers with an error."""


class DataServiceUnavailable(DataServiceError):
    """The data management service does not answer now (down, restarting); trying later may succeed."""


class BackendError(OsaGridError):
    """A backend could not submit, poll or cancel."""


class BackendUnavailable(BackendError):
    """The batch system or grid service does not answer now (e.g. restarting); trying later may succeed."""


class BackendNotReached(BackendUnavailable):
    """The request never reached the service (connection refused, no client): sending it again is safe."""


class InvalidTransition(OsaGridError):
    """A task state change that the state machine forbids."""
