"""Endpoint limits and security: time limit with a responsive server, result limit,
the SERVICE / LOAD allowlist (no request leaves for an unlisted target; an allowlisted
Oxigraph server is reachable), and the lineage / path / named-query HTTP API."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyoxigraph as ox
import pytest

from provgraph import lineage as lineage_mod
from provgraph.queries import run as run_named
from provgraph.remote import RemoteStore
from provgraph.server import RunningServer, build_app, start
from provgraph.settings import load_settings
from provgraph.store import Store
from tests.support.servers import free_port, oxigraph_server
from tests.test_server_protocol import PREFIXES, Campaign, record_campaign

HEAVY = "SELECT (COUNT(*) AS ?n) WHERE { ?a ?p ?b . ?c ?q ?d . ?e ?r ?f . ?g ?s ?h }"


def _busy_store(n: int = 55) -> Store:
    store = Store()
    store.load("".join(f'<urn:x:{i}> <urn:x:p> "{i}" <urn:x:g> .\n' for i in range(n)).encode())
    return store


def _wait(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_query_over_time_limit_fails_and_server_stays_responsive() -> None:
    store = _busy_store()
    with start(build_app(store, load_settings(query_timeout=0.2), workers=2)) as srv:
        url = srv.url + "/sparql"
        health = srv.url + "/healthz"
        heavy: dict[str, httpx.Response] = {}
        t = threading.Thread(target=lambda: heavy.setdefault("r", httpx.get(url, params={"query": HEAVY},
                                                                           timeout=60)))
        t.start()
        _wait(lambda: httpx.get(health).json()["busy_workers"] == 1)
        # the runaway query holds a worker; another query is answered meanwhile
        quick = httpx.get(url, params={"query": "SELECT (COUNT(*) AS ?n) WHERE { ?s ?p ?o }"})
        assert quick.status_code == 200
        assert quick.json()["results"]["bindings"][0]["n"]["value"] == "55"
        t.join(60)
        r = heavy["r"]
        assert r.status_code == 503
        assert "0.2 s" in r.text and "query_timeout" in r.text
        state = httpx.get(health).json()
        assert state["timeouts"] == 1
        _wait(lambda: httpx.get(health).json()["busy_workers"] == 0)  # let the abandoned evaluation end


def test_saturated_pool_times_out_queries_but_not_the_server() -> None:
    store = _busy_store()
    with start(build_app(store, load_settings(query_timeout=0.2), workers=1)) as srv:
        url = srv.url + "/sparql"
        assert httpx.get(url, params={"query": HEAVY}, timeout=60).status_code == 503
        # the only worker is still busy: a query waits its limit, then gets 503 too
        assert httpx.get(srv.url + "/healthz").json()["busy_workers"] == 1
        r = httpx.get(url, params={"query": "ASK { ?s ?p ?o }"}, timeout=60)
        assert r.status_code == 503
        assert httpx.get(srv.url + "/healthz").status_code == 200
        _wait(lambda: httpx.get(srv.url + "/healthz").json()["busy_workers"] == 0)
        assert httpx.get(url, params={"query": "ASK { ?s ?p ?o }"}).json()["boolean"] is True


def test_result_limit_truncates_with_a_header() -> None:
    store = _busy_store(10)
    with start(build_app(store, load_settings(query_max_results=3))) as srv:
        url = srv.url + "/sparql"
        r = httpx.get(url, params={"query": "SELECT ?s WHERE { ?s ?p ?o }"})
        assert r.headers["x-provgraph-truncated"] == "true"
        assert r.headers["x-provgraph-result-limit"] == "3"
        assert len(r.json()["results"]["bindings"]) == 3
        r = httpx.get(url, params={"query": "CONSTRUCT WHERE { ?s ?p ?o }"},
                      headers={"Accept": "application/n-triples"})
        assert r.headers["x-provgraph-truncated"] == "true"
        assert len(list(ox.parse(r.content, format=ox.RdfFormat.N_TRIPLES))) == 3
        r = httpx.get(url, params={"query": "SELECT ?s WHERE { ?s ?p ?o } LIMIT 3"})
        assert "x-provgraph-truncated" not in r.headers
        assert len(r.json()["results"]["bindings"]) == 3


# -- SERVICE allowlist -------------------------------------------------------------------------
class _Target:
    """A real HTTP server standing for an internal host: it counts every request."""

    def __init__(self) -> None:
        self.hits = 0
        target = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                target.hits += 1
                body = b'{"head":{"vars":[]},"results":{"bindings":[{}]}}'
                self.send_response(200)
                self.send_header("Content-Type", "application/sparql-results+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def internal() -> Iterator[_Target]:
    target = _Target()
    yield target
    target.close()


def _refused_queries(port: int) -> list[str]:
    t = f"http://127.0.0.1:{port}/sparql"
    esc = f"http://127.0.0.1:{port}/\\u0073parql"
    return [
        f"SELECT * WHERE {{ SERVICE <{t}> {{ ?s ?p ?o }} }}",
        f"select * where {{ service silent <{t}> {{ ?s ?p ?o }} }}",
        f"PREFIX in: <http://127.0.0.1:{port}/> SELECT * WHERE {{ SERVICE in:sparql {{ ?s ?p ?o }} }}",
        f"SELECT * WHERE {{ ?s ?p ?o SERVICE<{t}>{{?a ?b ?c}} }}",
        f"SELECT * WHERE {{ # SERVICE <urn:allowed> {{ }}\n SERVICE <{t}> {{ ?s ?p ?o }} }}",
        f'SELECT * WHERE {{ BIND("}} # <x>" AS ?x) SERVICE <{esc}> {{ ?s ?p ?o }} }}',
        f"SELECT * WHERE {{ VALUES ?svc {{ <{t}> }} SERVICE ?svc {{ ?s ?p ?o }} }}",
        f"SELECT * WHERE {{ {{ SELECT * WHERE {{ SERVICE <{t}> {{ ?s ?p ?o }} }} }} }}",
        f"PREFIX : <http://127.0.0.1:{port}/> SELECT * WHERE {{ SERVICE :sparql {{ ?s ?p ?o }} }}",
        f"BASE <http://127.0.0.1:{port}/> SELECT * WHERE {{ SERVICE <sparql> {{ ?s ?p ?o }} }}",
    ]


def test_service_to_unlisted_targets_is_refused_before_any_request(internal: _Target) -> None:
    allowed = "http://127.0.0.1:1/allowed-only"
    with start(build_app(_busy_store(3), load_settings(service_allowlist=[allowed], update_token="tok"))) as srv:
        url = srv.url + "/sparql"
        for q in _refused_queries(internal.port):
            r = httpx.post(url, data={"query": q})
            assert r.status_code == 403, (q, r.text)
            assert "service_allowlist" in r.text
        load = f"LOAD <http://127.0.0.1:{internal.port}/data.ttl>"
        r = httpx.post(url, data={"update": load}, headers={"Authorization": "Bearer tok"})
        assert r.status_code == 403
        assert "LOAD" in r.text
        # SERVICE in a string or a comment is not a call; the query runs
        ok = 'SELECT ?x WHERE { BIND("SERVICE <http://127.0.0.1:9/>" AS ?x) } # SERVICE <http://x/> { }'
        r = httpx.get(url, params={"query": ok})
        assert r.status_code == 200
        assert r.json()["results"]["bindings"][0]["x"]["value"] == "SERVICE <http://127.0.0.1:9/>"
    assert internal.hits == 0


def test_service_to_an_allowlisted_oxigraph_server(tmp_path: Path) -> None:
    campaign: Campaign = record_campaign(tmp_path)
    with oxigraph_server(tmp_path / "ox") as ox_url:
        remote = RemoteStore(ox_url)
        labels = {t: f"reviewed-{i}" for i, t in enumerate(sorted(campaign.models.values()))}
        remote.load("".join(f'<{m}> <urn:review:label> "{lab}" .\n' for m, lab in labels.items()).encode())
        endpoint = ox_url + "/query"
        settings = load_settings(service_allowlist=[endpoint])
        with start(build_app(campaign.store, settings)) as srv:
            q = PREFIXES + f"""PREFIX rev: <{ox_url}/>
SELECT ?m ?label WHERE {{
  ?m prov:qualifiedGeneration ?g . ?g pg:parameterName "model" .
  SERVICE rev:query {{ ?m <urn:review:label> ?label }}
}}"""
            r = httpx.get(srv.url + "/sparql", params={"query": q})
            assert r.status_code == 200, r.text
            got = {b["m"]["value"]: b["label"]["value"] for b in r.json()["results"]["bindings"]}
            assert got == labels
            sd = httpx.get(srv.url + "/sparql").text
            assert "BasicFederatedQuery" in sd
            other = q.replace("rev:query", f"<{ox_url}/update>")
            assert httpx.get(srv.url + "/sparql", params={"query": other}).status_code == 403


T1 = "http://127.0.0.1:1/"  # pyoxigraph refuses port 1 at once: its error proves it tried to call out
SERVICE_FORMS = [
    f"SELECT * {{ SERVICE <{T1}> {{}} }}",
    r"SELECT * { SERVICE <http://127.0.0.1:1/\u0073> {} }",
    f"PREFIX p: <{T1}> SELECT * {{ SERVICE p:a\\.b {{}} }}",
    f"PREFIX p: <{T1}> SELECT * {{ SERVICE p:%41 {{}} }}",
    f"PREFIX p: <{T1}> SELECT * {{ SERVICE p: {{}} }}",
    r"PREFIX p: <http://127.0.0.1:1\u002F> SELECT * { SERVICE p:x {} }",
    f"BASE <{T1}> SELECT * {{ SERVICE <> {{}} }}",
    f"SELECT * {{ ?s ?p ?o OPTIONAL {{ SERVICE <{T1}> {{}} }} }}",
    f"SELECT * {{ ?s ?p ?o MINUS {{ SERVICE <{T1}> {{}} }} }}",
    f"SELECT * {{ ?s ?p ?o FILTER NOT EXISTS {{ SERVICE <{T1}> {{}} }} }}",
    f"ASK {{ SERVICE <{T1}> {{ ?a ?b ?c }} }}",
    f"CONSTRUCT {{ ?a ?b ?c }} WHERE {{ SERVICE <{T1}> {{ ?a ?b ?c }} }}",
    f"DESCRIBE ?a WHERE {{ SERVICE <{T1}> {{ ?a ?b ?c }} }}",
    f"SELECT * {{ sErViCe\t<{T1}>\n{{}} }}",
    f"SELECT * {{SERVICE<{T1}>{{}}}}",
    f"SELECT * {{ SERVICE #c\n <{T1}> #d\n {{}} }}",
    f"SELECT (EXISTS {{ SERVICE <{T1}> {{}} }} AS ?x) {{ ?s ?p ?o }}",
    f"SELECT ?s {{ ?s ?p ?o }} ORDER BY (EXISTS {{ SERVICE <{T1}> {{}} }})",
    f"SELECT * {{ {{ SELECT * {{ SERVICE <{T1}> {{}} }} }} }}",
    f"SELECT * {{ LATERAL {{ SERVICE <{T1}> {{}} }} }}",
    f"SELECT * {{ ?s ?p ?o FILTER(?o<2) SERVICE <{T1}> {{}} }}",
    f"SELECT * {{ ?s ?p ?o FILTER(?o<?p&&?p>?o) SERVICE <{T1}> {{}} }}",
    "SELECT * { ?s ?p '''a''b''' . SERVICE <" + T1 + "> {} }",
    "SELECT * { ?s ?p 'a\\'b' . SERVICE <" + T1 + "> {} }",
    'SELECT * { ?s ?p """a""b""" . SERVICE <' + T1 + "> {} }",
]


def test_guard_finds_every_service_form_pyoxigraph_would_call() -> None:
    """pyoxigraph is the oracle: whenever it tries to call out, the guard refused first."""
    from provgraph.http.guard import OutboundRefusedError, check_outbound

    store = ox.Store()
    store.add(ox.Quad(ox.NamedNode("urn:s"), ox.NamedNode("urn:p"), ox.Literal(1)))
    calls = 0
    for q in SERVICE_FORMS:
        try:
            result = store.query(q, use_default_graph_as_union=True)
            if not isinstance(result, ox.QueryBoolean):
                list(result)
        except OSError as exc:
            calls += "port 1" in str(exc)
        with pytest.raises(OutboundRefusedError):
            check_outbound(q, [])
        if "BASE" not in q:  # relative IRIs are refused even when they resolve to a listed one
            check_outbound(q, [T1, T1 + "s", T1 + "a.b", T1 + "%41", T1 + "x"])  # allowlisted: passes
    assert calls >= 15  # most forms really make pyoxigraph call out

# -- lineage, path and named queries over HTTP ---------------------------------------------------
@pytest.fixture(scope="module")
def campaign_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Campaign, RunningServer]]:
    campaign = record_campaign(tmp_path_factory.mktemp("lineage"))
    with start(build_app(campaign.store, load_settings(), metrics=lambda: "provgraph_up 1\n")) as srv:
        yield campaign, srv


def test_lineage_api_matches_the_library(campaign_server: tuple[Campaign, RunningServer]) -> None:
    campaign, srv = campaign_server
    model = campaign.models[(0.01, 4)]
    for params in ({"direction": "upstream"}, {"direction": "downstream", "depth": "1"},
                   {"direction": "both", "types": "prov:Activity"}):
        r = httpx.get(srv.url + "/lineage", params={"node": model, **params})
        assert r.status_code == 200, r.text
        expected = lineage_mod.lineage(
            campaign.store, model, params["direction"], depth=int(params["depth"]) if "depth" in params else None,
            types=["http://www.w3.org/ns/prov#Activity"] if "types" in params else None)
        assert r.json() == json.loads(json.dumps(expected))
    up = httpx.get(srv.url + "/lineage", params={"node": model}).json()
    assert campaign.dataset in {n["id"] for n in up["nodes"]}
    assert {"wasGeneratedBy", "used"} <= {e["relation"] for e in up["edges"]}
    missing = httpx.get(srv.url + "/lineage", params={"node": "urn:provgraph:nothing"})
    assert missing.status_code == 404
    assert "urn:provgraph:nothing" in missing.json()["error"]
    assert httpx.get(srv.url + "/lineage", params={"node": model, "direction": "sideways"}).status_code == 400
    assert httpx.get(srv.url + "/lineage", params={"node": model, "depth": "two"}).status_code == 400
    assert httpx.get(srv.url + "/lineage").status_code == 400


def test_path_api(campaign_server: tuple[Campaign, RunningServer]) -> None:
    campaign, srv = campaign_server
    model = campaign.models[(0.1, 2)]
    r = httpx.get(srv.url + "/path", params={"from": campaign.dataset, "to": model})
    body = r.json()
    assert body["found"] is True
    assert body["nodes"][0] == campaign.dataset and body["nodes"][-1] == model
    assert body == json.loads(json.dumps(lineage_mod.path(campaign.store, campaign.dataset, model)))
    assert httpx.get(srv.url + "/path", params={"from": model, "to": "urn:nope"}).status_code == 404


def test_named_queries_api(campaign_server: tuple[Campaign, RunningServer]) -> None:
    campaign, srv = campaign_server
    listing = httpx.get(srv.url + "/queries").json()
    names = {q["name"]: q for q in listing}
    assert "failed_tasks" in names and "hyperparams_vs_kpis" in names
    assert any(p["name"] == "function" for p in names["hyperparams_vs_kpis"]["params"])
    r = httpx.get(srv.url + "/queries/failed_tasks")
    assert r.status_code == 200
    assert len(r.json()["results"]["bindings"]) == sum(t["status"] == "failed" for t in campaign.tasks)
    honest = httpx.get(srv.url + "/queries/hyperparams_vs_kpis", params={"function": "train"}).json()
    expected = run_named(campaign.store, "hyperparams_vs_kpis", {"function": "train"})
    assert len(honest["results"]["bindings"]) == len(list(expected)) > 0
    # a value that would widen the query if it were spliced into the text matches nothing
    for evil in ['train" } UNION { ?a ?b ?c } #', "train' || true || '", 'x") || true || ("', "train\n} #"]:
        r = httpx.get(srv.url + "/queries/hyperparams_vs_kpis", params={"function": evil})
        assert r.status_code == 200
        assert r.json()["results"]["bindings"] == []
    csv_ = httpx.get(srv.url + "/queries/failed_tasks", params={"format": "csv"})
    assert csv_.headers["content-type"].startswith("text/csv")
    assert httpx.get(srv.url + "/queries/no_such_query").status_code == 404
    assert httpx.get(srv.url + "/queries/failed_tasks", params={"bogus": "1"}).status_code == 400


def test_metrics_route(campaign_server: tuple[Campaign, RunningServer]) -> None:
    _, srv = campaign_server
    r = httpx.get(srv.url + "/metrics")
    assert r.status_code == 200
    assert r.text == "provgraph_up 1\n"


def test_endpoint_in_front_of_an_oxigraph_server(tmp_path: Path) -> None:
    """``store_url`` deployments: the endpoint serves a RemoteStore the same way."""
    campaign = record_campaign(tmp_path)
    with oxigraph_server(tmp_path / "ox") as ox_url:
        remote = RemoteStore(ox_url)
        remote.load(campaign.store.dump("nquads"), "nquads")
        with start(build_app(remote, load_settings())) as srv:
            url = srv.url + "/sparql"
            count = PREFIXES + "SELECT (COUNT(DISTINCT ?t) AS ?n) WHERE { ?t a pg:Task }"
            n = httpx.get(url, params={"query": count}).json()["results"]["bindings"][0]["n"]["value"]
            assert int(n) == campaign.store.count("https://w3id.org/provgraph/ns#Task")
            assert httpx.get(url, params={"query": "ASK { ?s ?p ?o }"}, headers={"Accept": "text/csv"}).text == "true"
            construct = PREFIXES + "CONSTRUCT { ?t a pg:Task } WHERE { ?t a pg:Task }"
            r = httpx.get(url, params={"query": construct}, headers={"Accept": "application/n-triples"})
            assert len(list(ox.parse(r.content, format=ox.RdfFormat.N_TRIPLES))) == int(n)
            g = campaign.store.named_graphs()[0]
            r = httpx.get(srv.url + "/rdf-graphs/service", params={"graph": g},
                          headers={"Accept": "application/n-triples"})
            assert len(list(ox.parse(r.content, format=ox.RdfFormat.N_TRIPLES))) == len(list(campaign.store.quads(g)))
            model = campaign.models[(0.1, 2)]
            up = httpx.get(srv.url + "/lineage", params={"node": model}).json()
            assert {x["id"] for x in up["nodes"]} == {
                x["id"] for x in lineage_mod.lineage(campaign.store, model, "upstream")["nodes"]}
            r = httpx.get(url, params={"query": count, "default-graph-uri": g})
            assert r.status_code == 400
            assert "FROM" in r.text
            assert httpx.get(url, params={"query": "SELECT * WHERE { ?s ?p }"}).status_code == 400
