"""Lineage latency on a large workflow graph, and the same walk on rdflib for scale.

    python benchmarks/query.py [--tasks 1000000] [--rdflib-tasks 50000] [--samples 200]

1. Builds (once; cached under ``benchmarks/results/query-store-<N>/``) an on-disk
   Oxigraph store of ``N`` tasks shaped like workflow DAGs — runs of 20 chained tasks,
   each generating a content-hashed artifact, using its predecessor's artifact and a
   parameter, 5 % of tasks also using an artifact of an earlier run, some informed-by
   and parent-task links, plus the statements a real store holds about each task
   (types, label, run, start time, parameter value): ``tests/support/provdag.py``,
   about 12 quads per task, bulk-loaded with pyoxigraph.
2. Times :func:`provgraph.lineage.lineage` (index lookups) upstream and downstream from
   random artifacts at depth 5, 20 and unbounded: p50/p99 in ms.
3. At the smaller size ``--rdflib-tasks`` (rdflib's in-memory ``Graph`` holds the same
   triples): the same breadth-first walk on rdflib, and provgraph (index and SPARQL
   methods) on an in-memory store of that size, for a ratio at equal size.

Prints a table and writes ``benchmarks/results/query.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyoxigraph as ox

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import provgraph  # noqa: E402
from provgraph.lineage import RELATIONS, lineage  # noqa: E402
from tests.support import provdag  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DEPTHS: tuple[int | None, ...] = (5, 20, None)
SEED = 7


def build_store(n_tasks: int, path: Path | None) -> tuple[provgraph.Store, float, bool]:
    """The store of ``n_tasks`` (on disk under ``path``, reused when complete)."""
    marker = path / "provgraph-bench-complete" if path is not None else None
    if path is not None and marker is not None and marker.exists():
        return provgraph.Store(path, read_only=True), 0.0, True
    if path is not None and path.exists():
        shutil.rmtree(path)
    t0 = time.perf_counter()
    store = provgraph.Store(path)
    for chunk in provdag.nquads(n_tasks, seed=SEED, chunk=200_000):
        store.oxigraph.bulk_load(chunk, format=ox.RdfFormat.N_QUADS)
    store.flush()
    seconds = time.perf_counter() - t0
    if path is not None and marker is not None:
        store.close()
        marker.write_text(json.dumps({"tasks": n_tasks, "seed": SEED}))
        store = provgraph.Store(path, read_only=True)
    return store, seconds, False


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def roots(n_tasks: int, samples: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [provdag.artifact(rng.randrange(n_tasks)) for _ in range(samples)]


def time_walks(walk: Callable[[str, str, int | None], int], nodes: list[str], direction: str,
               depth: int | None) -> dict[str, float]:
    times, sizes = [], []
    for node in nodes:
        t0 = time.perf_counter()
        size = walk(node, direction, depth)
        times.append((time.perf_counter() - t0) * 1000)
        sizes.append(size)
    return {"p50_ms": round(percentile(times, 50), 4), "p99_ms": round(percentile(times, 99), 4),
            "mean_nodes": round(statistics.mean(sizes), 1), "max_nodes": max(sizes)}


def provgraph_walk(store: Any, method: str = "index") -> Callable[[str, str, int | None], int]:
    def walk(node: str, direction: str, depth: int | None) -> int:
        return len(lineage(store, node, direction, depth=depth, max_nodes=None, method=method)["nodes"])
    return walk


def rdflib_graph(n_tasks: int) -> Any:
    """rdflib's in-memory Graph with the same triples (graph names dropped)."""
    from rdflib import BNode, Graph, Literal, URIRef

    def term(t: Any) -> Any:
        if isinstance(t, ox.NamedNode):
            return URIRef(t.value)
        if isinstance(t, ox.BlankNode):
            return BNode(t.value)
        return Literal(t.value, datatype=URIRef(t.datatype.value) if t.datatype else None)

    g = Graph()
    for chunk in provdag.nquads(n_tasks, seed=SEED):
        for q in ox.parse(chunk, format=ox.RdfFormat.N_QUADS):
            g.add((term(q.subject), term(q.predicate), term(q.object)))
    return g


def rdflib_walk(graph: Any) -> Callable[[str, str, int | None], int]:
    """The breadth-first walk of :func:`provgraph.lineage.lineage` on rdflib."""
    from rdflib import URIRef

    preds = [URIRef(RELATIONS[name][0]) for name in ("wasGeneratedBy", "used", "wasInformedBy",
                                                     "wasDerivedFrom", "parentTask")]

    def walk(node: str, direction: str, depth: int | None) -> int:
        up = direction == "upstream"
        start = URIRef(node)
        seen = {start}
        edges = set()
        layer = [start]
        level = 0
        while layer and (depth is None or level < depth):
            nxt = []
            for n in layer:
                for p in preds:
                    others = graph.objects(n, p) if up else graph.subjects(p, n)
                    for o in others:
                        edges.add((n, p, o) if up else (o, p, n))
                        if o not in seen:
                            seen.add(o)
                            nxt.append(o)
            layer = nxt
            level += 1
        return len(seen)
    return walk


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'engine':<22}{'tasks':>10}{'direction':>12}{'depth':>7}{'p50 ms':>10}{'p99 ms':>10}{'nodes':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['engine']:<22}{r['tasks']:>10,}{r['direction']:>12}{r['depth']!s:>7}"
                     f"{r['p50_ms']:>10.3f}{r['p99_ms']:>10.3f}{r['mean_nodes']:>9}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=1_000_000, help="tasks in the large store (default 1,000,000)")
    ap.add_argument("--rdflib-tasks", type=int, default=50_000,
                    help="tasks for the equal-size comparison with rdflib (default 50,000; 0 skips it)")
    ap.add_argument("--samples", type=int, default=200, help="random start nodes per cell (default 200)")
    ap.add_argument("--memory", action="store_true", help="build the large store in memory, not on disk")
    ap.add_argument("--output", type=Path, default=RESULTS / "query.json")
    args = ap.parse_args(argv)

    RESULTS.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    path = None if args.memory else RESULTS / f"query-store-{args.tasks}"
    store, build_s, reused = build_store(args.tasks, path)
    quads = len(store)
    print(f"store: {args.tasks:,} tasks, {quads:,} quads, "
          f"{'reused from ' + str(path) if reused else f'built in {build_s:.1f} s'}", flush=True)
    nodes = roots(args.tasks, args.samples, seed=1)
    walk = provgraph_walk(store)
    for node in nodes[:20]:  # warm the caches
        walk(node, "upstream", None)
    for direction in ("upstream", "downstream"):
        for depth in DEPTHS:
            cell = time_walks(walk, nodes, direction, depth)
            rows.append({"engine": "provgraph (index)", "tasks": args.tasks, "direction": direction,
                         "depth": depth, **cell})
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    store.close()

    if args.rdflib_tasks:
        small_nodes = roots(args.rdflib_tasks, args.samples, seed=2)
        small, _, _ = build_store(args.rdflib_tasks, None)
        t0 = time.perf_counter()
        graph = rdflib_graph(args.rdflib_tasks)
        rdflib_load_s = time.perf_counter() - t0
        print(f"rdflib Graph: {len(graph):,} triples loaded in {rdflib_load_s:.1f} s", flush=True)
        engines = [("provgraph (index)", provgraph_walk(small)),
                   ("provgraph (sparql)", provgraph_walk(small, "sparql")),
                   ("rdflib Graph", rdflib_walk(graph))]
        for name, fn in engines:
            for node in small_nodes[:10]:
                fn(node, "upstream", None)
            for direction in ("upstream", "downstream"):
                for depth in DEPTHS:
                    cell = time_walks(fn, small_nodes, direction, depth)
                    rows.append({"engine": name, "tasks": args.rdflib_tasks, "direction": direction,
                                 "depth": depth, **cell})
                    print(table(rows[-1:]).splitlines()[-1], flush=True)

    print()
    print(table(rows))
    ratios = {}
    for r in rows:
        if r["engine"] == "rdflib Graph":
            ours = next(x for x in rows if x["engine"] == "provgraph (index)" and x["tasks"] == r["tasks"]
                        and x["direction"] == r["direction"] and x["depth"] == r["depth"])
            if ours["p50_ms"]:
                ratios[f"{r['direction']}/{r['depth']}"] = round(r["p50_ms"] / ours["p50_ms"], 1)
    if ratios:
        print(f"\nrdflib p50 / provgraph p50 at {args.rdflib_tasks:,} tasks: {ratios}")
    target = next((r for r in rows if r["engine"] == "provgraph (index)" and r["tasks"] == args.tasks
                   and r["direction"] == "upstream" and r["depth"] == 20), None)
    if target:
        print(f"target p50 <= 20 ms at depth 20 ({args.tasks:,} tasks): {target['p50_ms']:.3f} ms "
              f"-> {'met' if target['p50_ms'] <= 20 else 'NOT met'}")
    result = {
        "benchmark": "query",
        "tasks": args.tasks, "quads": quads, "build_seconds": round(build_s, 1), "store_reused": reused,
        "samples": args.samples, "rdflib_tasks": args.rdflib_tasks, "rows": rows,
        "rdflib_over_provgraph_p50": ratios,
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count(), "pyoxigraph": ox.__version__},
    }
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
