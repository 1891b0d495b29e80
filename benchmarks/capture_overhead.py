"""Capture overhead of ``@provgraph.task`` on a trivial 2-argument function.

Two figures, both interleaved with the undecorated function in one run, medians:

(a) hot path: added µs per call while the loop runs (the background thread runs too);
(b) full cost: added µs per call counting serialization and delivery of every event,
    timed until ``provgraph.flush()`` returns (the background thread shares the GIL
    with the user's code, so this is what a user really pays).

    python benchmarks/capture_overhead.py [--n 100000] [--transport store journal nats]

``nats`` without ``--nats-url`` / ``PROVGRAPH_NATS_URL`` starts ``provgraph serve`` (a local
nats-server with JetStream and the integrator) in a child process for the run.

Writes benchmarks/results/capture_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import provgraph

RESULTS = Path(__file__).resolve().parent / "results"


def plain(a: int, b: int) -> int:
    return a + b


def hot_path(decorated: Any, n: int, block: int = 2_000) -> tuple[float, float]:
    """Median µs per call of plain and decorated, over interleaved blocks."""
    t_plain: list[float] = []
    t_dec: list[float] = []
    clock = time.perf_counter
    for _ in range(max(1, n // block)):
        t0 = clock()
        for i in range(block):
            plain(i, 2)
        t1 = clock()
        for i in range(block):
            decorated(i, 2)
        t2 = clock()
        t_plain.append((t1 - t0) / block * 1e6)
        t_dec.append((t2 - t1) / block * 1e6)
    return statistics.median(t_plain), statistics.median(t_dec)


def full_cost(decorated: Any, n: int) -> tuple[float, float, bool]:
    """µs per call of the plain loop, and of the decorated loop + flush."""
    clock = time.perf_counter
    t0 = clock()
    for i in range(n):
        plain(i, 2)
    t1 = clock()
    for i in range(n):
        decorated(i, 2)
    ok = provgraph.flush(600)
    t2 = clock()
    return (t1 - t0) / n * 1e6, (t2 - t1) / n * 1e6, ok


class LocalPipeline:
    """``provgraph serve --no-http`` (local nats-server + integrator) in a child process."""

    def __init__(self) -> None:
        import subprocess

        self.data = Path(tempfile.mkdtemp(prefix="pg-bench-serve-"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROVGRAPH_")}
        env["PROVGRAPH_DATA_DIR"] = str(self.data)
        self.proc = subprocess.Popen([sys.executable, "-m", "provgraph", "serve", "--no-http"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not (self.data / "serve.json").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("provgraph serve did not start (is provgraph[nats] installed?)")
            time.sleep(0.05)
        self.url = str(json.loads((self.data / "serve.json").read_text())["nats_url"])

    def settle(self, timeout: float = 120.0) -> None:
        """Wait until the integrator has committed everything published so far."""
        from provgraph.integrator import wait_drained

        wait_drained(json.loads((self.data / "serve.json").read_text()), timeout)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        shutil.rmtree(self.data, ignore_errors=True)


def measure(transport: str, n: int, repeats: int, nats_url: str | None,
            batch_size: int | None = None) -> dict[str, Any]:
    data = tempfile.mkdtemp(prefix="pg-bench-")
    overrides: dict[str, Any] = {"data_dir": data, "queue_size": max(n * 2, 1000), "transport": transport,
                                 "journal_max_bytes": 1 << 40}
    if batch_size:
        overrides["batch_size"] = batch_size
    if transport == "nats":
        overrides["nats_url"] = nats_url
    em = provgraph.configure(**overrides)
    decorated = provgraph.task(plain)
    rows: dict[str, list[float]] = {"plain": [], "decorated": [], "full_plain": [], "full_decorated": []}
    with provgraph.workflow("bench", campaign="capture-overhead"):
        decorated(0, 0)
        provgraph.flush(60)
        for _ in range(repeats):
            p, d = hot_path(decorated, n)
            provgraph.flush(600)
            rows["plain"].append(p)
            rows["decorated"].append(d)
            fp, fd, ok = full_cost(decorated, n)
            if not ok:
                raise SystemExit(f"flush timed out for transport {transport}")
            rows["full_plain"].append(fp)
            rows["full_decorated"].append(fd)
    stats = em.stats()
    provgraph.shutdown(60)
    shutil.rmtree(data, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    return {
        "transport": transport,
        "n": n,
        "repeats": repeats,
        "plain_us": med["plain"],
        "hot_path_added_us": med["decorated"] - med["plain"],
        "full_cost_added_us": med["full_decorated"] - med["full_plain"],
        "dropped": stats["dropped"],
        "failed_batches": stats["failed_batches"],
        "triples": stats["triples"],
        "triples_per_call": stats["triples"] / max(1, stats["records"]),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--transport", nargs="+", default=["store", "journal"])
    ap.add_argument("--nats-url", default=os.environ.get("PROVGRAPH_NATS_URL"))
    ap.add_argument("--batch-size", type=int, help="records per batch (default: the settings' default)")
    args = ap.parse_args()
    pipeline = LocalPipeline() if "nats" in args.transport and not args.nats_url else None
    try:
        url = args.nats_url or (pipeline.url if pipeline else None)
        results = [measure(t, args.n, args.repeats, url, args.batch_size) for t in args.transport]
    finally:
        if pipeline is not None:
            pipeline.stop()
    print(f"capture overhead, trivial 2-argument function, N={args.n}, {args.repeats} repeats (medians)")
    print(f"{'transport':<10} {'plain µs':>9} {'(a) hot path +µs':>17} {'(b) full cost +µs':>18} "
          f"{'triples/call':>13} {'dropped':>8}")
    for r in results:
        print(f"{r['transport']:<10} {r['plain_us']:>9.3f} {r['hot_path_added_us']:>17.2f} "
              f"{r['full_cost_added_us']:>18.2f} {r['triples_per_call']:>13.1f} {r['dropped']:>8}")
    print("targets: (a) <= 2 µs, (b) <= 5 µs")
    RESULTS.mkdir(exist_ok=True)
    out = {"benchmark": "capture_overhead", "python": sys.version.split()[0], "machine": platform.machine(),
           "cpus": os.cpu_count(), "results": results}
    (RESULTS / "capture_overhead.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
