"""``provgraph export``: the store, a run, a campaign or a lineage subgraph as PROV or RDF."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import open_store

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ..interchange import EXPORT_FORMATS

    p = sub.add_parser(
        "export", help="export PROV-JSON, PROV-N, PROV-XML, Turtle, TriG, JSON-LD or N-Quads",
        description="Export the whole store, one workflow run, one campaign or the lineage of a node. "
                    "PROV formats are written by the 'prov' library from the PROV-O statements.")
    p.add_argument("--format", "-F", choices=EXPORT_FORMATS, default="prov-json", help="default: prov-json")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--run", metavar="ID", help="one workflow run (identifier or IRI)")
    scope.add_argument("--campaign", metavar="NAME", help="every run of a campaign (name or IRI)")
    scope.add_argument("--lineage", metavar="NODE",
                       help="the lineage subgraph of a node (an IRI, or a file: its content IRI)")
    scope.add_argument("--graph", metavar="IRI", help="one named graph (e.g. an imported document)")
    p.add_argument("--direction", choices=("upstream", "downstream", "both"), default="upstream",
                   help="lineage direction with --lineage (default: upstream)")
    p.add_argument("--depth", type=int, default=None, help="lineage depth with --lineage (default: unbounded)")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..interchange import export
    from .lineage import resolve_node

    node = resolve_node(args.lineage) if args.lineage else None
    store = open_store(args)
    try:
        data = export(store, args.format, run=args.run, campaign=args.campaign, lineage=node,
                      graph=args.graph, direction=args.direction, depth=args.depth)
    finally:
        store.close()
    if args.output:
        Path(args.output).write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0
