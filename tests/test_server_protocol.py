"""The SPARQL endpoint speaks the SPARQL 1.1 Protocol: foreign clients (SPARQLWrapper,
rdflib's SPARQLStore) work unchanged; content negotiation, Graph Store Protocol read,
service description, update authorization, errors and CORS."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyoxigraph as ox
import pytest
import rdflib

import provgraph
from provgraph.server import RunningServer, build_app, start
from provgraph.settings import load_settings
from provgraph.store import Store
from provgraph.testing import capture

PG = "https://w3id.org/provgraph/ns#"
PREFIXES = ("PREFIX pg: <https://w3id.org/provgraph/ns#>\nPREFIX prov: <http://www.w3.org/ns/prov#>\n"
            "PREFIX rdfs: <http://www.w3.org/2000/01/rdf-schema#>\n")


@dataclass
class Campaign:
    """A store recorded with the real capture API, and what Python knows about it."""

    store: Store
    tasks: list[dict[str, Any]]  # one per train call: workflow, lr, layers, optimizer, loss, accuracy, status
    dataset: str  # IRI of the shared input file
    models: dict[tuple[float, int], str]  # (lr, layers) → model artifact IRI


def record_campaign(tmp: Path) -> Campaign:
    """Two workflows of a hyperparameter search (decorated tasks, file artifacts, one
    failing task), captured into an in-memory store."""
    data = tmp / "data.csv"
    data.write_text("x,y\n1,2\n3,4\n")
    truth: list[dict[str, Any]] = []

    @provgraph.task
    def train(dataset: Path, lr: float, layers: int, optimizer: str) -> dict[str, Any]:
        if layers > 6:
            raise ValueError("too deep")
        model = tmp / f"model-{lr}-{layers}.bin"
        model.write_bytes(f"{lr}/{layers}/{optimizer}".encode() * 16)
        return {"loss": round(lr * layers + 0.01 * layers, 6), "accuracy": round(1 - lr - 0.01 * layers, 6),
                "model": model}

    @provgraph.task
    def evaluate(model: Path) -> float:
        return float(len(model.read_bytes()))

    grid = {"search": [(0.1, 2, "adam"), (0.1, 4, "sgd"), (0.01, 2, "adam"), (0.01, 4, "adam"), (0.001, 3, "sgd")],
            "refine": [(0.005, 3, "adam"), (0.002, 5, "sgd"), (0.05, 8, "adam")]}
    with capture() as cap:
        for wf, runs in grid.items():
            with provgraph.workflow(wf, campaign="sm-bfo"):
                for lr, layers, opt in runs:
                    row: dict[str, Any] = {"workflow": wf, "lr": lr, "layers": layers, "optimizer": opt}
                    try:
                        out = train(data, lr, layers, opt)
                    except ValueError:
                        row.update(status="failed", loss=None, accuracy=None)
                    else:
                        row.update(status="finished", loss=out["loss"], accuracy=out["accuracy"])
                        evaluate(out["model"])
                    truth.append(row)
        store = cap.store()
    dataset = next(iter(store.query(PREFIXES + "SELECT ?e WHERE { ?t prov:qualifiedUsage ?u . "
                                    "?u pg:parameterName 'dataset' ; prov:entity ?e } LIMIT 1")))["e"].value
    models = {}
    for r in store.query(PREFIXES + """SELECT ?lr ?layers ?m WHERE {
            ?t prov:used ?a, ?b . ?a pg:parameterName "lr" ; prov:value ?lr .
            ?b pg:parameterName "layers" ; prov:value ?layers .
            ?m prov:qualifiedGeneration ?g . ?g prov:activity ?t ; pg:parameterName "model" }"""):
        models[(float(r["lr"].value), int(r["layers"].value))] = r["m"].value
    return Campaign(store, truth, dataset, models)


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Campaign:
    return record_campaign(tmp_path_factory.mktemp("campaign"))


@pytest.fixture(scope="module")
def server(campaign: Campaign) -> Iterator[RunningServer]:
    app = build_app(campaign.store, load_settings(query_timeout=20))
    with start(app) as running:
        yield running


@pytest.fixture(scope="module")
def sparql_url(server: RunningServer) -> str:
    return server.url + "/sparql"


TASKS_SELECT = PREFIXES + """SELECT ?lr ?layers WHERE {
  ?t a pg:Task ; rdfs:label "train" ; prov:used ?a, ?b .
  ?a pg:parameterName "lr" ; prov:value ?lr . ?b pg:parameterName "layers" ; prov:value ?layers .
} ORDER BY ?lr ?layers"""
TASKS_CONSTRUCT = PREFIXES + """CONSTRUCT { ?t rdfs:label ?l ; pg:status ?s } WHERE {
  ?t a pg:Task ; rdfs:label ?l ; pg:status ?s }"""


def expected_pairs(c: Campaign) -> list[tuple[float, int]]:
    return sorted((t["lr"], t["layers"]) for t in c.tasks)


def expected_graph(c: Campaign) -> set[tuple[str, str, str]]:
    return {(str(t.subject), str(t.predicate), str(t.object)) for t in c.store.query(TASKS_CONSTRUCT)}


def triples_of(data: bytes, fmt: ox.RdfFormat) -> set[tuple[str, str, str]]:
    return {(str(q.subject), str(q.predicate), str(q.object)) for q in ox.parse(data, format=fmt)}


# -- foreign clients -------------------------------------------------------------------
def test_sparqlwrapper_select_ask_construct(campaign: Campaign, sparql_url: str) -> None:
    from SPARQLWrapper import JSON, TURTLE, XML, SPARQLWrapper

    w = SPARQLWrapper(sparql_url)
    w.setQuery(TASKS_SELECT)
    w.setReturnFormat(JSON)
    rows = w.queryAndConvert()["results"]["bindings"]  # type: ignore[index]
    assert [(float(r["lr"]["value"]), int(r["layers"]["value"])) for r in rows] == expected_pairs(campaign)

    w.setQuery(PREFIXES + "ASK { ?t pg:status 'failed' }")
    assert w.queryAndConvert() == {"head": {}, "boolean": True}
    w.setQuery(PREFIXES + "ASK { ?t pg:status 'no-such-status' }")
    w.setReturnFormat(XML)
    doc = w.queryAndConvert()
    assert doc.getElementsByTagName("boolean")[0].firstChild.data == "false"  # type: ignore[union-attr]

    w.setQuery(TASKS_CONSTRUCT)
    for fmt in (XML, TURTLE):
        w.setReturnFormat(fmt)
        got = w.queryAndConvert()
        graph = got if isinstance(got, rdflib.Graph) else rdflib.Graph().parse(data=got, format="turtle")
        assert {(str(s), str(p), str(o)) for s, p, o in graph} == {
            (s.strip("<>"), p.strip("<>"), o.split('"')[1] if o.startswith('"') else o.strip("<>"))
            for s, p, o in expected_graph(campaign)}


def test_rdflib_sparqlstore_select_ask_construct(campaign: Campaign, sparql_url: str) -> None:
    from rdflib.plugins.stores.sparqlstore import SPARQLStore

    graph = rdflib.Graph(store=SPARQLStore(sparql_url))
    rows = list(graph.query(TASKS_SELECT))
    assert [(float(r[0]), int(r[1])) for r in rows] == expected_pairs(campaign)  # type: ignore[index]
    assert graph.query(PREFIXES + "ASK { ?t pg:status 'failed' }").askAnswer is True
    assert graph.query(PREFIXES + "ASK { ?t pg:status 'nope' }").askAnswer is False
    constructed = graph.query(TASKS_CONSTRUCT).graph
    assert constructed is not None
    assert len(constructed) == len(expected_graph(campaign)) > 0


# -- content negotiation -----------------------------------------------------------------
def _rows_json(body: bytes) -> list[tuple[float, int]]:
    doc = json.loads(body)
    return [(float(b["lr"]["value"]), int(b["layers"]["value"])) for b in doc["results"]["bindings"]]


def _rows_ox(fmt: ox.QueryResultsFormat) -> Any:
    def parse(body: bytes) -> list[tuple[float, int]]:
        return [(float(s["lr"].value), int(s["layers"].value)) for s in ox.parse_query_results(body, format=fmt)]
    return parse


def _rows_csv(body: bytes) -> list[tuple[float, int]]:
    reader = csv.DictReader(io.StringIO(body.decode()))
    return [(float(r["lr"]), int(r["layers"])) for r in reader]


@pytest.mark.parametrize(("accept", "ctype", "parse"), [
    ("application/sparql-results+json", "application/sparql-results+json", _rows_json),
    ("application/json", "application/sparql-results+json", _rows_json),
    ("application/sparql-results+xml", "application/sparql-results+xml", _rows_ox(ox.QueryResultsFormat.XML)),
    ("text/csv", "text/csv", _rows_csv),
    ("text/tab-separated-values", "text/tab-separated-values", _rows_ox(ox.QueryResultsFormat.TSV)),
    ("text/csv;q=0.4, application/sparql-results+xml;q=0.9, */*;q=0.1", "application/sparql-results+xml",
     _rows_ox(ox.QueryResultsFormat.XML)),
    ("text/*;q=0.8, application/sparql-results+json;q=0.2", "text/csv", _rows_csv),
    ("*/*", "application/sparql-results+json", _rows_json),
    (None, "application/sparql-results+json", _rows_json),
])
def test_select_negotiation(campaign: Campaign, sparql_url: str, accept: str | None, ctype: str, parse: Any) -> None:
    headers = {"Accept": accept} if accept else {}
    r = httpx.get(sparql_url, params={"query": TASKS_SELECT}, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].split(";")[0] == ctype
    assert parse(r.content) == expected_pairs(campaign)


@pytest.mark.parametrize(("accept", "ctype", "fmt"), [
    ("text/turtle", "text/turtle", ox.RdfFormat.TURTLE),
    ("application/n-triples", "application/n-triples", ox.RdfFormat.N_TRIPLES),
    ("application/ld+json", "application/ld+json", ox.RdfFormat.JSON_LD),
    ("application/rdf+xml", "application/rdf+xml", ox.RdfFormat.RDF_XML),
    ("application/json", "application/ld+json", ox.RdfFormat.JSON_LD),
    ("application/n-triples;q=0.3, text/turtle;q=0.6", "text/turtle", ox.RdfFormat.TURTLE),
    (None, "text/turtle", ox.RdfFormat.TURTLE),
])
def test_construct_negotiation(campaign: Campaign, sparql_url: str, accept: str | None, ctype: str,
                               fmt: ox.RdfFormat) -> None:
    headers = {"Accept": accept} if accept else {}
    r = httpx.post(sparql_url, content=TASKS_CONSTRUCT.encode(),
                   headers={"Content-Type": "application/sparql-query", **headers})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].split(";")[0] == ctype
    assert triples_of(r.content, fmt) == expected_graph(campaign)


def test_format_parameter_overrides_accept(campaign: Campaign, sparql_url: str) -> None:
    r = httpx.get(sparql_url, params={"query": TASKS_SELECT, "format": "csv"},
                  headers={"Accept": "application/sparql-results+xml"})
    assert r.headers["content-type"].startswith("text/csv")
    assert _rows_csv(r.content) == expected_pairs(campaign)
    r = httpx.post(sparql_url, data={"query": TASKS_CONSTRUCT, "format": "ntriples"})
    assert r.headers["content-type"].startswith("application/n-triples")
    assert triples_of(r.content, ox.RdfFormat.N_TRIPLES) == expected_graph(campaign)


def test_not_acceptable(sparql_url: str) -> None:
    r = httpx.get(sparql_url, params={"query": TASKS_SELECT}, headers={"Accept": "image/png"})
    assert r.status_code == 406
    assert "application/sparql-results+json" in r.text
    r = httpx.get(sparql_url, params={"query": TASKS_CONSTRUCT}, headers={"Accept": "text/csv"})
    assert r.status_code == 406
    assert "text/turtle" in r.text
    r = httpx.get(sparql_url, params={"query": TASKS_SELECT, "format": "png"})
    assert r.status_code == 406


def test_ask_formats(sparql_url: str) -> None:
    q = PREFIXES + "ASK { ?t a pg:Task }"
    assert httpx.get(sparql_url, params={"query": q}).json() == {"head": {}, "boolean": True}
    xml = httpx.get(sparql_url, params={"query": q}, headers={"Accept": "application/sparql-results+xml"})
    assert bool(ox.parse_query_results(xml.content, format=ox.QueryResultsFormat.XML)) is True


# -- protocol operations ---------------------------------------------------------------------
def test_post_form_and_direct_and_get_agree(campaign: Campaign, sparql_url: str) -> None:
    answers = [
        httpx.get(sparql_url, params={"query": TASKS_SELECT}),
        httpx.post(sparql_url, data={"query": TASKS_SELECT}),
        httpx.post(sparql_url, content=TASKS_SELECT.encode(), headers={"Content-Type": "application/sparql-query"}),
    ]
    for r in answers:
        assert r.status_code == 200
        assert _rows_json(r.content) == expected_pairs(campaign)


def test_dataset_parameters_select_graphs(campaign: Campaign, sparql_url: str) -> None:
    graphs = campaign.store.named_graphs()
    assert len(graphs) == 2
    count = PREFIXES + "SELECT (COUNT(DISTINCT ?t) AS ?n) WHERE { ?t a pg:Task }"
    per_graph = []
    for g in graphs:
        r = httpx.get(sparql_url, params={"query": count, "default-graph-uri": g})
        per_graph.append(int(r.json()["results"]["bindings"][0]["n"]["value"]))
    total = int(httpx.get(sparql_url, params={"query": count}).json()["results"]["bindings"][0]["n"]["value"])
    assert sorted(per_graph) == [3 + 2, 5 + 5]  # train + evaluate per workflow (one refine train fails)
    assert sum(per_graph) == total
    named = "SELECT DISTINCT ?g WHERE { GRAPH ?g { ?s ?p ?o } }"
    r = httpx.get(sparql_url, params={"query": named, "named-graph-uri": graphs[0]})
    assert [b["g"]["value"] for b in r.json()["results"]["bindings"]] == [graphs[0]]


def test_from_clauses_choose_the_dataset(campaign: Campaign, sparql_url: str) -> None:
    count = "SELECT (COUNT(DISTINCT ?t) AS ?n) {} WHERE {{ ?t a <https://w3id.org/provgraph/ns#Task> }}"
    sizes = []
    for g in campaign.store.named_graphs():
        r = httpx.get(sparql_url, params={"query": count.format(f"FROM <{g}>")})
        sizes.append(int(r.json()["results"]["bindings"][0]["n"]["value"]))
    assert sorted(sizes) == [3 + 2, 5 + 5]
    g = campaign.store.named_graphs()[0]
    q = f"SELECT DISTINCT ?g FROM NAMED <{g}> WHERE {{ GRAPH ?g {{ ?s ?p ?o }} }}"
    assert [b["g"]["value"] for b in httpx.get(sparql_url, params={"query": q}).json()["results"]["bindings"]] == [g]
    # "from" inside a string or an IRI is not a dataset clause: the union default graph stays
    q = 'SELECT (COUNT(DISTINCT ?t) AS ?n) WHERE { ?t a <https://w3id.org/provgraph/ns#Task> ; ?p ?o . ' \
        'FILTER(?o != "from") }'
    n = int(httpx.get(sparql_url, params={"query": q}).json()["results"]["bindings"][0]["n"]["value"])
    assert n == sum(sizes)


def test_bad_sparql_is_400_with_the_parser_message(sparql_url: str) -> None:
    bad = "SELECT ?x WHERE { ?x ?p }"
    try:
        ox.Store().query(bad)
    except SyntaxError as exc:
        parser_message = str(exc)
    r = httpx.get(sparql_url, params={"query": bad})
    assert r.status_code == 400
    assert parser_message in r.text
    assert httpx.post(sparql_url, content=b"", headers={"Content-Type": "application/sparql-query"}).status_code == 400
    r = httpx.post(sparql_url, content=b"SELECT * {}", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    assert httpx.post(sparql_url, data={"nothing": "here"}).status_code == 400
    assert httpx.get(sparql_url, params={"update": "CLEAR ALL"}).status_code == 405


def test_graph_store_read(campaign: Campaign, server: RunningServer) -> None:
    gsp = server.url + "/rdf-graphs/service"
    for g in campaign.store.named_graphs():
        r = httpx.get(gsp, params={"graph": g})
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/turtle")
        expected = {(str(q.subject), str(q.predicate), str(q.object)) for q in campaign.store.quads(g)}
        assert triples_of(r.content, ox.RdfFormat.TURTLE) == expected
        r = httpx.get(gsp, params={"graph": g}, headers={"Accept": "application/n-triples"})
        assert triples_of(r.content, ox.RdfFormat.N_TRIPLES) == expected
    everything = {(str(q.subject), str(q.predicate), str(q.object)) for q in campaign.store.quads()}
    r = httpx.get(gsp, params={"default": ""}, headers={"Accept": "application/ld+json"})
    assert triples_of(r.content, ox.RdfFormat.JSON_LD) == everything
    missing = httpx.get(gsp, params={"graph": "urn:provgraph:local/graph/nope"})
    assert missing.status_code == 404
    assert "urn:provgraph:local/graph/nope" in missing.text
    assert httpx.get(gsp).status_code == 400
    assert httpx.get(gsp, params={"graph": "not an iri"}).status_code == 400


def test_service_description(server: RunningServer, sparql_url: str) -> None:
    r = httpx.get(sparql_url)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/turtle")
    g = rdflib.Graph().parse(data=r.text, format="turtle")
    sd = rdflib.Namespace("http://www.w3.org/ns/sparql-service-description#")
    service = next(g.subjects(rdflib.RDF.type, sd.Service))
    assert str(next(g.objects(service, sd.endpoint))) == sparql_url
    assert sd.SPARQL11Query in set(g.objects(service, sd.supportedLanguage))
    assert sd.SPARQL11Update not in set(g.objects(service, sd.supportedLanguage))  # read-only endpoint
    formats = {str(o) for o in g.objects(service, sd.resultFormat)}
    assert "http://www.w3.org/ns/formats/SPARQL_Results_JSON" in formats
    nt = httpx.get(sparql_url, headers={"Accept": "application/n-triples"})
    assert len(triples_of(nt.content, ox.RdfFormat.N_TRIPLES)) == len(g)


def test_healthz(server: RunningServer) -> None:
    body = httpx.get(server.url + "/healthz").json()
    assert body["status"] == "ok"
    assert body["service"] == "provgraph"
    assert httpx.get(server.url + "/metrics").status_code == 404  # no metrics callable given


# -- updates ----------------------------------------------------------------------------
INSERT = 'INSERT DATA { GRAPH <urn:test:g> { <urn:test:s> <urn:test:p> "added" } }'
CHECK = 'ASK { <urn:test:s> <urn:test:p> "added" }'


def test_update_refused_without_token_configured() -> None:
    store = Store()
    with start(build_app(store, load_settings())) as srv:
        r = httpx.post(srv.url + "/sparql", content=INSERT.encode(),
                       headers={"Content-Type": "application/sparql-update", "Authorization": "Bearer anything"})
        assert r.status_code == 403
        assert "read-only" in r.text
        r = httpx.post(srv.url + "/sparql", data={"update": INSERT})
        assert r.status_code == 403
    assert len(store) == 0


def test_update_needs_the_bearer_token() -> None:
    store = Store()
    with start(build_app(store, load_settings(update_token="s3cret-token"))) as srv:
        url = srv.url + "/sparql"
        r = httpx.post(url, content=INSERT.encode(), headers={"Content-Type": "application/sparql-update"})
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        r = httpx.post(url, data={"update": INSERT}, headers={"Authorization": "Bearer wrong-token"})
        assert r.status_code == 403
        r = httpx.post(url, data={"update": INSERT}, headers={"Authorization": "Basic czNjcmV0LXRva2Vu"})
        assert r.status_code == 401
        assert httpx.get(url, params={"query": CHECK}).json()["boolean"] is False
        assert len(store) == 0
        r = httpx.post(url, content=INSERT.encode(), headers={"Content-Type": "application/sparql-update",
                                                              "Authorization": "Bearer s3cret-token"})
        assert r.status_code == 204, r.text
        assert httpx.get(url, params={"query": CHECK}).json()["boolean"] is True
        r = httpx.post(url, data={"update": "INSERT DATA { <a> <b> }"},
                       headers={"Authorization": "Bearer s3cret-token"})
        assert r.status_code == 400
        r = httpx.post(url, data={"update": INSERT, "using-graph-uri": "urn:test:g"},
                       headers={"Authorization": "Bearer s3cret-token"})
        assert r.status_code == 400
        assert "USING" in r.text
        sd = httpx.get(url).text
        assert "SPARQL11Update" in sd
    assert len(store) == 1


def test_update_on_read_only_store_is_refused(tmp_path: Path) -> None:
    Store(tmp_path / "s").close()
    ro = Store(tmp_path / "s", read_only=True)
    with start(build_app(ro, load_settings(update_token="t"))) as srv:
        r = httpx.post(srv.url + "/sparql", data={"update": INSERT}, headers={"Authorization": "Bearer t"})
        assert r.status_code == 403
        assert "read-only" in r.text


# -- CORS --------------------------------------------------------------------------------
def test_cors_off_by_default_and_on_when_configured(server: RunningServer) -> None:
    origin = {"Origin": "https://notebook.example"}
    r = httpx.get(server.url + "/sparql", params={"query": "ASK {}"}, headers=origin)
    assert "access-control-allow-origin" not in r.headers
    with start(build_app(Store(), load_settings(cors_origins=["https://notebook.example"]))) as srv:
        r = httpx.get(srv.url + "/sparql", params={"query": "ASK {}"}, headers=origin)
        assert r.headers["access-control-allow-origin"] == "https://notebook.example"
        pre = httpx.options(srv.url + "/sparql", headers={**origin, "Access-Control-Request-Method": "POST"})
        assert pre.status_code == 200
        other = httpx.get(srv.url + "/sparql", params={"query": "ASK {}"}, headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_missing_server_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from provgraph.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "starlette", None)  # as if not installed
    with pytest.raises(MissingDependencyError, match=r"provgraph\[server\]"):
        build_app(Store(), load_settings())
