"""``provgraph import``: PROV-JSON, PROV-XML, PROV-N or PROV-O (RDF) documents into the store."""

from __future__ import annotations

import argparse
import json

from . import open_store

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ..interchange import IMPORT_FORMATS

    p = sub.add_parser(
        "import", help="import PROV-JSON, PROV-XML, PROV-N or PROV-O (Turtle, TriG, N-Quads, JSON-LD, RDF/XML)",
        description="Import provenance documents. Each document goes into its own named graph, named by the "
                    "SHA-256 of its bytes (urn:provgraph:import/sha256-...), so importing the same file twice "
                    "changes nothing; a dataset's own named graphs (TriG, N-Quads) and PROV bundles keep their "
                    "names. A malformed document is refused with the parser's message and the store is left "
                    "unchanged; other files on the command line are still imported.",
        epilog="examples:\n  provgraph import run.provjson\n  provgraph import --format turtle export.txt\n"
               "  provgraph import --graph https://lab.example/imports/run7 run7.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", metavar="FILE", help="documents to import")
    p.add_argument("--format", "-F", choices=IMPORT_FORMATS, default=None,
                   help="format of the documents (default: from each file's suffix)")
    p.add_argument("--graph", metavar="IRI", default=None,
                   help="named graph to import into (default: one per document, from its content hash)")
    p.add_argument("--json", action="store_true", help="print one JSON object per file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import NotFoundError, ParseError
    from ..interchange import import_file

    store = open_store(args, write=True)
    failed: list[tuple[str, Exception]] = []
    try:
        for name in args.files:
            before = len(store)
            try:
                graph = import_file(store, name, args.format, graph=args.graph)
            except (ParseError, NotFoundError) as exc:
                if len(args.files) == 1:
                    raise
                failed.append((name, exc))
                print(json.dumps({"file": name, "error": str(exc)}) if args.json
                      else f"{name}: not imported: {exc}")
                continue
            added = len(store) - before
            print(json.dumps({"file": name, "graph": graph, "statements_added": added}) if args.json
                  else f"{name}: {added} statements added to <{graph}>")
    finally:
        store.close()
    if failed:
        # the first failure decides the exit code (2 for bad input, 3 for a missing file)
        kind = NotFoundError if isinstance(failed[0][1], NotFoundError) else ParseError
        raise kind(f"{len(failed)} of {len(args.files)} files not imported (first: {failed[0][0]}: {failed[0][1]})")
    return 0
