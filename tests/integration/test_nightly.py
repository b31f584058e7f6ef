"""`osa-grid nightly`: a night on the local backend, late sub-runs, failures, operator actions, restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from osa_grid.catalog.store import Catalog
from osa_grid.core.states import TaskState
from osa_grid.steps.toy import make_inputs

from .browser import rendered_dom, screenshot
from .toyworld import OSA_GRID

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NIGHT = "2026-11-21"
NIGHT_DIR = "20261121"
RUNS = [(1805, 2, "DRS4"), (1806, 2, "PEDCALIB"), (1807, 3, "DATA"), (1808, 3, "DATA"), (1809, 2, "DATA")]


class Site:
    def __init__(self, root: Path, workflow: Path | None = None) -> None:
        self.root = root
        self.base = root / "site"
        self.base.mkdir(parents=True, exist_ok=True)
        self.workflow = workflow or REPO / "workflows" / "toy_nightly.yaml"

    def run_summary(self, runs: list[tuple[int, int, str]], night_dir: str = NIGHT_DIR) -> Path:
        path = self.base / "monitoring" / "RunSummary" / f"RunSummary_{night_dir}.ecsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [
            "# %ECSV 1.0",
            "# ---",
            "# delimiter: ','",
            "# schema: astropy-2.0",
            "run_id,n_subruns,run_type",
        ]
        lines += [f"{run},{subruns},{kind}" for run, subruns, kind in runs]
        path.write_text("\n".join(lines) + "\n")
        return path

    def raw(self, run: int, subruns: range, night_dir: str = NIGHT_DIR) -> None:
        """Sub-run files of a run, as the event builder would write them (a range: some may come later)."""
        directory = self.base / "R0" / night_dir
        scratch = self.root / "scratch"
        for path in make_inputs(scratch, [run], max(subruns) + 1, 20):
            subrun = int(path.name.split(".")[2])
            if subrun in subruns:
                directory.mkdir(parents=True, exist_ok=True)
                path.rename(directory / path.name)

    def env(self) -> dict[str, str]:
        return {**os.environ, "OSA_GRID_HOME": str(self.root / "home"), "OSA_GRID_BASE_DIR": str(self.base)}

    def nightly(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        command = [*OSA_GRID, "nightly", *args, "--date", NIGHT, "--workflow", str(self.workflow)]
        return subprocess.run(command, env=self.env(), capture_output=True, text=True, timeout=timeout)

    def start(self, *args: str) -> subprocess.Popen[str]:
        command = [*OSA_GRID, "nightly", "run", *args, "--date", NIGHT, "--workflow", str(self.workflow)]
        return subprocess.Popen(
            command, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def status(self) -> dict[str, object]:
        result = self.nightly("status", "--json")
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    def states(self) -> dict[int, str]:
        return {row["run_id"]: row["state"] for row in self.status()["sequences"]}  # type: ignore[index, union-attr]


def full_night(site: Site) -> None:
    site.run_summary(RUNS)
    for run, subruns, _kind in RUNS:
        site.raw(run, range(subruns))


def test_a_complete_night_is_processed_closed_and_shown(tmp_path: Path) -> None:
    site = Site(tmp_path)
    full_night(site)
    result = site.nightly("run", "--poll", "0.2")
    assert result.returncode == 0, result.stderr
    assert "is closed" in result.stdout
    status = site.status()
    assert status["closed"]
    rows = {row["run_id"]: row for row in status["sequences"]}  # type: ignore[union-attr, index]
    assert [(r["seq_id"], r["kind"], r["parent"]) for r in rows.values()] == [
        (0, "CALIBRATION", None),
        (1, "DATA", 0),
        (2, "DATA", 0),
        (3, "DATA", 0),
    ]
    assert all(r["state"] == "COMPLETED" for r in rows.values())
    assert rows[1807]["progress"] == {"CALIB%": 0.0, "DL1%": 100.0, "DL1RUN%": 100.0, "DL2%": 100.0}
    assert rows[1806]["progress"]["CALIB%"] == 100.0
    assert rows[1807]["quality"]["Events"] == 60 and 0 < rows[1807]["quality"]["GammaFrac"] < 1
    tree = site.base
    assert (tree / "DL1" / NIGHT_DIR / "v0.1" / "dl1_LST-1.Run01807.0002.csv").is_file()
    assert (tree / "DL1" / NIGHT_DIR / "v0.1" / "dl1_LST-1.Run01809.csv").is_file()
    assert (tree / "DL2" / NIGHT_DIR / "v0.1" / "dl2_LST-1.Run01808.csv").is_file()
    assert (tree / "calibration" / NIGHT_DIR / "v0.1" / "calibration_LST-1.Run01806.csv").is_file()
    assert (tree / "running_analysis" / NIGHT_DIR / "v0.1" / "NightFinished.txt").is_file()
    assert (tree / "web" / "datacheck" / NIGHT_DIR / "v0.1" / f"datacheck_{NIGHT_DIR}.csv").is_file()
    _night_provenance_is_complete(site, tree / "running_analysis" / NIGHT_DIR / "v0.1")
    page = (tree / "web" / "nightly" / f"{NIGHT_DIR}.html").read_text()
    assert page.count('data-state="COMPLETED"') == 4 and "(closed)" in page
    assert "<th>GammaFrac</th>" in page
    dom = rendered_dom(tree / "web" / "nightly" / f"{NIGHT_DIR}.html")
    assert dom.count("<tr data-run=") == 4 and 'data-state="COMPLETED"' in dom
    picture = screenshot(tree / "web" / "nightly" / f"{NIGHT_DIR}.html", tmp_path / "page.png")
    assert picture.stat().st_size > 5000
    again = site.nightly("run", "--poll", "0.2")
    assert again.returncode == 0 and "is closed" in again.stdout


def test_a_notification_that_cannot_be_sent_does_not_fail_the_night(tmp_path: Path) -> None:
    site = Site(tmp_path)
    full_night(site)
    command = [
        *OSA_GRID,
        "nightly",
        "run",
        "--poll",
        "0.2",
        "--date",
        NIGHT,
        "--workflow",
        str(site.workflow),
    ]
    # Nothing listens on port 1: the webhook is refused once the night is closed.
    env = {**site.env(), "OSA_GRID_NOTIFY": "http://osa:hook-pw@127.0.0.1:1/hooks/night"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "is closed" in result.stdout
    (warning,) = [line for line in result.stderr.splitlines() if "notify_failed" in line]
    assert "WARNING" in warning and "cannot call the webhook 127.0.0.1:1" in warning
    assert "hook-pw" not in result.stdout + result.stderr and "Traceback" not in result.stderr
    catalog = Catalog.open(f"sqlite:///{site.root / 'home' / 'catalog.sqlite'}")
    try:
        kinds = [
            e["kind"]
            for e in catalog.events()
            if e["production"] and e["kind"].startswith(("night", "notify"))
        ]
        failed = [e for e in catalog.events() if e["kind"] == "notify_failed"]
    finally:
        catalog.close()
    assert kinds == ["night_closed", "notify_failed"]
    assert "closed (complete)" in failed[0]["detail"]["subject"]
    assert "hook-pw" not in json.dumps(failed[0]["detail"])
    assert site.status()["closed"]


def _night_provenance_is_complete(site: Site, analysis_dir: Path) -> None:
    """The night's PROV-JSON holds every product, the task attempt that made it, and the raw files."""
    document = json.loads((analysis_dir / f"provenance_{NIGHT_DIR}.json").read_text())
    catalog = Catalog.open(f"sqlite:///{site.root / 'home' / 'catalog.sqlite'}")
    try:
        (name,) = catalog.production_names()
        made = {f.lfn for f in catalog.query(f"production = {name}")}
        done = [t for t in catalog.tasks(name) if t.state == TaskState.DONE]
    finally:
        catalog.close()
    files = {entity["osa:lfn"] for entity in document["entity"].values() if "osa:lfn" in entity}
    assert made <= files and any(lfn.startswith("R0/") or "/R0/" in lfn for lfn in files - made)
    assert len(document["wasGeneratedBy"]) == len(made)
    assert len(document["activity"]) >= len(done) > 0


def test_sub_runs_arriving_late_are_picked_up_on_the_next_pass(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.run_summary(RUNS)
    for run, subruns, _kind in RUNS:
        site.raw(run, range(min(subruns, 1)))
    first = site.nightly("run", "--once", "--poll", "0.2")
    assert first.returncode == 0, first.stderr
    assert "not closed yet" in first.stdout
    assert site.status()["closed"] is None
    for run, subruns, _kind in RUNS:
        site.raw(run, range(1, subruns))
    for _ in range(15):
        result = site.nightly("run", "--once", "--poll", "0.2")
        assert result.returncode == 0, result.stderr
        if "is closed" in result.stdout:
            break
    states = site.states()
    assert set(states.values()) == {"COMPLETED"}, states
    merged = (site.base / "DL1" / NIGHT_DIR / "v0.1" / "dl1_LST-1.Run01807.csv").read_text().splitlines()
    assert len(merged) == 1 + 3 * 20  # every sub-run, the late ones included


def broken_workflow(tmp_path: Path, step: str) -> Path:
    workflow = yaml.safe_load((REPO / "workflows" / "toy_nightly.yaml").read_text())
    for transformation in workflow["transformations"]:
        if transformation["name"] == step:
            argv = transformation["step"]["argv"]
            argv.insert(3, "--fail")
    path = tmp_path / f"broken_{step}.yaml"
    path.write_text(yaml.safe_dump(workflow, sort_keys=False))
    return path


def test_a_failing_calibration_lets_no_data_sequence_start(tmp_path: Path) -> None:
    site = Site(tmp_path, broken_workflow(tmp_path, "pedestal"))
    full_night(site)
    result = site.nightly("run", "--poll", "0.2")
    assert result.returncode == 0, result.stderr
    states = site.states()
    assert states[1806] == "VETOED"  # the same error twice: vetoed, not tried a third time
    assert {states[r] for r in (1807, 1808, 1809)} == {"VETOED"}
    assert not (site.base / "DL1").exists()
    page = (site.base / "web" / "nightly" / f"{NIGHT_DIR}.html").read_text()
    assert 'data-state="VETOED"' in page


def test_operators_retry_a_run_after_a_fix(tmp_path: Path) -> None:
    broken = Site(tmp_path, broken_workflow(tmp_path, "reconstruct"))
    full_night(broken)
    result = broken.nightly("run", "--once", "--poll", "0.2")
    for _ in range(10):
        if broken.states().get(1807) in ("VETOED", "FAILED"):
            break
        result = broken.nightly("run", "--once", "--poll", "0.2")
        assert result.returncode == 0, result.stderr
    assert broken.states()[1807] == "VETOED"
    fixed = Site(tmp_path)  # the same site, the repaired workflow
    retried = fixed.nightly("retry", "--run", "1807")
    assert retried.returncode == 0 and "ready again" in retried.stdout
    vetoed = fixed.nightly("veto", "--run", "1808")
    assert vetoed.returncode == 0, vetoed.stderr
    result = fixed.nightly("run", "--poll", "0.2")
    assert result.returncode == 0, result.stderr
    states = fixed.states()
    assert states[1807] == "COMPLETED" and states[1808] == "VETOED"
    unknown = fixed.nightly("retry", "--run", "4242")
    assert unknown.returncode == 2 and "run 4242 is not a sequence" in unknown.stderr


def test_a_shepherd_killed_mid_night_carries_on(tmp_path: Path) -> None:
    site = Site(tmp_path)
    full_night(site)
    shepherd = site.start("--poll", "0.2")
    time.sleep(2.5)
    os.kill(shepherd.pid, signal.SIGKILL)
    shepherd.wait()
    result = site.nightly("run", "--poll", "0.2")
    assert result.returncode == 0, result.stderr
    assert set(site.states().values()) == {"COMPLETED"}


def test_bad_nights(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.run_summary([(1805, 2, "DRS4")])
    empty = site.nightly("run")
    assert empty.returncode == 0 and "nothing to do" in empty.stdout
    site.run_summary([(1807, 2, "DATA")])
    uncalibrated = site.nightly("run")
    assert uncalibrated.returncode == 2
    assert "night 2026-11-21: 1 DATA run(s) but no DRS4 + PEDCALIB calibration" in uncalibrated.stderr
    summary = site.run_summary([(1807, 2, "DATA")])
    summary.write_text(summary.read_text().replace("1807,2,DATA", "1807,two,DATA"))
    malformed = site.nightly("run")
    assert malformed.returncode == 2 and "RunSummary_20261121.ecsv:6: n_subruns 'two'" in malformed.stderr
    missing = site.nightly("run", "--run-summary", str(tmp_path / "nope.ecsv"))
    assert missing.returncode == 2 and "no such run summary" in missing.stderr
    assert "Traceback" not in malformed.stderr + missing.stderr + uncalibrated.stderr


def test_empty_and_broken_run_summaries_and_run_catalogs(tmp_path: Path) -> None:
    site = Site(tmp_path)
    full_night(site)
    summary = site.base / "monitoring" / "RunSummary" / f"RunSummary_{NIGHT_DIR}.ecsv"
    good = summary.read_text()
    summary.write_text("")  # still being written: neither "nothing to do" nor a closed night
    empty = site.nightly("run", "--once", "--poll", "0.2")  # (a long-running shepherd waits for it)
    assert empty.returncode == 2, empty.stdout + empty.stderr
    assert f"{summary}: the run summary is empty (still being written, or broken)" in empty.stderr
    assert "nothing to do" not in empty.stdout and "Traceback" not in empty.stderr
    summary.write_text(good.split("1805,")[0])  # the header only: a night without runs yet
    header_only = site.nightly("run", "--once")
    assert header_only.returncode == 0, header_only.stderr
    assert f"the run summary {summary} has no runs yet, nothing to do" in " ".join(header_only.stdout.split())
    summary.write_text(good.replace("1809,2,DATA", "99999999999999999999,2,DATA"))
    huge = site.nightly("run", "--once", "--poll", "0.2")
    assert huge.returncode == 2
    assert f"{summary.name}:10: run_id '99999999999999999999' is not a whole number" in huge.stderr
    summary.write_text(good)
    catalog = site.base / "monitoring" / "RunCatalog" / f"RunCatalog_{NIGHT_DIR}.ecsv"
    catalog.parent.mkdir(parents=True)
    header = "# %ECSV 1.0\n# ---\n# delimiter: ','\nrun_id,source_name,source_ra,source_dec\n"
    catalog.write_text(header + "1807,Crab,83.6,22.0\n1808,Mrk 421,166.1,nan\n")
    bad_value = site.nightly("run", "--once", "--poll", "0.2")
    assert bad_value.returncode == 2 and f"{catalog.name}:6: source_ra and source_dec" in bad_value.stderr
    catalog.write_text(header + "1807,Crab,83.6,22.0\n1808,Mrk 421,166.1,38.2\n1807,Mrk 501,253.5,39.8\n")
    twice = site.nightly("run", "--once", "--poll", "0.2")
    assert twice.returncode == 2
    assert f"{catalog.name}:7: run 1807 is listed twice, differently (first at {catalog}:5)" in " ".join(
        twice.stderr.split()
    )
    assert "Traceback" not in huge.stderr + bad_value.stderr + twice.stderr
    catalog.unlink()
    assert site.status()["closed"] is None and not (site.base / "DL1").exists()  # nothing ran on bad input


def test_calibration_from_an_earlier_night_and_simulate(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.run_summary([(1801, 2, "DRS4"), (1802, 2, "PEDCALIB")], night_dir="20261119")
    site.raw(1801, range(2), night_dir="20261119")
    site.raw(1802, range(2), night_dir="20261119")
    site.run_summary([(1807, 2, "DATA")])
    site.raw(1807, range(2))
    simulated = site.nightly("run", "--simulate")
    assert simulated.returncode == 0, simulated.stderr
    assert "PEDCALIB run 1802 (night 2026-11-19)" in simulated.stdout
    assert "would launch 1 pedestal task(s)" in simulated.stdout
    assert not (tmp_path / "home").exists() or site.status()["sequences"]
    result = site.nightly("run", "--poll", "0.2")
    assert result.returncode == 0, result.stderr
    assert set(site.states().values()) == {"COMPLETED"}


def test_web_serves_the_nights_pages_live_and_read_only(tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    from .browser import run as chromium_run

    site = Site(tmp_path)
    full_night(site)
    catalog = site.base / "monitoring" / "RunCatalog" / f"RunCatalog_{NIGHT_DIR}.ecsv"
    catalog.parent.mkdir(parents=True)
    catalog.write_text(
        "# %ECSV 1.0\n# ---\n# delimiter: ','\n# schema: astropy-2.0\n"
        "run_id,source_name,source_ra,source_dec,wobble\n"
        "1807,Crab,83.6329,22.0145,W1\n1808,Mrk 421,166.1138,38.2088,W2\n"
    )
    result = site.nightly("run", "--poll", "0.2")
    assert result.returncode == 0, result.stderr
    (site.base / "web" / "secret.txt").write_text("published")
    command = [*OSA_GRID, "web", "--port", "0", "--refresh", "5", "--workflow", str(site.workflow)]
    server = subprocess.Popen(
        command, env=site.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None and server.stderr is not None
        line = server.stdout.readline()
        assert "serving the nightly pages on http://127.0.0.1:" in line, line + server.stderr.read()
        url = line.rsplit(" ", 1)[1].strip()

        def get(path: str, method: str = "GET") -> tuple[int, str]:
            request = urllib.request.Request(url + path.lstrip("/"), method=method)
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    return answer.status, answer.read().decode()
            except urllib.error.HTTPError as error:
                return error.code, error.read().decode()

        status, index = get("/")
        assert status == 200 and f'href="/nightly/{NIGHT}"' in index
        status, page = get(f"/nightly/{NIGHT}")
        assert status == 200 and '<meta http-equiv="refresh" content="5">' in page
        assert page.count('data-state="COMPLETED"') == 4 and "(closed)" in page
        assert "<td>Crab</td>" in page and "<td>Mrk 421</td>" in page
        assert get("/web/secret.txt") == (200, "published")
        assert get("/web/../monitoring/RunCatalog/" + catalog.name)[0] == 404
        assert get("/nightly/2026-11-20")[0] == 404  # no run summary for that night: a page saying so
        assert get(f"/nightly/{NIGHT}", method="POST")[0] == 405
        # Pages are made at each request, nothing regenerated: what the site knows now is shown.
        catalog.write_text(catalog.read_text() + "1809,Mrk 501,253.4676,39.7602,W1\n")
        status, page = get(f"/nightly/{NIGHT}")
        assert status == 200 and "<td>Mrk 501</td>" in page
        # And a real browser renders the served page (skipped without chromium, after the HTTP checks).
        dom = chromium_run("--dump-dom", f"{url}nightly/{NIGHT}")
        assert dom.returncode == 0, dom.stderr[-2000:]
        assert dom.stdout.count("<tr data-run=") == 4 and "<td>Mrk 501</td>" in dom.stdout
    finally:
        server.terminate()
        server.wait(timeout=30)


# ------------------------------------------------------------------ a night that changes (issue 18)


def _wait_for(condition: object, what: str, seconds: float = 240) -> None:
    """Poll ``condition`` (a callable) until true; the bound only keeps a broken run from hanging."""
    end = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < end, f"still waiting for {what}"
        time.sleep(0.5)


def _finish(shepherd: subprocess.Popen[str]) -> tuple[str, str]:
    stdout, stderr = shepherd.communicate(timeout=300)
    assert shepherd.returncode == 0, stdout + stderr
    return stdout, stderr


def _events(site: Site) -> list[dict[str, object]]:
    catalog = Catalog.open(f"sqlite:///{site.root / 'home' / 'catalog.sqlite'}")
    try:
        return catalog.events()
    finally:
        catalog.close()


def test_a_run_appended_to_the_summary_mid_night_is_processed_before_the_close(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.run_summary(RUNS[:-1])  # run 1809 is not taken yet
    for run, subruns, _kind in RUNS[:-1]:
        site.raw(run, range(subruns if run != 1808 else 2))  # 1808's last sub-run still being written
    assert site.status()["closed"] is None  # (the catalog made before two processes share it)
    shepherd = site.start("--poll", "0.2")
    try:
        _wait_for(lambda: site.states().get(1807) == "COMPLETED", "run 1807")
        # Run 1809 is appended and run 1808 grows to 4 sub-runs (the summary rewritten, as lstchain does).
        site.run_summary([(r, 4 if r == 1808 else n, kind) for r, n, kind in RUNS])
        # (Once the shepherd has read it: sub-run 2 registered before would complete 1808 at 3 sub-runs.)
        _wait_for(lambda: any(e["kind"] == "run_grown" for e in _events(site)), "the summary read again")
        site.raw(1809, range(2))
        site.raw(1808, range(2, 4))
        stdout, _ = _finish(shepherd)
    finally:
        shepherd.kill()
    assert "is closed" in stdout
    states = site.states()
    assert states == dict.fromkeys((1806, 1807, 1808, 1809), "COMPLETED"), states
    assert (site.base / "DL2" / NIGHT_DIR / "v0.1" / "dl2_LST-1.Run01809.csv").is_file()
    added = [e for e in _events(site) if e["kind"] == "run_added"]
    assert {e["detail"]["run_id"] for e in added} >= {1809}  # type: ignore[index]
    grown = [e["detail"] for e in _events(site) if e["kind"] == "run_grown"]
    assert grown == [{"run_id": 1808, "detail": "run 1808: n_subruns 3 -> 4"}]
    merged = (site.base / "DL1" / NIGHT_DIR / "v0.1" / "dl1_LST-1.Run01808.csv").read_text().splitlines()
    assert len(merged) == 1 + 4 * 20  # every sub-run, the one the summary added included
    finished = (site.base / "running_analysis" / NIGHT_DIR / "v0.1" / "NightFinished.txt").read_text()
    assert "run 1809: COMPLETED" in finished


def test_no_run_summary_yet_the_night_waits_and_is_never_closed(tmp_path: Path) -> None:
    site = Site(tmp_path)
    summary = site.base / "monitoring" / "RunSummary" / f"RunSummary_{NIGHT_DIR}.ecsv"
    once = site.nightly("run", "--once", "--poll", "0.2")
    assert once.returncode == 0, once.stderr
    assert site.status()["closed"] is None
    shepherd = site.start("--poll", "0.2")
    try:
        assert shepherd.stdout is not None
        first = shepherd.stdout.readline()  # printed before the shepherd's first pass
        assert f"no run summary yet ({summary}); waiting" in first, first
        summary.parent.mkdir(parents=True)
        summary.write_text("")  # being written: waited for, not refused
        full_night(site)
        stdout, stderr = _finish(shepherd)
    finally:
        shepherd.kill()
    assert "is closed" in stdout, stdout + stderr
    assert set(site.states().values()) == {"COMPLETED"}
    said = " ".join(once.stdout.split())
    assert f"no run summary yet ({summary}); nothing to do yet, the night stays open" in said


def test_an_empty_run_summary_is_waited_for_by_a_long_running_shepherd(tmp_path: Path) -> None:
    site = Site(tmp_path)
    summary = site.run_summary([])
    summary.write_text("  \n")
    shepherd = site.start("--poll", "0.2")
    try:
        assert shepherd.stdout is not None
        first = shepherd.stdout.readline()
        assert "the run summary is empty (still being written, or broken); waiting" in first, first
        full_night(site)
        stdout, stderr = _finish(shepherd)
    finally:
        shepherd.kill()
    assert "is closed" in stdout, stdout + stderr
    assert set(site.states().values()) == {"COMPLETED"}


def test_a_veto_covers_the_sub_runs_that_arrive_after_it(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.run_summary(RUNS)
    for run, subruns, _kind in RUNS:
        site.raw(run, range(subruns if run != 1808 else 1))
    first = site.nightly("run", "--once", "--poll", "0.2")
    assert first.returncode == 0, first.stderr
    vetoed = site.nightly("veto", "--run", "1808")
    assert vetoed.returncode == 0, vetoed.stderr
    site.raw(1808, range(1, 3))  # the run's next sub-runs arrive after the veto
    result = site.nightly("run", "--poll", "0.2")
    assert result.returncode == 0, result.stderr
    assert "is closed" in result.stdout
    dl1 = site.base / "DL1" / NIGHT_DIR / "v0.1"
    assert not (dl1 / "dl1_LST-1.Run01808.0001.csv").exists()
    assert not (dl1 / "dl1_LST-1.Run01808.0002.csv").exists()
    assert not (dl1 / "dl1_LST-1.Run01808.csv").exists()
    states = site.states()
    assert states[1808] == "VETOED" and states[1807] == states[1809] == "COMPLETED", states
    finished = (site.base / "running_analysis" / NIGHT_DIR / "v0.1" / "NightFinished.txt").read_text()
    assert "run 1808: VETOED" in finished
    assert "run 1808 vetoed" in vetoed.stdout and "later ones as they appear" in vetoed.stdout


def test_a_run_missing_sub_runs_is_waiting_then_incomplete_after_a_hand_close(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.run_summary(RUNS)
    for run, subruns, _kind in RUNS:
        site.raw(run, range(subruns if run != 1808 else 2))  # sub-run 2 of 1808 never comes
    for _ in range(10):
        result = site.nightly("run", "--once", "--poll", "0.2")
        assert result.returncode == 0, result.stderr
        if site.states()[1807] == "COMPLETED":
            break
    rows = {row["run_id"]: row for row in site.status()["sequences"]}  # type: ignore[union-attr, index]
    assert rows[1808]["state"] == "WAITING", rows[1808]
    assert rows[1808]["detail"] == "sub-run(s) 2: no raw file"
    closed = site.nightly("close")
    assert closed.returncode == 0, closed.stderr
    status = site.status()
    assert status["closed"]
    rows = {row["run_id"]: row for row in status["sequences"]}  # type: ignore[union-attr, index]
    assert rows[1808]["state"] == "INCOMPLETE" and rows[1808]["detail"] == "sub-run(s) 2: no raw file"
    assert rows[1807]["state"] == "COMPLETED"
    finished = (site.base / "running_analysis" / NIGHT_DIR / "v0.1" / "NightFinished.txt").read_text()
    assert "run 1808: INCOMPLETE (sub-run(s) 2: no raw file)" in finished
    assert "run 1807: COMPLETED" in finished
    page = (site.base / "web" / "nightly" / f"{NIGHT_DIR}.html").read_text()
    assert 'data-run="1808" data-state="INCOMPLETE"' in page
    table = site.nightly("status")
    assert "INCOMPLETE" in table.stdout and "no raw file" in table.stdout


def test_a_marker_closing_rule_keeps_the_night_open_for_runs_added_between_passes(tmp_path: Path) -> None:
    workflow = yaml.safe_load((REPO / "workflows" / "toy_nightly.yaml").read_text())
    workflow["close"] = {"summary_final": "marker"}
    path = tmp_path / "marker_nightly.yaml"
    path.write_text(yaml.safe_dump(workflow, sort_keys=False))
    site = Site(tmp_path, path)
    site.run_summary(RUNS[:-1])
    for run, subruns, _kind in RUNS[:-1]:
        site.raw(run, range(subruns))

    def passes_until(condition: object) -> str:
        for _ in range(12):
            result = site.nightly("run", "--once", "--poll", "0.2")
            assert result.returncode == 0, result.stderr
            if condition():  # type: ignore[operator]
                return result.stdout
        raise AssertionError(f"not reached: {site.states()}")

    stdout = passes_until(lambda: set(site.states().values()) == {"COMPLETED"})
    marker = site.base / "monitoring" / "RunSummary" / f"RunSummary_{NIGHT_DIR}.final"
    assert f"final when {marker} exists" in " ".join(stdout.split())
    assert site.status()["closed"] is None  # everything listed is done, but the summary is not final
    # Between two passes run 1809 is appended and run 1808 disappears from the summary (rewritten).
    site.run_summary([run for run in RUNS if run[0] != 1808])
    site.raw(1809, range(2))
    dropped = site.nightly("run", "--once", "--poll", "0.2")
    assert dropped.returncode == 0, dropped.stderr
    assert "run_dropped" in dropped.stderr and "DATA run 1808: no longer listed; kept" in dropped.stderr
    marker.touch()
    passes_until(lambda: site.status()["closed"])
    states = site.states()
    assert states[1809] == "COMPLETED" and states[1808] == "COMPLETED", states
    told = [e for e in _events(site) if e["kind"] == "run_dropped"]
    assert len(told) == 1 and told[0]["detail"]["run_id"] == 1808  # type: ignore[index]


def corrupt_workflow(tmp_path: Path) -> Path:
    """The toy night whose reconstruction fails as a real step does: a reason on stderr, exit code 1."""
    workflow = yaml.safe_load((REPO / "workflows" / "toy_nightly.yaml").read_text())
    for transformation in workflow["transformations"]:
        if transformation["name"] == "reconstruct":
            # sys.exit(text) writes the text to stderr and exits 1; the token must not reach a message.
            code = "import sys; print('reading'); sys.exit('token=abc123 calibration file is corrupt')"
            transformation["step"]["argv"] = ["{python}", "-c", code, "{input}"]
    path = tmp_path / "corrupt_nightly.yaml"
    path.write_text(yaml.safe_dump(workflow, sort_keys=False))
    return path


def test_a_failure_says_the_tail_of_its_stderr_and_where_its_log_is(tmp_path: Path) -> None:
    site = Site(tmp_path, corrupt_workflow(tmp_path))
    full_night(site)
    result = site.nightly("run", "--poll", "0.2")
    assert result.returncode == 0, result.stderr
    assert "night_closed" in result.stderr  # a notice at the default log level
    rows = {row["run_id"]: row for row in site.status()["sequences"]}  # type: ignore[union-attr, index]
    detail = rows[1807]["detail"]
    assert rows[1807]["state"] == "VETOED"
    assert "calibration file is corrupt" in detail and "stderr.log" in detail, detail
    assert "abc123" not in detail and "token=***" in detail
    table = site.nightly("status")
    assert "calibration file is corrupt" in " ".join(table.stdout.split())
    production = subprocess.run(
        [*OSA_GRID, "production", "status", f"toy-nightly-{NIGHT_DIR}", "--json"],
        env=site.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert production.returncode == 0, production.stderr
    failed = json.loads(production.stdout)["failed"]
    assert failed and all("calibration file is corrupt" in f["error"] for f in failed)
    log = Path(failed[0]["error"].rsplit("log: ", 1)[1])
    assert log.name == "stderr.log" and "calibration file is corrupt" in log.read_text()
    assert "exit code 1): exit code 1" not in failed[0]["error"]


def test_a_closed_night_is_repaired_reopened_and_closed_again(tmp_path: Path) -> None:
    broken = Site(tmp_path, corrupt_workflow(tmp_path))
    full_night(broken)
    assert broken.nightly("run", "--poll", "0.2").returncode == 0
    analysis = broken.base / "running_analysis" / NIGHT_DIR / "v0.1"
    finished = analysis / "NightFinished.txt"
    assert broken.status()["closed"] and "run 1807: VETOED" in finished.read_text()
    provenance = analysis / f"provenance_{NIGHT_DIR}.json"
    assert "dl2_LST-1.Run01807.csv" not in provenance.read_text()

    fixed = Site(tmp_path)  # the same site, the repaired workflow
    retried = fixed.nightly("retry")
    assert retried.returncode == 0, retried.stderr
    assert "reopened" in retried.stdout and "ready again" in retried.stdout
    assert fixed.status()["closed"] is None and not finished.exists()
    result = fixed.nightly("run", "--poll", "0.2")
    assert result.returncode == 0 and "is closed" in result.stdout, result.stdout + result.stderr
    assert set(fixed.states().values()) == {"COMPLETED"}
    assert "run 1807: COMPLETED" in finished.read_text()
    assert (fixed.base / "DL2" / NIGHT_DIR / "v0.1" / "dl2_LST-1.Run01807.csv").is_file()
    assert "dl2_LST-1.Run01807.csv" in provenance.read_text()
    _night_provenance_is_complete(fixed, analysis)
    page = (fixed.base / "web" / "nightly" / f"{NIGHT_DIR}.html").read_text()
    assert "(closed)" in page and page.count('data-state="COMPLETED"') == 4
    assert "night_reopened" in page and "nightly retry of the night" in page

    reopened = fixed.nightly("reopen", "--reason", "new calibration constants")
    assert reopened.returncode == 0 and "reopened" in reopened.stdout, reopened.stderr
    assert fixed.status()["closed"] is None and not finished.exists()
    assert "night_reopened" in reopened.stderr  # a notice at the default log level
    again = fixed.nightly("reopen")
    assert again.returncode == 0 and "not closed" in again.stdout
    result = fixed.nightly("run", "--poll", "0.2")
    assert result.returncode == 0 and "is closed" in result.stdout, result.stdout + result.stderr
    assert finished.is_file() and fixed.status()["closed"]
    events = [e for e in _events(fixed) if e["kind"] in ("night_closed", "night_reopened")]
    assert [e["kind"] for e in events] == ["night_closed", "night_reopened"] * 2 + ["night_closed"]
    why = events[3]["detail"]
    assert why["reason"] == "new calibration constants" and why["by"]  # type: ignore[index]
    page = (fixed.base / "web" / "nightly" / f"{NIGHT_DIR}.html").read_text()
    assert "new calibration constants" in page
