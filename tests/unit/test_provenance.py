"""Provenance: the upstream walk, PROV-JSON, DOT and the SVG drawn without Graphviz."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from osa_grid.catalog.store import Catalog
from osa_grid.errors import BadInput, OsaGridError
from osa_grid.services import provenance as prov
from tests.helpers import make_file
from tests.unit.provenance_chain import CALIBRATION, Chain, build_chain


@pytest.fixture
def chain(catalog: Catalog) -> Chain:
    return build_chain(catalog)


@pytest.fixture
def graph(catalog: Catalog, chain: Chain) -> prov.Graph:
    return prov.upstream(catalog, chain.dl3)


def test_the_walk_reaches_every_raw_file(graph: prov.Graph, chain: Chain) -> None:
    assert [f.lfn for f in graph.raw_files()] == sorted([*chain.raw, CALIBRATION])
    assert {f.lfn for f in graph.files.values()} == {
        *chain.raw,
        CALIBRATION,
        *chain.dl1,
        *chain.merged,
        chain.dl3,
    }
    assert (
        sorted(t.transformation for t in graph.tasks.values())
        == ["dl3", "merge", "merge"] + ["r0_to_dl1"] * 4
    )


def test_tasks_keep_roles_attempts_and_the_final_attempt(graph: prov.Graph) -> None:
    retried = graph.tasks["dl1-1807-0"]
    assert [a.attempt for a in retried.attempts] == [1, 2]
    assert [a.exit_code for a in retried.attempts] == [137, 0]
    assert retried.final is not None and retried.final.attempt == 2
    roles = [role for _, role in retried.inputs]
    assert roles == ["input", "calibration"]  # planned inputs first, then side inputs
    assert retried.final.command.startswith("python -m osa_grid.steps.toy")
    assert retried.final.software == {"lstchain": "0.10.5", "osa-grid": "0.1.0"}


def test_the_walk_reads_each_level_in_bulk(catalog: Catalog, chain: Chain) -> None:
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    sa.event.listen(catalog.engine, "before_cursor_execute", count)
    try:
        prov.upstream(catalog, chain.dl3)
    finally:
        sa.event.remove(catalog.engine, "before_cursor_execute", count)
    # The root's id; then per level its files (with metadata) in one query, and its tasks, their
    # inputs and their attempts in three: 4 file levels, 3 task levels, however wide each is.
    queries = [q for q in statements if q.lstrip().upper().startswith("SELECT")]
    assert len(queries) == 1 + 4 + 3 * 3


def test_a_raw_file_is_its_own_graph(catalog: Catalog, chain: Chain) -> None:
    graph = prov.upstream(catalog, chain.raw[0])
    assert list(graph.files) == [graph.root] and graph.tasks == {}


def test_an_unknown_file_is_bad_input(catalog: Catalog) -> None:
    with pytest.raises(BadInput, match="no file"):
        prov.upstream(catalog, "/nope")


def test_a_file_whose_task_is_gone_is_a_leaf(catalog: Catalog) -> None:
    catalog.register_files([make_file("/orphan", run_id=1)], task_id="forgotten")
    graph = prov.upstream(catalog, "/orphan")
    assert graph.tasks == {} and graph.producer(graph.files[graph.root]) is None


def test_folding_keeps_the_first_inputs_and_counts_the_others(graph: prov.Graph) -> None:
    small = prov.folded(graph, keep=1)
    assert small.hidden == {"dl3-all": 1, "merge-run-1807": 1}
    assert len(small.files) == 5  # dl3, one merged run, one DL1, its raw file and the calibration
    assert prov.folded(graph, keep=10).hidden == {}


# -------------------------------------------------------------------------------------- PROV-JSON


def records(document: dict[str, Any], kind: str) -> Iterator[dict[str, Any]]:
    yield from document.get(kind, {}).values()


def test_prov_json_is_a_consistent_document(graph: prov.Graph, chain: Chain) -> None:
    document = prov.prov_json(graph)
    assert set(document) == {
        "prefix",
        "entity",
        "activity",
        "agent",
        "used",
        "wasGeneratedBy",
        "wasAssociatedWith",
        "wasDerivedFrom",
    }
    entities, activities, agents = document["entity"], document["activity"], document["agent"]
    for used in records(document, "used"):
        assert used["prov:activity"] in activities and used["prov:entity"] in entities
    for generation in records(document, "wasGeneratedBy"):
        assert generation["prov:activity"] in activities and generation["prov:entity"] in entities
    for association in records(document, "wasAssociatedWith"):
        assert association["prov:agent"] in agents and association["prov:plan"] in entities
    for derivation in records(document, "wasDerivedFrom"):
        assert derivation["prov:generatedEntity"] in entities and derivation["prov:usedEntity"] in entities
    for identifier in [*entities, *activities, *agents]:
        assert identifier.split(":", 1)[0] in document["prefix"]
    files = [e for e in entities.values() if e["prov:type"] == "osa:File"]
    assert len(files) == len(graph.files)


def test_prov_json_records_both_attempts_and_generation_by_the_good_one(graph: prov.Graph) -> None:
    document = prov.prov_json(graph)
    attempts = {k: v for k, v in document["activity"].items() if v["osa:task_id"] == "dl1-1807-0"}
    assert sorted(a["osa:exit_code"] for a in attempts.values()) == [0, 137]
    dl1 = prov.entity_id(next(f for f in graph.files.values() if f.lfn.endswith("Run01807.0000.h5")))
    generators = [g["prov:activity"] for g in records(document, "wasGeneratedBy") if g["prov:entity"] == dl1]
    assert generators == ["osa:task_dl1-1807-0_attempt_2"]
    good = document["activity"]["osa:task_dl1-1807-0_attempt_2"]
    assert good["prov:startTime"].startswith("2024-01-16T03:02") and good["osa:host"] == "testhost"
    roles = {u["prov:role"] for u in records(document, "used") if u["prov:activity"] in attempts}
    assert roles == {"input", "calibration"}
    agent = next(iter(document["agent"].values()))
    assert agent["prov:type"] == "prov:SoftwareAgent" and agent["osa:version_lstchain"] == "0.10.5"


def test_prov_json_types_dates(graph: prov.Graph) -> None:
    root = graph.files[graph.root]
    entity = prov.prov_json(graph)["entity"][prov.entity_id(root)]
    assert entity["osa:night"] == {"$": "2024-01-15", "type": "xsd:date"}
    assert entity["osa:registered"]["type"] == "xsd:dateTime"


# ----------------------------------------------------------------------------------------- pictures


def test_dot_names_every_node_and_edge(graph: prov.Graph) -> None:
    text = prov.dot(prov.folded(graph, keep=1))
    assert text.startswith("digraph provenance {") and text.rstrip().endswith("}")
    assert '"tdl3-all" -> "mdl3-all" [style=dashed]' in text
    assert "... 1 more input" in text
    assert '[label="calibration"]' in text
    assert text.count("shape=ellipse") == 5


def test_svg_without_graphviz_is_well_formed(graph: prov.Graph) -> None:
    picture = prov.svg(prov.folded(graph))
    root = ET.fromstring(picture)
    namespace = {"svg": "http://www.w3.org/2000/svg"}
    groups = root.findall("svg:g", namespace)
    assert sum(1 for g in groups if g.get("class") == "file") == len(graph.files)
    assert sum(1 for g in groups if g.get("class") == "task") == len(graph.tasks)
    texts = "".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    assert "dl3_LST-1.2024-01-15.fits.gz" in texts and "calibration" in texts


def test_render_falls_back_to_the_own_svg_and_refuses_png(
    graph: prov.Graph, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prov, "graphviz_dot", lambda: None)
    assert prov.render(graph, "svg").startswith(b"<svg")
    with pytest.raises(OsaGridError, match="Graphviz"):
        prov.render(graph, "png")


@pytest.mark.skipif(prov.graphviz_dot() is None, reason="Graphviz is not installed")
def test_render_through_graphviz(graph: prov.Graph, tmp_path: Path) -> None:
    assert prov.render(graph, "png").startswith(b"\x89PNG")
    assert b"<svg" in prov.render(graph, "svg")
