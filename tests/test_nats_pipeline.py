"""The NATS pipeline end to end with a real nats-server: transport, integrator, serve, DLQ."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pyoxigraph as ox
import pytest

import provgraph
from provgraph.errors import TransportError
from provgraph.jetstream import HDR_ERROR, HDR_FLUSH, HDR_SUBJECT, HDR_TRIPLES, subject_for
from provgraph.metrics import parse as parse_metrics
from provgraph.natsserver import NatsServer
from provgraph.settings import load_settings
from provgraph.store import Store
from provgraph.transports.base import TRIG, Batch
from provgraph.transports.nats import NatsTransport, split_batch
from tests.support.nats import (
    env_for,
    nats_server,  # noqa: F401 - fixture
    read_stream,
    running_integrator,
    serve_process,
    sparql_count,
    wait_for,
)

PROV = "http://www.w3.org/ns/prov#"
PG = "https://w3id.org/provgraph/ns#"


def _memory_batches(n: int, batch_size: int = 2000) -> list[Batch]:
    """Real emitter batches (TriG) of ``n`` tasks with content-hashed inputs and outputs."""
    memory = provgraph.MemoryTransport()
    provgraph.configure(transport=memory, batch_size=batch_size, queue_size=max(batch_size, n * 2), flush_interval=60)

    @provgraph.task
    def step(data: bytes, i: int) -> bytes:
        return data[::-1] + b"!"

    with provgraph.workflow("split", run_id="split-run"):
        for i in range(n):
            step(b"payload-%06d-" % i + b"x" * 40, i)
    assert provgraph.flush(60)
    provgraph.shutdown(10)
    return list(memory.batches)


def test_split_batch_parts_are_valid_and_lossless() -> None:
    batches = _memory_batches(300)
    batch = max(batches, key=lambda b: len(b.data))
    assert batch.content_type == TRIG and len(batch.data) > 20_000
    parts = split_batch(batch, 4096, "urn:provgraph:local/graph/")
    assert len(parts) > 5
    assert all(len(p.data) <= 4096 for p in parts)
    assert [p.msg_id for p in parts] == [f"{batch.batch_id}.{i + 1}" for i in range(len(parts))]
    whole = set(ox.parse(batch.data, format=ox.RdfFormat.TRIG))
    union: set[ox.Quad] = set()
    for p in parts:
        quads = set(ox.parse(p.data, format=ox.RdfFormat.TRIG))  # each part parses on its own
        assert p.triples == len(quads)
        union |= quads
    assert union == whole
    assert {p.run for p in parts} == {"split-run"}
    # a batch that fits is one message with the batch's own ID
    small = split_batch(batch, len(batch.data) + 1, "urn:provgraph:local/graph/")
    assert len(small) == 1 and small[0].msg_id == batch.batch_id and small[0].data is batch.data
    with pytest.raises(ValueError, match="single statement"):
        split_batch(Batch(b"<urn:a> <urn:b> \"" + b"x" * 200 + b"\" .\n", 1), 100)


def test_subject_tokens_are_sanitized() -> None:
    assert subject_for("hpc", "run.1 *>x") == "provgraph.v1.hpc.run%2E1%20%2A%3Ex"
    assert subject_for("hpc", None) == "provgraph.v1.hpc._"


_WORKFLOW = textwrap.dedent("""
    import sys, provgraph

    @provgraph.task
    def step(data: bytes, i: int) -> bytes:
        return data[::-1] + b"!"

    n = int(sys.argv[1])
    with provgraph.workflow("tenk", run_id=sys.argv[2]):
        for i in range(n):
            step(b"input-%06d-" % i + b"x" * 40, i)
    em = provgraph.get_emitter()
    ok = provgraph.flush(120)
    print(em.transport.name, ok, em.stats()["dropped"], flush=True)
""")


def _tasks_of_run(store: Store, run: str) -> int:
    return sparql_count(store, f"""SELECT (COUNT(DISTINCT ?t) AS ?n) WHERE {{
        ?t a <{PG}Task> ; <{PG}inWorkflowRun> ?r . ?r <http://purl.org/dc/terms/identifier> "{run}" }}""")


def test_ten_thousand_tasks_from_another_process(tmp_path: Path, nats_server: NatsServer) -> None:  # noqa: F811
    """10,000 decorated tasks in a subprocess → exactly 10,000 activities, each with its
    used and generated entities, through `provgraph serve` consuming the stream."""
    script = tmp_path / "wf.py"
    script.write_text(_WORKFLOW)
    data = tmp_path / "serve-data"
    run = "tenk-1"
    with serve_process(data, nats_server.url) as serve:
        wait_for(lambda: (data / "serve.json").exists(), 60, "serve.json")
        info = json.loads((data / "serve.json").read_text())
        assert info["nats_url"] == nats_server.url and info["pid"] == serve.pid
        out = subprocess.run([sys.executable, str(script), "10000", run], capture_output=True, timeout=180,
                             env=env_for(tmp_path / "emitter-data", nats_server.url))
        assert out.returncode == 0, out.stderr.decode()[-3000:]
        assert out.stdout.decode().split() == ["nats", "True", "0"]

        def committed() -> dict[str, float]:
            with urllib.request.urlopen(f"{info['http_url']}/metrics", timeout=5) as resp:
                return parse_metrics(resp.read().decode())

        wait_for(lambda: committed()["provgraph_integrator_consumer_lag_messages"] == 0
                 and committed()["provgraph_integrator_committed_batches_total"] > 0
                 and committed()["provgraph_integrator_received_messages_total"]
                 == committed()["provgraph_integrator_committed_batches_total"], 120, "the integrator to catch up")
        metrics = committed()
        assert metrics["provgraph_integrator_dead_lettered_messages_total"] == 0
        serve.terminate()
        assert serve.wait(30) == 0
    assert not (data / "serve.json").exists()
    store = Store(data / "store", read_only=True)
    assert _tasks_of_run(store, run) == 10_000
    # every task used one data artifact (its input) and generated one (its output)
    per_task = f"""SELECT (COUNT(DISTINCT ?t) AS ?n) WHERE {{
        ?t a <{PG}Task> ; <{PROV}used> ?in . ?in a <{PG}DataArtifact> .
        ?out <{PROV}wasGeneratedBy> ?t . ?out a <{PG}DataArtifact> }}"""
    assert sparql_count(store, per_task) == 10_000
    assert sparql_count(store, f"SELECT (COUNT(DISTINCT ?e) AS ?n) WHERE {{ ?e a <{PG}DataArtifact> }}") == 20_000
    assert metrics["provgraph_integrator_committed_triples_total"] >= len(store)


def test_garbage_truncated_and_bad_prov_are_dead_lettered(tmp_path: Path,
                                                          nats_server: NatsServer) -> None:  # noqa: F811
    settings = load_settings(nats_url=nats_server.url, data_dir=tmp_path / "d")
    store = Store()
    good_trig = (b"@prefix prov: <http://www.w3.org/ns/prov#> .\n"
                 b"<urn:g:1> { <urn:a:1> a prov:Activity . }\n")
    nquads = b"".join(b"<urn:e:%d> <http://www.w3.org/ns/prov#wasGeneratedBy> <urn:a:1> <urn:g:2> .\n" % i
                      for i in range(20))
    good_prov = json.dumps({"prefix": {"ex": "urn:ex:"}, "activity": {"ex:act": {}},
                            "entity": {"ex:out": {}},
                            "wasGeneratedBy": {"_:g1": {"prov:entity": "ex:out", "prov:activity": "ex:act"}}})
    bad_prov = json.dumps({"prefix": {"ex": "urn:ex:"}, "entity": ["not", "a", "dict"],
                           "wasGeneratedBy": {"_:g1": {"prov:entity": 7}}})
    ntriples = b"<urn:a:2> <http://www.w3.org/1999/02/22-rdf-syntax-ns#type> <http://www.w3.org/ns/prov#Activity> .\n"
    subject = subject_for("lab", "run-7")
    garbage = b"\x00\xffthis is not RDF {{{"
    truncated_body = nquads[: len(nquads) // 2 + 7]
    unknown = b"<urn:x> <urn:y> <urn:z> .\n"
    messages = [
        (good_trig, "application/trig", "good-1"),
        (garbage, "application/trig", "garbage"),
        (truncated_body, "application/n-quads", "truncated"),
        (bad_prov.encode(), "application/prov+json", "bad-prov"),
        (unknown, "application/x-unknown", "unknown-type"),
        (ntriples, "application/n-triples", "good-2"),
        (good_prov.encode(), "application/prov+json", "good-3"),
    ]

    async def publish() -> None:
        import nats

        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        for body, ctype, msg_id in messages:
            ack = await js.publish(subject, body, headers={"Content-Type": ctype, "Nats-Msg-Id": msg_id})
            assert ack.stream == settings.nats_stream
        await nc.close()

    with running_integrator(settings, store) as integrator:
        asyncio.run(publish())
        wait_for(lambda: integrator.metrics.counters["committed_batches"] == 3
                 and integrator.metrics.counters["dead_lettered_messages"] == 4, 30, "all 7 messages handled")
        assert integrator.thread.is_alive() and not integrator.errors
        # still consuming after bad input: a later good message is committed too
        messages[:] = [(b"<urn:a:3> <urn:p> <urn:o> .\n", "application/n-triples", "good-4")]
        asyncio.run(publish())
        wait_for(lambda: integrator.metrics.counters["committed_batches"] == 4, 30, "the late good message")
    dlq = read_stream(nats_server.url, f"{settings.nats_stream}_DLQ")
    assert len(dlq) == 4
    by_body = {m.data: m for m in dlq}
    assert "invalid application/trig" in by_body[garbage].headers[HDR_ERROR]
    truncated = by_body[truncated_body]
    assert "invalid application/n-quads" in truncated.headers[HDR_ERROR]
    assert truncated.headers[HDR_SUBJECT] == subject
    assert truncated.subject == "provgraph-dlq.v1.lab.run-7"
    assert "prov-json" in by_body[bad_prov.encode()].headers[HDR_ERROR]
    assert "unsupported Content-Type" in by_body[unknown].headers[HDR_ERROR]
    assert [m.headers["Content-Type"] for m in dlq] == [
        "application/trig", "application/n-quads", "application/prov+json", "application/x-unknown"]
    # the good ones are all in the store, default-graph triples in the run's graph
    assert ox.Quad(ox.NamedNode("urn:a:1"), ox.NamedNode(RDF_TYPE), ox.NamedNode(PROV + "Activity"),
                   ox.NamedNode("urn:g:1")) in store.oxigraph
    assert ox.Quad(ox.NamedNode("urn:a:2"), ox.NamedNode(RDF_TYPE), ox.NamedNode(PROV + "Activity"),
                   ox.NamedNode("urn:provgraph:lab/graph/run-7")) in store.oxigraph
    assert sparql_count(store, "SELECT (COUNT(*) AS ?n) WHERE { <urn:ex:out> ?p ?o }") > 0
    assert not any(q.subject == ox.NamedNode("urn:e:0") for q in store.oxigraph)


RDF_TYPE = "http://www.w3.org/1999/02/22-rdf-syntax-ns#type"


def test_published_messages_state_their_statement_count(tmp_path: Path,
                                                        nats_server: NatsServer) -> None:  # noqa: F811
    """Every message the NATS transport publishes says in ``Provgraph-Triples`` how many
    statements it holds: exactly what parsing it gives."""
    batches = _memory_batches(300, batch_size=100)
    settings = load_settings(nats_url=nats_server.url, data_dir=tmp_path / "d")
    with running_integrator(settings, Store()):  # it creates the stream
        transport = NatsTransport(settings)
        for b in batches:
            transport.publish(b)
        assert transport.flush(30)
        transport.close(5)
    # (batches published before the first connection settles go through the journal: the
    # counts and the flush mark survive that path too)
    msgs = read_stream(nats_server.url, settings.nats_stream)
    assert len(msgs) == len(batches) >= 3
    counts = []
    for m in msgs:
        parsed = sum(1 for _ in ox.parse(m.data, format=ox.RdfFormat.TRIG))
        assert int(m.headers[HDR_TRIPLES]) == parsed
        counts.append(parsed)
    assert sum(c > 300 for c in counts) == 3  # the three batches of 100 tasks
    # only the batch that ended the run and was flushed asks to be committed at once
    assert [m.headers.get(HDR_FLUSH) for m in msgs] == [None] * (len(msgs) - 1) + ["true"]


def test_integrator_loads_a_stream_in_bulk_by_size_or_linger(tmp_path: Path,
                                                             nats_server: NatsServer) -> None:  # noqa: F811
    """A message after a quiet spell is committed at once; a trickle is held (up to
    ``integrator_linger``) until ``integrator_commit_triples`` statements are in hand, or
    until a message its publisher flushed after, then committed in one load; a message
    without a count is sized by its bytes."""
    settings = load_settings(nats_url=nats_server.url, data_dir=tmp_path / "d", integrator_linger=4.0,
                             integrator_commit_triples=1000)
    store = Store()
    subject = subject_for("lab", "run-linger")

    def nt(name: str, n: int) -> bytes:
        return b"".join(b"<urn:%s:%d> <urn:p> <urn:o> .\n" % (name.encode(), i) for i in range(n))

    def publish(body: bytes, msg_id: str, count: int | None, flushed: bool = False) -> None:
        async def go() -> None:
            import nats

            nc = await nats.connect(nats_server.url)
            headers = {"Content-Type": "application/n-triples", "Nats-Msg-Id": msg_id}
            if count is not None:
                headers[HDR_TRIPLES] = str(count)
            if flushed:
                headers[HDR_FLUSH] = "true"
            await nc.jetstream().publish(subject, body, headers=headers)
            await nc.close()

        asyncio.run(go())

    def present(name: str) -> bool:
        return sparql_count(store, f"SELECT (COUNT(*) AS ?n) WHERE {{ GRAPH ?g {{ <urn:{name}:0> ?p ?o }} }}") == 1

    with running_integrator(settings, store) as integrator:
        counters = integrator.metrics.counters
        t0 = time.monotonic()
        publish(nt("a", 10), "a", 10)
        # (the store shows a load a moment before the integrator counts it)
        wait_for(lambda: present("a") and counters["commits"] >= 1, 10, "the first message")
        assert time.monotonic() - t0 < 3.0 and counters["commits"] == 1  # not held for the linger
        publish(nt("b", 10), "b", 10)
        time.sleep(1.0)
        assert not present("b") and counters["commits"] == 1  # a trickle is held...
        t1 = time.monotonic()
        publish(nt("c", 990), "c", 990)  # ...until 1,000 statements are in hand
        wait_for(lambda: present("b") and present("c") and counters["committed_triples"] >= 1010, 10, "b and c")
        assert time.monotonic() - t1 < 2.0
        assert counters["commits"] == 2 and counters["committed_triples"] == 1010  # one load for both
        time.sleep(4.5)  # a quiet spell
        publish(nt("d", 1), "d", None)  # no count: 27 bytes, far below 1,000 statements
        wait_for(lambda: present("d") and counters["commits"] >= 3, 10, "d")
        publish(nt("e", 1), "e", None)
        time.sleep(1.0)
        assert not present("e")
        wait_for(lambda: present("e") and counters["commits"] >= 4, 10, "e, after the linger")
        assert counters["commits"] == 4 and counters["received_messages"] == 5
        # right after a commit, a small message its publisher flushed after is not held
        publish(nt("f", 1), "f", 1)
        t2 = time.monotonic()
        publish(nt("g", 1), "g", 1, flushed=True)
        wait_for(lambda: present("f") and present("g") and counters["commits"] >= 5, 10, "f and g")
        assert time.monotonic() - t2 < 2.0 and counters["commits"] == 5


def test_wrong_credentials_fail_fast_and_clearly(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "authed", user="alice", password="s3cret") as server:
        settings = load_settings(nats_url=server.url, nats_user="alice", nats_password="wrong",
                                 data_dir=tmp_path / "d", transport="nats")
        t0 = time.monotonic()
        with pytest.raises(TransportError, match="rejected the credentials"):
            NatsTransport(settings)
        assert time.monotonic() - t0 < 5
        data = tmp_path / "serve-data"
        data.mkdir()
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "provgraph", "serve", "--no-http"], capture_output=True,
                             timeout=60, env=env_for(data, server.url, PROVGRAPH_NATS_USER="alice",
                                                     PROVGRAPH_NATS_PASSWORD="wrong"))
        assert out.returncode == 1
        assert "rejected the credentials" in out.stderr.decode()
        assert time.monotonic() - t0 < 20
    with NatsServer(tmp_path / "token", token="t0ken") as server:
        settings_t = load_settings(nats_url=server.url, nats_token="nope", data_dir=tmp_path / "d2")
        t0 = time.monotonic()
        with pytest.raises(TransportError, match="rejected the credentials"):
            NatsTransport(settings_t)
        assert time.monotonic() - t0 < 5
        ok = NatsTransport(settings_t.model_copy(update={"nats_token": "t0ken"}))
        assert ok.flush(5) and not ok.spilling()
        assert ok.close(5)
    with NatsServer(tmp_path / "authed", user="alice", password="s3cret") as server:
        settings = settings.model_copy(update={"nats_url": server.url})
        # the right ones work, end to end
        good = settings.model_copy(update={"nats_password": "s3cret"})
        store = Store()
        with running_integrator(good, store) as integrator:
            transport = NatsTransport(good)
            transport.publish(Batch(b"<urn:a> <urn:b> <urn:c> <urn:g> .\n", 1))
            assert transport.flush(10)
            transport.close(5)
            wait_for(lambda: integrator.metrics.counters["committed_batches"] == 1, 30, "the batch")
        assert len(store) == 1


def test_status_shows_stream_consumer_and_counters(tmp_path: Path, nats_server: NatsServer) -> None:  # noqa: F811
    data = tmp_path / "serve-data"
    with serve_process(data, nats_server.url):
        wait_for(lambda: (data / "serve.json").exists(), 60, "serve.json")
        settings = load_settings(data_dir=data)
        provgraph.configure(settings)  # auto transport: finds the serve's NATS through serve.json
        assert provgraph.get_emitter().transport.name == "nats"

        @provgraph.task
        def inc(a: int) -> int:
            return a + 1

        with provgraph.workflow("status", run_id="st-1"):
            for i in range(50):
                inc(i)
        assert provgraph.flush(30)
        out = subprocess.run([sys.executable, "-m", "provgraph", "status", "--json"], capture_output=True,
                             timeout=60, env=env_for(data, None))
        assert out.returncode == 0, out.stderr.decode()
        status = json.loads(out.stdout)
        assert status["serve"]["nats_url"] == nats_server.url
        assert status["stream"]["messages"] >= 1
        assert status["consumer"]["name"] == "provgraph-integrator"
        assert "committed_batches" in status["integrator"]


def test_batches_are_split_to_the_servers_max_payload(tmp_path: Path) -> None:
    """A small max_payload: big batches arrive whole in parts; a statement no message can
    carry is kept in an ``unsent`` journal that `provgraph replay --to-store` loads."""
    batches = _memory_batches(400, batch_size=400)
    with NatsServer(tmp_path / "small", max_payload=16 * 1024) as server:
        settings = load_settings(nats_url=server.url, data_dir=tmp_path / "d")
        store = Store()
        with running_integrator(settings, store) as integrator:
            transport = NatsTransport(settings)
            for b in batches:
                transport.publish(b)
            huge = Batch(b'<urn:big> <urn:p> "' + b"x" * 40_000 + b'" <urn:g> .\n', 1, batch_id="huge")
            transport.publish(huge)
            assert transport.flush(30)
            assert transport.stats.unsendable == 1
            transport.close(5)
            expected = ox.Store()
            for b in batches:
                expected.load(b.data, format=ox.RdfFormat.TRIG)
            wait_for(lambda: len(store) == len(expected), 60, "every part committed")
            assert integrator.metrics.counters["received_messages"] > 3 * len(batches)  # really split
        assert all(q in store.oxigraph for q in expected)
        assert all(len(m.data) <= 16 * 1024 for m in read_stream(server.url, settings.nats_stream))
    unsent = list(settings.journal_dir.glob("unsent-*.nq"))
    assert len(unsent) == 1
    out = subprocess.run([sys.executable, "-m", "provgraph", "replay", "--to-store", "--force"],
                         capture_output=True, timeout=60, env=env_for(tmp_path / "d", None))
    assert out.returncode == 0, out.stderr.decode()
    disk = Store(tmp_path / "d" / "store", read_only=True)
    assert sparql_count(disk, "SELECT (COUNT(*) AS ?n) WHERE { <urn:big> ?p ?o }") == 1


def test_publisher_with_publish_only_permissions(tmp_path: Path) -> None:
    """The least-privilege users of deployment/nats: the publisher cannot manage streams,
    connects at once anyway, and its batches reach the store."""
    from tests.support.nats import RestrictedNatsServer

    with RestrictedNatsServer(tmp_path / "restricted") as server:
        integ = load_settings(nats_url=server.url, nats_user="integrator", nats_password="int",
                              data_dir=tmp_path / "i")
        pub = load_settings(nats_url=server.url, nats_user="publisher", nats_password="pub",
                            data_dir=tmp_path / "p")
        store = Store()
        with running_integrator(integ, store) as integrator:
            t0 = time.monotonic()
            transport = NatsTransport(pub)
            assert time.monotonic() - t0 < 2
            for i in range(20):
                transport.publish(Batch(b"<urn:a:%d> <urn:b> <urn:c> <urn:g> .\n" % i, 1))
            assert transport.flush(10)
            assert transport.close(5)
            wait_for(lambda: integrator.metrics.counters["committed_batches"] == 20, 30, "20 batches")
        assert len(store) == 20


def _nice(pid: int, tid: int | None = None) -> int:
    stat = Path(f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])  # field 19: nice


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads priorities from /proc")
def test_serve_starts_its_own_nats_and_yields_the_cpu_to_the_workflow(tmp_path: Path) -> None:
    """With no NATS URL, ``serve`` starts nats-server at normal priority and runs the
    integrator at ``integrator_nice``; a workflow's tasks arrive over the local pipeline."""
    from tests.support.servers import free_port

    data = tmp_path / "serve-data"
    with serve_process(data, None, "--nats-port", str(free_port())) as proc:
        wait_for(lambda: (data / "serve.json").exists() or proc.poll() is not None, 60, "serve.json")
        assert proc.poll() is None, "provgraph serve exited"
        info = json.loads((data / "serve.json").read_text())
        assert info["managed_nats"] is True and info["nats_pid"]
        assert _nice(int(info["pid"])) == 10
        assert _nice(int(info["nats_pid"])) == 0, "nats-server acknowledges publishes: not lowered"
        provgraph.configure(load_settings(data_dir=data))
        assert provgraph.get_emitter().transport.name == "nats"

        @provgraph.task
        def double(a: int) -> int:
            return 2 * a

        with provgraph.workflow("local-pipeline", run_id="lp-1"):
            for i in range(20):
                double(i)
        assert provgraph.flush(30)
        query = "SELECT (COUNT(?t) AS ?n) WHERE { ?t a <https://w3id.org/provgraph/ns#Task> }"

        def count() -> int:
            url = f"{info['http_url']}/sparql?" + urllib.parse.urlencode({"query": query})
            req = urllib.request.Request(url, headers={"Accept": "application/sparql-results+json"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                return int(json.load(resp)["results"]["bindings"][0]["n"]["value"])

        wait_for(lambda: count() == 20, 60, "20 tasks in the store")
        # every thread of serve (the store's, the integrator's workers) runs lowered
        pid = int(info["pid"])
        nices = [_nice(pid, int(t.name)) for t in Path(f"/proc/{pid}/task").iterdir()]
        assert len(nices) >= 3 and set(nices) == {10}, nices
    provgraph.shutdown()
