"""Where products go: LFNs claimed in the catalog before a byte is stored, and a store that never replaces a
file, never follows a link out of its root, and reports every filesystem error as a StorageError."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from osa_grid.catalog import schema
from osa_grid.catalog.store import Catalog, Completion, Failure
from osa_grid.core.models import Production
from osa_grid.core.states import TaskState
from osa_grid.data.local import LocalStore
from osa_grid.errors import OutputClash, StorageError
from tests.helpers import make_file, provenance_record
from tests.unit.test_catalog import outputs_of, submit
from tests.unit.test_catalog import production as production  # the fixtures
from tests.unit.test_catalog import ready_tasks as ready_tasks


# ---------------------------------------------------------------------------------------------- claims
def test_a_claim_is_refused_for_an_lfn_another_task_registered(
    catalog: Catalog, production: Production, ready_tasks: list[str]
) -> None:
    first, second, _ = ready_tasks
    submit(catalog, first)
    outputs = outputs_of(catalog, production, first)
    assert catalog.claim_lfns({first: [f.lfn for f in outputs]})[first].clashes == {}
    catalog.complete(Completion(first, outputs, provenance_record()))

    claim = catalog.claim_lfns({second: [outputs[0].lfn]})[second]
    assert claim.clashes == {
        outputs[0].lfn: f"registered already, made by task {first} (test-chain/calibrate)"
    }


def test_a_claim_is_refused_while_another_running_task_holds_the_lfn(
    catalog: Catalog, ready_tasks: list[str]
) -> None:
    first, second, third = ready_tasks
    for task in ready_tasks:
        submit(catalog, task)
    claims = catalog.claim_lfns({first: ["p/same.h5"], second: ["p/same.h5", "p/other.h5"]})
    assert claims[first].clashes == {} and claims[first].reclaimed == frozenset()
    # The later task of the same call clashes with the earlier, and gets none of its LFNs.
    assert claims[second].clashes == {
        "p/same.h5": f"claimed by task {first} (test-chain/calibrate), which is storing it"
    }
    assert catalog.claim_lfns({third: ["p/other.h5"]})[third].clashes == {}


def test_a_task_gets_its_own_claim_again_and_takes_over_one_of_a_task_that_gave_up(
    catalog: Catalog, ready_tasks: list[str]
) -> None:
    first, second, _ = ready_tasks
    submit(catalog, first)
    submit(catalog, second)
    assert catalog.claim_lfns({first: ["p/a.h5"]})[first].clashes == {}
    # An earlier attempt of the same task (a shepherd that died after storing): its leftover may be replaced.
    assert catalog.claim_lfns({first: ["p/a.h5"]})[first].reclaimed == {"p/a.h5"}
    catalog.fail(Failure(first, TaskState.VETOED, 1, "gave up", None, None))
    claim = catalog.claim_lfns({second: ["p/a.h5"]})[second]
    assert claim.clashes == {} and claim.reclaimed == {"p/a.h5"}


def test_two_outputs_of_one_task_with_one_lfn_clash(catalog: Catalog, ready_tasks: list[str]) -> None:
    first = ready_tasks[0]
    submit(catalog, first)
    claim = catalog.claim_lfns({first: ["p/a.h5", "p/a.h5"]})[first]
    assert claim.clashes == {"p/a.h5": f"also the LFN of another output of task {first}"}


def test_registration_ends_the_claim_and_a_file_registered_outside_a_task_is_named(
    catalog: Catalog, production: Production, ready_tasks: list[str]
) -> None:
    first, second, _ = ready_tasks
    submit(catalog, first)
    submit(catalog, second)
    outputs = outputs_of(catalog, production, first)
    catalog.claim_lfns({first: [f.lfn for f in outputs]})
    catalog.complete(Completion(first, outputs, provenance_record()))
    with catalog.engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(schema.lfn_claims)) == 0
    catalog.register_files([make_file("site/drive.log")])
    claim = catalog.claim_lfns({second: ["site/drive.log"]})[second]
    assert claim.clashes == {"site/drive.log": "registered already, made by a registration outside any task"}


# ---------------------------------------------------------------------------------------------- local store
@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "data")


def _product(tmp_path: Path, text: str, name: str = "product.csv") -> Path:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    path = work / name
    path.write_text(text)
    return path


def test_a_file_at_the_lfn_is_never_replaced_unless_the_claim_says_it_is_ours(
    store: LocalStore, tmp_path: Path
) -> None:
    replica = store.store(_product(tmp_path, "first"), "p/v1/a.csv")
    assert Path(replica.pfn).read_text() == "first"
    second = _product(tmp_path, "second")
    with pytest.raises(OutputClash, match="exists already and is not replaced"):
        store.store(second, "p/v1/a.csv")
    assert Path(replica.pfn).read_text() == "first" and second.read_text() == "second"
    store.store(second, "p/v1/a.csv", replace=True)
    assert Path(replica.pfn).read_text() == "second" and not second.exists()


def test_a_product_from_another_filesystem_is_copied_and_never_replaces_a_file(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    link = os.link

    def across(source: Path, destination: Path, **kwargs: object) -> None:
        if Path(source).parent.name == "work":  # the work directory is on "another filesystem"
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        link(source, destination, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "link", across)
    replica = store.store(_product(tmp_path, "first"), "p/a.csv")
    assert Path(replica.pfn).read_text() == "first" and not (tmp_path / "work" / "product.csv").exists()
    with pytest.raises(OutputClash):
        store.store(_product(tmp_path, "second"), "p/a.csv")
    assert Path(replica.pfn).read_text() == "first"
    assert sorted(p.name for p in Path(replica.pfn).parent.iterdir()) == ["a.csv"]  # no .part left


def test_an_lfn_under_an_existing_file_is_a_storage_error(store: LocalStore, tmp_path: Path) -> None:
    store.store(_product(tmp_path, "a file"), "p/run")
    with pytest.raises(StorageError, match=r"cannot store p/run/a\.csv"):
        store.store(_product(tmp_path, "x"), "p/run/a.csv")


def test_a_symbolic_link_is_no_product(store: LocalStore, tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    link = tmp_path / "work" / "product.csv"
    link.symlink_to("/etc/passwd")
    with pytest.raises(StorageError, match="symbolic link"):
        store.store(link, "p/a.csv")
    assert not store.path_of("p/a.csv").exists() and not store.path_of("p/a.csv").is_symlink()


def test_a_link_in_the_store_leading_out_of_it_is_not_followed(store: LocalStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    store.root.mkdir(parents=True)
    (store.root / "p").symlink_to(outside)
    with pytest.raises(StorageError, match="outside the data root"):
        store.store(_product(tmp_path, "x"), "p/v1/a.csv")
    assert list(outside.iterdir()) == []


def test_discard_removes_an_unregistered_product(store: LocalStore, tmp_path: Path) -> None:
    replica = store.store(_product(tmp_path, "x"), "p/a.csv")
    store.discard("p/a.csv")
    store.discard("p/a.csv")  # gone already: nothing to do
    assert not Path(replica.pfn).exists()
