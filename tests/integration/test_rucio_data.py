"""The Rucio data manager against a real Rucio server: raw data on tape, resolve, staging, release."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

from osa_grid.data.checksums import adler32
from osa_grid.data.rucio import RawFile, RucioStore, transfer
from osa_grid.errors import DataServiceError, OutputClash
from osa_grid.ports import NewFile, StageState
from osa_grid.steps.toy import make_inputs
from tests.integration.rucio_server import daemon, ensure_server, token

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rucio_config() -> Path:
    return ensure_server()


def make_store(rucio_config: Path, products: Path) -> RucioStore:
    return RucioStore(products, "lst", "LST_TAPE", "LST_CACHE", "LST_DL3", ["DL3"], config=rucio_config)


def raw_files(root: Path, tag: str, run: int, subruns: int) -> list[RawFile]:
    paths = make_inputs(root, [run], subruns, 20)
    return [
        RawFile(
            path,
            f"{tag}/R0/20240115/{path.name}",
            {
                "data_level": "R0",
                "night": "2024-01-15",
                "run_id": run,
                "subrun_id": index,
                "n_subruns": subruns,
                "run_type": "DATA",
                "test_tag": tag,
            },
        )
        for index, path in enumerate(paths)
    ]


def test_register_resolve_stage_transfer_release(rucio_config: Path, tmp_path: Path) -> None:
    tag = token()
    store = make_store(rucio_config, tmp_path / "products")
    files = raw_files(tmp_path / "raw", tag, 1807, 4)
    assert store.register_raw(files, "LST_TAPE", lambda f: f"{tag}_R0_20240115_Run01807") == 4
    assert store.register_raw(files, "LST_TAPE", lambda f: f"{tag}_R0_20240115_Run01807") == 0

    found = store.resolve(f"test_tag = {tag} and data_level = R0 and subrun_id >= 1")
    assert [f.lfn for f in found] == sorted(f.lfn for f in files[1:])
    first = found[0]
    assert first.checksum == adler32(files[1].path)
    assert first.metadata["run_id"] == 1807 and first.metadata["night"] == "2024-01-15"
    assert [(r.store, r.state) for r in first.replicas] == [("LST_TAPE", "available")]
    assert not store.online(first.replicas[0])  # on tape: a job cannot read it

    # The official command line finds them by the CTAO keys.
    listed = subprocess.run(
        [
            str(Path(sys.executable).parent / "rucio"),
            "did",
            "list",
            "--short",
            "--filter",
            f"osa__test_tag={tag},instance__obs_id=1807",
            "lst:*",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "RUCIO_CONFIG": str(rucio_config)},
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert sorted(line.strip() for line in listed.stdout.split() if tag in line) == sorted(
        f"lst:{f.lfn}" for f in files
    )

    wanted = [f.lfn for f in found[:2]]
    rules = store.stage(wanted, lifetime=3600)
    assert set(rules) == set(wanted)
    assert store.stage(wanted, lifetime=3600) == rules  # asked again (a restart): the same rules
    assert {s.state for s in store.stage_status(rules).values()} == {StageState.REQUESTED}

    assert transfer(store, "LST_CACHE") >= 2
    statuses = store.stage_status(rules)
    assert {s.state for s in statuses.values()} == {StageState.ONLINE}
    for lfn, status in statuses.items():
        assert status.replica is not None and status.replica.store == "LST_CACHE"
        path = store.locate(lfn, [status.replica])
        source = next(f.path for f in files if f.lfn == lfn)
        assert path.read_bytes() == source.read_bytes()

    store.release(list(rules.values()))
    daemon("judge-cleaner")
    client = store.client()
    from rucio.common.exception import RuleNotFound

    for rule_id in rules.values():
        with pytest.raises(RuleNotFound):
            client.get_replication_rule(rule_id)


def test_server_down_and_bad_credentials_are_clear(rucio_config: Path, tmp_path: Path) -> None:
    down = RucioStore(
        tmp_path,
        "lst",
        "LST_TAPE",
        "LST_CACHE",
        "LST_DL3",
        ["DL3"],
        config=rucio_config,
        url="http://127.0.0.1:9",
    )
    with pytest.raises(DataServiceError, match=r"127\.0\.0\.1:9 .*unreachable"):
        down.resolve("data_level = R0")
    wrong = tmp_path / "wrong.cfg"
    # Another account name: the client would otherwise reuse root's cached token whatever the password.
    wrong.write_text(
        rucio_config.read_text()
        .replace("password = ", "password = wrong")
        .replace("account = root", "account = nobody")
    )
    with pytest.raises(DataServiceError, match="refused our credentials"):
        make_store(wrong, tmp_path).resolve("data_level = R0")


def test_query_where_rucio_gives_the_catalogs_answer(
    rucio_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.integration.toyworld import ToyWorld

    tag = token()
    store = make_store(rucio_config, tmp_path / "products")
    files = [*raw_files(tmp_path / "a", tag, 1807, 3), *raw_files(tmp_path / "b", tag, 1808, 3)]
    store.register_raw(files, "LST_TAPE", lambda f: f"{tag}_R0_Run{f.metadata['run_id']:05d}")
    monkeypatch.setenv("OSA_GRID_DATA_MANAGER", "rucio")
    monkeypatch.setenv("OSA_GRID_RUCIO_CONFIG", str(rucio_config))
    world = ToyWorld(tmp_path / "world")
    world.root.mkdir()
    assert world.osa_grid("site", "import", f"test_tag = {tag}").returncode == 0

    queries = [
        f"test_tag = {tag} and run_id = 1808",
        f"test_tag = {tag} and (run_id = 1807 and subrun_id >= 1 or subrun_id = 0)",
        f"test_tag = {tag} and subrun_id in (0, 2)",
        f"test_tag = {tag} and run_id in 1807..1807 and subrun_id != 1",
    ]
    for text in queries:
        answers = [
            world.osa_grid("query", text, "--format", "lfn", *where) for where in ([], ["--where", "rucio"])
        ]
        assert all(a.returncode == 0 for a in answers), [a.stderr for a in answers]
        catalog, rucio = (sorted(a.stdout.split()) for a in answers)
        assert catalog == rucio and catalog, text
    counted = world.osa_grid("query", f"test_tag = {tag}", "--count", "--where", "rucio")
    assert counted.stdout.strip() == "6"

    # What list_dids cannot express is refused, naming the part.
    for text, part in [
        (f"test_tag = {tag} and not run_id = 1807", "not run_id = 1807"),
        (f"test_tag = {tag} and exists subrun_id", "exists subrun_id"),
        (f"test_tag ~ '{tag}*'", "test_tag ~"),
    ]:
        refused = world.osa_grid("query", text, "--where", "rucio")
        assert refused.returncode == 2 and part in refused.stderr, refused.stderr
        assert "cannot express" in refused.stderr and "Traceback" not in refused.stderr


def test_a_published_product_is_never_replaced_by_other_bytes(rucio_config: Path, tmp_path: Path) -> None:
    tag = token()
    lfn = f"{tag}/DL3/dl3_LST-1.Run01807.fits"
    metadata = {"data_level": "DL3", "run_id": 1807, "test_tag": tag}

    def publish(products: Path, content: bytes) -> list[NewFile]:
        store = make_store(rucio_config, products)
        made = tmp_path / "work" / products.name / "dl3.fits"
        made.parent.mkdir(parents=True)
        made.write_bytes(content)
        checksum = adler32(made)
        replica = store.store(made, lfn)
        return store.register([NewFile(lfn, len(content), checksum, metadata, (replica,))], f"{tag}_dl3")

    first = publish(tmp_path / "first", b"the first product")
    published = next(r for r in first[0].replicas if r.store == "LST_DL3")
    # The same bytes again (an attempt that died before it was recorded): accepted, nothing copied again.
    assert publish(tmp_path / "again", b"the first product")[0].checksum == first[0].checksum
    with pytest.raises(OutputClash, match=rf"{lfn} is in Rucio scope lst already with adler32"):
        publish(tmp_path / "other", b"another product, other bytes")
    assert Path(urlparse(published.pfn).path).read_bytes() == b"the first product"
    (found,) = make_store(rucio_config, tmp_path / "first").describe([lfn])
    assert found.checksum == first[0].checksum
