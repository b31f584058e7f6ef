"""A toy world for end-to-end tests: raw files, a chained production, and a workspace to run it in."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from osa_grid.catalog.store import Catalog
from osa_grid.services.files import register_paths
from osa_grid.steps.toy import make_inputs

OSA_GRID = [sys.executable, "-m", "osa_grid.cli.app"]


def toy_production(
    name: str = "toy",
    record: Path | None = None,
    sleep: float = 0.0,
    fail: str | None = None,
    retries: int = 2,
    calibration: bool = False,
) -> dict[str, object]:
    """The four-step toy chain, with test knobs: record executions, slow steps down, make one step fail.

    With ``calibration``, a pedestal step on the PEDCALIB run comes first and calibrate needs its product.
    """

    def argv(command: str, *rest: str) -> list[str]:
        knobs = ["--sleep", str(sleep)] if sleep else []
        if record is not None:
            knobs += ["--record", str(record)]
        if fail == command:
            knobs.append("--fail")
        return ["{python}", "-m", "osa_grid.steps.toy", *knobs, command, *rest]

    def transformation(
        tname: str,
        query: str,
        parents: list[str],
        args: list[str],
        needs: dict[str, str] | None = None,
        **extra: object,
    ) -> dict[str, object]:
        return {
            "name": tname,
            "input": {"query": query, "from": parents, "needs": needs or {}},
            "step": {"argv": args, "resources": {"cores": 1, "memory_gb": 0.1, "walltime": "2m"}},
            "retry": {"max_attempts": retries},
            **extra,
        }

    pedestal = transformation(
        "pedestal",
        "data_level = R0 and run_type = PEDCALIB",
        [],
        argv("pedestal", "{output.calibration}", "{inputs}"),
        grouping={"mode": "by_run", "keys": ["run_id"], "size_key": "n_subruns"},
        outputs=[
            {
                "name": "calibration",
                "file_name": "calibration_Run{run_id:05d}.csv",
                "metadata": {"data_level": "CALIB"},
                "inherit": ["run_id"],
            }
        ],
    )
    calibrate_args = ["{input}", "{output.dl1}"]
    if calibration:
        calibrate_args += ["--calibration", "{needs.calibration}"]
    return {
        "name": name,
        "transformations": [
            *([pedestal] if calibration else []),
            transformation(
                "calibrate",
                "data_level = R0 and run_type = DATA",
                [],
                argv("calibrate", *calibrate_args),
                needs={"calibration": "data_level = CALIB"} if calibration else None,
                outputs=[
                    {
                        "name": "dl1",
                        "file_name": "dl1_Run{run_id:05d}.{subrun_id:04d}.csv",
                        "metadata": {"data_level": "DL1"},
                    }
                ],
            ),
            transformation(
                "merge",
                "data_level = DL1",
                ["calibrate"],
                argv("merge", "{output.run}", "{inputs}"),
                grouping={"mode": "by_run", "keys": ["run_id"], "size_key": "n_subruns"},
                outputs=[
                    {
                        "name": "run",
                        "file_name": "dl1_Run{run_id:05d}.csv",
                        "metadata": {"data_level": "DL1_RUN"},
                    }
                ],
            ),
            transformation(
                "reconstruct",
                "data_level = DL1_RUN",
                ["merge"],
                argv("reconstruct", "{input}", "{output.dl2}"),
                outputs=[
                    {"name": "dl2", "file_name": "dl2_Run{run_id:05d}.csv", "metadata": {"data_level": "DL2"}}
                ],
            ),
            transformation(
                "summarize",
                "data_level = DL2",
                ["reconstruct"],
                argv("summarize", "{output.summary}", "{inputs}"),
                grouping={"mode": "all"},
                outputs=[{"name": "summary", "file_name": "summary.csv", "metadata": {"data_level": "DL3"}}],
            ),
        ],
    }


@dataclass
class ToyWorld:
    root: Path
    database_url: str | None = None  # default: SQLite under home

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def catalog_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'catalog.sqlite'}"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "OSA_GRID_HOME": str(self.home),
            "OSA_GRID_CATALOG_URL": self.catalog_url,
            "OSA_GRID_POLL_INTERVAL": "0.2",
        }

    def write_production(self, production: dict[str, object], file_name: str = "production.yaml") -> Path:
        path = self.root / file_name
        path.write_text(yaml.safe_dump(production, sort_keys=False))
        return path

    def add_raw(self, runs: list[int], subruns: int, events: int = 30, run_type: str = "DATA") -> list[str]:
        paths = make_inputs(self.root / "raw", runs, subruns, events)
        catalog = Catalog.open(self.catalog_url)
        try:
            return register_paths(
                catalog,
                paths,
                {"data_level": "R0", "n_subruns": subruns, "run_type": run_type},
                name_pattern="LST-1.Run{run_id:d}.{subrun_id:d}.r0.csv",
                lfn_prefix="raw",
            )
        finally:
            catalog.close()

    def osa_grid(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*OSA_GRID, *args], env=self.env(), cwd=self.root, capture_output=True, text=True, timeout=timeout
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*OSA_GRID, *args],
            env=self.env(),
            cwd=self.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def catalog(self) -> Catalog:
        return Catalog.open(self.catalog_url)
