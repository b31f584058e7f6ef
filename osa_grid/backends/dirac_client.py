"""A synchronous session with a DiracX server, over the official async client (``diracx-client`` 0.7).

The Backend protocol and the pilot are synchronous; the client is async. A session owns a private event loop
and one client, made on first use and made again after a failure (the client reads the server's OpenID
configuration when it is made, so it cannot be made while the server is down). Errors come out typed:
``BackendUnavailable`` when the server cannot be reached or answers 5xx (a restart: try later), its
subclass ``BackendNotReached`` when the request certainly never left (connection refused, no client), and
``BackendError`` when the server refuses the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from osa_grid.errors import BackendError, BackendNotReached, BackendUnavailable, BadInput

T = TypeVar("T")
# One page of a search; DiracX answers at most 10000 rows a page.
PAGE_SIZE = 1000
# The sandbox store's name in DiracX PFNs ("SB:SandboxSE|/S3/...").
SANDBOX_SE = "SandboxSE"
# Errors raised before a request leaves this process (azure-core says so of ServiceRequestError).
NOT_SENT = ("ConnectError", "ConnectionRefusedError", "ClientConnectorError", "ServiceRequestError")


def _client_modules() -> tuple[Any, Any, Any]:
    try:
        from diracx.api.jobs import create_sandbox, download_sandbox
        from diracx.client.aio import AsyncDiracClient
    except ImportError as exc:
        raise BadInput(
            f"the dirac backend needs the DiracX client ({exc.name} missing): pip install 'osa-grid[dirac]'"
        ) from exc
    return AsyncDiracClient, create_sandbox, download_sandbox


class DiracSession:
    """Calls to one DiracX server, each a blocking method."""

    def __init__(self, url: str | None, credentials_path: Path | None, timeout: float = 30.0) -> None:
        self.url = url
        self.credentials_path = credentials_path
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._client: Any = None

    # -- jobs -------------------------------------------------------------------------------------

    def submit(self, jdls: Sequence[str]) -> list[int]:
        """Job ids of the submitted JDLs, in order (one bulk request)."""

        async def call(client: Any) -> list[int]:
            inserted = await client.jobs.submit_jdl_jobs(list(jdls))
            return [int(job.job_id) for job in inserted]

        return self._run(call)

    def search(
        self, conditions: Sequence[Mapping[str, Any]], parameters: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Every job matching all the conditions (pages fetched until the last)."""

        async def call(client: Any) -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = []
            page = 1
            while True:
                batch = await client.jobs.search(
                    parameters=list(parameters),
                    search=[dict(c) for c in conditions],
                    page=page,
                    per_page=PAGE_SIZE,
                )
                rows.extend(batch)
                if len(batch) < PAGE_SIZE:
                    return rows
                page += 1

        return self._run(call)

    def set_statuses(self, updates: Mapping[int, Mapping[datetime, Mapping[str, str]]]) -> dict[int, str]:
        """Post status records (a job's latest timestamp wins); returns the jobs DiracX refused, and why."""
        body = {
            str(job_id): {moment.isoformat(): dict(record) for moment, record in records.items()}
            for job_id, records in updates.items()
        }

        async def call(client: Any) -> dict[int, str]:
            result = await client.jobs.set_job_statuses(body)
            failed = getattr(result, "failed", None) or {}
            return {int(job_id): str(reason) for job_id, reason in failed.items()}

        return self._run(call)

    def heartbeat(self, job_ids: Sequence[int]) -> None:
        async def call(client: Any) -> None:
            await client.jobs.add_heartbeat({str(job_id): {} for job_id in job_ids})

        self._run(call)

    # -- sandboxes ------------------------------------------------------------------------------------

    def upload_output_sandbox(self, job_id: int, files: Sequence[Path]) -> str:
        """Upload the files as one sandbox and assign it to the job as its output sandbox; returns its PFN."""
        _, create_sandbox, _ = _client_modules()

        async def call(client: Any) -> str:
            pfn = str(await create_sandbox(list(files), client=client))
            await client.jobs.assign_sandbox_to_job(job_id, f'"{pfn}"')
            return pfn

        return self._run(call)

    def download_output_sandbox(self, job_id: int, destination: Path) -> bool:
        """Extract the job's output sandbox into ``destination``; False if the job has none."""
        _, _, download_sandbox = _client_modules()

        async def call(client: Any) -> bool:
            paths = await client.jobs.get_job_sandbox(job_id, "output")
            if not paths:
                return False
            for path in paths:
                await download_sandbox(f"SB:{SANDBOX_SE}|{path}", destination, client=client)
            return True

        return self._run(call)

    def read_output_sandbox(self, job_id: int) -> dict[str, bytes] | None:
        """The files of the job's output sandbox by name; None if the job has none."""
        with tempfile.TemporaryDirectory(prefix="osa-grid-sandbox-") as scratch:
            if not self.download_output_sandbox(job_id, Path(scratch)):
                return None
            return {p.name: p.read_bytes() for p in Path(scratch).iterdir() if p.is_file()}

    # -- plumbing ---------------------------------------------------------------------------------------

    def close(self) -> None:
        if not self._loop.is_closed():
            self._drop_client()
            self._loop.close()

    def _run(self, call: Callable[[Any], Awaitable[T]]) -> T:
        if self._loop.is_closed():
            raise BackendError("the DiracX session is closed")
        try:
            return self._loop.run_until_complete(asyncio.wait_for(self._call(call), self.timeout))
        except (BackendError, BadInput):
            raise
        except Exception as exc:
            self._drop_client()
            raise _typed(exc) from exc

    async def _call(self, call: Callable[[Any], Awaitable[T]]) -> T:
        if self._client is None:
            client_class, _, _ = _client_modules()
            from diracx.core.preferences import DiracxPreferences

            values: dict[str, Any] = {}
            if self.url:
                values["url"] = self.url
            if self.credentials_path:
                values["credentials_path"] = self.credentials_path
            preferences = DiracxPreferences.model_validate(values)
            try:
                client = client_class(diracx_preferences=preferences)
                await client.__aenter__()
            except Exception as exc:
                # Making the client reads the server's OpenID configuration; the call itself was not sent.
                raise BackendNotReached(f"DiracX does not answer: {type(exc).__name__}: {exc}"[:500]) from exc
            self._client = client
        return await call(self._client)

    def _drop_client(self) -> None:
        """A failed call may leave the client's connections broken: the next call makes a new one."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):  # its server may be gone
                self._loop.run_until_complete(client.__aexit__(None, None, None))


def _typed(exc: BaseException) -> BackendError:
    """BackendUnavailable for what a server restart looks like, BackendError for a refusal."""
    status = getattr(exc, "status_code", None)
    if status is None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    text = f"{type(exc).__name__}: {exc}"[:500]
    if isinstance(status, int) and status < 500:
        return BackendError(f"DiracX refused the request (HTTP {status}): {text}")
    if _not_sent(exc):
        return BackendNotReached(f"DiracX does not answer: {text}")
    return BackendUnavailable(f"DiracX does not answer: {text}")


def _not_sent(exc: BaseException | None) -> bool:
    """True if the error, or one it comes from, says the request never left (e.g. connection refused)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__name__ in NOT_SENT:
            return True
        exc = exc.__cause__ or exc.__context__
    return False
