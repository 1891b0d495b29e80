"""Lineage: which nodes a node came from (upstream) or led to (downstream).

:func:`lineage` expands a frontier one hop at a time over the PROV relations between
activities and entities, in their PROV direction (``subject relation object``)::

    entity   prov:wasGeneratedBy activity      activity prov:used          entity
    activity prov:wasInformedBy  activity      entity   prov:wasDerivedFrom entity
    activity pg:parentTask       activity

Upstream follows these from subject to object ("what was this made from"), downstream
from object to subject. Each hop is one unit of ``depth`` (file → the task that wrote
it is one hop; → the file that task read is two).

Agents are left out by default: every task of one user is associated with the same
``prov:Agent``, so following ``prov:wasAssociatedWith`` would connect everything a
user ever ran. Ask for them explicitly with ``relations=[..., "wasAssociatedWith",
"wasAttributedTo", "actedOnBehalfOf"]`` (see :data:`AGENT_RELATIONS`).

On the embedded store every hop is a direct index lookup on the pyoxigraph store
(``quads_for_pattern``), much faster than a SPARQL query per layer
(``benchmarks/query.py`` measures it; ``method="sparql"`` selects the other way). On a
:class:`~provgraph.remote.RemoteStore` each layer is one SPARQL query binding the whole
frontier with ``VALUES`` (in chunks of 500 nodes).

Limits never cut silently: when ``depth`` or ``max_nodes`` stops the traversal the
answer has ``complete: False`` and ``frontier``, the nodes of the answer that have
neighbours (in the direction walked) outside the answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyoxigraph as ox

from .errors import NotFoundError, QueryError
from .namespaces import PG, PROV, RDF

if TYPE_CHECKING:
    from .remote import RemoteStore
    from .store import Store

__all__ = ["AGENT_RELATIONS", "DEFAULT_RELATIONS", "DIRECTIONS", "RELATIONS", "lineage", "path"]

#: relation name → (predicate IRI, kind of subject, kind of object)
RELATIONS: dict[str, tuple[str, str, str]] = {
    "wasGeneratedBy": (PROV.wasGeneratedBy, "entity", "activity"),
    "used": (PROV.used, "activity", "entity"),
    "wasInformedBy": (PROV.wasInformedBy, "activity", "activity"),
    "wasDerivedFrom": (PROV.wasDerivedFrom, "entity", "entity"),
    "parentTask": (PG.parentTask, "activity", "activity"),
    "wasAssociatedWith": (PROV.wasAssociatedWith, "activity", "agent"),
    "wasAttributedTo": (PROV.wasAttributedTo, "entity", "agent"),
    "actedOnBehalfOf": (PROV.actedOnBehalfOf, "agent", "agent"),
}
#: relations followed unless ``relations`` is given
DEFAULT_RELATIONS: tuple[str, ...] = ("wasGeneratedBy", "used", "wasInformedBy", "wasDerivedFrom", "parentTask")
#: the relations to agents, followed only on request
AGENT_RELATIONS: tuple[str, ...] = ("wasAssociatedWith", "wasAttributedTo", "actedOnBehalfOf")
DIRECTIONS = ("upstream", "downstream", "both")
_BY_IRI = {iri: (name, s, o) for name, (iri, s, o) in RELATIONS.items()}

_KIND_CLASSES = (("activity", PROV.Activity), ("entity", PROV.Entity), ("agent", PROV.Agent))
Edge = tuple[str, str, str]  # (source, relation, target) in PROV direction


def _key(term: Any) -> str:
    return f"_:{term.value}" if isinstance(term, ox.BlankNode) else str(term.value)


def _term(node: str) -> ox.NamedNode | ox.BlankNode:
    try:
        return ox.BlankNode(node[2:]) if node.startswith("_:") else ox.NamedNode(node)
    except ValueError as exc:
        raise QueryError(f"not an IRI: {node!r}") from exc


class _IndexExpander:
    """Neighbours by direct pyoxigraph index lookups (embedded store)."""

    def __init__(self, store: ox.Store, predicates: Sequence[str]) -> None:
        self.store = store
        self.preds = [ox.NamedNode(p) for p in predicates]
        self.pred_set = set(predicates)
        self.started = ox.NamedNode(PROV.startedAtTime)

    def exists(self, node: str) -> bool:
        t = _term(node)
        for _ in self.store.quads_for_pattern(t, None, None, None):
            return True
        if isinstance(t, ox.NamedNode):
            for _ in self.store.quads_for_pattern(None, None, t, None):
                return True
        return False

    def layer(self, nodes: Iterable[str], up: bool) -> list[Edge]:
        out: list[Edge] = []
        qfp = self.store.quads_for_pattern
        for node in nodes:
            t = _term(node)
            for p in self.preds:
                if up:
                    for q in qfp(t, p, None, None):
                        o = q.object
                        if isinstance(o, (ox.NamedNode, ox.BlankNode)):
                            out.append((node, p.value, _key(o)))
                elif isinstance(t, ox.NamedNode) or isinstance(t, ox.BlankNode):
                    for q in qfp(None, p, t, None):
                        out.append((_key(q.subject), p.value, node))
        return out

    def started_at(self, nodes: Iterable[str]) -> dict[str, datetime]:
        out: dict[str, datetime] = {}
        for node in nodes:
            for q in self.store.quads_for_pattern(_term(node), self.started, None, None):
                dt = _as_datetime(q.object)
                if dt is not None:
                    out[node] = dt
                break
        return out


class _SparqlExpander:
    """Neighbours by one SPARQL query per layer binding the frontier with VALUES."""

    def __init__(self, store: Store | RemoteStore, predicates: Sequence[str], chunk: int = 500) -> None:
        self.store = store
        self.predicates = list(predicates)
        self.chunk = chunk
        # ``FILTER(?p IN ...)`` after a lookup by node: Oxigraph plans a second VALUES
        # for ?p as a scan of every such predicate (~1000x slower on 50k tasks)
        self.pred_in = ", ".join(f"<{p}>" for p in predicates)

    def exists(self, node: str) -> bool:
        t = _term(node)
        if isinstance(t, ox.BlankNode):
            return True
        from .queries import with_values

        return bool(self.store.query(with_values("ASK WHERE { { ?n ?p ?o } UNION { ?s ?p ?n } }", {"n": t})))

    def _values(self, nodes: list[str]) -> str:
        return " ".join(str(_term(n)) for n in nodes)

    def layer(self, nodes: Iterable[str], up: bool) -> list[Edge]:
        todo = [n for n in nodes if not n.startswith("_:")]
        out: list[Edge] = []
        for i in range(0, len(todo), self.chunk):
            part = todo[i:i + self.chunk]
            pattern = "?n ?p ?m" if up else "?m ?p ?n"
            q = (f"SELECT DISTINCT ?n ?p ?m WHERE {{ VALUES ?n {{ {self._values(part)} }} "
                 f"{pattern} FILTER(?p IN ({self.pred_in}) && !isLiteral(?m)) }}")
            for row in self.store.query(q):
                n, p, m = _key(row["n"]), row["p"].value, _key(row["m"])
                out.append((n, p, m) if up else (m, p, n))
        return out

    def started_at(self, nodes: Iterable[str]) -> dict[str, datetime]:
        todo = [n for n in nodes if not n.startswith("_:")]
        out: dict[str, datetime] = {}
        for i in range(0, len(todo), self.chunk):
            part = todo[i:i + self.chunk]
            q = (f"SELECT ?n ?t WHERE {{ VALUES ?n {{ {self._values(part)} }} "
                 f"?n <{PROV.startedAtTime}> ?t }}")
            for row in self.store.query(q):
                dt = _as_datetime(row["t"])
                if dt is not None:
                    out[_key(row["n"])] = dt
        return out


def _as_datetime(term: Any) -> datetime | None:
    try:
        dt = datetime.fromisoformat(str(term.value).replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _expander(store: Any, predicates: Sequence[str], method: str) -> _IndexExpander | _SparqlExpander:
    from .store import Store as _Store

    if method not in ("auto", "index", "sparql"):
        raise QueryError(f"unknown lineage method {method!r} (auto, index, sparql)")
    if isinstance(store, _Store) and method in ("auto", "index"):
        return _IndexExpander(store.oxigraph, predicates)
    if isinstance(store, ox.Store) and method in ("auto", "index"):
        return _IndexExpander(store, predicates)
    if method == "index":
        raise QueryError("index lookups need the embedded store; use method='sparql'")
    return _SparqlExpander(store, predicates)


def _relations(relations: Iterable[str] | None) -> list[str]:
    if relations is None:
        return [RELATIONS[name][0] for name in DEFAULT_RELATIONS]
    out = []
    for r in relations:
        name = r.split("#")[-1].split(":")[-1]
        if name not in RELATIONS:
            raise QueryError(f"unknown relation {r!r}; known: {', '.join(RELATIONS)}")
        out.append(RELATIONS[name][0])
    return out


def _parse_as_of(as_of: datetime | str | None) -> datetime | None:
    if as_of is None:
        return None
    if isinstance(as_of, str):
        try:
            as_of = datetime.fromisoformat(as_of.replace("Z", "+00:00"))
        except ValueError as exc:
            raise QueryError(f"as_of is not an ISO 8601 timestamp: {as_of!r}") from exc
    return as_of if as_of.tzinfo else as_of.replace(tzinfo=UTC)


def lineage(store: Store | RemoteStore | ox.Store, node: str, direction: str = "upstream", *,
            depth: int | None = None, as_of: datetime | str | None = None,
            types: Iterable[str] | None = None, relations: Iterable[str] | None = None,
            max_nodes: int | None = 100_000, method: str = "auto") -> dict[str, Any]:
    """The lineage of ``node`` (an IRI, or ``_:id`` for a blank node) as a dict::

        {"root": node, "direction": ..., "depth": ..., "as_of": ISO timestamp | None,
         "complete": bool,
         "frontier": [nodes of the answer with neighbours outside it, sorted],
         "nodes": [{"id", "kind": "entity"|"activity"|"agent"|None, "depth"}],
         "edges": [{"source", "relation", "target"}]}   # PROV direction, sorted

    ``nodes`` are sorted by hop count then IRI, and include ``node`` itself at depth 0.
    ``edges`` are every relation between two nodes of the answer that the walk crossed
    (for one direction: all such relations, the induced subgraph). ``direction="both"``
    is the union of the upstream and the downstream answers.

    ``depth`` bounds the hops (``None``: unbounded); ``max_nodes`` bounds the number of
    nodes (``None``: unbounded); when either cuts, ``complete`` is False and
    ``frontier`` names where the walk stopped. ``as_of`` (datetime or ISO 8601) leaves
    out activities whose ``prov:startedAtTime`` is later, and what only they connect;
    activities without a start time are kept. ``relations`` restricts the relations
    followed (names of :data:`RELATIONS`; default :data:`DEFAULT_RELATIONS`, no agents).
    ``types`` keeps only nodes with one of these ``rdf:type`` IRIs in ``nodes`` (the
    walk itself and ``edges`` are not filtered). ``method``: ``auto`` (index lookups on
    the embedded store, SPARQL elsewhere), ``index`` or ``sparql``.

    Raises :class:`NotFoundError` when ``node`` is not in the store and
    :class:`QueryError` on bad arguments."""
    if direction not in DIRECTIONS:
        raise QueryError(f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
    if depth is not None and depth < 0:
        raise QueryError("depth must be >= 0 (or None for unbounded)")
    if max_nodes is not None and max_nodes < 1:
        raise QueryError("max_nodes must be >= 1 (or None for unbounded)")
    cutoff = _parse_as_of(as_of)
    exp = _expander(store, _relations(relations), method)
    if not exp.exists(node):
        raise NotFoundError(f"{node} is not in the store")
    walk = _Walk(exp, node, depth, max_nodes, cutoff)
    for up in ([True, False] if direction == "both" else [direction == "upstream"]):
        walk.run(up)
    if walk.kinds.get(node) is None:  # no relation crossed: tell the kind from the root's types
        root_types = _types_of(store, [node]).get(node, set())
        walk.kinds[node] = next((k for k, cls in _KIND_CLASSES if cls in root_types), None)
    keep = list(walk.dist)
    if types is not None:
        wanted = set(types)
        node_types = _types_of(store, keep)
        keep = [n for n in keep if node_types.get(n, set()) & wanted]
    return {
        "root": node,
        "direction": direction,
        "depth": depth,
        "as_of": cutoff.isoformat() if cutoff else None,
        "complete": not walk.frontier,
        "frontier": sorted(walk.frontier),
        "nodes": [{"id": n, "kind": walk.kinds.get(n), "depth": walk.dist[n]}
                  for n in sorted(keep, key=lambda k: (walk.dist[k], k))],
        "edges": [{"source": s, "relation": r, "target": o} for s, r, o in sorted(walk.edges)],
    }


class _Walk:
    """Breadth-first walk state shared by the directions of one :func:`lineage` call."""

    def __init__(self, exp: _IndexExpander | _SparqlExpander, root: str, depth: int | None,
                 max_nodes: int | None, cutoff: datetime | None) -> None:
        self.exp = exp
        self.root = root
        self.depth = depth
        self.max_nodes = max_nodes
        self.cutoff = cutoff
        self.dist: dict[str, int] = {root: 0}
        self.kinds: dict[str, str | None] = {root: None}
        self.edges: set[Edge] = set()
        self.frontier: set[str] = set()
        self.late: dict[str, bool] = {}  # activity → started after ``cutoff``

    def _expand(self, layer: list[str], up: bool) -> list[Edge]:
        found = self.exp.layer(layer, up)
        if self.cutoff is not None:
            found = _before(self.exp, found, self.cutoff, self.late)
        found.sort()  # the same order from every backend, so a max_nodes cut is reproducible
        return found

    def run(self, up: bool) -> None:
        """Walk one direction from the root; BFS, so each node gets its hop count."""
        seen = {self.root}  # nodes of the answer reached in this direction
        layer = [self.root]
        level = 0
        while layer:
            last = self.depth is not None and level >= self.depth
            nxt: list[str] = []
            for s, p, o in self._expand(layer, up):
                name, sk, ok = _BY_IRI[p]
                here, other = (s, o) if up else (o, s)
                if other not in seen:
                    full = self.max_nodes is not None and other not in self.dist \
                        and len(self.dist) >= self.max_nodes
                    if last or full:  # a neighbour beyond the cut: ``here`` is on the frontier
                        self.frontier.add(here)
                        continue
                    seen.add(other)
                    self.dist[other] = min(self.dist.get(other, level + 1), level + 1)
                    nxt.append(other)
                self.edges.add((s, name, o))
                if self.kinds.get(s) is None:
                    self.kinds[s] = sk
                if self.kinds.get(o) is None:
                    self.kinds[o] = ok
            if last:
                break
            layer = nxt
            level += 1


def _before(exp: Any, found: list[Edge], cutoff: datetime, late: dict[str, bool]) -> list[Edge]:
    """Drop edges touching an activity that started after ``cutoff``; ``late`` caches
    the verdict per activity (True: started after ``cutoff``)."""
    acts = set()
    for s, p, o in found:
        _, sk, ok = _BY_IRI[p]
        if sk == "activity":
            acts.add(s)
        if ok == "activity":
            acts.add(o)
    todo = [a for a in acts if a not in late]
    if todo:
        starts = exp.started_at(todo)
        for a in todo:
            t = starts.get(a)
            late[a] = t is not None and t > cutoff
    return [(s, p, o) for s, p, o in found if not late.get(s) and not late.get(o)]


def _types_of(store: Any, nodes: list[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    ox_store = store.oxigraph if hasattr(store, "oxigraph") else store if isinstance(store, ox.Store) else None
    rdf_type = ox.NamedNode(RDF.type)
    if ox_store is not None:
        for n in nodes:
            out[n] = {str(getattr(q.object, "value", q.object))
                      for q in ox_store.quads_for_pattern(_term(n), rdf_type, None, None)}
        return out
    for i in range(0, len(nodes), 500):
        part = [n for n in nodes[i:i + 500] if not n.startswith("_:")]
        values = " ".join(str(_term(n)) for n in part)
        for row in store.query(f"SELECT ?n ?t WHERE {{ VALUES ?n {{ {values} }} ?n a ?t }}"):
            out.setdefault(_key(row["n"]), set()).add(row["t"].value)
    return out


def path(store: Store | RemoteStore | ox.Store, source: str, target: str, *, max_depth: int | None = 100,
         method: str = "auto") -> dict[str, Any]:
    """How ``source`` led to ``target``: a shortest chain of PROV relations such that
    ``target`` is downstream of ``source`` (``target`` ... ``wasGeneratedBy``/``used``
    ... ``source``). Searches upstream from ``target``; if ``source`` is not upstream,
    tries the other way round (``reversed: True``). ``found: False`` when no chain
    exists within ``max_depth`` hops (``complete`` says whether the search was cut)."""
    exp = _expander(store, _relations(None), method)
    for n in (source, target):
        if not exp.exists(n):
            raise NotFoundError(f"{n} is not in the store")
    cut = False
    for start, goal, flipped in ((target, source, False), (source, target, True)):
        parent: dict[str, Edge | None] = {start: None}
        layer = [start]
        level = 0
        hit = start == goal
        while layer and not hit:
            if max_depth is not None and level >= max_depth:
                cut = True
                break
            nxt = []
            for s, p, o in exp.layer(layer, True):
                if o in parent:
                    continue
                parent[o] = (s, _BY_IRI[p][0], o)
                if o == goal:
                    hit = True
                    break
                nxt.append(o)
            layer = nxt
            level += 1
        if hit:
            chain: list[Edge] = []
            cur = goal
            while parent[cur] is not None:
                e = parent[cur]
                assert e is not None
                chain.append(e)
                cur = e[0]
            # chain runs goal → ... → start; report it from ``source`` to ``target``
            nodes = [goal] + [e[0] for e in chain]
            return {"source": source, "target": target, "found": True, "reversed": flipped, "complete": True,
                    "length": len(chain), "nodes": nodes if not flipped else nodes[::-1],
                    "edges": [{"source": s, "relation": r, "target": o}
                              for s, r, o in (chain if not flipped else chain[::-1])]}
    return {"source": source, "target": target, "found": False, "reversed": False, "complete": not cut,
            "length": None, "nodes": [], "edges": []}
