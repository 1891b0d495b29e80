"""Overhead of resource telemetry per decorated task, by level (off / task / sampler).

A task that busy-waits ``--task-ms`` milliseconds is called ``--n`` times per level; the
levels run interleaved in blocks (off, task, sampler, off, ...) in one process with the
``none`` transport (mapping included, delivery excluded), and the figure is the median
per-call time of each level minus that of ``off``. ``task`` takes a psutil (and NVML,
when a GPU is present) snapshot on the task's thread at start and at end; ``sampler``
samples on a background thread every ``--interval`` seconds and attaches the samples on
the emitter's thread.

    python benchmarks/telemetry_overhead.py [--n 2000] [--task-ms 1] [--blocks 5]

Writes benchmarks/results/telemetry_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from provgraph.adapters import telemetry

import provgraph

RESULTS = Path(__file__).resolve().parent / "results"
LEVELS = ("off", "task", "sampler")


def busy(ms: float) -> None:
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass


def block(level: str, n: int, task_ms: float, interval: float) -> float:
    """Median µs per call of ``n`` calls at ``level`` (all events mapped before it returns)."""
    provgraph.configure(transport="none", telemetry=level, telemetry_interval=interval, queue_size=max(n * 4, 4096))

    @provgraph.task
    def work(x: int, ms: float) -> int:
        busy(ms)
        return x

    times: list[float] = []
    with provgraph.workflow("telemetry-bench"):
        for i in range(n):
            t = time.perf_counter()
            work(i, task_ms)
            times.append(time.perf_counter() - t)
    if not provgraph.flush(60):
        raise RuntimeError("flush timed out")
    dropped = provgraph.get_emitter().stats().get("dropped", 0)
    if dropped:
        raise RuntimeError(f"{dropped} records dropped: raise the queue size")
    provgraph.shutdown()
    return statistics.median(times) * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="calls per block")
    ap.add_argument("--task-ms", type=float, default=1.0)
    ap.add_argument("--blocks", type=int, default=5, help="blocks per level (interleaved)")
    ap.add_argument("--interval", type=float, default=0.1, help="sampler interval, seconds")
    args = ap.parse_args(argv)

    per: dict[str, list[float]] = {lvl: [] for lvl in LEVELS}
    block("task", 200, args.task_ms, args.interval)  # warm-up: psutil/NVML initialisation
    for _ in range(args.blocks):
        for level in LEVELS:
            per[level].append(block(level, args.n, args.task_ms, args.interval))
    med = {lvl: statistics.median(v) for lvl, v in per.items()}
    snap = telemetry.probe().snapshot("x")
    result: dict[str, Any] = {
        "python": sys.version.split()[0], "machine": platform.machine(), "cpus": os.cpu_count(),
        "gpus": telemetry.gpu_count(), "n": args.n, "task_ms": args.task_ms, "blocks": args.blocks,
        "interval_s": args.interval, "median_us": med,
        "added_us": {lvl: med[lvl] - med["off"] for lvl in LEVELS},
        "keys_per_snapshot": sorted(snap[0]) if snap else [],
        "runs_us": per,
    }
    print(f"telemetry overhead, {args.task_ms} ms task, {args.n} calls x {args.blocks} blocks per level, "
          f"GPUs: {result['gpus']}")
    print(f"{'level':<10}{'median µs/call':>16}{'added µs':>12}{'added %':>10}")
    for lvl in LEVELS:
        added = result["added_us"][lvl]
        print(f"{lvl:<10}{med[lvl]:>16.1f}{added:>12.1f}{added / med['off'] * 100:>9.2f}%")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "telemetry_overhead.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
