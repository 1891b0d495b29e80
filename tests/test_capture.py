"""The capture API against the real emitter, mapper and an in-memory Oxigraph store."""

from __future__ import annotations

import asyncio
import os
import traceback
from pathlib import Path

import pytest

import provgraph
from provgraph.hashing import hash_bytes
from tests.support.rdf import load, select


def _store(memory: provgraph.MemoryTransport) -> provgraph.Store:
    assert provgraph.flush(10)
    return load(memory.nquads())


def test_task_records_bound_arguments_defaults_and_return(memory: provgraph.MemoryTransport) -> None:
    @provgraph.task
    def fit(dataset: str, lr: float, epochs: int = 5) -> dict[str, float]:
        return {"loss": 0.25, "accuracy": 0.9}

    with provgraph.workflow("train", campaign="c1"):
        assert fit("abc", 0.1) == {"loss": 0.25, "accuracy": 0.9}

    rows = select(_store(memory), """
        SELECT ?name ?value ?dir WHERE {
          ?t a pg:Task ; rdfs:label "fit" .
          { ?t prov:used ?e . BIND("in" AS ?dir) } UNION { ?e prov:wasGeneratedBy ?t . BIND("out" AS ?dir) }
          ?e pg:parameterName ?name ; prov:value ?value .
        } ORDER BY ?dir ?name""")
    assert [(r["dir"], r["name"], r["value"]) for r in rows] == [
        ("in", "dataset", "abc"), ("in", "epochs", "5"), ("in", "lr", "0.1"),
        ("out", "accuracy", "0.9"), ("out", "loss", "0.25"),
    ]


def test_run_campaign_status_times_user_host(memory: provgraph.MemoryTransport) -> None:
    @provgraph.task
    def step() -> None:
        pass

    with provgraph.workflow("wf", campaign="camp") as run:
        step()
    rows = select(_store(memory), """
        SELECT ?run ?wf ?camp ?status ?start ?end ?tstatus ?user ?host WHERE {
          ?run a pg:WorkflowRun ; rdfs:label ?wf ; pg:inCampaign/rdfs:label ?camp ; pg:status ?status ;
               prov:startedAtTime ?start ; prov:endedAtTime ?end .
          ?t pg:inWorkflowRun ?run ; pg:status ?tstatus ; prov:wasAssociatedWith/rdfs:label ?user ;
             prov:atLocation/pg:hostname ?host .
        }""")
    assert len(rows) == 1
    r = rows[0]
    assert r["run"].endswith(run.run_id)
    assert (r["wf"], r["camp"], r["status"], r["tstatus"]) == ("wf", "camp", "finished", "finished")
    assert r["start"] <= r["end"]
    settings = provgraph.get_emitter().settings
    assert (r["user"], r["host"]) == (settings.user, settings.hostname)


def test_nested_tasks_link_parent(memory: provgraph.MemoryTransport) -> None:
    @provgraph.task
    def inner(x: int) -> int:
        return x + 1

    @provgraph.task
    def outer(x: int) -> int:
        return inner(x) * 2

    with provgraph.workflow("nest"):
        outer(1)
    rows = select(_store(memory), "SELECT ?c ?p WHERE { ?ti rdfs:label ?c ; pg:parentTask ?to . ?to rdfs:label ?p }")
    assert rows == [{"c": "inner", "p": "outer"}]


def test_exception_propagates_unchanged_and_is_recorded(memory: provgraph.MemoryTransport) -> None:
    class BoomError(RuntimeError):
        pass

    original = BoomError("disk on fire")

    @provgraph.task
    def explode(n: int) -> None:
        raise original

    with pytest.raises(BoomError) as info, provgraph.workflow("failing"):
        explode(3)
    assert info.value is original
    frames = traceback.extract_tb(info.value.__traceback__)
    assert frames[-1].name == "explode" and "raise original" in (frames[-1].line or "")
    rows = select(_store(memory), """
        SELECT ?status ?etype ?msg ?tb ?runstatus WHERE {
          ?t a pg:Task ; pg:status ?status ; pg:errorType ?etype ; pg:errorMessage ?msg ; pg:traceback ?tb ;
             pg:inWorkflowRun/pg:status ?runstatus }""")
    assert len(rows) == 1
    assert (rows[0]["status"], rows[0]["etype"], rows[0]["msg"], rows[0]["runstatus"]) == (
        "failed", "test_exception_propagates_unchanged_and_is_recorded.<locals>.BoomError", "disk on fire", "failed")
    assert "raise original" in rows[0]["tb"]


def test_async_generator_and_method_tasks(memory: provgraph.MemoryTransport) -> None:
    @provgraph.task
    async def fetch(n: int) -> int:
        await asyncio.sleep(0)
        return n * 10

    @provgraph.task
    def frames(n: int):  # type: ignore[no-untyped-def]
        yield from range(n)

    class Model:
        @provgraph.task
        def predict(self, x: float) -> float:
            return x * 2

    with provgraph.workflow("mixed"):
        assert asyncio.run(fetch(4)) == 40
        assert list(frames(3)) == [0, 1, 2]
        assert Model().predict(1.5) == 3.0
    store = _store(memory)
    rows = select(store, """
        SELECT ?label ?name ?value WHERE { ?e prov:wasGeneratedBy ?t ; pg:parameterName ?name ; prov:value ?value .
          ?t rdfs:label ?label } ORDER BY ?label ?name""")
    assert [(r["label"], r["name"], r["value"]) for r in rows] == [
        ("fetch", "return", "40"), ("frames", "yield[0]", "0"), ("frames", "yield[1]", "1"),
        ("frames", "yield[2]", "2"), ("predict", "return", "3")]  # Oxigraph canonicalizes 3.0e0
    used = select(store, "SELECT ?name WHERE { ?t rdfs:label 'predict' ; prov:used/pg:parameterName ?name }")
    assert used == [{"name": "x"}]  # self is not recorded as an input


def test_files_are_content_hashed_paths_are_attributes(memory: provgraph.MemoryTransport, tmp_path: Path) -> None:
    src = tmp_path / "one" / "data.bin"
    src.parent.mkdir()
    src.write_bytes(b"\x00\x01" * 1000)
    copy = tmp_path / "two" / "renamed.dat"
    copy.parent.mkdir()
    copy.write_bytes(src.read_bytes())

    @provgraph.task
    def produce() -> Path:
        return src

    @provgraph.task
    def consume(path: str) -> None:
        pass

    with provgraph.workflow("w1"):
        produce()
    with provgraph.workflow("w2"):
        consume(str(copy))
    expected = hash_bytes(src.read_bytes())
    rows = select(_store(memory), """
        SELECT DISTINCT ?e ?gpath ?upath ?size WHERE {
          ?e prov:wasGeneratedBy ?p ; prov:qualifiedGeneration/pg:path ?gpath ; pg:sizeBytes ?size .
          ?c prov:used ?e ; prov:qualifiedUsage ?u . ?u prov:entity ?e ; pg:path ?upath .
          ?p pg:inWorkflowRun ?r1 . ?c pg:inWorkflowRun ?r2 . FILTER(?r1 != ?r2) }""")
    assert rows == [{"e": expected, "gpath": str(src), "upath": str(copy), "size": "2000"}]


def test_small_scalars_never_link_runs(memory: provgraph.MemoryTransport) -> None:
    @provgraph.task
    def use(k: int, label: str) -> int:
        return 3

    with provgraph.workflow("a"):
        use(3, "x")
    with provgraph.workflow("b"):
        use(3, "x")
    store = _store(memory)
    shared = select(store, """
        SELECT DISTINCT ?e WHERE { ?t1 pg:inWorkflowRun ?r1 . ?t2 pg:inWorkflowRun ?r2 . FILTER(?r1 != ?r2)
          { ?t1 prov:used ?e } UNION { ?e prov:wasGeneratedBy ?t1 }
          { ?t2 prov:used ?e } UNION { ?e prov:wasGeneratedBy ?t2 } }""")
    assert shared == []
    values = select(store, "SELECT (COUNT(*) AS ?n) WHERE { ?e prov:value 3 }")
    assert values == [{"n": "4"}]  # two inputs and two outputs, each its own entity


def test_bytes_and_arrays_are_hashed(memory: provgraph.MemoryTransport) -> None:
    np = pytest.importorskip("numpy")
    arr = np.arange(100, dtype=np.float64).reshape(10, 10)

    @provgraph.task
    def f(blob: bytes, a: object) -> None:
        pass

    with provgraph.workflow("h"):
        f(b"x" * 100, arr)
        f(b"x" * 100, arr.copy())
    rows = select(_store(memory), "SELECT DISTINCT ?e WHERE { ?t prov:used ?e . ?e a pg:DataArtifact }")
    assert sorted(r["e"] for r in rows) == sorted({hash_bytes(b"x" * 100), _array_iri(arr)})


def _array_iri(arr: object) -> str:
    from provgraph.hashing import hash_array

    return hash_array(arr)


def test_explicit_used_and_generated(memory: provgraph.MemoryTransport, tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("lr: 0.1\n" * 10)
    out = tmp_path / "model.pt"

    @provgraph.task
    def train() -> None:
        provgraph.used(cfg)
        out.write_bytes(b"weights" * 20)
        provgraph.generated(out, name="model")

    with provgraph.workflow("explicit"):
        train()
        provgraph.used(out, name="final-model")  # at run level, outside any task
    store = _store(memory)
    rows = select(store, """SELECT ?dir ?name WHERE {
        { ?t prov:qualifiedUsage ?q . BIND("in" AS ?dir) }
        UNION { ?e prov:qualifiedGeneration ?q . BIND("out" AS ?dir) }
        ?q pg:parameterName ?name } ORDER BY ?dir ?name""")
    assert [(r["dir"], r["name"]) for r in rows] == [("in", "config.yaml"), ("in", "final-model"), ("out", "model")]


def test_unserializable_argument_never_raises(memory: provgraph.MemoryTransport) -> None:
    class Evil:
        def __repr__(self) -> str:
            raise RuntimeError("no repr for you")

    @provgraph.task
    def f(x: object) -> int:
        return 1

    with provgraph.workflow("evil"):
        assert f(Evil()) == 1
    rows = select(_store(memory), "SELECT ?v WHERE { ?e pg:parameterName 'x' ; prov:value ?v }")
    assert rows == [{"v": "<unrepresentable test_unserializable_argument_never_raises.<locals>.Evil>"}]


def test_full_queue_drops_and_counts_never_blocks() -> None:
    transport = provgraph.MemoryTransport()
    em = provgraph.configure(transport=transport, queue_size=16, batch_size=16, flush_interval=3600)

    @provgraph.task
    def f(i: int) -> int:
        return i

    with provgraph.workflow("burst"):
        for i in range(1000):
            f(i)
    stats = em.stats()
    assert stats["dropped"] > 0
    assert provgraph.flush(10)
    stats = em.stats()
    # every call is either stored or counted as dropped: nothing vanishes silently
    tasks = select(load(transport.nquads()), "SELECT (COUNT(?t) AS ?n) WHERE { ?t a pg:Task }")
    assert int(tasks[0]["n"]) + stats["dropped"] == 1000


class _FailingTransport(provgraph.Transport):
    name = "failing"

    def publish(self, batch: provgraph.Batch) -> None:
        raise OSError("store is on fire")


def test_failing_transport_spills_to_journal_never_raises(data_dir: Path) -> None:
    em = provgraph.configure(transport=_FailingTransport(), flush_interval=0.05)

    @provgraph.task
    def f(i: int) -> int:
        return i

    with provgraph.workflow("spill"):
        for i in range(10):
            assert f(i) == i
    assert provgraph.flush(10)
    stats = em.stats()
    assert stats["failed_batches"] >= 1 and stats["spilled_batches"] == stats["failed_batches"]
    assert stats["lost_batches"] == 0
    from provgraph.transports.journal import journal_files, read_journal

    spilled = provgraph.Store()
    for f in journal_files(data_dir / "journal"):
        for b in read_journal(f):
            spilled.load(b.data, b.to_batch().format)
    tasks = select(spilled, "SELECT (COUNT(?t) AS ?n) WHERE { ?t a pg:Task }")
    assert tasks == [{"n": "10"}]


def test_broken_configuration_disables_capture_but_not_the_function(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVGRAPH_BATCH_SIZE", "not-a-number")

    @provgraph.task
    def f(x: int) -> int:
        return x + 1

    assert f(1) == 2  # capture logs the error and steps aside
    with pytest.raises(provgraph.ConfigError, match="batch_size"):
        with provgraph.workflow("strict"):  # an explicit start fails loudly, naming the field
            pass


def test_fork_child_records_land_in_the_store(data_dir: Path) -> None:
    provgraph.configure(flush_interval=0.05)

    @provgraph.task
    def where(tag: str) -> int:
        return os.getpid()

    with provgraph.workflow("forky"):
        where("parent")
        assert provgraph.flush(10)
        pid = os.fork()
        if pid == 0:  # child: the parent holds the store, so the child spools to its inbox
            code = 1
            try:
                where("child")
                code = 0 if provgraph.shutdown(10) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    provgraph.shutdown(10)
    store = provgraph.Store(data_dir / "store")  # ingests the child's inbox on open
    rows = select(store, "SELECT ?tag WHERE { ?t a pg:Task ; prov:used/prov:value ?tag } ORDER BY ?tag")
    assert [r["tag"] for r in rows] == ["child", "parent"]
    ids = select(store, "SELECT (COUNT(DISTINCT ?t) AS ?n) WHERE { ?t a pg:Task }")
    assert ids == [{"n": "2"}]


def test_batches_count_their_triples_exactly(memory: provgraph.MemoryTransport) -> None:
    @provgraph.task
    def f(a: int, text: str) -> dict[str, float]:
        return {"x": 1.5, "y": 2.0}

    with provgraph.workflow("count-a"):
        f(1, "multi\nline \"text\"")
    with provgraph.workflow("count-b"):
        f(2, "b")
    assert provgraph.flush(10)
    assert all(b.content_type == "application/trig" for b in memory.batches)
    quads = load(memory.nquads())
    assert sum(b.triples for b in memory.batches) == len(quads)


def test_run_ids_with_unsafe_characters_give_valid_iris(memory: provgraph.MemoryTransport) -> None:
    import pyoxigraph as ox

    @provgraph.task
    def f(a: int) -> int:
        return a

    with provgraph.workflow("w", run_id="my run #1 <x> {y}") as run:
        f(1)
    assert provgraph.flush()
    quads = [q for b in memory.batches if b.content_type == "application/trig"
             for q in ox.parse(b.data, format=ox.RdfFormat.TRIG)]
    runs = {q.subject.value for q in quads if q.predicate.value.endswith("#inWorkflowRun") is False
            and "/run/" in q.subject.value}
    assert runs == {"urn:provgraph:local/run/my%20run%20%231%20%3Cx%3E%20%7By%7D"}
    ident = [q.object.value for q in quads if q.predicate.value == "http://purl.org/dc/terms/identifier"]
    assert ident == [run.run_id]
