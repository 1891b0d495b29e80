"""The Dask observer on real clusters: LocalCluster (processes, threads) and the dask CLI."""

from __future__ import annotations

import itertools
import os
import socket
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import provgraph
from provgraph.hashing import hash_array
from provgraph.settings import load_settings

from .support.dask_cluster import cli_cluster, journal_store, local_client, rows

pg_dask = pytest.importorskip("provgraph.adapters.dask")

N = 12  # tasks per map; two chained maps → 2N activities


def make_array(i: int) -> np.ndarray:
    return np.arange(i + 2, dtype=np.float64)  # >= 2 elements: a hashed artifact


def summarize(x: np.ndarray, scale: int = 2) -> float:
    if len(x) % 5 == 0:
        raise ValueError(f"bad length {len(x)}")
    return float(x.sum() * scale)


def _settings(**kw: Any) -> Any:
    return load_settings(transport="journal", flush_interval=0.05, **kw)


def test_processes_chained_maps_failures_links_and_errors() -> None:
    settings = _settings()
    with local_client(processes=True) as client:
        observer = pg_dask.register(client, workflow="chained-maps", campaign="dask-test", settings=settings)
        first = client.map(make_array, range(N))
        second = client.map(summarize, first)
        results = client.gather(second, errors="skip")
        assert observer.close(timeout=30)
        keys_first = {str(f.key): i for i, f in enumerate(first)}
        keys_second = {str(f.key): i for i, f in enumerate(second)}
        worker_hosts = set(client.run(socket.gethostname).values())
    failing = {i for i in range(N) if (i + 2) % 5 == 0}
    assert len(results) == N - len(failing)

    store = journal_store(settings)
    graph = f"urn:provgraph:local/graph/{observer.run.run_id}"
    tasks = rows(store, f"""SELECT ?t ?key ?label ?status ?fn ?host ?start ?end ?sub ?attempt WHERE {{
        GRAPH <{graph}> {{ ?t a prov:Activity, pg:Task ; pg:externalId ?key ; rdfs:label ?label ;
           pg:status ?status ; pg:function ?fn ; prov:atLocation ?h ; prov:startedAtTime ?start ;
           prov:endedAtTime ?end ; pg:submittedAtTime ?sub ; pg:attempt ?attempt .
           ?h pg:hostname ?host }} }}""")
    assert len(tasks) == 2 * N, f"expected one activity per task, got {len(tasks)}"
    assert {r["key"] for r in tasks} == set(keys_first) | set(keys_second)
    for r in tasks:
        # as datetimes: the store writes xsd:dateTime canonically (trailing zeros dropped)
        sub, start, end = (datetime.fromisoformat(r[k].replace("Z", "+00:00")) for k in ("sub", "start", "end"))
        assert sub <= start <= end, r
        assert r["attempt"] == "1" and r["host"] in worker_hosts
        assert r["label"] == ("make_array" if r["key"] in keys_first else "summarize")
        assert r["fn"].endswith("test_dask_adapter." + r["label"])
    failed = {keys_second[r["key"]] for r in tasks if r["status"] == "failed"}
    assert failed == failing
    assert all(r["status"] == "finished" for r in tasks if r["key"] not in keys_second
               or keys_second[r["key"]] not in failing)

    errors = rows(store, f"""SELECT ?key ?type ?msg ?tb WHERE {{ GRAPH <{graph}> {{
        ?t pg:externalId ?key ; pg:errorType ?type ; pg:errorMessage ?msg ; pg:traceback ?tb }} }}""")
    assert sorted((keys_second[e["key"]], e["type"], e["msg"]) for e in errors) == sorted(
        (i, "ValueError", f"bad length {i + 2}") for i in failing)
    assert all("raise ValueError" in e["tb"] for e in errors)

    # dependency links: each summarize task was informed by the make_array task that made its
    # input, and used the very array (same content hash) that task generated
    links = rows(store, f"""SELECT ?gk ?fk ?e ?pname WHERE {{ GRAPH <{graph}> {{
        ?g pg:externalId ?gk ; prov:wasInformedBy ?f ; prov:used ?e ; prov:qualifiedUsage ?u .
        ?u prov:entity ?e ; pg:parameterName ?pname .
        ?f pg:externalId ?fk . ?e a pg:DataArtifact ; prov:wasGeneratedBy ?f }} }}""")
    assert len(links) == N
    for link in links:
        i = keys_second[link["gk"]]
        assert keys_first[link["fk"]] == i and link["pname"] == "x"
        assert link["e"] == hash_array(make_array(i))
    # defaults are bound to parameter names; results are generated values
    scales = rows(store, f"""SELECT ?v WHERE {{ GRAPH <{graph}> {{ ?g prov:used ?e .
        ?e pg:parameterName "scale" ; prov:value ?v }} }}""")
    assert [r["v"] for r in scales] == ["2"] * N
    outs = rows(store, f"""SELECT ?key ?v WHERE {{ GRAPH <{graph}> {{ ?e prov:wasGeneratedBy ?g ;
        pg:parameterName "return" ; prov:value ?v . ?g pg:externalId ?key ; rdfs:label "summarize" }} }}""")
    assert sorted(float(r["v"]) for r in outs) == sorted(results)
    run = rows(store, f"""SELECT ?label ?end ?campaign WHERE {{ GRAPH <{graph}> {{
        ?r a pg:WorkflowRun ; rdfs:label ?label ; prov:endedAtTime ?end ; pg:inCampaign ?campaign }} }}""")
    assert len(run) == 1 and run[0]["label"] == "chained-maps" and run[0]["campaign"].endswith("dask-test")


_flaky_calls = itertools.count()
_flaky_lock = threading.Lock()


def flaky(x: int) -> int:
    with _flaky_lock:
        n = next(_flaky_calls)
    if n < 2:
        raise RuntimeError(f"transient failure {n}")
    return x * 10


def total(values: list[float], weight: float = 1.0) -> float:
    return sum(values) * weight


def test_threads_retries_containers_and_capture_emitter(memory: provgraph.MemoryTransport) -> None:
    # threaded LocalCluster in this process: the observer reuses the capture emitter (memory)
    with local_client(processes=False) as client, provgraph.workflow("threaded") as run:
        observer = pg_dask.register(client)
        assert observer.run is run
        retried = client.submit(flaky, 4, retries=3)
        a, b = client.submit(make_array, 2), client.submit(make_array, 3)
        combined = client.submit(total, [client.submit(np.sum, a), client.submit(np.sum, b)], weight=0.5)
        assert retried.result() == 40 and combined.result() == 8.0
        assert observer.close()
        keys = {"retried": str(retried.key), "combined": str(combined.key)}
    provgraph.flush()
    store = provgraph.Store(None)
    store.load(memory.nquads().encode(), "nquads")
    graph = f"urn:provgraph:local/graph/{run.run_id}"
    attempts = rows(store, f"""SELECT ?t ?status ?attempt ?msg WHERE {{ GRAPH <{graph}> {{
        ?t pg:externalId "{keys['retried']}" ; pg:status ?status ; pg:attempt ?attempt .
        OPTIONAL {{ ?t pg:errorMessage ?msg }} }} }} ORDER BY ?attempt""")
    assert [(r["status"], r["attempt"], r["msg"]) for r in attempts] == [
        ("failed", "1", "transient failure 0"), ("failed", "2", "transient failure 1"), ("finished", "3", None)]
    assert attempts[2]["t"].endswith(pg_dask.dask_task_id(run.run_id, keys["retried"]))
    # a list of futures is bound to its parameter; each element's task informed the consumer
    deps = rows(store, f"""SELECT ?label WHERE {{ GRAPH <{graph}> {{
        ?t pg:externalId "{keys['combined']}" ; prov:wasInformedBy ?d . ?d rdfs:label ?label }} }}""")
    assert sorted(r["label"] for r in deps) == ["sum", "sum"]
    used = rows(store, f"""SELECT ?name ?v WHERE {{ GRAPH <{graph}> {{
        ?t pg:externalId "{keys['combined']}" ; prov:used ?e . ?e pg:parameterName ?name .
        OPTIONAL {{ ?e prov:value ?v }} }} }}""")
    names = {r["name"]: r["v"] for r in used}
    assert set(names) == {"values", "weight"} and names["weight"] == "0.5"
    assert "6.0" in names["values"] and "10.0" in names["values"]  # the list as the function received it
    activities = rows(store, f"SELECT (COUNT(?t) AS ?n) WHERE {{ GRAPH <{graph}> {{ ?t a pg:Task }} }}")
    assert activities[0]["n"] == str(3 + 2 + 2 + 1)  # 3 attempts, 2 arrays, 2 sums, 1 total


class Unmappable:
    """A result provgraph chokes on: looking up any missing attribute raises."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"no {name} for you")


def unmappable(i: int) -> Unmappable:
    return Unmappable()


def test_provgraph_failures_never_break_the_job(memory: provgraph.MemoryTransport) -> None:
    with local_client(processes=False) as client:
        observer = pg_dask.register(client, workflow="robust")
        bad = client.map(unmappable, range(3))
        good = client.map(make_array, range(3))
        assert all(isinstance(r, Unmappable) for r in client.gather(bad))
        assert [len(r) for r in client.gather(good)] == [2, 3, 4]
        assert observer.close()
    provgraph.flush()
    assert provgraph.get_emitter().stats()["failed_records"] >= 3
    store = provgraph.Store(None)
    store.load(memory.nquads().encode(), "nquads")
    n = rows(store, 'SELECT (COUNT(?t) AS ?n) WHERE { ?t a pg:Task ; rdfs:label "make_array" }')
    assert n[0]["n"] == "3"


def test_cli_started_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the workers import this module's functions (cloudpickle pickles them by reference)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    settings = _settings()
    with cli_cluster(tmp_path, n_workers=2) as address:
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
            observer = pg_dask.register(client, workflow="cli", settings=settings)
            futures = client.map(summarize, client.map(make_array, range(6)))
            assert len(client.gather(futures, errors="skip")) == 5
            assert observer.flush()
            assert observer.close()
            pids = set(client.run(os.getpid).values())
    store = journal_store(settings)
    res = rows(store, f"""SELECT ?status (COUNT(?t) AS ?n) WHERE {{
        GRAPH <urn:provgraph:local/graph/{observer.run.run_id}> {{ ?t a pg:Task ; pg:status ?status }} }}
        GROUP BY ?status ORDER BY ?status""")
    assert [(r["status"], r["n"]) for r in res] == [("failed", "1"), ("finished", "11")]
    # the records were written by the worker processes themselves
    writers = {int(p.stem.rsplit("-", 1)[1]) for p in settings.journal_dir.glob("*.nq")}
    assert pids <= writers
