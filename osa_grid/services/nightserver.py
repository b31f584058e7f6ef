"""``osa-grid web``: the nightly status pages served live from the state store, read-only, on localhost.

Routes: ``/`` lists the nights the site has a run summary for (newest first); ``/nightly/YYYY-MM-DD`` is the
night's page rendered from the catalog at each request (it reloads itself); ``/web/...`` serves the files
published under ``<base>/web/`` (datacheck plots). Anything but GET and HEAD is refused.

One request at a time (``HTTPServer``, not threading): the catalog connection is used by one thread only,
and a status page for operators needs no more.
"""

from __future__ import annotations

import contextlib
import errno
import html
import logging
import mimetypes
import re
from collections.abc import Callable
from datetime import date
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

from osa_grid.catalog.store import Catalog
from osa_grid.core.nightly import NightlyWorkflow
from osa_grid.errors import BadInput, OsaGridError
from osa_grid.logs import event, get_logger
from osa_grid.services.nightly import Night

log = get_logger("web")

LOCALHOST = "127.0.0.1"
TEXT = "text/plain; charset=utf-8"
_NIGHT_PAGE = re.compile(r"^/nightly/(\d{4}-\d{2}-\d{2})/?$")
_SUMMARY = re.compile(r"^(?:RunSummary|NightSummary)_(\d{4})(\d{2})(\d{2})\.(?:ecsv|txt)$")


class NightPages:
    """What the server shows: pages of the nights of one site, processed by one nightly workflow."""

    def __init__(self, workflow: NightlyWorkflow, base_dir: Path, catalog: Catalog, refresh: int) -> None:
        self.workflow = workflow
        self.base_dir = base_dir.resolve()
        self.catalog = catalog
        self.refresh = refresh

    def nights(self) -> list[date]:
        directory = self.base_dir / "monitoring" / "RunSummary"
        found = set()
        if directory.is_dir():
            for path in directory.iterdir():
                match = _SUMMARY.match(path.name)
                if match:
                    found.add(date(int(match[1]), int(match[2]), int(match[3])))
        return sorted(found, reverse=True)

    def index(self) -> str:
        items = (
            "\n".join(f'<li><a href="/nightly/{night}">{night}</a></li>' for night in self.nights())
            or "<li>no night has a run summary yet</li>"
        )
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="refresh" content="{self.refresh}"><title>osa-grid nights</title></head>\n'
            f"<body><h1>Nights ({html.escape(self.workflow.name)})</h1>\n"
            f'<ul id="nights">\n{items}\n</ul></body></html>\n'
        )

    def night_page(self, night: date) -> str:
        if night not in self.nights():
            raise BadInput(f"night {night}: the site has no run summary for it")
        tonight = Night(self.workflow, night, self.base_dir, self.catalog)
        web = self.base_dir / "web"

        def served(paths: list[Path]) -> list[str]:
            return ["/web/" + str(p.relative_to(web)) for p in paths if p.is_relative_to(web)]

        return tonight.page(
            served(tonight.datacheck_plots()), self.refresh, served(tonight.datacheck_pages())
        )

    def published(self, relative: str) -> Path | None:
        """A file under ``<base>/web/`` named by ``relative`` (already percent-decoded), or None: also for a
        name with NUL, ``..``, an absolute path, one the file system cannot look up (too long) or one that a
        symbolic link would take out of ``web/``."""
        name = PurePosixPath(relative)
        if "\x00" in relative or name.is_absolute() or ".." in name.parts:
            return None
        web = (self.base_dir / "web").resolve()
        try:
            target = (web / name).resolve()
            found = target.is_relative_to(web) and target.is_file()
        except OSError:  # ENAMETOOLONG and the like: no such file to serve
            return None
        return target if found else None


def handler_for(pages: NightPages) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "osa-grid-web"

        def do_GET(self) -> None:  # http.server's method naming
            self._answer(head=False)

        def do_HEAD(self) -> None:
            self._answer(head=True)

        def _refuse(self) -> None:
            self.send_error(HTTPStatus.METHOD_NOT_ALLOWED, "read-only: GET and HEAD only")

        do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

        def _answer(self, head: bool) -> None:
            # Decoded once (a%20b.txt is "a b.txt"); never again, so that %2500 stays "%00", not a NUL.
            path = unquote(self.path.split("?", 1)[0].split("#", 1)[0])
            try:
                status, body, kind = self._route(path)
            except OsaGridError as exc:  # e.g. a night without calibration: the page says why
                status, kind = HTTPStatus.NOT_FOUND, TEXT
                body = f"{exc}\n".encode()
            except Exception as exc:  # a page that fails is a 500 and a log line, never a traceback
                event(log, "http_error", logging.ERROR, path=path[:200], error=f"{type(exc).__name__}: {exc}")
                status, kind, body = HTTPStatus.INTERNAL_SERVER_ERROR, TEXT, b"internal error (see the log)\n"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _route(self, path: str) -> tuple[HTTPStatus, bytes, str]:
            page = "text/html; charset=utf-8"
            if path in ("/", "/index.html"):
                return HTTPStatus.OK, pages.index().encode(), page
            match = _NIGHT_PAGE.match(path)
            if match:
                try:
                    night = date.fromisoformat(match[1])
                except ValueError:
                    return HTTPStatus.NOT_FOUND, b"no such date\n", TEXT
                return HTTPStatus.OK, pages.night_page(night).encode(), page
            if path.startswith("/web/"):
                found = pages.published(path.removeprefix("/web/"))
                if found is not None:
                    kind = mimetypes.guess_type(found.name)[0] or "application/octet-stream"
                    return HTTPStatus.OK, found.read_bytes(), kind
            return HTTPStatus.NOT_FOUND, b"not found\n", TEXT

        def log_message(self, format: str, *args: object) -> None:
            event(log, "http_request", client=self.client_address[0], request=format % args)

    return Handler


def listen(pages: NightPages, port: int) -> HTTPServer:
    """The server bound to 127.0.0.1:``port`` (0: any free port); a port in use is a clear error."""
    try:
        return HTTPServer((LOCALHOST, port), handler_for(pages))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise OsaGridError(f"port {port} on {LOCALHOST} is in use: choose another with --port") from None
        raise OsaGridError(f"cannot listen on {LOCALHOST}:{port}: {exc.strerror or exc}") from None


def serve(pages: NightPages, port: int, ready: Callable[[str], None] | None = None) -> None:
    """Serve on 127.0.0.1 until interrupted; ``ready`` is told the URL once the socket listens."""
    with listen(pages, port) as server:
        url = f"http://{LOCALHOST}:{server.server_address[1]}/"
        if ready is not None:
            ready(url)
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends serving, not with a traceback
            server.serve_forever()
