"""Overhead of the Dask observer on the paper's workload shape, scaled to 2 cores.

Workload: two chained maps, ``a = client.map(f, range(N))`` then ``b = client.map(g, a)``,
gathered; f and g are no-ops, or sleep 10 ms. Cluster: ``LocalCluster``, 2 worker
processes, 1 thread each. For every repetition the plain run and the observed run (observer
registered before the maps, closed after) alternate on the same cluster, in alternating
order, so drift hits both equally; figures are medians over the repetitions.

Two times per observed run:

* ``makespan``: submit → results gathered (what the user's workflow waits for while it
  runs; the observer is registered before);
* ``+durable``: from ``register()`` until ``observer.close()`` returned, i.e. including
  the plugin registration round trips, every worker flushed and every record committed
  by the transport (the whole cost, delivery included).

    python benchmarks/dask_overhead.py [--reps 7] [--n-noop 1000] [--n-sleep 200]
                                       [--transport store journal nats]

``nats`` is provgraph online: ``provgraph serve --no-http`` (a local nats-server with
JetStream and the integrator committing into an on-disk store) runs in a child process,
every worker publishes its batches to it; ``+durable`` then ends when JetStream has
acknowledged every batch. Writes ``benchmarks/results/dask_overhead.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    from distributed import Client, LocalCluster

import provgraph.adapters.dask as pg_dask

from provgraph.settings import load_settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from capture_overhead import LocalPipeline

RESULTS = Path(__file__).resolve().parent / "results"


def noop(x: Any) -> Any:
    return x


def sleep10(x: Any) -> Any:
    time.sleep(0.01)
    return x


def prelude(client: Client) -> None:
    """One scheduler/worker round trip right before a timed plain run. On this Dask
    (default ``worker-saturation``, i.e. scheduler-side queuing) the first burst of tiny
    tasks after any pause or RPC runs ~3x slower than one right after another burst, for
    plain Dask too. The observed arm always follows an RPC (the plugin registration), so
    the plain arm gets one as well: both arms start in the same state."""
    client.run(_nothing)


def _nothing() -> None:
    return None


def workload(client: Client, fn: Any, n: int) -> float:
    prelude(client)
    t0 = time.perf_counter()
    first = client.map(fn, range(n), pure=False)
    second = client.map(fn, first, pure=False)
    client.gather(second)
    elapsed = time.perf_counter() - t0
    del first, second
    return elapsed


def observed(client: Client, fn: Any, n: int, settings: Any,
             settle: Callable[[], None] | None = None) -> tuple[float, float]:
    """(submit → gathered, register → observer closed) of one observed run; ``settle``
    then waits (untimed) until the integrator committed it, so that none of its work
    spills into the next arm."""
    t_reg = time.perf_counter()
    observer = pg_dask.register(client, workflow="bench", settings=settings)
    t0 = time.perf_counter()
    first = client.map(fn, range(n), pure=False)
    second = client.map(fn, first, pure=False)
    client.gather(second)
    makespan = time.perf_counter() - t0
    ok = observer.close(timeout=120)
    durable = time.perf_counter() - t_reg
    if not ok:
        raise RuntimeError("observer did not flush in time")
    del first, second
    if settle is not None:
        settle()
    return makespan, durable


def nats_available() -> bool:
    return all(importlib.util.find_spec(m) is not None
               for m in ("nats", "provgraph.transports.nats", "provgraph.integrator", "provgraph.natsserver"))


def measure(client: Client, fn: Any, n: int, reps: int, settings: Any,
            settle: Callable[[], None] | None = None) -> dict[str, Any]:
    workload(client, fn, n)  # warm-up: imports, connections, worker caches
    observed(client, fn, n, settings, settle)
    plain: list[float] = []
    made: list[float] = []
    durable: list[float] = []
    for rep in range(reps):
        order = (0, 1) if rep % 2 == 0 else (1, 0)
        for which in order:
            if which == 0:
                plain.append(workload(client, fn, n))
            else:
                m, d = observed(client, fn, n, settings, settle)
                made.append(m)
                durable.append(d)
    p, m, d = statistics.median(plain), statistics.median(made), statistics.median(durable)
    noise = (max(plain) - min(plain)) / p * 100
    return {"tasks": 2 * n, "plain_s": p, "observed_s": m, "durable_s": d,
            "overhead_pct": (m / p - 1) * 100, "durable_overhead_pct": (d / p - 1) * 100,
            "plain_spread_pct": noise, "plain_runs": plain, "observed_runs": made, "durable_runs": durable}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--n-noop", type=int, default=1000, help="tasks per map, no-op tasks")
    ap.add_argument("--n-sleep", type=int, default=200, help="tasks per map, 10 ms tasks")
    ap.add_argument("--transport", nargs="+", default=["nats", "store", "journal"])
    ap.add_argument("--worker-saturation", default=None,
                    help="distributed.scheduler.worker-saturation for the cluster (default: Dask's; "
                         "'inf' disables scheduler-side queuing)")
    args = ap.parse_args(argv)
    if args.worker_saturation is not None:
        import dask

        dask.config.set({"distributed.scheduler.worker-saturation": float(args.worker_saturation)})

    results: dict[str, Any] = {"python": sys.version.split()[0], "machine": platform.machine(),
                               "cpus": os.cpu_count(), "reps": args.reps, "workers": 2,
                               "worker_saturation": args.worker_saturation or "dask default", "runs": {}}
    print(f"{'transport':<10}{'tasks':<10}{'tasks/map':>10}{'plain s':>10}{'observed s':>12}{'overhead':>10}"
          f"{'+durable':>10}{'plain spread':>14}")
    with tempfile.TemporaryDirectory(prefix="pg-dask-bench-") as tmp, \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                         host="127.0.0.1") as cluster, Client(cluster) as client:
        for transport in args.transport:
            if transport == "nats" and not nats_available():
                print(f"{'nats':<10}skipped: provgraph.transports.nats / provgraph.integrator not present")
                results["runs"]["nats"] = {"skipped": "NATS transport or integrator not present"}
                continue
            data = Path(tmp) / transport
            pipeline = LocalPipeline() if transport == "nats" else None
            try:
                extra = {"nats_url": pipeline.url} if pipeline is not None else {}
                settings = load_settings(transport=transport, data_dir=data, **extra)
                for label, fn, n in (("no-op", noop, args.n_noop), ("10 ms", sleep10, args.n_sleep)):
                    r = measure(client, fn, n, args.reps, settings, pipeline.settle if pipeline else None)
                    results["runs"][f"{transport}/{label}"] = r
                    print(f"{transport:<10}{label:<10}{n:>10}{r['plain_s']:>10.3f}{r['observed_s']:>12.3f}"
                          f"{r['overhead_pct']:>9.1f}%{r['durable_overhead_pct']:>9.1f}%"
                          f"{r['plain_spread_pct']:>13.1f}%", flush=True)
            finally:
                if pipeline is not None:
                    pipeline.stop()
    RESULTS.mkdir(exist_ok=True)
    suffix = f"-saturation-{args.worker_saturation}" if args.worker_saturation is not None else ""
    out = RESULTS / f"dask_overhead{suffix}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
