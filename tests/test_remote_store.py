"""RemoteStore against a real Oxigraph server: capture, query, atomic batches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyoxigraph as ox
import pytest

import provgraph
from provgraph.remote import RemoteStore
from tests.support.servers import oxigraph_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    with oxigraph_server(tmp_path / "oxigraph") as url:
        yield url


def test_capture_straight_into_an_oxigraph_server(server: str) -> None:
    provgraph.configure(store_url=server, flush_interval=0.05)

    @provgraph.task
    def step(i: int) -> int:
        return i * 2

    with provgraph.workflow("remote", campaign="srv"):
        for i in range(5):
            step(i)
    assert provgraph.shutdown(10)
    store = RemoteStore(server)
    stats = store.stats()
    assert (stats["tasks"], stats["workflow_runs"], stats["named_graphs"]) == (5, 1, 1)
    rows = list(store.query(
        "PREFIX prov: <http://www.w3.org/ns/prov#> SELECT ?v WHERE { ?e prov:wasGeneratedBy ?t ; prov:value ?v } "
        "ORDER BY ?v"))
    assert [int(r["v"].value) for r in rows] == [0, 2, 4, 6, 8]


def test_remote_batches_are_validated_and_atomic(server: str) -> None:
    store = RemoteStore(server)
    store.add_nquads('<urn:a> <urn:p> "1" <urn:g> .\n')
    with pytest.raises(provgraph.ParseError):
        store.add_nquads('<urn:b> <urn:p> "2" <urn:g> .\n<urn:c> <urn:p "3" <urn:g> .\n')
    assert len(store) == 1
    with pytest.raises(provgraph.QueryError):
        store.query("SELECT WHERE nonsense")


def test_substitutions_bind_terms_not_text(server: str) -> None:
    store = RemoteStore(server)
    store.add_nquads('<urn:a> <urn:name> "alice" <urn:g> .\n<urn:b> <urn:name> "bob" <urn:g> .\n')
    q = "SELECT ?s ?name WHERE { ?s <urn:name> ?name }"
    rows = list(store.query(q, substitutions={"name": ox.Literal("alice")}))
    assert [r["s"].value for r in rows] == ["urn:a"]
    evil = 'alice" } UNION { ?s ?p ?name } #'
    assert list(store.query(q, substitutions={"name": ox.Literal(evil)})) == []
    # plain Python values, control characters and a FILTER that reads the binding
    store.add_nquads('<urn:c> <urn:name> "line\\nbreak \\"q\\"" <urn:g> .\n')
    assert [r["s"].value for r in store.query(q, substitutions={"name": 'line\nbreak "q"'})] == ["urn:c"]
    f = "SELECT ?s WHERE { ?s <urn:name> ?n FILTER(?n = ?name) }"
    assert [r["s"].value for r in store.query(f, substitutions={"name": "bob"})] == ["urn:b"]


def test_unreachable_server_is_a_clear_error() -> None:
    from tests.support.servers import free_port

    store = RemoteStore(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(provgraph.StoreError, match="cannot reach"):
        store.stats()
