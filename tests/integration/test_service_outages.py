"""Rucio or DiracX not answering for long: the operator is told once, status shows it, nothing is lost.

The shepherd is given a service URL on a closed port of 127.0.0.1 (a server that is down), with
``*_outage_alert_after`` small; then the real server (scripts/rucio/start.sh, scripts/dirac/start.sh), and
the outage ends. Notifications go to a webhook served by the test.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from osa_grid.catalog import outages as records
from osa_grid.catalog.store import Catalog
from osa_grid.data.rucio import RucioStore
from tests.integration.rucio_server import night_on_tape, token
from tests.integration.test_campaign_cli import EXPECTED, add_nights, done, status, write_campaign
from tests.integration.test_campaign_dirac import CampaignDiracWorld
from tests.integration.test_dirac_backend import dirac_env as dirac_env  # the fixture
from tests.integration.test_rucio_resilience import rucio_env as rucio_env  # the fixture
from tests.integration.toyworld import OSA_GRID, ToyWorld, toy_production

pytestmark = pytest.mark.integration


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A webhook receiver on 127.0.0.1: its URL and the notifications it got."""
    received: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    """A port of 127.0.0.1 nothing listens on (bound, then let go: connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _events(catalog: Catalog, kind: str) -> list[dict[str, object]]:
    return [e for e in catalog.events() if e["kind"] == kind]


def _start(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[subprocess.Popen[str], Path]:
    """A shepherd whose output goes to files: a pipe nobody reads fills up with the clients' retry lines
    (one ERROR per refused connection) and blocks the shepherd before it can raise the alert."""
    out_log, err_log = cwd / "shepherd.out", cwd / "shepherd.err"
    with out_log.open("w") as out, err_log.open("w") as err:
        process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=err, text=True)
    return process, err_log


def _wait_for_event(world: ToyWorld, kind: str, process: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the shepherd ended with exit code {process.returncode}"
        catalog = world.catalog()
        try:
            if _events(catalog, kind):
                return
        finally:
            catalog.close()
        time.sleep(0.3)
    raise AssertionError(f"no {kind} event after {timeout} s")


def test_rucio_down_is_alerted_once_shown_by_status_and_its_end_noticed(
    rucio_env: Path, tmp_path: Path, webhook: tuple[str, list[dict[str, str]]]
) -> None:
    hook_url, received = webhook
    tag = token()
    store = RucioStore(
        tmp_path / "unused", "lst", "LST_TAPE", "LST_CACHE", "LST_DL3", ["DL3"], config=rucio_env
    )
    night_on_tape(store, tmp_path / "raw", tag)
    world = ToyWorld(tmp_path / "world")
    world.root.mkdir()
    imported = world.osa_grid("site", "import", f"test_tag = {tag} and data_level = R0")
    assert imported.returncode == 0, imported.stderr
    production = world.write_production(toy_production(name=f"toy{tag}"))

    down = f"http://127.0.0.1:{_closed_port()}"
    env = {
        **world.env(),
        "OSA_GRID_RUCIO_URL": down,
        "OSA_GRID_RUCIO_OUTAGE_ALERT_AFTER": "2",
        "OSA_GRID_NOTIFY": hook_url,
    }
    argv = [*OSA_GRID, "production", "run", "--no-live", str(production)]
    shepherd, err_log = _start(argv, env, world.root)
    try:
        _wait_for_event(world, "service_outage_alert", shepherd, timeout=120)
        status = world.osa_grid("status")
        assert status.returncode == 0, status.stderr
        assert "services not reached" in status.stdout and "rucio" in status.stdout
        assert down in status.stdout.replace("\n", "")
    finally:
        shepherd.send_signal(signal.SIGINT)
        shepherd.wait(timeout=60)
    err = err_log.read_text()
    assert "Traceback" not in err, err
    assert err.count("service_outage_alert") == 1, err  # the WARNING line, once

    catalog = world.catalog()
    try:
        [outage] = records.outages(catalog)
        assert outage.service == "rucio" and outage.url == down and outage.alerted_at is not None
        assert "unreachable" in outage.last_error
        assert len(_events(catalog, "service_outage_alert")) == 1
        # Waited out: no task failed for it, and the staging requests are kept to be sent again.
        counts = catalog.task_counts(f"toy{tag}")
        assert counts["calibrate"] == {"staging": 4}, counts
    finally:
        catalog.close()
    assert len(received) == 1 and received[0]["subject"].startswith("osa-grid: rucio not reached for")
    assert down in received[0]["text"]

    # The real server again: the first pass that reaches it ends the outage, and the operator hears of it.
    agent = world.start("site", "transfer", "--rse", "LST_CACHE", "--loop", "0.3")
    try:
        env_up = {**env}
        del env_up["OSA_GRID_RUCIO_URL"]
        ran = subprocess.run(
            [*OSA_GRID, "production", "run", "--no-live", str(production)],
            env=env_up,
            cwd=world.root,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        agent.terminate()
        agent.communicate(timeout=30)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stderr.count("service_outage_over") == 1, ran.stderr
    catalog = world.catalog()
    try:
        assert records.outages(catalog) == []
        [over] = _events(catalog, "service_outage_over")
        assert over["detail"]["service"] == "rucio" and over["detail"]["alerted"] is True  # type: ignore[index]
        counts = catalog.task_counts(f"toy{tag}")
        assert all(set(states) == {"done"} for states in counts.values()), counts
    finally:
        catalog.close()
    assert [n["subject"] for n in received][1:] == ["osa-grid: rucio reached again"]
    status = world.osa_grid("status")
    assert "services not reached" not in status.stdout


def test_dirac_down_for_a_campaign_is_alerted_shown_by_campaign_status_and_its_end_noticed(
    tmp_path: Path, dirac_env: dict[str, str], webhook: tuple[str, list[dict[str, str]]]
) -> None:
    hook_url, received = webhook
    world = CampaignDiracWorld(tmp_path, dirac_env)
    add_nights(world)
    name = world.production
    path = write_campaign(world, name=name, limits={"max_jobs_in_flight": 4})
    down = f"http://127.0.0.1:{_closed_port()}"
    alerts = {"OSA_GRID_DIRAC_OUTAGE_ALERT_AFTER": "1", "OSA_GRID_NOTIFY": hook_url}
    shepherd, err_log = _start(
        [*OSA_GRID, "campaign", "submit", str(path), "--backend", "dirac", "--no-live"],
        {**world.env(), **alerts, "OSA_GRID_DIRAC_URL": down},
        world.root,
    )
    try:
        _wait_for_event(world, "service_outage_alert", shepherd, timeout=120)
        shown = status(world, name)["service_outages"]
        assert [(o["service"], o["url"]) for o in shown] == [("dirac", down)]
        assert "DiracX does not answer" in shown[0]["last_error"] and shown[0]["alerted_at"]
        table = world.osa_grid("campaign", "status", name)
        assert table.returncode == 0 and "services not reached" in table.stdout, table.stderr
        stopped = world.osa_grid("campaign", "stop", name)
        assert stopped.returncode == 0, stopped.stderr
        shepherd.wait(timeout=120)
    finally:
        if shepherd.poll() is None:
            shepherd.kill()
            shepherd.wait()
    err = err_log.read_text()
    assert shepherd.returncode == 0, err
    assert err.count("service_outage_alert") == 1 and "Traceback" not in err, err
    waited = status(world, name)
    assert waited["failures"] == [] and done(waited) == 0  # waited out: nothing failed, nothing ran
    assert len(received) == 1 and received[0]["subject"].startswith("osa-grid: dirac not reached for")

    # The real server: the campaign resumes, the outage ends with a notice, every task is done.
    world.start_pilot()
    try:
        resumed = subprocess.run(
            [*OSA_GRID, "campaign", "resume", name, "--no-live"],
            env={**world.env(), **alerts},
            cwd=world.root,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        world.stop_pilots()
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    finished = status(world, name)
    assert finished["service_outages"] == [] and finished["status"] == "done"
    assert {s["name"]: s["counts"] for s in finished["steps"]} == {
        k: {"done": n} for k, n in EXPECTED.items()
    }
    assert [n["subject"] for n in received][1:] == ["osa-grid: dirac reached again"]
    catalog = world.catalog()
    try:
        [over] = _events(catalog, "service_outage_over")
        assert over["detail"]["service"] == "dirac" and over["detail"]["alerted"] is True  # type: ignore[index]
    finally:
        catalog.close()
