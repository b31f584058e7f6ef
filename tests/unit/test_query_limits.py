"""Long queries and many sort keys: a correct answer or one clear error, never a crash of the database.

Every catalog test runs on SQLite, and on PostgreSQL with ``-m integration`` (the ``catalog`` fixture).
"""

from __future__ import annotations

import pytest

from osa_grid.catalog.querysql import MAX_SORT_KEYS, KeyPlaces, Plan, SortKey, compile_query
from osa_grid.catalog.store import Catalog
from osa_grid.core.query import And, Or, evaluate, parse, to_text
from osa_grid.errors import BadInput
from osa_grid.ports import NewFile
from tests.helpers import make_file

FILES = 40


def _files() -> list[NewFile]:
    # run_id and data_level are shared keys (stored in metadata sets), subrun_id a per-file key.
    return [
        make_file(f"/f/{i:03d}", run_id=i % 7, data_level=f"L{i % 3}", subrun_id=i, zenith=float(i))
        for i in range(FILES)
    ]


@pytest.fixture
def filled(catalog: Catalog) -> Catalog:
    catalog.register_files(_files())
    return catalog


def _chains(terms: int) -> dict[str, str]:
    return {
        "or on a shared key": " or ".join(f"run_id = {i % 11}" for i in range(terms)),
        "and on a shared key": " and ".join(f"run_id != {i + 3}" for i in range(terms)),
        "or on a per-file key": " or ".join(f"subrun_id = {i * 3}" for i in range(terms)),
        "and on a per-file key": " and ".join(f"subrun_id != {i * 2}" for i in range(terms)),
        "or mixed": " or ".join(
            f"data_level = L{i % 2}" if i % 3 == 0 else f"zenith > {i + 5.5}" for i in range(terms)
        ),
        "and of ors": " and ".join(f"(run_id = {i % 5} or subrun_id > {i % 30})" for i in range(terms)),
        "or of negations": " or ".join(f"not run_id in ({i}, {i + 1})" for i in range(terms)),
    }


def _check(catalog: Catalog, text: str, name: str) -> None:
    node = parse(text)
    wanted = [f.lfn for f in _files() if evaluate(node, f.metadata)]
    assert [lfn for _, lfn in catalog.match(node)] == wanted, name


def test_long_flat_chains_give_the_python_answer(filled: Catalog) -> None:
    for name, text in _chains(600).items():
        _check(filled, text, name)
    assert filled.count_matching(parse(_chains(600)["or mixed"])) == sum(
        evaluate(parse(_chains(600)["or mixed"]), f.metadata) for f in _files()
    )


def test_chains_of_3000_terms_give_the_python_answer(filled: Catalog) -> None:
    # The and-chain of 3000 per-file conditions took PostgreSQL 15 minutes to plan as 3000 subqueries;
    # conditions on one key are now one subquery.
    chains = _chains(3000)
    for name in [
        "or on a shared key",
        "and on a shared key",
        "or on a per-file key",
        "and on a per-file key",
    ]:
        _check(filled, chains[name], name)


def test_conditions_on_one_key_are_checked_in_one_subquery(filled: Catalog) -> None:
    text = (
        " and ".join(f"subrun_id != {i}" for i in range(0, 30, 3)) + " and zenith < 35.0 and exists subrun_id"
    )
    _check(filled, text, "one key")
    places = KeyPlaces(frozenset({"subrun_id", "zenith"}), frozenset())
    sql = str(compile_query(parse(text), Plan(places=places)).compile(compile_kwargs={"literal_binds": True}))
    assert (
        sql.count("file_metadata.key = 'subrun_id'") == 1 and sql.count("file_metadata.key = 'zenith'") == 1
    )


@pytest.mark.parametrize("terms", [600, 3000])
def test_long_chains_parse_flat(terms: int) -> None:
    text = " or ".join(f"k = {i}" for i in range(terms))
    node = parse(text)
    assert isinstance(node, Or) and len(node.items) == terms
    assert parse(to_text(node)) == node
    both = parse(" and ".join(f"(a = {i} or b = {i})" for i in range(terms)))
    assert isinstance(both, And) and len(both.items) == terms


def test_many_sort_keys_are_refused_with_the_limit(filled: Catalog) -> None:
    node = parse("exists run_id")
    keys = ["run_id", "subrun_id", "data_level", "zenith"]
    allowed = [SortKey(keys[i % 4], i % 2 == 1) for i in range(MAX_SORT_KEYS)]
    assert len(filled.match(node, allowed)) == FILES
    for count in (MAX_SORT_KEYS + 1, 16, 1000):
        with pytest.raises(BadInput, match=f"at most {MAX_SORT_KEYS}"):
            filled.match(node, [SortKey(keys[i % 4]) for i in range(count)])
        with pytest.raises(BadInput, match=f"at most {MAX_SORT_KEYS}"):
            filled.group_counts(node, [keys[i % 4] for i in range(count)])
