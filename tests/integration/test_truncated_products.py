"""A step that writes a truncated product (issue 10): the task fails with a clear reason, nothing is stored.

The step writes a real HDF5, FITS or JSON file with h5py / astropy / json, then cuts it in half (a payload
killed while writing, a full disk the payload did not notice). Each product is checked by its reader
(``verify:``) before it is registered; an empty file is refused before that, whatever its kind.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from osa_grid.catalog.store import Catalog

from .toyworld import ToyWorld

pytestmark = pytest.mark.integration

WRITE_AND_CUT = """
import json, os, sys
kind, target, cut = sys.argv[1], sys.argv[2], sys.argv[3] == "cut"
if kind == "hdf5":
    import h5py, numpy
    with h5py.File(target, "w") as handle:
        handle["events"] = numpy.arange(50000.0)
elif kind == "fits":
    import numpy
    from astropy.table import Table
    Table(dict(energy=numpy.arange(5000.0), id=numpy.arange(5000))).write(target)
elif kind == "json":
    with open(target, "w") as handle:
        json.dump(dict(events=list(range(2000))), handle)
else:
    open(target, "w").close()
if cut:
    os.truncate(target, os.path.getsize(target) // 2)
"""
KINDS = {"hdf5": "h5", "fits": "fits", "json": "json", "empty": "json"}


def production(cut: bool) -> dict[str, object]:
    def transformation(kind: str) -> dict[str, object]:
        output: dict[str, object] = {
            "name": "product",
            "file_name": f"{kind}_Run{{run_id:05d}}.{KINDS[kind]}",
            "metadata": {"data_level": kind.upper()},
        }
        if kind != "empty":
            output["verify"] = kind
        return {
            "name": f"write_{kind}",
            "input": {"query": "data_level = R0"},
            "step": {
                "argv": [
                    "{python}",
                    "-c",
                    WRITE_AND_CUT,
                    kind,
                    "{output.product}",
                    "cut" if cut else "whole",
                ],
                "resources": {"cores": 1, "memory_gb": 0.5, "walltime": "2m"},
            },
            "outputs": [output],
            "retry": {"max_attempts": 2},
        }

    return {"name": "cut" if cut else "whole", "transformations": [transformation(k) for k in KINDS]}


def test_truncated_or_empty_products_fail_their_task_and_register_nothing(tmp_path: Path) -> None:
    world = ToyWorld(tmp_path)
    world.add_raw([1807], 1)
    cut = world.osa_grid(
        "production", "run", str(world.write_production(production(True), "cut.yaml")), "--no-live"
    )
    assert cut.returncode == 1, cut.stderr  # the production ended with failed tasks
    catalog = Catalog.open(world.catalog_url)
    try:
        tasks = {t.transformation: t for t in catalog.tasks("cut")}
        registered = [f.lfn for f in catalog.query("production = cut")]
    finally:
        catalog.close()
    assert {name: t.state.value for name, t in tasks.items()} == {f"write_{k}": "failed" for k in KINDS}
    reasons = {name: t.error or "" for name, t in tasks.items()}
    for kind in ("hdf5", "fits", "json"):
        assert reasons[f"write_{kind}"].startswith("output"), reasons
        assert f"is not a valid {kind} file" in reasons[f"write_{kind}"], reasons
    assert "_Run01807.json is empty" in reasons["write_empty"]
    assert "truncated" in reasons["write_fits"] and "truncated" in reasons["write_hdf5"]
    assert all(t.attempt == 2 for t in tasks.values())  # retried, then failed for good
    assert registered == []
    assert not (world.home / "data" / "cut").exists() or not any((world.home / "data" / "cut").rglob("*.*"))
    shown = world.osa_grid("production", "status", "cut", "--json")
    assert shown.returncode == 0, shown.stderr
    assert len(json.loads(shown.stdout)["failed"]) == len(KINDS)

    # The same steps without the cut: the reader accepts what they write (the check is not a blanket refusal).
    whole = world.write_production(production(False), "whole.yaml")
    result = world.osa_grid("production", "run", str(whole), "--no-live")
    assert result.returncode == 1, result.stderr  # write_empty still fails
    catalog = Catalog.open(world.catalog_url)
    try:
        states = {t.transformation: t.state.value for t in catalog.tasks("whole")}
    finally:
        catalog.close()
    assert states == {
        "write_hdf5": "done",
        "write_fits": "done",
        "write_json": "done",
        "write_empty": "failed",
    }
