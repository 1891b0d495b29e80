"""``kill -9`` of the integrator in the middle of a 50,000-task stream, then a restart:
the store ends with exactly the triples the same records make through the memory
transport — nothing missing, nothing twice (takes about 30-40 s)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path

import pyoxigraph as ox

import provgraph
from provgraph.metrics import parse as parse_metrics
from provgraph.natsserver import NatsServer
from provgraph.settings import load_settings
from provgraph.store import Store
from provgraph.transports.base import Batch
from provgraph.transports.nats import NatsTransport
from tests.support.nats import nats_server, serve_process, wait_for  # noqa: F401 - fixture

N_TASKS = 50_000


def _batches(n: int) -> list[Batch]:
    memory = provgraph.MemoryTransport()
    provgraph.configure(transport=memory, batch_size=250, queue_size=n + 1000, flush_interval=60)

    @provgraph.task
    def work() -> None:
        return None

    with provgraph.workflow("kill9", run_id="kill9-run"):
        for _ in range(n):
            work()
    assert provgraph.flush(120)
    provgraph.shutdown(10)
    return list(memory.batches)


def _metrics(info_file: Path) -> dict[str, float]:
    info = json.loads(info_file.read_text())
    with urllib.request.urlopen(f"{info['http_url']}/metrics", timeout=5) as resp:
        return parse_metrics(resp.read().decode())


def test_kill_9_of_the_integrator_loses_and_duplicates_nothing(tmp_path: Path,
                                                                nats_server: NatsServer) -> None:  # noqa: F811
    t0 = time.monotonic()
    batches = _batches(N_TASKS)
    expected = ox.Store()
    for b in batches:
        expected.load(b.data, format=ox.RdfFormat.TRIG)
    assert len(batches) >= 200

    t_expected = time.monotonic() - t0
    data = tmp_path / "serve-data"
    info_file = data / "serve.json"
    settings = load_settings(nats_url=nats_server.url, data_dir=tmp_path / "publisher")
    transport = NatsTransport(settings)
    published = threading.Event()

    def publish() -> None:
        for i, b in enumerate(batches):
            transport.publish(b)
            if i % 50 == 49:
                transport.flush(30)
        assert transport.flush(60)
        published.set()

    env = {"PROVGRAPH_INTEGRATOR_FETCH": "16", "PROVGRAPH_NATS_ACK_WAIT": "3"}
    with serve_process(data, nats_server.url, **env) as first:
        wait_for(info_file.exists, 60, "serve.json")
        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        wait_for(lambda: _metrics(info_file)["provgraph_integrator_committed_batches_total"] >= 48, 120,
                 "the first commits")
        before = _metrics(info_file)
        t_kill = time.monotonic() - t0
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
    assert not published.is_set() or before["provgraph_integrator_consumer_lag_messages"] > 0, \
        "the stream was already consumed when the integrator was killed"
    publisher.join(120)
    assert published.is_set()
    transport.close(10)

    with serve_process(data, nats_server.url, **env) as second:
        wait_for(lambda: json.loads(info_file.read_text())["pid"] == second.pid, 60, "the new serve.json")
        wait_for(lambda: (m := _metrics(info_file))["provgraph_integrator_consumer_lag_messages"] == 0
                 and m["provgraph_integrator_received_messages_total"] > 0
                 and m["provgraph_integrator_received_messages_total"]
                 == m["provgraph_integrator_committed_batches_total"]
                 and _drained(nats_server.url, settings), 180, "the restarted integrator to drain the stream")
        after = _metrics(info_file)
        t_drained = time.monotonic() - t0
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    print(f"\nkilled after {before['provgraph_integrator_committed_batches_total']:.0f} messages; restart "
          f"received {after['provgraph_integrator_received_messages_total']:.0f} "
          f"({after['provgraph_integrator_redelivered_messages_total']:.0f} redelivered)")
    store = Store(data / "store", read_only=True)
    assert len(expected) >= 10 * N_TASKS
    assert len(store) == len(expected)
    missing = sum(1 for q in expected if q not in store.oxigraph)
    assert missing == 0
    assert after["provgraph_integrator_dead_lettered_messages_total"] == 0
    print(f"phases: records+expected {t_expected:.1f}s, kill at {t_kill:.1f}s, drained at {t_drained:.1f}s, "
          f"checked at {time.monotonic() - t0:.1f}s")


def _drained(url: str, settings: object) -> bool:
    import asyncio

    from provgraph.integrator import drained

    return asyncio.run(drained(settings, url))  # type: ignore[arg-type]
