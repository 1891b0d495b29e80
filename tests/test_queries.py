"""The named-query library, checked on a campaign recorded with the real capture API
(decorated tasks writing files, ``provgraph.used``, a failing task, task telemetry), on
the embedded store and on a real Oxigraph server; and parameter binding that no
parameter value can escape."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pyoxigraph as ox
import pytest

import provgraph
from provgraph import queries
from provgraph.errors import NotFoundError, QueryError
from provgraph.hashing import FileHasher
from provgraph.lineage import lineage
from provgraph.remote import RemoteStore
from tests.support import provdag
from tests.support.servers import oxigraph_server

ROOT = Path(__file__).resolve().parent.parent
EXPECTED_NAMES = {"upstream", "downstream", "cross_workflow", "run_timeline", "failed_tasks", "top_k_models",
                  "hyperparams_vs_kpis", "hyperparams_vs_telemetry", "lineage_chain"}


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    recorded = provdag.record_campaign(tmp_path_factory.mktemp("campaign"))
    store = provgraph.Store()
    store.add_nquads(str(recorded["nquads"]))
    recorded["store"] = store
    hasher = FileHasher()
    recorded["iri"] = {}
    for key in ("raw", "clean", "best", "report", "config"):
        found = hasher.hash_path(str(recorded[key]))
        assert found is not None
        recorded["iri"][key] = found[0]
    recorded["model_iri"] = {lr: hasher.hash_path(str(p))[0]  # type: ignore[index]
                             for lr, p in recorded["models"].items()}  # type: ignore[union-attr]
    with oxigraph_server(tmp_path_factory.mktemp("oxigraph")) as url:
        remote = RemoteStore(url)
        remote.load(str(recorded["nquads"]), "nquads")
        recorded["remote"] = remote
        yield recorded


def rows(result: Any) -> list[dict[str, Any]]:
    names = [v.value for v in result.variables]
    out = []
    for sol in result:
        out.append({n: (None if sol[n] is None else sol[n].value) for n in names})
    return out


def run(store: Any, name: str, **params: Any) -> list[dict[str, Any]]:
    return rows(queries.run(store, name, params))


# -- the files ------------------------------------------------------------------------------


def test_library_has_every_query_with_a_header() -> None:
    found = {q.name: q for q in queries.list_queries()}
    assert set(found) >= EXPECTED_NAMES
    for q in found.values():
        assert q.path is not None and q.path.stem == q.name
        assert len(q.purpose) > 40, q.name
        head = q.sparql.split("PREFIX", 1)[0]
        assert "# params:" in head, q.name
        for p in q.params:
            assert p.type in ("iri", "string", "integer", "double", "boolean", "datetime")
            assert p.description, (q.name, p.name)
            # pyoxigraph substitutes projected variables only
            select = re.search(r"^SELECT\b(.*?)$", q.sparql, re.M)
            assert select and f"?{p.name} " in select.group(1) + " ", (q.name, p.name)
        # every query parses and runs on an empty store (optional parameters unbound)
        required = {p.name: _sample(p.type) for p in q.params if not p.optional}
        assert rows(queries.run(provgraph.Store(), q, required)) == []


def _sample(ptype: str) -> Any:
    return {"iri": "urn:x:nothing", "string": "x", "integer": 1, "double": 1.0, "boolean": True,
            "datetime": "2026-01-01T00:00:00+00:00"}[ptype]


def test_packaged_library_matches_the_checkout() -> None:
    assert queries.library_dir() == ROOT / "queries"
    top = queries.load_query("top_k_models")
    assert [p.name for p in top.params] == ["metric", "k", "order", "model"]
    assert top.param("order").default == "desc" and top.param("model").optional
    k = top.param("k")
    assert k.default == "5" and k.optional and k.type == "integer"
    assert "default 5" in k.describe()


def test_unknown_names_and_parameters() -> None:
    with pytest.raises(NotFoundError, match="upstream"):  # the message lists the known names
        queries.load_query("no_such_query")
    with pytest.raises(NotFoundError):
        queries.load_query("../pyproject")
    q = queries.load_query("upstream")
    with pytest.raises(QueryError, match="needs parameter"):
        queries.bind(q, {})
    with pytest.raises(QueryError, match="no parameter 'nod'"):
        queries.bind(q, {"nod": "urn:x"})
    with pytest.raises(QueryError, match="invalid integer"):
        queries.bind(queries.load_query("top_k_models"), {"metric": "a", "model": "m", "k": "two"})


# -- answers on a captured campaign ------------------------------------------------------------


def test_upstream_and_downstream_equal_the_lineage_api(campaign: dict[str, Any]) -> None:
    store = campaign["store"]
    for name, node, direction in (("upstream", campaign["iri"]["report"], "upstream"),
                                  ("downstream", campaign["iri"]["raw"], "downstream"),
                                  ("upstream", campaign["model_iri"][0.1], "upstream")):
        got = {(r["from"], r["relation"].rsplit("#", 1)[-1], r["to"]) for r in run(store, name, node=node)}
        want = {(e["source"], e["relation"], e["target"]) for e in lineage(store, node, direction)["edges"]}
        assert got == want and got, name
    # the report's lineage crosses all three workflows, by content hash only
    ups = run(store, "upstream", node=campaign["iri"]["report"])
    assert {r["label"] for r in ups if r["label"]} == {"evaluate", "train", "preprocess", "acquire"}
    assert campaign["iri"]["config"] in {r["to"] for r in ups}  # declared with provgraph.used


def test_cross_workflow_links(campaign: dict[str, Any]) -> None:
    links = {(r["artifact"], r["workflowA"], r["roleA"], r["workflowB"], r["roleB"])
             for r in run(campaign["store"], "cross_workflow")}
    assert links == {
        (campaign["iri"]["raw"], "acquire", "generated", "hpsearch", "used"),
        (campaign["model_iri"][0.1], "hpsearch", "generated", "evaluate", "used"),
    }
    assert campaign["iri"]["best"] == campaign["model_iri"][0.1]  # the copy is the same entity


def test_run_timeline(campaign: dict[str, Any]) -> None:
    timeline = run(campaign["store"], "run_timeline", runId=campaign["runs"]["hpsearch"])
    assert [r["label"] for r in timeline] == ["preprocess", "train", "train", "train", "train"]
    assert [r["status"] for r in timeline] == ["finished", "finished", "finished", "finished", "failed"]
    # compare instants, not strings: xsd:dateTime is stored canonically (trailing zeros dropped)
    start = [datetime.fromisoformat(r["started"].replace("Z", "+00:00")) for r in timeline]
    end = [datetime.fromisoformat(r["ended"].replace("Z", "+00:00")) for r in timeline]
    assert all(s <= e for s, e in zip(start, end, strict=True))
    assert all(r["duration"].startswith("PT") for r in timeline)
    assert start == sorted(start)
    assert {r["runId"] for r in timeline} == {campaign["runs"]["hpsearch"]}
    assert run(campaign["store"], "run_timeline", runId="no-such-run") == []


def test_failed_tasks(campaign: dict[str, Any]) -> None:
    failed = run(campaign["store"], "failed_tasks")
    assert len(failed) == 1
    f = failed[0]
    assert (f["label"], f["workflow"], f["errorType"]) == ("train", "hpsearch", "ValueError")
    assert f["errorMessage"] == "training diverged at lr=0.9" and "ValueError" in f["traceback"]
    assert run(campaign["store"], "failed_tasks", workflow="hpsearch") == failed
    assert run(campaign["store"], "failed_tasks", workflow="acquire") == []


def test_top_k_models_with_their_lineage(campaign: dict[str, Any]) -> None:
    top = run(campaign["store"], "top_k_models", metric="accuracy", model="model", k=2)
    ranked = sorted({(int(r["rank"]), r["modelArtifact"], float(r["score"])) for r in top})
    assert ranked == [(1, campaign["model_iri"][0.1], 0.9), (2, campaign["model_iri"][0.01], 0.81)]
    best = [r for r in top if r["rank"] == "1"]
    assert {r["upstreamLabel"] for r in best} == {"train", "preprocess", "acquire"}
    assert {r["upstreamArtifact"] for r in best} >= {campaign["iri"]["raw"], campaign["iri"]["clean"],
                                                    campaign["model_iri"][0.1]}
    default_k = run(campaign["store"], "top_k_models", metric="accuracy", model="model")
    assert {r["modelArtifact"] for r in default_k} == set(campaign["model_iri"].values())  # k=5 ≥ 3 models
    assert run(campaign["store"], "top_k_models", metric="loss", model="model", k=1)[0]["score"] == "0.6"
    # lower is better: the smallest loss first (lr 0.01: loss 0.02, then 0.1: 0.2)
    low = run(campaign["store"], "top_k_models", metric="loss", k=2, order="asc", model="model")
    assert sorted({(int(r["rank"]), r["modelArtifact"], r["score"]) for r in low}) == [
        (1, campaign["model_iri"][0.01], "0.02"), (2, campaign["model_iri"][0.1], "0.2")]
    # model unbound: every artifact the scoring tasks generated or used, ranked per name
    # (train used the cleaned data under "data" and generated models under "model")
    anything = run(campaign["store"], "top_k_models", metric="loss", k=2, order="asc")
    assert {r["model"] for r in anything} == {"model", "data"}
    assert {r["modelArtifact"] for r in anything if r["model"] == "data"} == {campaign["iri"]["clean"]}
    assert run(campaign["store"], "top_k_models", metric="loss", k=2, order="ascending") == []
    # an evaluation scores a model it used (not generated): ranked under the parameter's name
    scored = run(campaign["store"], "top_k_models", metric="score", model="model", k=1)
    assert {(r["modelArtifact"], r["score"]) for r in scored} == {(campaign["model_iri"][0.1], "0.77")}
    assert {r["upstreamLabel"] for r in scored} >= {"train", "preprocess", "acquire"}


def test_hyperparameters_vs_kpis(campaign: dict[str, Any]) -> None:
    table = run(campaign["store"], "hyperparams_vs_kpis", function="train")
    lr_acc = {float(r["hpValue"]): float(r["kpiValue"]) for r in table
              if r["hyperparameter"] == "lr" and r["kpi"] == "accuracy"}
    assert lr_acc == {0.01: 0.81, 0.1: 0.9, 0.3: 0.7}  # the failed lr=0.9 has no KPI
    assert {(r["hyperparameter"], r["kpi"]) for r in table} == {("lr", "accuracy"), ("lr", "loss"),
                                                                ("epochs", "accuracy"), ("epochs", "loss")}
    assert len(table) == 12
    everything = run(campaign["store"], "hyperparams_vs_kpis")
    assert {r["function"] for r in everything} == {"train", "evaluate"}


def test_hyperparameters_vs_telemetry(campaign: dict[str, Any]) -> None:
    table = run(campaign["store"], "hyperparams_vs_telemetry", function="train")
    lrs = {float(r["hpValue"]) for r in table if r["hyperparameter"] == "lr"}
    assert lrs == set(provdag.LEARNING_RATES)  # the failed task was measured too
    assert {r["phase"] for r in table} >= {"start", "end"}
    assert all(int(r["memoryRss"]) > 0 for r in table)
    assert all(float(r["cpuPercent"]) >= 0 and float(r["cpuTimeUser"]) > 0 for r in table)
    assert all(r["sampledAt"] for r in table)


def test_lineage_chain_of_a_file(campaign: dict[str, Any]) -> None:
    chain = run(campaign["store"], "lineage_chain", path=str(campaign["report"]))
    assert {(r["workflow"], r["taskLabel"]) for r in chain} == {("evaluate", "evaluate"), ("hpsearch", "train"),
                                                                ("hpsearch", "preprocess"), ("acquire", "acquire")}


def test_remote_store_gives_the_same_rows(campaign: dict[str, Any]) -> None:
    params: dict[str, dict[str, Any]] = {
        "upstream": {"node": campaign["iri"]["report"]}, "downstream": {"node": campaign["iri"]["raw"]},
        "run_timeline": {"runId": campaign["runs"]["hpsearch"]}, "failed_tasks": {"workflow": "hpsearch"},
        "top_k_models": {"metric": "accuracy", "model": "model", "k": 2},
        "hyperparams_vs_kpis": {"function": "train"}, "hyperparams_vs_telemetry": {},
        "lineage_chain": {"path": str(campaign["report"])}, "cross_workflow": {},
    }
    for q in queries.list_queries():
        local = run(campaign["store"], q.name, **params[q.name])
        remote = run(campaign["remote"], q.name, **params[q.name])
        key = sorted(map(str, local))
        assert key == sorted(map(str, remote)), q.name
        assert local, q.name


# -- parameters cannot change a query's meaning ---------------------------------------------------

HOSTILE = ['hpsearch" } UNION { ?task ?p ?o } #', "hpsearch'} . ?s ?p ?o", 'x"\n} ?s ?p ?o . {\n"',
           "> . ?s ?p ?o", "\\\" } #", '"""', "hpsearch\"@en"]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_string_parameters_cannot_escape(campaign: dict[str, Any], hostile: str) -> None:
    for store in (campaign["store"], campaign["remote"]):
        assert run(store, "failed_tasks", workflow=hostile) == []  # no workflow has that name
        assert run(store, "lineage_chain", path=hostile) == []
        assert run(store, "run_timeline", runId=hostile) == []
        assert run(store, "top_k_models", metric=hostile, model="model", k=3) == []
    text = queries.with_values(queries.load_query("failed_tasks").sparql,
                               queries.bind(queries.load_query("failed_tasks"), {"workflow": hostile}))
    values = re.findall(r"VALUES \(\?workflow\) \{ \((.*)\) \}", text, re.S)
    assert len(values) == 1 and ox.Literal(hostile) == _parse_literal(values[0])


def _parse_literal(text: str) -> ox.Literal:
    """The term the VALUES row holds, read back by pyoxigraph's N-Triples parser."""
    quad = next(iter(ox.parse(f"<urn:s> <urn:p> {text} .", format=ox.RdfFormat.N_TRIPLES)))
    assert isinstance(quad.object, ox.Literal)
    return quad.object


@pytest.mark.parametrize("hostile", ["urn:x> . ?s ?p ?o . <urn:y", "urn:x>", "urn:x }", "urn:a b", 'urn:"q"',
                                     "urn:x\n?s ?p ?o"])
def test_iri_parameters_are_validated(campaign: dict[str, Any], hostile: str) -> None:
    for store in (campaign["store"], campaign["remote"]):
        with pytest.raises(QueryError, match="invalid iri"):
            run(store, "upstream", node=hostile)


def test_typed_parameters_are_validated(campaign: dict[str, Any]) -> None:
    for bad in ("1 } UNION { ?s ?p ?o }", "1.5", "", "true"):
        with pytest.raises(QueryError):
            run(campaign["store"], "top_k_models", metric="accuracy", model="model", k=bad)


def test_with_values_finds_the_outer_where() -> None:
    sparql = ('# WHERE { in a comment\nPREFIX ex: <http://ex.org/WHERE#>\n'
              'SELECT ?x ?s WHERE { ?s ex:p "WHERE { not here" . { SELECT ?x WHERE { ?x ?p ?o } } }')
    out = queries.with_values(sparql, {"x": ox.NamedNode("urn:v")})
    assert out.count("VALUES") == 1
    assert 'SELECT ?x ?s WHERE { VALUES (?x) { (<urn:v>) }  ?s ex:p "WHERE { not here"' in out
    store = provgraph.Store()
    store.add_nquads('<urn:a> <http://ex.org/WHERE#p> "WHERE { not here" <urn:g> .\n'
                     '<urn:v> <urn:q> <urn:r> <urn:g> .\n')
    assert [r["s"].value for r in store.query(out)] == ["urn:a"]
    assert queries.with_values("ASK { ?s ?p ?o }", {"s": ox.NamedNode("urn:a")}).startswith(
        "ASK { VALUES (?s) { (<urn:a>) } ")
    with pytest.raises(QueryError):
        queries.with_values("SELECT * WHERE { ?s ?p ?o }", {"bad name": ox.Literal("x")})
