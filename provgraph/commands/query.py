"""``provgraph query``: run SPARQL (text, file or a named query of the library)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import QueryError
from . import open_store

__all__ = ["register"]

FORMATS = ("table", "json", "csv", "tsv")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "query", help="run a SPARQL query (text, --file, or --name from the query library)",
        description="Run a SPARQL 1.1 query against the store. The default graph is the union of all "
                    "workflow-run graphs. Named queries take typed parameters (--param k=v), bound as "
                    "RDF terms, never spliced into the text.",
        epilog="examples:\n  provgraph query 'SELECT (COUNT(*) AS ?n) WHERE { ?s ?p ?o }'\n"
               "  provgraph query --name upstream --param node=ni:///sha-256;...\n"
               "  provgraph query --list",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sparql", nargs="?", help="the query text ('-' reads standard input)")
    p.add_argument("--file", "-f", metavar="FILE", help="read the query from FILE")
    p.add_argument("--name", "-n", metavar="NAME", help="a named query of the library (see --list)")
    p.add_argument("--param", "-p", action="append", default=[], metavar="K=V",
                   help="a parameter of the named query (repeatable)")
    p.add_argument("--list", action="store_true", help="list the named queries and their parameters")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="print at most N rows")
    p.set_defaults(func=run)


def _params(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise QueryError(f"--param wants KEY=VALUE, got {pair!r}")
        out[key.strip()] = value
    return out


def run(args: argparse.Namespace) -> int:
    from .. import queries

    if args.list:
        for q in queries.list_queries():
            print(f"{q.name}: {q.purpose}")
            for prm in q.params:
                print(f"    --param {prm.describe()}")
            if not q.params:
                print("    (no parameters)")
        return 0
    named = None
    if args.name:
        if args.sparql or args.file:
            raise QueryError("give either --name or a query (text or --file), not both")
        named = queries.load_query(args.name)
        params = _params(args.param)
        queries.bind(named, params)  # bad parameters are reported before the store is opened
    elif args.file:
        try:
            text = Path(args.file).read_text(encoding="utf-8")
        except OSError as exc:
            raise QueryError(f"cannot read the query file {args.file}: {exc}") from exc
    elif args.sparql == "-":
        text = sys.stdin.read()
    elif args.sparql:
        text = args.sparql
    else:
        raise QueryError("give a query, --file FILE or --name NAME (or --list)")
    if args.param and not args.name:
        raise QueryError("--param is for named queries (--name)")
    store = open_store(args)
    try:
        result = queries.run(store, named, params) if named is not None else store.query(text)
        write_result(result, args.format, sys.stdout, limit=args.limit)
    finally:
        store.close()
    return 0


def _cell(term: Any) -> str:
    if term is None:
        return ""
    return str(getattr(term, "value", term))


def write_result(result: Any, fmt: str, out: Any, *, limit: int | None = None) -> None:
    """Print a pyoxigraph result: solutions as a table/JSON/CSV/TSV, ``ASK`` as
    true/false, graphs as N-Triples."""
    import pyoxigraph as ox

    if isinstance(result, (bool, ox.QueryBoolean)):
        answer = bool(result)
        print(json.dumps({"boolean": answer}) if fmt == "json" else str(answer).lower(), file=out)
        return
    if isinstance(result, ox.QuerySolutions):
        names = [v.value for v in result.variables]
        rows: list[list[Any]] = []
        for i, sol in enumerate(result):
            if limit is not None and i >= limit:
                break
            rows.append([sol[n] for n in names])
        if fmt == "json":
            doc = [{n: _json_term(t) for n, t in zip(names, row, strict=True) if t is not None} for row in rows]
            json.dump(doc, out, indent=2)
            out.write("\n")
        elif fmt in ("csv", "tsv"):
            w = csv.writer(out, delimiter="," if fmt == "csv" else "\t", lineterminator="\n")
            w.writerow(names)
            w.writerows([[_cell(t) for t in row] for row in rows])
        else:
            cells = [[_cell(t) for t in row] for row in rows]
            widths = [min(60, max([len(n), *(len(c[i]) for c in cells)])) for i, n in enumerate(names)]
            print("  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)).rstrip(), file=out)
            print("  ".join("-" * w for w in widths), file=out)
            for c in cells:
                print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip(), file=out)
            print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})", file=out)
        return
    triples = list(result)
    if limit is not None:
        triples = triples[:limit]
    data = ox.serialize(triples, format=ox.RdfFormat.N_TRIPLES) or b""
    out.write(data.decode("utf-8"))


def _json_term(term: Any) -> Any:
    import pyoxigraph as ox

    if isinstance(term, ox.Literal):
        dt = term.datatype.value
        if dt.endswith("#integer") or dt.endswith("#int") or dt.endswith("#long"):
            try:
                return int(term.value)
            except ValueError:
                return term.value
        if dt.endswith("#double") or dt.endswith("#float") or dt.endswith("#decimal"):
            try:
                return float(term.value)
            except ValueError:
                return term.value
        if dt.endswith("#boolean"):
            return term.value == "true"
        return term.value
    return str(getattr(term, "value", term))
