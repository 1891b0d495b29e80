"""The Python client over the embedded store (in memory and on disk), a provgraph
endpoint (real uvicorn) and a plain Oxigraph server: same questions, same answers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import rdflib

from provgraph import lineage as lineage_mod
from provgraph.client import Client
from provgraph.errors import NotFoundError, QueryError, QueryTimeoutError, StoreError
from provgraph.remote import RemoteStore
from provgraph.server import build_app, start
from provgraph.settings import load_settings
from provgraph.store import Store
from tests.support.servers import free_port, oxigraph_server
from tests.test_server_protocol import Campaign, record_campaign

BACKENDS = ("embedded", "provgraph", "oxigraph")


@contextmanager
def clients(campaign: Campaign, tmp: Path) -> Iterator[dict[str, Client]]:
    """A client per backend, all holding the same campaign."""
    with ExitStack() as stack:
        srv = stack.enter_context(start(build_app(campaign.store, load_settings())))
        ox_url = stack.enter_context(oxigraph_server(tmp / "oxigraph"))
        RemoteStore(ox_url).load(campaign.store.dump("nquads"), "nquads")
        yield {"embedded": Client(campaign.store), "provgraph": Client(srv.url), "oxigraph": Client(ox_url)}


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Campaign:
    return record_campaign(tmp_path_factory.mktemp("client"))


@pytest.fixture(scope="module")
def backends(campaign: Campaign, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Client]]:
    with clients(campaign, tmp_path_factory.mktemp("backends")) as found:
        yield found


@pytest.fixture(params=BACKENDS)
def client(request: pytest.FixtureRequest, backends: dict[str, Client]) -> Client:
    return backends[request.param]


def test_urls_pick_the_right_protocol(backends: dict[str, Client]) -> None:
    assert backends["provgraph"].store.query_url.endswith("/sparql")  # type: ignore[union-attr]
    assert backends["provgraph"].api_url is not None
    assert backends["oxigraph"].store.query_url.endswith("/query")  # type: ignore[union-attr]
    assert backends["oxigraph"].api_url is None
    assert backends["embedded"].api_url is None


def test_sparql_returns_python_values(client: Client, campaign: Campaign) -> None:
    rows = client.sparql("""SELECT ?t ?lr ?layers ?start WHERE {
        ?t a pg:Task ; rdfs:label "train" ; prov:startedAtTime ?start ; prov:used ?a, ?b .
        ?a pg:parameterName "lr" ; prov:value ?lr . ?b pg:parameterName "layers" ; prov:value ?layers }
        ORDER BY ?start""")
    assert [(r["lr"], r["layers"]) for r in rows] == [(t["lr"], t["layers"]) for t in campaign.tasks]
    assert all(isinstance(r["lr"], float) and isinstance(r["layers"], int) for r in rows)
    assert all(isinstance(r["start"], datetime) and r["start"].tzinfo is not None for r in rows)
    assert all(isinstance(r["t"], str) and r["t"].startswith("urn:provgraph:") for r in rows)


def test_bindings_are_typed_terms(client: Client, campaign: Campaign) -> None:
    q = "SELECT ?t WHERE { ?t a pg:Task ; pg:status ?s }"
    failed = client.sparql(q, s="failed")
    assert len(failed) == sum(t["status"] == "failed" for t in campaign.tasks)
    assert client.sparql(q, s='failed" } UNION { ?t ?p ?o } #') == []
    q2 = "SELECT ?t WHERE { ?t prov:used ?e . ?e pg:parameterName 'layers' ; prov:value ?n }"
    assert len(client.sparql(q2, n=4)) == sum(t["layers"] == 4 for t in campaign.tasks)
    model = campaign.models[(0.1, 2)]
    rows = client.sparql("SELECT ?task WHERE { ?m prov:wasGeneratedBy ?task }", m=Client.iri(model))
    assert len(rows) == 1
    with pytest.raises(QueryError):
        Client.iri("not an <iri>")


def test_from_clause_chooses_the_dataset(client: Client, campaign: Campaign) -> None:
    graphs = campaign.store.named_graphs()
    sizes = [len(client.sparql(f"SELECT DISTINCT ?t FROM <{g}> WHERE {{ ?t a pg:Task }}")) for g in graphs]
    assert sorted(sizes) == [3 + 2, 5 + 5]
    rows = client.sparql(f"SELECT DISTINCT ?t FROM <{graphs[0]}> WHERE {{ ?t a pg:Task ; pg:status ?s }}",
                         s="failed")
    assert len(rows) <= 1


def test_ask_and_construct(client: Client, campaign: Campaign) -> None:
    assert client.ask("ASK { ?t pg:status ?s }", s="failed") is True
    assert client.ask("ASK { ?t pg:status 'nope' }") is False
    g = client.construct("CONSTRUCT { ?t rdfs:label ?l } WHERE { ?t a pg:Task ; rdfs:label ?l }")
    assert isinstance(g, rdflib.Graph)
    n_tasks = len(campaign.tasks) + sum(t["status"] == "finished" for t in campaign.tasks)
    assert len(g) == n_tasks
    with pytest.raises(QueryError):
        client.sparql("ASK {}")
    with pytest.raises(QueryError):
        client.sparql("SELECT ?x WHERE {")


def test_lineage_and_path_agree_across_backends(client: Client, campaign: Campaign) -> None:
    model = campaign.models[(0.01, 4)]
    expected = lineage_mod.lineage(campaign.store, model, "upstream")
    got = client.lineage(model, direction="upstream")
    assert {n["id"] for n in got["nodes"]} == {n["id"] for n in expected["nodes"]}
    assert got["edges"] == expected["edges"]
    assert campaign.dataset in {n["id"] for n in got["nodes"]}
    shallow = client.lineage(model, direction="upstream", depth=1)
    assert shallow["complete"] is False and shallow["frontier"]
    down = client.lineage(campaign.dataset, direction="downstream", types=["https://w3id.org/provgraph/ns#Task"])
    assert {n["id"] for n in down["nodes"]} == {
        n["id"] for n in lineage_mod.lineage(campaign.store, campaign.dataset, "downstream",
                                             types=["https://w3id.org/provgraph/ns#Task"])["nodes"]}
    p = client.path(campaign.dataset, model)
    assert p["found"] is True and p["nodes"][0] == campaign.dataset and p["nodes"][-1] == model
    with pytest.raises(NotFoundError):
        client.lineage("urn:provgraph:no-such-node")
    with pytest.raises(QueryError):
        client.lineage(model, direction="sideways")


def test_query_named(client: Client, campaign: Campaign) -> None:
    failed = client.query_named("failed_tasks")
    assert len(failed) == sum(t["status"] == "failed" for t in campaign.tasks)
    rows = client.query_named("hyperparams_vs_kpis", function="train")
    assert rows and all(isinstance(r, dict) for r in rows)
    assert client.query_named("hyperparams_vs_kpis", function='train" } #') == []
    with pytest.raises(QueryError):
        client.query_named("failed_tasks", nonsense=1)
    with pytest.raises(NotFoundError):
        client.query_named("no_such_query")


def test_client_on_a_path_opens_the_store_read_only(campaign: Campaign, tmp_path: Path) -> None:
    with Store(tmp_path / "store") as disk:
        disk.load(campaign.store.dump("nquads"), "nquads")
    with Client(tmp_path / "store") as c:
        assert isinstance(c.store, Store) and c.store.read_only
        assert len(c.tasks(filter={"name": "train"})) == len(campaign.tasks)
    with Client(str(tmp_path / "store")) as c:
        assert c.ask("ASK { ?t a pg:Task }")


def test_client_without_target_uses_the_configured_store(campaign: Campaign, data_dir: Path) -> None:
    with Store(data_dir / "store") as disk:
        disk.load(campaign.store.dump("nquads"), "nquads")
    with Client() as c:
        assert isinstance(c.store, Store) and c.store.read_only
        tasks = c.sparql("SELECT DISTINCT ?t WHERE { ?t a pg:Task }")
        assert len(tasks) == campaign.store.count("https://w3id.org/provgraph/ns#Task") > 0


def test_remote_limits_are_errors_not_short_answers(tmp_path: Path) -> None:
    store = Store()
    store.load("".join(f'<urn:x:{i}> <urn:x:p> "{i}" <urn:x:g> .\n' for i in range(55)).encode())
    app = build_app(store, load_settings(query_max_results=5, query_timeout=0.2), workers=1)
    with start(app) as srv:
        c = Client(srv.url)
        assert len(c.sparql("SELECT ?s WHERE { ?s ?p ?o } LIMIT 5")) == 5
        with pytest.raises(QueryError, match="truncated the answer at 5"):
            c.sparql("SELECT ?s WHERE { ?s ?p ?o }")
        with pytest.raises(QueryError, match="service_allowlist"):
            c.sparql("SELECT * WHERE { SERVICE <http://127.0.0.1:9/sparql> { ?s ?p ?o } }")
        with pytest.raises(QueryTimeoutError):
            c.sparql("SELECT (COUNT(*) AS ?n) WHERE { ?a ?p ?b . ?c ?q ?d . ?e ?r ?f . ?g ?s ?h }")
        deadline = time.monotonic() + 60
        while httpx.get(srv.url + "/healthz").json()["busy_workers"]:  # the runaway query ends in time
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert c.ask("ASK { ?s ?p ?o }") is True


def test_endpoint_urls_and_unreachable_servers(backends: dict[str, Client], campaign: Campaign) -> None:
    base = backends["provgraph"].api_url
    assert base is not None
    c = Client(base + "/sparql")
    assert c.api_url == base  # probed on first use
    model = campaign.models[(0.1, 4)]
    assert c.lineage(model)["root"] == model
    plain = Client(backends["oxigraph"].store.query_url)  # type: ignore[union-attr]
    assert plain.api_url is None and plain.ask("ASK { ?t a pg:Task }")
    port = free_port()
    down = Client(f"http://127.0.0.1:{port}", timeout=2)
    with pytest.raises(StoreError, match="cannot reach"):
        down.sparql("SELECT * WHERE { ?s ?p ?o }")
    with pytest.raises(StoreError, match="cannot reach"):
        Client(f"http://127.0.0.1:{port}/sparql", timeout=2).lineage(model)
