"""``Client.tasks``: FlowCept-style filter / projection / aggregation / sort / limit over
recorded tasks equals the same computation done in Python, on every backend; user
values and field names cannot change a query's meaning."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from statistics import mean
from typing import Any

import pytest

import provgraph
from provgraph.client import Client
from provgraph.errors import QueryError
from provgraph.testing import capture
from tests.test_client import BACKENDS, clients
from tests.test_server_protocol import Campaign, record_campaign


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Campaign:
    return record_campaign(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def backends(campaign: Campaign, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Client]]:
    with clients(campaign, tmp_path_factory.mktemp("backends")) as found:
        yield found


@pytest.fixture(params=BACKENDS)
def client(request: pytest.FixtureRequest, backends: dict[str, Client]) -> Client:
    return backends[request.param]


def trains(c: Campaign, keep: Callable[[dict[str, Any]], bool] = lambda t: True) -> list[dict[str, Any]]:
    return [t for t in c.tasks if keep(t)]


def key(doc: dict[str, Any]) -> tuple[float, int]:
    return doc["used"]["lr"], doc["used"]["layers"]


def test_documents_hold_every_field(client: Client, campaign: Campaign) -> None:
    docs = client.tasks(filter={"name": "train"})
    assert isinstance(docs, list)
    assert [key(d) for d in docs] == [(t["lr"], t["layers"]) for t in campaign.tasks]  # start order
    for d, t in zip(docs, campaign.tasks, strict=True):
        assert d["workflow"] == t["workflow"] and d["campaign"] == "sm-bfo" and d["status"] == t["status"]
        assert d["used"]["optimizer"] == t["optimizer"] and d["used"]["dataset"] == campaign.dataset
        assert d["generated"].get("loss") == t["loss"] and d["generated"].get("accuracy") == t["accuracy"]
        assert d["started_at"] <= d["ended_at"] and d["id"].startswith("urn:provgraph:")
        assert d["name"] == "train" and d["host"] and d["user"] and d["run"].startswith("urn:provgraph:")
        if t["status"] == "failed":
            assert d["error_type"] == "ValueError" and d["error"] == "too deep"
            assert d["generated"] == {}
        else:
            assert d["generated"]["model"] == campaign.models[(t["lr"], t["layers"])]


@pytest.mark.parametrize(("flt", "expect"), [
    ({"generated.loss": {"$lt": 0.1}}, lambda t: t["loss"] is not None and t["loss"] < 0.1),
    ({"generated.loss": {"$gte": 0.08, "$lte": 0.44}}, lambda t: t["loss"] is not None and 0.08 <= t["loss"] <= 0.44),
    ({"used.lr": 0.01}, lambda t: t["lr"] == 0.01),
    ({"used.layers": {"$gt": 3}, "used.optimizer": "adam"}, lambda t: t["layers"] > 3 and t["optimizer"] == "adam"),
    ({"$or": [{"used.optimizer": "sgd"}, {"used.layers": {"$gte": 4}}]},
     lambda t: t["optimizer"] == "sgd" or t["layers"] >= 4),
    ({"$and": [{"workflow": "refine"}, {"status": {"$ne": "failed"}}]},
     lambda t: t["workflow"] == "refine" and t["status"] != "failed"),
    ({"$nor": [{"used.optimizer": "adam"}, {"workflow": "refine"}]},
     lambda t: not (t["optimizer"] == "adam" or t["workflow"] == "refine")),
    ({"used.layers": {"$in": [2, 5]}}, lambda t: t["layers"] in (2, 5)),
    ({"used.layers": {"$nin": [2, 5]}}, lambda t: t["layers"] not in (2, 5)),
    ({"used.optimizer": {"$regex": "^AD", "$options": "i"}}, lambda t: t["optimizer"] == "adam"),
    ({"generated.loss": {"$exists": False}}, lambda t: t["loss"] is None),
    ({"generated.accuracy": {"$exists": True}, "campaign": "sm-bfo"}, lambda t: t["accuracy"] is not None),
    ({"used.optimizer": {"$ne": 3}}, lambda t: True),  # a number never equals a string: $ne matches all
    ({"used.optimizer": {"$gt": 1}}, lambda t: False),  # comparing a string with a number is false
    ({"status": "failed"}, lambda t: t["status"] == "failed"),
])
def test_filters_match_python(client: Client, campaign: Campaign, flt: dict[str, Any],
                              expect: Callable[[dict[str, Any]], bool]) -> None:
    got = client.tasks(filter={"name": "train", **flt}, projection=["used.lr", "used.layers"])
    assert isinstance(got, list)
    assert sorted(key(d) for d in got) == sorted((t["lr"], t["layers"]) for t in trains(campaign, expect))


def test_projection_sort_limit(client: Client, campaign: Campaign) -> None:
    got = client.tasks(filter={"name": "train", "generated.loss": {"$lt": 0.5}},
                       projection=["used.lr", "generated.loss", "workflow"],
                       sort=[("generated.loss", 1)], limit=4)
    ok = sorted(trains(campaign, lambda t: t["loss"] is not None and t["loss"] < 0.5), key=lambda t: t["loss"])[:4]
    assert isinstance(got, list)
    assert [(d["used"]["lr"], d["generated"]["loss"], d["workflow"]) for d in got] == [
        (t["lr"], t["loss"], t["workflow"]) for t in ok]
    assert all(set(d) == {"id", "used", "generated", "workflow"} for d in got)
    # two sort keys, descending then ascending
    got = client.tasks(filter={"name": "train"}, projection=["used.optimizer", "used.layers", "used.lr"],
                       sort=[("used.optimizer", -1), ("used.layers", 1), ("used.lr", 1)])
    expected = sorted(campaign.tasks, key=lambda t: (t["optimizer"], -t["layers"], -t["lr"]), reverse=True)
    assert [(d["used"]["optimizer"], d["used"]["layers"], d["used"]["lr"]) for d in got] == [
        (t["optimizer"], t["layers"], t["lr"]) for t in expected]
    top = client.tasks(filter={"name": "train"}, sort=[("generated.accuracy", -1)], limit=1,
                       projection=["generated.accuracy"])
    assert top[0]["generated"]["accuracy"] == max(t["accuracy"] for t in campaign.tasks if t["accuracy"])


def test_aggregation_with_group_keys(client: Client, campaign: Campaign) -> None:
    got = client.tasks(filter={"name": "train", "status": "finished"},
                       aggregation=[("max", "generated.accuracy"), ("min", "generated.loss"), ("avg", "used.lr"),
                                    ("sum", "used.layers"), ("count", "id")],
                       group_by=["workflow", "used.optimizer"], sort=[("max_generated_accuracy", -1)])
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for t in trains(campaign, lambda t: t["status"] == "finished"):
        groups.setdefault((t["workflow"], t["optimizer"]), []).append(t)
    expected = sorted(
        ({"workflow": wf, "used.optimizer": opt, "max_generated_accuracy": max(t["accuracy"] for t in ts),
          "min_generated_loss": min(t["loss"] for t in ts), "avg_used_lr": mean(t["lr"] for t in ts),
          "sum_used_layers": sum(t["layers"] for t in ts), "count_id": len(ts)}
         for (wf, opt), ts in groups.items()), key=lambda r: -r["max_generated_accuracy"])
    assert isinstance(got, list)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert set(g) == set(e)
        for k, v in e.items():
            assert g[k] == pytest.approx(v) if isinstance(v, float) else g[k] == v, k


def test_aggregation_without_groups_and_with_limit(client: Client, campaign: Campaign) -> None:
    got = client.tasks(filter={"name": "train"}, aggregation=[("count", "id"), ("max", "used.layers")])
    assert got == [{"count_id": len(campaign.tasks), "max_used_layers": max(t["layers"] for t in campaign.tasks)}]
    per_wf = client.tasks(filter={"name": "train"}, aggregation=[("count", "id")], group_by="workflow",
                          sort=[("count_id", -1)], limit=1)
    counts: dict[str, int] = {}
    for t in campaign.tasks:
        counts[t["workflow"]] = counts.get(t["workflow"], 0) + 1
    best = max(counts, key=lambda k: counts[k])
    assert per_wf == [{"workflow": best, "count_id": counts[best]}]


def test_as_frame(client: Client, campaign: Campaign) -> None:
    frame = client.tasks(filter={"name": "train"}, projection=["used.lr", "generated.loss"], as_frame=True)
    assert list(frame["used.lr"]) == [t["lr"] for t in campaign.tasks]  # type: ignore[index]
    losses = list(frame["generated.loss"])  # type: ignore[index]
    assert [None if isinstance(x, float) and math.isnan(x) else x for x in losses] == [
        t["loss"] for t in campaign.tasks]
    agg = client.tasks(filter={"name": "train"}, aggregation=[("count", "id")], group_by="used.optimizer",
                       as_frame=True)
    assert dict(zip(agg["used.optimizer"], agg["count_id"], strict=True)) == {  # type: ignore[index]
        "adam": sum(t["optimizer"] == "adam" for t in campaign.tasks),
        "sgd": sum(t["optimizer"] == "sgd" for t in campaign.tasks)}


# -- injection --------------------------------------------------------------------------------
NASTY = [
    'plain',
    'a"b',
    "it's",
    'x" } ?s ?p ?o #',
    '"} UNION { ?t ?p ?o } #',
    "> . ?s ?p ?o",
    "close } brace",
    "# not a comment",
    "two\nlines",
    "carriage\rreturn",
    "back\\slash",
    "\\u0022 escaped quote",
    "\\\\u0022 twice",
    "'''triple'''",
    '"""triple"""',
    "\\",
    "tab\tand\x01control",
    "ünïcödé ✓",
]


@pytest.fixture(scope="module")
def nasty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Client]]:
    @provgraph.task
    def tagged(tag: str, n: int) -> dict[str, Any]:
        return {"label": tag, "n": n}

    with capture() as cap:
        with provgraph.workflow("nasty"):
            for i, tag in enumerate(NASTY):
                tagged(tag, i)
        store = cap.store()
    campaign = Campaign(store, [], "", {})
    with clients(campaign, tmp_path_factory.mktemp("nasty")) as found:
        yield found


@pytest.mark.parametrize("backend", ["embedded", "oxigraph"])
def test_values_cannot_change_the_query(nasty: dict[str, Client], backend: str) -> None:
    client = nasty[backend]
    everything = client.tasks(filter={"name": "tagged"}, projection=["used.tag", "used.n"])
    assert isinstance(everything, list)
    assert sorted(d["used"]["n"] for d in everything) == list(range(len(NASTY)))
    assert {d["used"]["n"]: d["used"]["tag"] for d in everything} == dict(enumerate(NASTY))
    for i, tag in enumerate(NASTY):
        hit = client.tasks(filter={"used.tag": tag}, projection=["used.n"])
        assert [d["used"]["n"] for d in hit] == [i], tag  # exactly the honest answer
        assert [d["used"]["n"] for d in client.tasks(filter={"generated.label": {"$in": [tag]}},
                                                      projection=["used.n"])] == [i]
        others = client.tasks(filter={"name": "tagged", "used.tag": {"$ne": tag}}, projection=["used.n"])
        assert len(others) == len(NASTY) - 1
        agg = client.tasks(filter={"used.tag": tag}, aggregation=[("count", "id")], group_by="used.tag")
        assert agg == [{"used.tag": tag, "count_id": 1}]
    for pattern in ['a"b', 'x" \\} \\?s \\?p \\?o #', '^a"b$', "\\\\", "[}#]", "\\)|true|\\(", "^\\\\u0022"]:
        hit = client.tasks(filter={"name": "tagged", "used.tag": {"$regex": pattern}}, projection=["used.n"])
        assert sorted(d["used"]["n"] for d in hit) == [i for i, t in enumerate(NASTY) if re.search(pattern, t)]


@pytest.mark.parametrize("bad", [
    {"used.tag } ?s ?p ?o": 1},
    {'name" . ?s ?p ?o': 1},
    {"used.": 1},
    {"used.tag\n": 1},
    {"name\n": "tagged"},
    {"unknown_field": 1},
    {"$where": "1"},
    {"used.tag": {"$bogus": 1}},
    {"used.tag": {"$regex": "x", "$options": "i) || true || ("}},
    {"used.tag": {"$regex": '") || true || ("'}},
    {"id": "urn:x> . ?s ?p ?o . <urn:y"},
    {"used.n": {"$gt": [1]}},
    {"used.n": {"$in": 3}},
    {"used.n": object()},
])
def test_bad_filters_are_refused(nasty: dict[str, Client], bad: dict[str, Any]) -> None:
    with pytest.raises(QueryError):
        nasty["embedded"].tasks(filter=bad)


@pytest.mark.parametrize("kwargs", [
    {"projection": ["used.n } ?s"]},
    {"sort": [("generated.label ?x", 1)]},
    {"sort": [("used.n", "sideways")]},
    {"limit": "5; DROP ALL"},
    {"limit": -1},
    {"aggregation": [("max(?x)) (", "id")]},
    {"aggregation": [("max", "id ?x")]},
    {"aggregation": [("count", "id")], "sort": [("nope", 1)]},
    {"group_by": ["used.n"]},
])
def test_bad_arguments_are_refused(nasty: dict[str, Client], kwargs: dict[str, Any]) -> None:
    with pytest.raises(QueryError):
        nasty["embedded"].tasks(**kwargs)


def test_filter_by_iri_fields(nasty: dict[str, Client], tmp_path: Path) -> None:
    client = nasty["embedded"]
    docs = client.tasks(filter={"name": "tagged"}, projection=["run"], limit=2)
    assert isinstance(docs, list)
    one = client.tasks(filter={"id": docs[1]["id"]}, projection=["used.n"])
    assert [d["id"] for d in one] == [docs[1]["id"]]
    assert len(client.tasks(filter={"run": docs[0]["run"]})) == len(NASTY)


def test_time_filters(client: Client) -> None:
    docs = client.tasks(filter={"name": "train"}, projection=["started_at", "ended_at"])
    assert isinstance(docs, list) and len(docs) > 4
    cut = docs[3]["started_at"]
    later = client.tasks(filter={"name": "train", "started_at": {"$gte": cut}}, projection=["started_at"])
    assert [d["id"] for d in later] == [d["id"] for d in docs if d["started_at"] >= cut]
    before = client.tasks(filter={"name": "train", "ended_at": {"$lt": cut}}, projection=["ended_at"])
    assert [d["id"] for d in before] == [d["id"] for d in docs if d["ended_at"] < cut]
    naive = cut.replace(tzinfo=None)  # naive datetimes are taken as UTC
    assert len(client.tasks(filter={"name": "train", "started_at": {"$gte": naive}})) == len(later)
