"""Lineage answers checked against an independent computation (networkx BFS over the
same edges) on a generated 100,000-task provenance DAG, on the embedded store (index
lookups and SPARQL) and on a real Oxigraph server (RemoteStore)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import networkx as nx
import pyoxigraph as ox
import pytest

import provgraph
from provgraph.errors import NotFoundError, QueryError
from provgraph.lineage import lineage, path
from provgraph.remote import RemoteStore
from tests.support import provdag
from tests.support.servers import oxigraph_server

N_TASKS = 100_000

Edge = tuple[str, str, str]


@dataclass
class Dag:
    store: provgraph.Store
    edges: list[Edge]
    up: nx.DiGraph  # subject → object (PROV direction): successors are upstream


def build(n_tasks: int, **kwargs: Any) -> Dag:
    store = provgraph.Store()
    for chunk in provdag.nquads(n_tasks, **kwargs):
        store.oxigraph.bulk_load(chunk, format=ox.RdfFormat.N_QUADS)
    edges = list(dict.fromkeys(provdag.edges(n_tasks, **kwargs)))
    g = nx.DiGraph()
    g.add_edges_from((s, o) for s, _, o in edges)
    return Dag(store, edges, g)


@pytest.fixture(scope="module")
def dag() -> Iterator[Dag]:
    d = build(N_TASKS)
    yield d
    d.store.close()


def expected(dag: Dag, root: str, direction: str, depth: int | None,
             max_nodes: int | None = None) -> dict[str, Any]:
    """The answer computed independently with networkx (BFS distances)."""
    graph = dag.up if direction == "upstream" else dag.up.reverse(copy=False)
    dist = nx.single_source_shortest_path_length(graph, root, cutoff=depth)
    nodes = set(dist)
    frontier = {n for n in nodes if any(m not in nodes for m in graph.successors(n))}
    edges = {e for e in dag.edges if e[0] in nodes and e[2] in nodes}
    return {"dist": dist, "frontier": frontier, "edges": edges}


def got(answer: dict[str, Any]) -> tuple[dict[str, int], set[str], set[Edge]]:
    dist = {n["id"]: n["depth"] for n in answer["nodes"]}
    edges = {(e["source"], e["relation"], e["target"]) for e in answer["edges"]}
    return dist, set(answer["frontier"]), edges


def roots(n_tasks: int, k: int, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    picks = [provdag.artifact(rng.randrange(n_tasks)) for _ in range(k)]
    picks += [provdag.task(rng.randrange(n_tasks)) for _ in range(k // 2)]
    # nodes with big downstream (early in the DAG) or long upstream chains (end of a run)
    picks += [provdag.artifact(0), provdag.artifact(21), provdag.task(5), provdag.artifact(n_tasks - 1),
              provdag.param(17)]
    return picks


@pytest.mark.parametrize("direction", ["upstream", "downstream"])
@pytest.mark.parametrize("depth", [1, 2, 5, None])
def test_lineage_equals_networkx_bfs(dag: Dag, direction: str, depth: int | None) -> None:
    cut_seen = False
    for root in roots(N_TASKS, 12):
        want = expected(dag, root, direction, depth)
        answer = lineage(dag.store, root, direction, depth=depth)
        dist, frontier, edges = got(answer)
        assert dist == want["dist"], root
        assert frontier == want["frontier"], root
        assert edges == want["edges"], root
        assert answer["complete"] is (not want["frontier"])
        assert answer["nodes"][0] == {"id": root, "kind": answer["nodes"][0]["kind"], "depth": 0}
        cut_seen |= not answer["complete"]
        if depth is None:
            assert answer["complete"] and not answer["frontier"]
    if depth is not None and depth <= 2:
        assert cut_seen  # the depth limits above really cut some answers


def test_both_directions_is_the_union(dag: Dag) -> None:
    for root in roots(N_TASKS, 4, seed=11):
        for depth in (2, None):
            up = lineage(dag.store, root, "upstream", depth=depth)
            down = lineage(dag.store, root, "downstream", depth=depth)
            both = lineage(dag.store, root, "both", depth=depth)
            assert {n["id"] for n in both["nodes"]} == {n["id"] for n in up["nodes"] + down["nodes"]}
            assert both["edges"] == sorted(up["edges"] + down["edges"],
                                           key=lambda e: (e["source"], e["relation"], e["target"]))
            assert both["frontier"] == sorted(set(up["frontier"]) | set(down["frontier"]))
            assert both["complete"] is (up["complete"] and down["complete"])


@pytest.mark.parametrize("max_nodes", [1, 7, 50, 400])
def test_max_nodes_cut_is_reported(dag: Dag, max_nodes: int) -> None:
    root = provdag.artifact(0)  # ~1,600 nodes downstream
    full = expected(dag, root, "downstream", None)
    answer = lineage(dag.store, root, "downstream", max_nodes=max_nodes)
    dist, frontier, edges = got(answer)
    assert len(dist) == max_nodes
    assert answer["complete"] is False
    # BFS order: every node kept has its true distance, and nothing nearer was dropped
    assert all(full["dist"][n] == d for n, d in dist.items())
    assert max(dist.values()) <= min(d for n, d in full["dist"].items() if n not in dist)
    graph = dag.up.reverse(copy=False)
    assert frontier == {n for n in dist if any(m not in dist for m in graph.successors(n))}
    assert frontier
    assert edges == {e for e in dag.edges if e[0] in dist and e[2] in dist}


def test_max_nodes_not_reached_is_complete(dag: Dag) -> None:
    root = provdag.artifact(N_TASKS - 1)
    size = len(expected(dag, root, "upstream", None)["dist"])
    answer = lineage(dag.store, root, "upstream", max_nodes=size)
    assert answer["complete"] and len(answer["nodes"]) == size
    cut = lineage(dag.store, root, "upstream", max_nodes=size - 1)
    assert not cut["complete"] and len(cut["nodes"]) == size - 1


def test_sparql_method_equals_index_method(dag: Dag) -> None:
    for root in roots(N_TASKS, 3, seed=5):
        for direction, depth in (("upstream", None), ("downstream", 3), ("both", 2)):
            a = lineage(dag.store, root, direction, depth=depth, method="index")
            b = lineage(dag.store, root, direction, depth=depth, method="sparql")
            assert a == b


def test_kinds_relations_and_types(dag: Dag) -> None:
    root = provdag.artifact(41)
    answer = lineage(dag.store, root, "upstream", depth=2)
    kinds = {n["id"]: n["kind"] for n in answer["nodes"]}
    assert kinds[provdag.task(41)] == "activity" and kinds[provdag.artifact(40)] == "entity"
    assert kinds[root] == "entity"
    only_generated = lineage(dag.store, root, "upstream", relations=["wasGeneratedBy"])
    assert {n["id"] for n in only_generated["nodes"]} == {root, provdag.task(41)}
    assert only_generated["complete"]  # the relations not followed are not a cut
    tasks = lineage(dag.store, root, "upstream", depth=4, types=["https://w3id.org/provgraph/ns#Task"])
    assert {n["id"] for n in tasks["nodes"]} == {provdag.task(41), provdag.task(40)}
    assert tasks["edges"] == lineage(dag.store, root, "upstream", depth=4)["edges"]  # edges are not filtered
    with pytest.raises(QueryError, match="unknown relation"):
        lineage(dag.store, root, relations=["wasFriendsWith"])
    # a root with nothing upstream still says what it is (from its rdf:type)
    alone = lineage(dag.store, provdag.param(7), "upstream")
    assert alone["nodes"] == [{"id": provdag.param(7), "kind": "entity", "depth": 0}] and alone["complete"]


def test_errors(dag: Dag) -> None:
    with pytest.raises(NotFoundError):
        lineage(dag.store, "https://example.org/fac/task/nope")
    with pytest.raises(QueryError):
        lineage(dag.store, "not an iri")
    with pytest.raises(QueryError):
        lineage(dag.store, provdag.task(1), "sideways")
    with pytest.raises(QueryError):
        lineage(dag.store, provdag.task(1), depth=-1)
    with pytest.raises(QueryError):
        lineage(dag.store, provdag.task(1), as_of="yesterday")
    with pytest.raises(NotFoundError):
        path(dag.store, provdag.task(1), "https://example.org/fac/task/nope")


def test_path_is_a_shortest_chain(dag: Dag) -> None:
    rng = random.Random(9)
    checked = 0
    while checked < 10:
        target = provdag.artifact(rng.randrange(1000, N_TASKS))
        ancestors = nx.single_source_shortest_path_length(dag.up, target)
        far = [n for n, d in ancestors.items() if d >= 3]
        if not far:
            continue
        source = rng.choice(far)
        answer = path(dag.store, source, target)
        assert answer["found"] and not answer["reversed"]
        assert answer["length"] == ancestors[source]
        assert answer["nodes"][0] == source and answer["nodes"][-1] == target
        for e in answer["edges"]:
            assert (e["source"], e["relation"], e["target"]) in set(dag.edges)
        # consecutive edges share nodes: a chain from the source to the target
        assert answer["edges"][0]["target"] == source and answer["edges"][-1]["source"] == target
        rev = path(dag.store, target, source)
        assert rev["found"] and rev["reversed"] and rev["length"] == answer["length"]
        assert rev["nodes"][0] == target and rev["nodes"][-1] == source
        checked += 1
    unrelated = path(dag.store, provdag.artifact(N_TASKS - 1), provdag.artifact(N_TASKS - 21))
    assert unrelated["found"] is False and unrelated["complete"] is True
    short = path(dag.store, provdag.artifact(N_TASKS - 20), provdag.artifact(N_TASKS - 1), max_depth=4)
    assert short["found"] is False and short["complete"] is False  # cut, not absent


def test_as_of_leaves_out_later_activities() -> None:
    """a0 ← t0(10:00) ; a1 ← t1(11:00) used a0 ; a2 ← t2(12:00) used a1."""
    store = provgraph.Store()
    lines = []
    for i, hour in enumerate((10, 11, 12)):
        t, a = f"<https://ex.org/task/{i}>", f"<ni:///sha-256;x{i}>"
        lines.append(f'{t} <http://www.w3.org/ns/prov#startedAtTime> '
                     f'"2026-01-01T{hour}:00:00Z"^^<http://www.w3.org/2001/XMLSchema#dateTime> <urn:g> .')
        lines.append(f"{a} <http://www.w3.org/ns/prov#wasGeneratedBy> {t} <urn:g> .")
        if i:
            lines.append(f"{t} <http://www.w3.org/ns/prov#used> <ni:///sha-256;x{i - 1}> <urn:g> .")
    store.add_nquads("\n".join(lines) + "\n")
    root = "ni:///sha-256;x0"
    ids = {n["id"] for n in lineage(store, root, "downstream")["nodes"]}
    assert ids == {root, "https://ex.org/task/1", "ni:///sha-256;x1", "https://ex.org/task/2", "ni:///sha-256;x2"}
    early = lineage(store, root, "downstream", as_of="2026-01-01T11:30:00Z")
    assert {n["id"] for n in early["nodes"]} == {root, "https://ex.org/task/1", "ni:///sha-256;x1"}
    assert early["complete"] and early["as_of"] == "2026-01-01T11:30:00+00:00"
    naive = lineage(store, root, "downstream", as_of=datetime(2026, 1, 1, 10, 30))
    assert naive["as_of"] == datetime(2026, 1, 1, 10, 30, tzinfo=UTC).isoformat()
    assert {n["id"] for n in naive["nodes"]} == {root}
    up = lineage(store, "ni:///sha-256;x2", "upstream", as_of="2026-01-01T10:30:00Z")
    assert {n["id"] for n in up["nodes"]} == {"ni:///sha-256;x2"}  # its generation came later
    assert lineage(store, root, "downstream", as_of="2026-01-01T11:30:00Z", method="sparql") == early


def test_remote_store_gives_the_same_answers(tmp_path: Path) -> None:
    n_tasks = 3000
    small = build(n_tasks)
    with oxigraph_server(tmp_path / "oxi") as url:
        remote = RemoteStore(url)
        data = b"".join(provdag.nquads(n_tasks))
        remote.load(data, "nquads")
        assert len(remote) == len(small.store)
        for root in roots(n_tasks, 4, seed=2):
            for direction, depth, max_nodes in (("upstream", None, None), ("downstream", 2, None),
                                                ("downstream", None, 30), ("both", 3, None)):
                a = lineage(small.store, root, direction, depth=depth, max_nodes=max_nodes)
                b = lineage(remote, root, direction, depth=depth, max_nodes=max_nodes)
                assert a == b, (root, direction, depth)
        want = expected(small, provdag.artifact(0), "downstream", None)
        assert {n["id"]: n["depth"] for n in lineage(remote, provdag.artifact(0), "downstream")["nodes"]} \
            == want["dist"]
        target = provdag.artifact(n_tasks - 1)
        assert path(remote, provdag.param(n_tasks - 5), target) == path(small.store, provdag.param(n_tasks - 5),
                                                                         target)
        with pytest.raises(NotFoundError):
            lineage(remote, "https://example.org/fac/task/nope")
