"""End-to-end ingest through NATS: throughput against raw Oxigraph, and freshness.

Runs ``provgraph serve`` (local nats-server + integrator + SPARQL endpoint, on-disk
store) in a child process, then:

(1) throughput: publishes a fixed stream of task batches (made by the real emitter
    and Mapper, TriG) with the NATS transport and times first publish → last triple
    committed (the integrator's ``/metrics``); the same TriG is bulk-loaded into a
    fresh on-disk ``pyoxigraph.Store`` in the same run; reports both and the ratio
    (target >= 0.7);
(2) freshness: runs decorated tasks at a steady rate (default 2,000 tasks/s) and
    polls the SPARQL endpoint every ``--poll`` seconds for the highest task number
    visible; freshness of a task = first poll that sees it - its end time
    (p50/p99, target p99 <= 1 s; resolution: the poll interval).

    python benchmarks/ingest.py [--tasks 30000] [--rate 2000] [--seconds 10]

Prints a table and writes benchmarks/results/ingest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pyoxigraph as ox

import provgraph
from provgraph.metrics import parse as parse_metrics
from provgraph.settings import load_settings
from provgraph.transports.base import Batch
from provgraph.transports.nats import NatsTransport

RESULTS = Path(__file__).resolve().parent / "results"
PG = "https://w3id.org/provgraph/ns#"
PROV = "http://www.w3.org/ns/prov#"


def make_batches(n: int, batch_size: int) -> list[Batch]:
    """``n`` tasks (a content-hashed input and output, a number) as real emitter batches."""
    memory = provgraph.MemoryTransport()
    provgraph.configure(transport=memory, batch_size=batch_size, queue_size=n + batch_size, flush_interval=600)

    @provgraph.task
    def process(image: bytes, index: int) -> bytes:
        return image[::-1]

    with provgraph.workflow("ingest-bench", run_id="ingest-throughput"):
        for i in range(n):
            process(b"frame-%08d-" % i + b"p" * 48, i)
    provgraph.flush(600)
    provgraph.shutdown(60)
    return list(memory.batches)


def raw_bulk_load(batches: list[Batch], directory: Path) -> tuple[float, int]:
    store = ox.Store(str(directory))
    data = b"\n".join(b.data for b in batches)
    t0 = time.perf_counter()
    store.bulk_load(data, format=ox.RdfFormat.TRIG)
    store.flush()
    elapsed = time.perf_counter() - t0
    return elapsed, len(store)


class Serve:
    """``provgraph serve`` in a child process on its own data dir."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.log = open(data_dir.parent / "serve.log", "wb")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("PROVGRAPH_")}
        full_env.update(env, PROVGRAPH_DATA_DIR=str(data_dir))
        verbose = ["-v"] if os.environ.get("PROVGRAPH_BENCH_VERBOSE") else []  # serve's log in the work dir
        self.proc = subprocess.Popen([sys.executable, "-m", "provgraph", *verbose, "serve", "--http-port", "0"],
                                     env=full_env, stdout=self.log, stderr=subprocess.STDOUT)
        info_file = data_dir / "serve.json"
        deadline = time.monotonic() + 60
        while not info_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"provgraph serve did not start; see {self.log.name}")
            time.sleep(0.05)
        self.info = json.loads(info_file.read_text())

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"{self.info['http_url']}/metrics", timeout=10) as resp:
            return parse_metrics(resp.read().decode())

    def sparql(self, query: str) -> list[dict[str, Any]]:
        req = urllib.request.Request(f"{self.info['http_url']}/sparql?query={urllib.parse.quote(query)}",
                                     headers={"Accept": "application/sparql-results+json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return list(json.loads(resp.read())["results"]["bindings"])

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def throughput(serve: Serve, batches: list[Batch], data_dir: Path) -> tuple[float, float]:
    """Seconds from first publish to every triple committed; triples committed (parsed count)."""
    settings = load_settings(nats_url=serve.info["nats_url"], data_dir=data_dir / "publisher",
                             journal_max_bytes=1 << 40)
    transport = NatsTransport(settings)
    base = serve.metrics()["provgraph_integrator_committed_triples_total"]
    total = sum(b.triples for b in batches)
    t0 = time.perf_counter()
    for b in batches:
        transport.publish(b)
    if not transport.flush(600):
        raise SystemExit("publishing did not finish")
    while True:
        done = serve.metrics()["provgraph_integrator_committed_triples_total"] - base
        if done >= total:
            break
        time.sleep(0.02)
    elapsed = time.perf_counter() - t0
    transport.close(10)
    st = transport.stats
    if st.spilled_batches:
        print(f"note: {st.spilled_batches} batches went through the publisher's journal "
              f"(PubAck slower than publish_timeout={settings.publish_timeout}s)", file=sys.stderr)
    return elapsed, done


def freshness(serve: Serve, rate: int, seconds: float, poll: float, flush_interval: float,
              data_dir: Path, sample: int = 10) -> dict[str, Any]:
    """Decorated tasks at ``rate``/s; for every ``sample``-th task, its end time → the
    end of the first SPARQL poll that sees it (a conservative figure)."""
    from provgraph.namespaces import Minter

    run_id = "ingest-freshness"
    provgraph.configure(nats_url=serve.info["nats_url"], transport="nats", data_dir=data_dir / "fresh",
                        flush_interval=flush_interval, batch_size=max(1, int(rate * flush_interval * 2)),
                        queue_size=max(100_000, rate * 10))
    mint = Minter(provgraph.load_settings().iri_base)
    samples: list[tuple[str, float]] = []  # (task IRI, end time), in order
    seen: dict[str, float] = {}

    last_id = [""]

    @provgraph.task
    def step(seq: int) -> int:
        last_id[0] = provgraph.current_task_id() or ""
        return seq

    stop = threading.Event()

    def poller() -> None:
        cursor = 0
        while not stop.is_set():
            t = time.time()
            waiting = [iri for iri, _ in samples[cursor:cursor + 400] if iri not in seen]
            if waiting:
                values = " ".join(f"<{iri}>" for iri in waiting)
                rows = serve.sparql(f"SELECT ?t WHERE {{ VALUES ?t {{ {values} }} ?t a <{PROV}Activity> }}")
                now = time.time()
                for row in rows:
                    seen[row["t"]["value"]] = now
                while cursor < len(samples) and samples[cursor][0] in seen:
                    cursor += 1
            time.sleep(max(0.0, poll - (time.time() - t)))

    thread = threading.Thread(target=poller, daemon=True)
    n = int(rate * seconds)
    per_tick = max(1, int(rate * 0.01))
    with provgraph.workflow("ingest-bench", run_id=run_id):
        thread.start()
        start = time.perf_counter()
        seq = 0
        while seq < n:
            for _ in range(per_tick):
                step(seq)
                if seq % sample == 0:
                    # the ID the decorator gave the task that just ended
                    samples.append((mint.task(last_id[0]), time.time()))
                seq += 1
            delay = start + seq / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        achieved = n / (time.perf_counter() - start)
    provgraph.flush(60)
    deadline = time.time() + 60
    while len(seen) < len(samples) and time.time() < deadline:
        time.sleep(poll)
    stop.set()
    thread.join(10)
    provgraph.shutdown(30)
    warmup = rate // sample  # the first second
    lat = sorted(seen[iri] - end for iri, end in samples[warmup:] if iri in seen)
    return {"rate_target": rate, "rate_achieved": achieved, "tasks": n, "sampled": len(samples) - warmup,
            "measured": len(lat), "p50_s": statistics.median(lat) if lat else None,
            "p99_s": lat[int(0.99 * (len(lat) - 1))] if lat else None,
            "max_s": lat[-1] if lat else None, "poll_s": poll, "flush_interval_s": flush_interval}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=30_000, help="tasks in the throughput stream")
    ap.add_argument("--batch-size", type=int, default=2_000, help="tasks per emitter batch")
    ap.add_argument("--rate", type=int, default=2_000, help="tasks/s in the freshness run")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the freshness run")
    ap.add_argument("--poll", type=float, default=0.05, help="SPARQL poll interval of the freshness run")
    ap.add_argument("--flush-interval", type=float, default=0.25, help="emitter flush_interval (freshness run)")
    ap.add_argument("--fetch", type=int, default=256, help="integrator_fetch")
    ap.add_argument("--commit", choices=["bulk", "transaction"], default="bulk", help="integrator_commit")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pg-ingest-"))
    try:
        os.environ["PROVGRAPH_DATA_DIR"] = str(work / "bench")
        batches = make_batches(args.tasks, args.batch_size)
        triples = sum(b.triples for b in batches)
        raw_s, raw_distinct = raw_bulk_load(batches, work / "raw")
        serve = Serve(work / "serve", {"PROVGRAPH_INTEGRATOR_FETCH": str(args.fetch),
                                       "PROVGRAPH_INTEGRATOR_COMMIT": args.commit})
        try:
            e2e_s, committed = throughput(serve, batches, work)
            fresh = freshness(serve, args.rate, args.seconds, args.poll, args.flush_interval, work)
            stored = int(serve.sparql("SELECT (COUNT(*) AS ?n) WHERE { GRAPH ?g { ?s ?p ?o } }")[0]["n"]["value"])
        except BaseException:
            serve.stop()
            print("provgraph serve log:\n" + (work / "serve.log").read_text(errors="replace")[-4000:],
                  file=sys.stderr)
            raise
        serve.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    raw_rate = triples / raw_s
    e2e_rate = triples / e2e_s
    result = {
        "benchmark": "ingest", "python": sys.version.split()[0], "machine": platform.machine(),
        "cpus": os.cpu_count(), "tasks": args.tasks, "batches": len(batches), "triples": triples,
        "raw_distinct_triples": raw_distinct, "fetch": args.fetch, "commit": args.commit,
        "raw_bulk_load_s": raw_s, "raw_triples_per_s": raw_rate,
        "end_to_end_s": e2e_s, "end_to_end_triples_per_s": e2e_rate, "ratio": e2e_rate / raw_rate,
        "committed_triples": committed, "store_triples_after_both_runs": stored, "freshness": fresh,
    }
    print(f"ingest through NATS, {args.tasks:,} tasks = {triples:,} triples in {len(batches)} batches, "
          f"on-disk store, integrator fetch={args.fetch} commit={args.commit}")
    print(f"{'path':<42} {'seconds':>8} {'triples/s':>12}")
    print(f"{'raw pyoxigraph bulk_load (same TriG)':<42} {raw_s:>8.2f} {raw_rate:>12,.0f}")
    print(f"{'publish -> NATS -> integrator -> committed':<42} {e2e_s:>8.2f} {e2e_rate:>12,.0f}")
    print(f"ratio end-to-end / raw: {e2e_rate / raw_rate:.2f} (target >= 0.7)")
    if fresh["p50_s"] is not None:
        print(f"freshness at {fresh['rate_achieved']:,.0f} tasks/s (target {args.rate:,}), task end -> visible "
              f"to SPARQL: p50 {fresh['p50_s']:.3f}s p99 {fresh['p99_s']:.3f}s max {fresh['max_s']:.3f}s "
              f"(poll {args.poll}s, flush_interval {args.flush_interval}s; target p99 <= 1 s)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ingest.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
