"""``provgraph stats``: counts of activities, tasks, entities, runs and triples."""

from __future__ import annotations

import argparse
import json

from . import open_store

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("stats", help="counts of activities, entities, workflow runs and triples",
                       description="Print counts of what the store holds.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    store = open_store(args)
    stats = store.stats()
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        width = max(len(k) for k in stats)
        for key, value in stats.items():
            print(f"{key.replace('_', ' '):<{width}}  {value:>12,}")
    return 0
