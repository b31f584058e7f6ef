"""``osa-grid web`` on a real socket on 127.0.0.1: names decoded once, confined to ``web/``, a port in use."""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from osa_grid.catalog.store import Catalog
from osa_grid.cli.app import app
from osa_grid.errors import OsaGridError
from osa_grid.services.nightserver import NightPages, listen, serve
from osa_grid.services.productions import load_nightly_workflow

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / "workflows" / "toy_nightly.yaml"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    base = tmp_path / "site"
    (base / "web" / "sub").mkdir(parents=True)
    (base / "web" / "a b.txt").write_text("spaced")
    (base / "web" / "100%.txt").write_text("percent")
    (base / "web" / "%00.txt").write_text("not a NUL")  # reached by %2500 only if decoded once
    (base / "web" / "sub" / "c.txt").write_text("nested")
    (base / "secret.txt").write_text("outside web/")
    (base / "web" / "link.txt").symlink_to(base / "secret.txt")
    return base


@pytest.fixture
def pages(site: Path, tmp_path: Path) -> Iterator[NightPages]:
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    try:
        yield NightPages(load_nightly_workflow(WORKFLOW), site, catalog, refresh=5)
    finally:
        catalog.close()


@pytest.fixture
def server(pages: NightPages) -> Iterator[int]:
    """The real server on a free port of 127.0.0.1, answering in a thread; yields its port."""
    running = listen(pages, 0)
    thread = threading.Thread(target=running.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield running.server_address[1]
    finally:
        running.shutdown()
        running.server_close()


def get(port: int, path: str) -> tuple[int, bytes]:
    """GET ``path`` exactly as written (http.client sends it unchanged, unlike a browser)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def test_percent_encoded_names_are_decoded_once(server: int) -> None:
    assert get(server, "/web/a%20b.txt") == (200, b"spaced")
    assert get(server, "/web/100%25.txt") == (200, b"percent")
    assert get(server, "/web/%2500.txt") == (200, b"not a NUL")
    assert get(server, "/web/sub%2Fc.txt") == (200, b"nested")
    assert get(server, "/web/a%20b.txt?night=2026-11-21") == (200, b"spaced")


@pytest.mark.parametrize(
    "path",
    [
        "/web/" + "a" * 300,  # longer than a file name may be: OSError inside the handler before
        "/web/" + "a/" * 3000,  # longer than a path may be
        "/" + "x" * 300,
        "/nightly/" + "9" * 300,
        "/web/a%00b.txt",  # a NUL once decoded
        "/web/a%20b.txt%00",
        "/web/%00",
        "/web/%2e%2e/secret.txt",  # ../ once decoded
        "/web/..%2fsecret.txt",
        "/web/sub/%2E%2E/%2E%2E/secret.txt",
        "/web/%2Fetc%2Fpasswd",  # absolute once decoded
        "/web//etc/passwd",
        "/web/link.txt",  # a symbolic link out of web/
        "/web/%ff%fe.txt",  # not UTF-8
    ],
)
def test_paths_that_leave_web_or_cannot_exist_are_not_found(
    server: int, path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, body = get(server, path)
    assert status == 404, body
    assert b"outside web/" not in body
    assert "Traceback" not in capsys.readouterr().err  # socketserver prints one for an error in a handler
    assert get(server, "/web/a%20b.txt") == (200, b"spaced")  # and the server still answers


def test_a_port_in_use_is_a_clear_error(pages: NightPages, tmp_path: Path, site: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OsaGridError, match=rf"^port {port} on 127\.0\.0\.1 is in use"):
            serve(pages, port)
        env = {"OSA_GRID_HOME": str(tmp_path / "home"), "OSA_GRID_BASE_DIR": str(site)}
        result = CliRunner().invoke(app, ["web", "--port", str(port), "--workflow", str(WORKFLOW)], env=env)
    assert result.exit_code == 1, result.output
    assert f"port {port} on 127.0.0.1 is in use" in result.output
    assert isinstance(result.exception, SystemExit)  # typer's exit with the code, not an OSError
