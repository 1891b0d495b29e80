"""Recovery paths: a journal left at exit and `provgraph replay`; a store that is down
(nothing acked, redelivered once it is back)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyoxigraph as ox

import provgraph
from provgraph.natsserver import NatsServer, free_port
from provgraph.remote import RemoteStore
from provgraph.settings import load_settings
from provgraph.store import Store
from provgraph.transports.base import Batch
from provgraph.transports.journal import JournalTransport, journal_files
from provgraph.transports.nats import NatsTransport
from tests.support.nats import env_for, read_stream, running_integrator, wait_for
from tests.support.servers import venv_binary


def _batches(n_tasks: int, batch_size: int = 100) -> list[Batch]:
    memory = provgraph.MemoryTransport()
    provgraph.configure(transport=memory, batch_size=batch_size, queue_size=n_tasks + 1000, flush_interval=60)

    @provgraph.task
    def t(a: int) -> int:
        return a

    with provgraph.workflow("recovery", run_id="recovery-run"):
        for i in range(n_tasks):
            t(i)
    assert provgraph.flush(30)
    provgraph.shutdown(10)
    return list(memory.batches)


def test_nats_down_at_exit_leaves_a_journal_that_replay_sends(tmp_path: Path) -> None:
    batches = _batches(500)
    server = NatsServer(tmp_path / "nats", port=free_port())
    settings = load_settings(nats_url=server.url, data_dir=tmp_path / "d", publish_timeout=1.0)
    t0 = time.monotonic()
    transport = NatsTransport(settings, connect_wait=0.2)  # NATS is not there: nothing blocks
    for b in batches:
        transport.publish(b)
    assert transport.spilling()
    assert transport.close(0.5) is False  # not delivered: kept
    assert time.monotonic() - t0 < 5
    files = journal_files(settings.journal_dir)
    assert files and transport.stats.spilled_batches == len(batches)
    # a torn tail (a writer killed mid-batch) is kept aside, never half-sent
    torn = JournalTransport(settings.journal_dir, prefix="spill")
    torn.publish(batches[0])
    torn.close(1)
    assert torn.path is not None
    with open(torn.path, "ab") as fh:
        fh.write(b"#pgbatch deadbeef 999 3 application/trig\n@prefix")
    with server:
        # this test process wrote the files and is alive: replay skips them unless forced
        skipped = subprocess.run([sys.executable, "-m", "provgraph", "replay"], capture_output=True, timeout=60,
                                 env=env_for(tmp_path / "d", server.url))
        assert skipped.returncode == 0 and "still running" in skipped.stdout.decode()
        assert len(journal_files(settings.journal_dir)) == 2
        out = subprocess.run([sys.executable, "-m", "provgraph", "replay", "--force"], capture_output=True,
                             timeout=60, env=env_for(tmp_path / "d", server.url))
        assert out.returncode == 0, out.stderr.decode()
        assert f"replayed {len(batches) + 1} batches" in out.stdout.decode()
        assert journal_files(settings.journal_dir) == []
        assert [p.suffix for p in settings.journal_dir.iterdir()] == [".torn"]
        msgs = read_stream(server.url, settings.nats_stream)
        sent = ox.Store()
        for m in msgs:
            sent.load(m.data, format=ox.RdfFormat.TRIG)
        expected = ox.Store()
        for b in batches:
            expected.load(b.data, format=ox.RdfFormat.TRIG)
        assert len(sent) == len(expected) and all(q in sent for q in expected)
        # the copy of batches[0] in the second file reused its Nats-Msg-Id: JetStream dropped it
        assert len(msgs) == len(batches)


def test_replay_to_store_loads_and_deletes(tmp_path: Path) -> None:
    batches = _batches(200)
    journal = JournalTransport(tmp_path / "j", prefix="spill")
    for b in batches:
        journal.publish(b)
    journal.close(1)
    out = subprocess.run([sys.executable, "-m", "provgraph", "replay", str(tmp_path / "j"), "--to-store", "--force"],
                         capture_output=True, timeout=60, env=env_for(tmp_path / "d", None))
    assert out.returncode == 0, out.stderr.decode()
    assert journal_files(tmp_path / "j") == []
    store = Store(tmp_path / "d" / "store", read_only=True)
    expected = ox.Store()
    for b in batches:
        expected.load(b.data, format=ox.RdfFormat.TRIG)
    assert len(store) == len(expected)


def test_store_down_nothing_acked_then_redelivered(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "nats") as server:
        port = free_port()  # after NATS has bound its own
        url = f"http://127.0.0.1:{port}"
        settings = load_settings(nats_url=server.url, data_dir=tmp_path / "d", nats_ack_wait=2.0)
        store = RemoteStore(url, timeout=2.0)
        batches = _batches(60, batch_size=20)
        with running_integrator(settings, store, max_backoff=2.0) as integrator:
            transport = NatsTransport(settings)
            for b in batches:
                transport.publish(b)
            assert transport.flush(10)
            transport.close(5)
            wait_for(lambda: integrator.metrics.counters["commit_failures"] >= 2, 30, "failed commits")
            assert integrator.metrics.counters["committed_batches"] == 0
            oxigraph = subprocess.Popen([venv_binary("oxigraph"), "serve", "--location", str(tmp_path / "ox"),
                                         "--bind", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
            try:
                wait_for(lambda: _up(url), 30, "the Oxigraph server")
                wait_for(lambda: integrator.metrics.counters["committed_batches"] >= len(batches), 60,
                         "redelivered batches to be committed")
                assert integrator.metrics.counters["redelivered_messages"] >= 1
                assert integrator.metrics.counters["dead_lettered_messages"] == 0
                expected = ox.Store()
                for b in batches:
                    expected.load(b.data, format=ox.RdfFormat.TRIG)
                assert len(store) == len(expected)
                assert integrator.thread.is_alive()
            finally:
                oxigraph.kill()
                oxigraph.wait(10)


def _up(url: str) -> bool:
    try:
        urllib.request.urlopen(f"{url}/query?query=ASK%7B%7D", timeout=1).read()
        return True
    except OSError:
        return False


def test_two_integrators_share_the_consumer_into_one_oxigraph_server(tmp_path: Path) -> None:
    from tests.support.servers import oxigraph_server

    batches = _batches(400, batch_size=10)
    with NatsServer(tmp_path / "nats") as server, oxigraph_server(tmp_path / "ox") as url:
        settings = load_settings(nats_url=server.url, data_dir=tmp_path / "d", integrator_fetch=4)
        store_a, store_b = RemoteStore(url), RemoteStore(url)
        with running_integrator(settings, store_a) as one, running_integrator(settings, store_b) as two:
            transport = NatsTransport(settings)
            for b in batches:
                transport.publish(b)
            assert transport.flush(20)
            transport.close(5)
            total = sum(1 for _ in batches)
            wait_for(lambda: one.metrics.counters["committed_batches"] + two.metrics.counters["committed_batches"]
                     >= total, 60, "both integrators to commit every batch")
            # both took part; each message was committed by one of them
            assert one.metrics.counters["committed_batches"] > 0 and two.metrics.counters["committed_batches"] > 0
            assert one.metrics.counters["received_messages"] + two.metrics.counters["received_messages"] == total
        expected = ox.Store()
        for b in batches:
            expected.load(b.data, format=ox.RdfFormat.TRIG)
        assert len(store_a) == len(expected)
        assert all(q in expected for q in store_a.quads())


def test_publishing_while_the_journal_is_replayed_keeps_everything(tmp_path: Path) -> None:
    """Batches published during the switch from spill to direct mode are neither lost nor
    left behind in the journal."""
    server = NatsServer(tmp_path / "nats", port=free_port())
    settings = load_settings(nats_url=server.url, data_dir=tmp_path / "d", publish_timeout=2.0)
    transport = NatsTransport(settings, connect_wait=0.1)
    n = 3000
    batches = [Batch(b"<urn:s:%d> <urn:p> <urn:o> <urn:g> .\n" % i, 1, batch_id=f"race-{i}") for i in range(n)]
    for b in batches[:500]:
        transport.publish(b)
    assert transport.spilling()
    with server:
        for b in batches[500:]:  # the transport connects and replays while these go in
            transport.publish(b)
            time.sleep(0.0005)
        assert transport.flush(30)
        assert not transport.spilling()
        assert journal_files(settings.journal_dir) == []
        assert transport.close(5)
        msgs = read_stream(server.url, settings.nats_stream)
    assert sorted(m.headers["Nats-Msg-Id"] for m in msgs) == sorted(b.batch_id for b in batches)
    assert transport.stats.replayed_batches >= 500


def test_forked_child_publishes_on_its_own_connection(tmp_path: Path) -> None:
    import os

    from tests.support.nats import stream_state

    with NatsServer(tmp_path / "nats") as server:
        provgraph.configure(nats_url=server.url, transport="nats", data_dir=tmp_path / "d", flush_interval=0.05)

        @provgraph.task
        def f(a: int) -> int:
            return a

        with provgraph.workflow("forked", run_id="fork-run"):
            f(0)
            assert provgraph.flush(10)
            before = stream_state(server.url, settings_stream()).messages
            pid = os.fork()
            if pid == 0:  # the child: the parent's loop thread and socket are gone
                try:
                    for i in range(100):
                        f(i)
                    code = 0 if provgraph.flush(10) and provgraph.get_emitter().transport.name == "nats" else 1
                finally:
                    os._exit(code if "code" in locals() else 2)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            f(1)
        assert provgraph.flush(10)
        assert stream_state(server.url, settings_stream()).messages >= before + 2  # the child's and ours
        provgraph.shutdown(10)
        sent = ox.Store()
        for m in read_stream(server.url, settings_stream()):
            sent.load(m.data, format=ox.RdfFormat.TRIG)
        task = ox.NamedNode("https://w3id.org/provgraph/ns#Task")
        assert len(list(sent.quads_for_pattern(None, ox.NamedNode(RDF_TYPE), task, None))) == 102


RDF_TYPE = "http://www.w3.org/1999/02/22-rdf-syntax-ns#type"


def settings_stream() -> str:
    return load_settings().nats_stream
