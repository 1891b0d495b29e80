"""``provgraph lineage``: where a node (or a file) came from, what it led to, and how two
nodes are connected."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from . import open_store

__all__ = ["register", "resolve_node"]

FORMATS = ("table", "json", "dot")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "lineage", help="upstream/downstream lineage of an IRI or a file; --path A B: how A led to B",
        description="Walk the PROV relations (used, wasGeneratedBy, wasInformedBy, wasDerivedFrom, parent "
                    "task) from a node. NODE is an IRI, or the path of a file or directory: it is hashed and "
                    "its content IRI (ni:///sha-256;...) is looked up, so 'where did this file come from' "
                    "works under any name and on any machine. When --depth or --max-nodes cuts the walk, "
                    "the output says so and lists the frontier.",
        epilog="examples:\n  provgraph lineage results/model.pt\n"
               "  provgraph lineage --direction downstream --depth 3 ni:///sha-256;...\n"
               "  provgraph lineage --format dot data/raw.h5 | dot -Tsvg > lineage.svg\n"
               "  provgraph lineage --path data/raw.h5 results/model.pt",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("node", nargs="?", metavar="NODE", help="an IRI or a file/directory path")
    p.add_argument("--path", nargs=2, metavar=("A", "B"), help="a shortest chain of relations by which A led to B")
    p.add_argument("--direction", "-d", choices=("upstream", "downstream", "both"), default="upstream",
                   help="upstream: what NODE came from (default); downstream: what it led to")
    p.add_argument("--depth", type=int, default=None, metavar="N", help="at most N hops (default: unbounded)")
    p.add_argument("--max-nodes", type=int, default=100_000, metavar="N",
                   help="stop after N nodes (default: 100000; 0 = unbounded)")
    p.add_argument("--as-of", metavar="TIME", default=None,
                   help="leave out activities started after TIME (ISO 8601, e.g. 2026-03-01T12:00:00Z)")
    p.add_argument("--agents", action="store_true", help="also follow relations to agents (users, software)")
    p.add_argument("--format", "-F", choices=FORMATS, default="table", help="output format (default: table)")
    p.set_defaults(func=run)


def resolve_node(text: str) -> str:
    """An IRI as given, or the content IRI of an existing file or directory."""
    from ..errors import NotFoundError
    from ..hashing import FileHasher

    if os.path.exists(text):
        found = FileHasher().hash_path(text)
        if found is None:
            raise NotFoundError(f"{text} is neither a regular file nor a directory that can be hashed")
        return found[0]
    if ":" not in text:
        raise NotFoundError(f"{text} is not an IRI and there is no such file")
    return text


def run(args: argparse.Namespace) -> int:
    from ..errors import NotFoundError, QueryError
    from ..lineage import AGENT_RELATIONS, DEFAULT_RELATIONS, lineage, path

    if args.path and args.node:
        raise QueryError("give either NODE or --path A B, not both")
    if not args.path and not args.node:
        raise QueryError("give a NODE (IRI or file) or --path A B")
    store = open_store(args)
    names: dict[str, str] = {}
    try:
        if args.path:
            a, b = (resolve_node(x) for x in args.path)
            names = {a: args.path[0], b: args.path[1]}
            answer = path(store, a, b)
            _print_path(answer, args.format)
            return 0 if answer["found"] else 1
        node = resolve_node(args.node)
        names = {node: args.node}
        relations = [*DEFAULT_RELATIONS, *AGENT_RELATIONS] if args.agents else None
        answer = lineage(store, node, args.direction, depth=args.depth, as_of=args.as_of,
                         relations=relations, max_nodes=args.max_nodes or None)
        labels = labels_of(store, [n["id"] for n in answer["nodes"]]) if args.format != "json" else {}
    except NotFoundError as exc:
        files = [f"{given} is {iri}" for iri, given in names.items() if given != iri and iri in str(exc)]
        if files:  # say which file: its content was never recorded
            raise NotFoundError(f"{exc} ({'; '.join(files)}: no recorded task used or generated these bytes)") \
                from exc
        raise
    finally:
        store.close()
    _print_lineage(answer, args.format, labels)
    return 0


def labels_of(store: Any, nodes: list[str], chunk: int = 500) -> dict[str, str]:
    """``rdfs:label`` of each node that has one (task names, workflow names ...)."""
    import pyoxigraph as ox

    out: dict[str, str] = {}
    named = [n for n in nodes if not n.startswith("_:")]
    for i in range(0, len(named), chunk):
        values = " ".join(str(ox.NamedNode(n)) for n in named[i:i + chunk])  # IRIs from the store
        q = ("SELECT ?n (SAMPLE(?l) AS ?label) WHERE { VALUES ?n { " + values + " } "
             "?n <http://www.w3.org/2000/01/rdf-schema#label> ?l } GROUP BY ?n")
        for row in store.query(q):
            out[row["n"].value] = row["label"].value
    return out


def _print_lineage(answer: dict[str, Any], fmt: str, labels: dict[str, str]) -> None:
    if fmt == "json":
        json.dump(answer, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    if fmt == "dot":
        sys.stdout.write(to_dot(answer["nodes"], answer["edges"], root=answer["root"],
                                frontier=set(answer["frontier"]), labels=labels))
        return
    print(f"{answer['direction']} lineage of {answer['root']}")
    nodes = answer["nodes"]
    width = max(len(str(n["kind"] or "")) for n in nodes)
    for n in nodes:
        mark = "  (frontier: more beyond)" if n["id"] in answer["frontier"] else ""
        label = f"  {labels[n['id']]}" if n["id"] in labels else ""
        print(f"{n['depth']:>4}  {n['kind'] or '-'!s:<{width}}  {n['id']}{label}{mark}")
    print(f"{len(nodes)} nodes, {len(answer['edges'])} relations; ", end="")
    if answer["complete"]:
        print("complete")
    else:
        print(f"INCOMPLETE: cut by --depth/--max-nodes at {len(answer['frontier'])} frontier node(s)")


def _print_path(answer: dict[str, Any], fmt: str) -> None:
    if fmt == "json":
        json.dump(answer, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    if fmt == "dot":
        nodes = [{"id": n} for n in answer["nodes"]]
        sys.stdout.write(to_dot(nodes, answer["edges"], root=answer["source"], frontier=set()))
        return
    if not answer["found"]:
        why = "" if answer["complete"] else " within the search depth (the search was cut)"
        print(f"no chain of PROV relations connects {answer['source']} and {answer['target']}{why}")
        return
    verb = "was led to from" if answer["reversed"] else "led to"
    print(f"{answer['source']} {verb} {answer['target']} in {answer['length']} step(s):")
    for e in answer["edges"]:
        print(f"  {e['source']}  --{e['relation']}-->  {e['target']}")


def to_dot(nodes: list[dict[str, Any]], edges: list[dict[str, Any]], *, root: str, frontier: set[str],
           labels: dict[str, str] | None = None) -> str:
    """Graphviz DOT of a lineage answer: entities as ellipses, activities as boxes
    (PROV's own drawing convention), edges in PROV direction labelled by relation;
    nodes show their ``rdfs:label`` when ``labels`` has one, else a short IRI."""
    labels = labels or {}
    shapes = {"activity": "box", "entity": "ellipse", "agent": "house"}
    lines = ["digraph lineage {", "  rankdir=BT;", '  node [fontname="Helvetica", fontsize=10];']
    for n in nodes:
        attrs = [f"label={_dot_str(labels.get(n['id']) or _short(n['id']))}",
                 f"shape={shapes.get(str(n.get('kind')), 'ellipse')}", f"tooltip={_dot_str(n['id'])}"]
        if n["id"] == root:
            attrs.append("penwidth=2")
        if n["id"] in frontier:
            attrs.append("style=dashed")
        lines.append(f"  {_dot_str(n['id'])} [{', '.join(attrs)}];")
    for e in edges:
        lines.append(f"  {_dot_str(e['source'])} -> {_dot_str(e['target'])} [label={_dot_str(e['relation'])}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _short(iri: str) -> str:
    if iri.startswith("ni:///sha-256;"):
        return "sha256:" + iri[len("ni:///sha-256;"):][:10] + "…"
    cut = max(iri.rfind("/"), iri.rfind("#"))
    tail = iri[cut + 1:] if 0 <= cut < len(iri) - 1 else iri
    return tail[:40]


def _dot_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
