"""PROV interchange: export the store (or a part of it) and import PROV documents.

Export formats: ``prov-json``, ``provn``, ``provxml`` (W3C PROV serializations, written
by the ``prov`` library from the PROV-O triples) and ``turtle``, ``ntriples``,
``jsonld`` (one merged graph), ``trig``, ``nquads`` (named graphs kept). Scope: the
whole store, one workflow run (its named graph), a campaign (the graphs of its runs),
a lineage subgraph (the nodes of :func:`provgraph.lineage.lineage` and the statements
about them), or one named graph.

Import formats: ``prov-json``, ``provxml``, ``provn`` (read by ``prov``) and PROV-O as
``turtle``, ``ntriples``, ``nquads``, ``trig``, ``rdfxml``, ``jsonld``. Every document
goes into its own named graph ``urn:provgraph:import/sha256-<hex>`` derived from the
document's bytes (importing the same bytes twice is a no-op); PROV bundles keep their
own named graph, declared ``a prov:Bundle`` in the import graph. Each import is one
transaction; a malformed document raises :class:`~provgraph.errors.ParseError` and
leaves the store unchanged. A well-formed RDF document without any PROV statement is
refused too (it would not be provenance).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyoxigraph as ox

from .errors import NotFoundError, ParseError, ProvgraphError, require
from .namespaces import DCTERMS, PG, PG_NS, PROV, PROV_NS, RDF, RDFS

if TYPE_CHECKING:
    from prov.model import ProvDocument

    from .remote import RemoteStore
    from .store import Store

__all__ = [
    "EXPORT_FORMATS",
    "IMPORT_FORMATS",
    "export",
    "from_prov",
    "guess_format",
    "import_document",
    "import_file",
    "select_quads",
    "to_prov",
]

PROV_FORMATS = {"prov-json": "json", "provxml": "xml", "provn": "provn"}
RDF_GRAPH_FORMATS = {"turtle": ox.RdfFormat.TURTLE, "ntriples": ox.RdfFormat.N_TRIPLES,
                     "jsonld": ox.RdfFormat.JSON_LD, "rdfxml": ox.RdfFormat.RDF_XML}
RDF_DATASET_FORMATS = {"trig": ox.RdfFormat.TRIG, "nquads": ox.RdfFormat.N_QUADS}
EXPORT_FORMATS = (*PROV_FORMATS, "turtle", "ntriples", "jsonld", "trig", "nquads")
IMPORT_FORMATS = (*PROV_FORMATS, *RDF_GRAPH_FORMATS, *RDF_DATASET_FORMATS)
IMPORT_GRAPH_BASE = "urn:provgraph:import/"

_SUFFIXES = {
    ".json": "prov-json", ".provjson": "prov-json", ".xml": "provxml", ".provx": "provxml",
    ".provn": "provn", ".pn": "provn", ".ttl": "turtle", ".nt": "ntriples", ".nq": "nquads",
    ".trig": "trig", ".rdf": "rdfxml", ".owl": "rdfxml", ".jsonld": "jsonld",
}


def _prov_prefixes() -> dict[str, str]:
    """Prefixes for PROV exports: the ontology, shared names, content hashes and the
    facility bases seen in the store (``run``, ``task`` ...)."""
    return {"pg": PG_NS, "sha256": "ni:///sha-256;", "workflow": "urn:provgraph:workflow/",
            "campaign": "urn:provgraph:campaign/", "dcterms": "http://purl.org/dc/terms/",
            "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#", "rdfs": "http://www.w3.org/2000/01/rdf-schema#"}


def _base_prefixes(iris: Iterable[str]) -> dict[str, str]:
    """``run:``/``task:``/``host:``/``user:`` prefixes for every facility base seen."""
    bases: dict[str, str] = {}
    for value in iris:
        for kind in ("run/", "task/", "graph/", "host/", "user/", "facility/"):
            i = value.find("/" + kind) if not value.startswith(kind) else -1
            if i > 0:
                base = value[: i + 1 + len(kind)]
                rest = value[len(base):]
                if "/" not in rest and rest:
                    bases.setdefault(base, kind[:-1])
                break
    out: dict[str, str] = {}
    used: dict[str, int] = {}
    for base, kind in sorted(bases.items()):
        n = used.get(kind, 0)
        used[kind] = n + 1
        out[kind if n == 0 else f"{kind}{n + 1}"] = base
    return out


# -- selecting what to export ------------------------------------------------------------

def _select(store: Store | RemoteStore, sparql: str, **bindings: ox.NamedNode | ox.Literal) -> list[Any]:
    """Rows of a SELECT over the named graphs, with ``bindings`` as a leading VALUES row
    (terms serialized by pyoxigraph: user text is never spliced into the query)."""
    from .queries import with_values

    return list(store.query(with_values(sparql, bindings), union_default_graph=False))


def _graph_of_run(store: Store | RemoteStore, run: str) -> list[str]:
    rows = _select(store,
                   f"SELECT DISTINCT ?g WHERE {{ GRAPH ?g {{ ?r a <{PG.WorkflowRun}> . "
                   f"OPTIONAL {{ ?r <{DCTERMS.identifier}> ?id }} }} "
                   "FILTER(STR(?r) = ?wanted || STR(?id) = ?wanted) }", wanted=ox.Literal(run))
    graphs = sorted({r["g"].value for r in rows})
    if not graphs:
        raise NotFoundError(f"no workflow run {run!r} (give its identifier or IRI)")
    return graphs


def _graphs_of_campaign(store: Store | RemoteStore, campaign: str) -> list[str]:
    rows = _select(store,
                   f"SELECT DISTINCT ?g WHERE {{ GRAPH ?g {{ ?r <{PG.inCampaign}> ?c }} "
                   f"OPTIONAL {{ GRAPH ?g2 {{ ?c <{RDFS.label}> ?name }} }} "
                   "FILTER(STR(?c) = ?wanted || STR(?name) = ?wanted) }", wanted=ox.Literal(campaign))
    graphs = sorted({r["g"].value for r in rows})
    if not graphs:
        raise NotFoundError(f"no campaign {campaign!r} (give its name or IRI)")
    return graphs


def _quads_of_graphs(store: Store | RemoteStore, graphs: list[str]) -> list[ox.Quad]:
    quads: list[ox.Quad] = []
    for g in graphs:
        name = ox.NamedNode(g)
        # a Graph Store Protocol GET returns the graph's triples without its name: put it back
        quads.extend(q if q.graph_name == name else ox.Quad(q.subject, q.predicate, q.object, name)
                     for q in store.quads(g))
    return quads


def _quads_about(store: Store | RemoteStore, nodes: set[str]) -> list[ox.Quad]:
    """Statements whose subject is one of ``nodes``, plus the qualified usage and
    generation nodes that connect two of them."""
    from .store import Store as _Store

    out: list[ox.Quad] = []
    qualifiers: list[str] = []
    qual_preds = {PROV.qualifiedUsage, PROV.qualifiedGeneration}
    if isinstance(store, _Store):
        ox_store = store.oxigraph
        for n in sorted(nodes):
            for q in ox_store.quads_for_pattern(_node(n), None, None, None):
                out.append(q)
                if q.predicate.value in qual_preds and isinstance(q.object, ox.NamedNode):
                    qualifiers.append(q.object.value)
        for qn in qualifiers:
            out.extend(ox_store.quads_for_pattern(ox.NamedNode(qn), None, None, None))
        return out
    # a remote store cannot address blank nodes: only IRIs are looked up, 500 a request
    named = sorted(n for n in nodes if not n.startswith("_:"))
    for i in range(0, len(named), 500):
        values = " ".join(str(ox.NamedNode(n)) for n in named[i:i + 500])
        rows = store.query(
            "SELECT ?s ?p ?o ?g WHERE { VALUES ?root { " + values + " } "
            "{ GRAPH ?g { ?root ?p ?o } BIND(?root AS ?s) } UNION "
            "{ GRAPH ?g { ?root ?qp ?s . ?s ?p ?o } FILTER(?qp IN (<" + PROV.qualifiedUsage + ">, <"
            + PROV.qualifiedGeneration + ">)) } }", union_default_graph=False)
        for r in rows:
            out.append(ox.Quad(r["s"], r["p"], r["o"], r["g"]))
    return out


def _node(value: str) -> ox.NamedNode | ox.BlankNode:
    if value.startswith("_:"):
        return ox.BlankNode(value[2:])
    return ox.NamedNode(value)


def select_quads(store: Store | RemoteStore, *, run: str | None = None, campaign: str | None = None,
                 lineage: str | None = None, graph: str | None = None, direction: str = "upstream",
                 depth: int | None = None) -> list[ox.Quad]:
    """The quads of one scope (see the module docstring); all of them when no scope."""
    if run is not None:
        return _quads_of_graphs(store, _graph_of_run(store, run))
    if campaign is not None:
        return _quads_of_graphs(store, _graphs_of_campaign(store, campaign))
    if graph is not None:
        quads = _quads_of_graphs(store, [graph])
        if not quads:
            raise NotFoundError(f"no named graph {graph!r}")
        return quads
    if lineage is not None:
        from .lineage import lineage as _lineage

        result = _lineage(store, lineage, direction=direction, depth=depth)
        return _quads_about(store, {n["id"] for n in result["nodes"]})
    return list(store.quads())


# -- PROV documents ------------------------------------------------------------------

def to_prov(quads: Iterable[ox.Quad], *, bundles: dict[str, list[ox.Quad]] | None = None) -> ProvDocument:
    """A ``prov`` document from PROV-O quads (graph names are merged; ``bundles`` maps
    bundle IRIs to their own statements)."""
    from prov.serializers.provrdf import ProvRDFSerializer
    from rdflib import Dataset, URIRef

    quads = list(quads)
    triples = [ox.Triple(q.subject, q.predicate, _for_prov(q.object)) for q in quads]
    data = ox.serialize(triples, format=ox.RdfFormat.N_TRIPLES) or b""
    ds = Dataset(default_union=True)
    ds.namespace_manager = _namespace_manager(ds, quads, bundles)
    ds.default_graph.parse(data=data, format="nt")
    for iri, bq in (bundles or {}).items():
        g = ds.graph(URIRef(iri))
        g.parse(data=ox.serialize([ox.Triple(q.subject, q.predicate, _for_prov(q.object)) for q in bq],
                                  format=ox.RdfFormat.N_TRIPLES) or b"", format="nt")
    from prov.model import ProvDocument

    doc = ProvDocument()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # prov warns about statements with no PROV meaning
            ProvRDFSerializer(doc).decode_document(ds, doc)
    except Exception as exc:  # prov raises ProvException and others for PROV-O it cannot express
        raise ProvgraphError(
            f"these statements cannot be written as a PROV document ({type(exc).__name__}: {exc}); "
            "export them as RDF instead (--format trig, nquads or turtle)") from exc
    return doc


_XSD_INTEGER = ox.NamedNode("http://www.w3.org/2001/XMLSchema#integer")
_XSD_INT = ox.NamedNode("http://www.w3.org/2001/XMLSchema#int")
_XSD_LONG = ox.NamedNode("http://www.w3.org/2001/XMLSchema#long")


def _for_prov(term: Any) -> Any:
    """Integers as ``prov`` writes Python ints (``xsd:int`` / ``xsd:long`` by size).

    Oxigraph keeps literal values, not lexical forms: every integer type comes back as
    ``xsd:integer`` (oxigraph#526). ``prov`` turns ``xsd:int``/``xsd:long`` of a fitting
    size into a plain Python ``int`` — a JSON number in PROV-JSON — and keeps
    ``xsd:integer`` as a typed literal. Plain numbers are what PROV-JSON writers and
    provgraph's own capture mean, so integers are handed to ``prov`` that way."""
    if isinstance(term, ox.Literal) and term.datatype == _XSD_INTEGER:
        try:
            n = int(term.value)
        except ValueError:
            return term
        if -(2 ** 31) <= n < 2 ** 31:
            return ox.Literal(term.value, datatype=_XSD_INT)
        if -(2 ** 63) <= n < 2 ** 63:
            return ox.Literal(term.value, datatype=_XSD_LONG)
    return term


def _namespace_manager(ds: Any, quads: list[ox.Quad], bundles: dict[str, list[ox.Quad]] | None) -> Any:
    from rdflib.namespace import NamespaceManager

    nm = NamespaceManager(ds, bind_namespaces="none")
    nm.bind("prov", PROV_NS)
    nm.bind("xsd", "http://www.w3.org/2001/XMLSchema#")
    for prefix, ns in _prov_prefixes().items():
        nm.bind(prefix, ns)
    iris = {t.value for q in quads for t in (q.subject, q.object) if isinstance(t, ox.NamedNode)}
    for b in bundles or {}:
        iris.add(b)
    known = {**_prov_prefixes(), "prov": PROV_NS}
    for prefix, ns in _base_prefixes(iris).items():
        nm.bind(prefix, ns)
        known[prefix] = ns
    iris.update(q.predicate.value for q in quads)
    for prefix, ns in _derived_prefixes(iris, known.values()).items():
        nm.bind(prefix, ns)
    return nm


def _derived_prefixes(iris: Iterable[str], known: Iterable[str]) -> dict[str, str]:
    """``ns1``, ``ns2``... for namespaces (up to the last ``#``, ``/`` or ``:``) of IRIs
    no known prefix covers, so that every IRI can be written as a qualified name."""
    spaces = sorted(set(known), key=len, reverse=True)
    found: set[str] = set()
    for iri in iris:
        if any(iri.startswith(ns) and len(iri) > len(ns) for ns in spaces):
            continue
        cut = max(iri.rfind("#"), iri.rfind("/"), iri.rfind(":"))
        if 0 < cut < len(iri) - 1:
            found.add(iri[: cut + 1])
    return {f"ns{i}": ns for i, ns in enumerate(sorted(found), 1)}


def export(store: Store | RemoteStore, fmt: str, *, run: str | None = None, campaign: str | None = None,
           lineage: str | None = None, graph: str | None = None, direction: str = "upstream",
           depth: int | None = None) -> bytes:
    """Serialize a scope of the store in ``fmt`` (one of :data:`EXPORT_FORMATS`)."""
    if fmt not in EXPORT_FORMATS:
        raise ParseError(f"unknown export format {fmt!r}; known: {', '.join(EXPORT_FORMATS)}")
    quads = select_quads(store, run=run, campaign=campaign, lineage=lineage, graph=graph,
                         direction=direction, depth=depth)
    if fmt in RDF_DATASET_FORMATS:
        if fmt == "trig":
            return ox.serialize(quads, format=ox.RdfFormat.TRIG, prefixes=_rdf_prefixes(quads)) or b""
        return ox.serialize(quads, format=ox.RdfFormat.N_QUADS) or b""
    if fmt in RDF_GRAPH_FORMATS:
        triples = list(dict.fromkeys(ox.Triple(q.subject, q.predicate, q.object) for q in quads))
        kwargs: dict[str, Any] = {"format": RDF_GRAPH_FORMATS[fmt]}
        if fmt in ("turtle", "jsonld", "rdfxml"):
            kwargs["prefixes"] = _rdf_prefixes(quads)
        return ox.serialize(triples, **kwargs) or b""
    bundles = _bundles_for(store, quads) if graph is not None else None
    if bundles:
        own = {b for b in bundles}
        quads = [q for q in quads if not (isinstance(q.graph_name, ox.NamedNode) and q.graph_name.value in own)]
    doc = to_prov(quads, bundles=bundles)
    return serialize_prov(doc, fmt)


def serialize_prov(doc: ProvDocument, fmt: str) -> bytes:
    """``doc`` as PROV-JSON, PROV-N or PROV-XML (``fmt`` of :data:`PROV_FORMATS`)."""
    if fmt == "provxml":
        require("lxml", "xml")
    buf = io.StringIO()
    kwargs: dict[str, Any] = {"indent": 2} if fmt == "prov-json" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        doc.serialize(buf, format=PROV_FORMATS[fmt], **kwargs)
    return buf.getvalue().encode("utf-8")


def _rdf_prefixes(quads: list[ox.Quad]) -> dict[str, str]:
    prefixes = {"prov": PROV_NS, "rdfs": "http://www.w3.org/2000/01/rdf-schema#",
                "xsd": "http://www.w3.org/2001/XMLSchema#", **_prov_prefixes()}
    iris = {t.value for q in quads for t in (q.subject, q.object) if isinstance(t, ox.NamedNode)}
    prefixes.update(_base_prefixes(iris))
    return prefixes


def _bundles_for(store: Store | RemoteStore, quads: list[ox.Quad]) -> dict[str, list[ox.Quad]]:
    """Bundles declared in the exported statements whose contents are named graphs."""
    names = {q.subject.value for q in quads
             if q.predicate.value == RDF.type and isinstance(q.object, ox.NamedNode)
             and q.object.value == PROV_NS + "Bundle" and isinstance(q.subject, ox.NamedNode)}
    out: dict[str, list[ox.Quad]] = {}
    for name in sorted(names):
        bq = list(store.quads(name))
        if bq:
            out[name] = bq
    return out


# -- import ----------------------------------------------------------------------------

def guess_format(path: str | Path) -> str:
    """The import format for a file name (by suffix)."""
    suffix = Path(path).suffix.lower()
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    raise ParseError(f"cannot tell the format of {path} from its suffix; pass a format "
                     f"({', '.join(IMPORT_FORMATS)})")


def from_prov(data: bytes, fmt: str) -> ProvDocument:
    """Parse a PROV-JSON / PROV-XML / PROV-N document with ``prov``; :class:`ParseError`
    on any failure."""
    from prov.model import ProvDocument

    if not data.strip():
        raise ParseError(f"empty {fmt} document")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError(f"{fmt} document is not UTF-8: {exc}") from exc
    if fmt == "provxml":
        require("lxml", "xml")  # prov reads and writes PROV-XML with lxml
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            doc = ProvDocument.deserialize(content=text, format=PROV_FORMATS[fmt])
    except NotImplementedError as exc:  # prov < 3 has no PROV-N parser
        raise ParseError(f"the installed prov library cannot read {fmt} (PROV-N parsing needs prov >= 3); "
                         "convert the document to PROV-JSON or PROV-XML first") from exc
    except Exception as exc:  # prov raises many types (KeyError, TypeError, lxml errors, ...)
        raise ParseError(f"invalid {fmt} document: {type(exc).__name__}: {exc}") from exc
    if doc is None:
        raise ParseError(f"invalid {fmt} document: nothing could be read")
    return doc


def _prov_to_quads(doc: ProvDocument, graph: str) -> list[ox.Quad]:
    """PROV-O quads of a prov document: top-level records in ``graph``; each bundle in
    a named graph of its own IRI, declared ``a prov:Bundle`` in ``graph``."""
    from prov.serializers.provrdf import ProvRDFSerializer
    from rdflib import BNode
    from rdflib.graph import DATASET_DEFAULT_GRAPH_ID

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = ProvRDFSerializer(doc).encode_document(doc)
    target = ox.NamedNode(graph)
    quads: list[ox.Quad] = []
    bnodes: dict[str, ox.BlankNode] = {}
    for s, p, o, ctx in ds.quads((None, None, None, None)):
        cid = getattr(ctx, "identifier", ctx)
        g = target if cid is None or cid == DATASET_DEFAULT_GRAPH_ID or isinstance(cid, BNode) \
            else ox.NamedNode(str(cid))
        quads.append(ox.Quad(_ox_term(s, bnodes), _ox_term(p, bnodes), _ox_term(o, bnodes), g))
    for b in doc.bundles:
        if b.identifier is None:
            continue
        iri = str(b.identifier.uri)
        quads.append(ox.Quad(ox.NamedNode(iri), ox.NamedNode(RDF.type), ox.NamedNode(PROV_NS + "Bundle"), target))
    return quads


def _ox_term(t: Any, bnodes: dict[str, ox.BlankNode]) -> Any:
    from rdflib import BNode, Literal, URIRef

    if isinstance(t, URIRef):
        return ox.NamedNode(str(t))
    if isinstance(t, BNode):
        b = bnodes.get(str(t))
        if b is None:
            b = bnodes[str(t)] = ox.BlankNode()
        return b
    if isinstance(t, Literal):
        if t.language:
            return ox.Literal(str(t), language=t.language)
        if t.datatype is not None:
            return ox.Literal(str(t), datatype=ox.NamedNode(str(t.datatype)))
        return ox.Literal(str(t))
    raise ParseError(f"unsupported RDF term {t!r}")


def _has_prov(quads: list[ox.Quad]) -> bool:
    for q in quads:
        if q.predicate.value.startswith(PROV_NS):
            return True
        if q.predicate.value == RDF.type and isinstance(q.object, ox.NamedNode) \
                and q.object.value.startswith(PROV_NS):
            return True
    return False


def import_document(store: Store | RemoteStore, data: bytes, fmt: str, *, graph: str | None = None) -> str:
    """Import one document into its own named graph (see the module docstring); returns
    the graph IRI. Atomic: on :class:`ParseError` the store is unchanged."""
    if fmt not in IMPORT_FORMATS:
        raise ParseError(f"unknown import format {fmt!r}; known: {', '.join(IMPORT_FORMATS)}")
    by_content = graph is None
    if graph is None:
        graph = IMPORT_GRAPH_BASE + "sha256-" + hashlib.sha256(data).hexdigest()
    try:
        target = ox.NamedNode(graph)
    except ValueError as exc:
        raise ParseError(f"the target graph must be an absolute IRI, not {graph!r}: {exc}") from exc
    if fmt in PROV_FORMATS:
        doc = from_prov(data, fmt)
        quads = _prov_to_quads(doc, graph)
        if not quads:
            raise ParseError(f"the {fmt} document holds no PROV records")
    else:
        if not data.strip():
            raise ParseError(f"empty {fmt} document")
        try:
            if fmt in RDF_DATASET_FORMATS:
                parsed = list(ox.parse(data, format=RDF_DATASET_FORMATS[fmt]))
                quads = [q if isinstance(q.graph_name, ox.NamedNode)
                         else ox.Quad(q.subject, q.predicate, q.object, target) for q in parsed]
            else:
                quads = [ox.Quad(t.subject, t.predicate, t.object, target)
                         for t in ox.parse(data, format=RDF_GRAPH_FORMATS[fmt])]
        except (SyntaxError, ValueError) as exc:
            raise ParseError(f"invalid {fmt} document: {exc}") from exc
        if not quads:
            raise ParseError(f"the {fmt} document holds no statements")
        if not _has_prov(quads):
            raise ParseError(f"the {fmt} document holds no PROV statements (no term of {PROV_NS}); "
                             "refusing to import it as provenance")
    if by_content and graph in set(store.named_graphs()):
        return graph  # the same bytes were imported before: RDF is a set, nothing to add
    body = ox.serialize(quads, format=ox.RdfFormat.N_QUADS) or b""
    store.load(body, "nquads")  # one transaction
    return graph


def import_file(store: Store | RemoteStore, path: str | Path, fmt: str | None = None, *,
                graph: str | None = None) -> str:
    """Import the file at ``path`` (format from its suffix unless given) with
    :func:`import_document`; returns the graph IRI."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError as exc:
        raise NotFoundError(f"no such file: {p}") from exc
    except OSError as exc:
        raise ParseError(f"cannot read {p}: {exc}") from exc
    try:
        return import_document(store, data, fmt or guess_format(p), graph=graph)
    except ParseError as exc:
        raise ParseError(f"{p}: {exc}") from exc
