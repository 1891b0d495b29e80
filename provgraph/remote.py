"""A store behind HTTP: an Oxigraph server or any SPARQL 1.1 store.

:class:`RemoteStore` has the same shape as the embedded :class:`~provgraph.store.Store`
(``add_nquads``, ``load``, ``query``, ``update``, ``dump``, ``stats``), so the
integrator, the CLI and the query engine work unchanged against a shared server — the
way to run several integrators, or to keep the graph on a dedicated machine.

* Oxigraph server (``oxigraph serve --location DIR``, from the ``oxigraph`` package):
  ``RemoteStore("http://host:7878")`` uses ``/query``, ``/update`` and ``/store``
  (Graph Store Protocol; a POST of N-Quads is loaded in one transaction).
* Another SPARQL 1.1 store: pass ``query_url`` and ``update_url``; batches are sent
  as one ``INSERT DATA`` request (atomic per the SPARQL 1.1 Protocol).

Every batch is parsed locally first, so malformed input raises
:class:`~provgraph.errors.ParseError` and nothing is sent.
"""

from __future__ import annotations

import base64
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import IO, Any

import pyoxigraph as ox

from .errors import NotFoundError, ParseError, QueryError, QueryTimeoutError, StoreError
from .namespaces import PG, PROV, RDF
from .store import FORMATS

__all__ = ["RemoteStore"]

_RESULTS_JSON = "application/sparql-results+json"
_NTRIPLES = "application/n-triples"
_NQUADS = "application/n-quads"


class RemoteStore:
    """A provgraph dataset on a SPARQL 1.1 server (see the module docstring)."""

    def __init__(self, url: str | None = None, *, query_url: str | None = None, update_url: str | None = None,
                 store_url: str | None = None, token: str | None = None, user: str | None = None,
                 password: str | None = None, timeout: float = 30.0, union_default_graph: bool = True) -> None:
        if url is None and query_url is None:
            raise StoreError("RemoteStore needs a server URL or a query_url")
        base = (url or "").rstrip("/")
        self.query_url = query_url or f"{base}/query"
        self.update_url = update_url or (f"{base}/update" if url else None)
        self.store_url = store_url or (f"{base}/store" if url and not query_url else None)
        self.timeout = timeout
        self.union_default_graph = union_default_graph
        self.read_only = self.update_url is None and self.store_url is None
        self.path = None
        self._headers: dict[str, str] = {"User-Agent": "provgraph"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        elif user is not None:
            cred = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            self._headers["Authorization"] = f"Basic {cred}"

    def __repr__(self) -> str:
        return f"RemoteStore(query_url={self.query_url!r})"

    # -- HTTP ------------------------------------------------------------------------
    def _request(self, url: str, *, data: bytes | None = None, content_type: str | None = None,
                 accept: str | None = None, method: str | None = None) -> tuple[bytes, str]:
        headers = dict(self._headers)
        if content_type:
            headers["Content-Type"] = content_type
        if accept:
            headers["Accept"] = accept
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.read(), resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            body = exc.read().decode("utf-8", "replace")[:2000]
            if exc.code == 400:
                raise QueryError(f"the server refused the request: {body}") from exc
            if exc.code == 404:
                raise NotFoundError(f"{url}: not found: {body}") from exc
            raise StoreError(f"{url}: HTTP {exc.code}: {body}") from exc
        except TimeoutError as exc:
            raise QueryTimeoutError(f"{url}: no answer within {self.timeout} s") from exc
        except urllib.error.URLError as exc:
            raise StoreError(f"cannot reach {url}: {exc.reason}") from exc

    # -- writing ---------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self.read_only:
            raise StoreError("this remote store has no update or store URL: it is read-only")

    def add_nquads(self, data: bytes | str) -> None:
        """Send one N-Quads batch as one request (one transaction on the server)."""
        self.load(data, "nquads")

    def load(self, data: bytes | str | IO[bytes], fmt: str = "nquads", *, graph: str | None = None,
             base_iri: str | None = None) -> None:
        self._check_writable()
        raw = data.read() if hasattr(data, "read") else data
        raw_bytes = raw.encode() if isinstance(raw, str) else bytes(raw)
        try:
            kwargs: dict[str, Any] = {"format": FORMATS[fmt]}
            if base_iri:
                kwargs["base_iri"] = base_iri
            quads = list(ox.parse(raw_bytes, **kwargs))
        except KeyError as exc:
            raise ParseError(f"unknown RDF format {fmt!r}; known: {', '.join(FORMATS)}") from exc
        except (SyntaxError, ValueError) as exc:
            raise ParseError(f"invalid {fmt}: {exc}") from exc
        if graph is not None:
            target = ox.NamedNode(graph)
            quads = [ox.Quad(q.subject, q.predicate, q.object, target) for q in quads]
        if not quads:
            return
        if self.store_url is not None:
            body = ox.serialize(quads, format=ox.RdfFormat.N_QUADS)
            self._request(self.store_url, data=body, content_type=_NQUADS, method="POST")
            return
        assert self.update_url is not None
        self._request(self.update_url, data=_insert_data(quads).encode(),
                      content_type="application/sparql-update", method="POST")

    def update(self, sparql: str) -> None:
        self._check_writable()
        if self.update_url is None:
            raise StoreError("this remote store has no update URL")
        self._request(self.update_url, data=sparql.encode(), content_type="application/sparql-update",
                      method="POST")

    def ingest_inbox(self) -> int:
        return 0

    # -- reading ---------------------------------------------------------------------
    def query(self, sparql: str, *, substitutions: dict[str, Any] | None = None,
              union_default_graph: bool | None = None) -> Any:
        """Run a query on the server; results have the shape of pyoxigraph's."""
        if substitutions:
            sparql = _with_values(sparql, substitutions)
        params = {}
        if self.union_default_graph if union_default_graph is None else union_default_graph:
            params["union-default-graph"] = ""
        url = self.query_url + ("?" + urllib.parse.urlencode(params) if params else "")
        body, ctype = self._request(url, data=sparql.encode(), content_type="application/sparql-query",
                                    accept=f"{_RESULTS_JSON}, {_NTRIPLES};q=0.9", method="POST")
        if ctype.startswith(_RESULTS_JSON) or ctype.startswith("application/json"):
            return ox.parse_query_results(body, format=ox.QueryResultsFormat.JSON)
        return list(ox.parse(body, format=ox.RdfFormat.N_TRIPLES))

    def quads(self, graph: str | None = None) -> Iterator[ox.Quad]:
        return iter(ox.parse(self.dump("nquads", graph=graph), format=ox.RdfFormat.N_QUADS))

    def named_graphs(self) -> list[str]:
        rows = self.query("SELECT DISTINCT ?g WHERE { GRAPH ?g { ?s ?p ?o } }", union_default_graph=False)
        return sorted(r["g"].value for r in rows)

    def dump(self, fmt: str = "nquads", *, graph: str | None = None) -> bytes:
        if self.store_url is None:
            q = "CONSTRUCT { ?s ?p ?o } WHERE { " + (f"GRAPH <{graph}> {{ ?s ?p ?o }}" if graph else "?s ?p ?o") + " }"
            triples = self.query(q, union_default_graph=graph is None)
            return ox.serialize(triples, format=ox.RdfFormat.N_TRIPLES) or b""
        url = self.store_url + (f"?graph={urllib.parse.quote(graph, safe='')}" if graph else "")
        accept = {"nquads": _NQUADS, "trig": "application/trig", "turtle": "text/turtle",
                  "ntriples": _NTRIPLES}.get(fmt, _NQUADS)
        body, _ = self._request(url, accept=accept)
        return body

    def __len__(self) -> int:
        rows = self.query("SELECT (COUNT(*) AS ?n) WHERE { GRAPH ?g { ?s ?p ?o } }", union_default_graph=False)
        return sum(int(r["n"].value) for r in rows)

    def count(self, rdf_class: str) -> int:
        q = f"SELECT (COUNT(DISTINCT ?s) AS ?n) WHERE {{ ?s <{RDF.type}> <{rdf_class}> }}"
        return sum(int(r["n"].value) for r in self.query(q))

    def stats(self) -> dict[str, int]:
        return {
            "triples": len(self),
            "activities": self.count(PROV.Activity),
            "tasks": self.count(PG.Task),
            "entities": self.count(PROV.Entity),
            "data_artifacts": self.count(PG.DataArtifact),
            "workflow_runs": self.count(PG.WorkflowRun),
            "named_graphs": len(self.named_graphs()),
        }

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None

    def __enter__(self) -> RemoteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _term(term: Any) -> ox.NamedNode | ox.Literal | ox.BlankNode:
    """A Python value as an RDF term (strings become plain literals, never IRIs)."""
    if isinstance(term, (ox.NamedNode, ox.Literal, ox.BlankNode)):
        return term
    if isinstance(term, (str, bool, int, float)):
        return ox.Literal(term)
    raise QueryError(f"cannot bind a {type(term).__name__} as a SPARQL term")


def _with_values(sparql: str, substitutions: dict[str, Any]) -> str:
    """Bind variables with a ``VALUES`` row at the start of the outermost ``WHERE``
    (:func:`provgraph.queries.with_values`): the terms are serialized by pyoxigraph, so
    no user text is spliced into the query, and filters see the bindings."""
    from .queries import with_values

    terms = {name: _term(value) for name, value in substitutions.items()}
    return with_values(sparql, terms)  # type: ignore[arg-type]


def _insert_data(quads: list[ox.Quad]) -> str:
    default: list[str] = []
    graphs: dict[str, list[str]] = {}
    for q in quads:
        triple = f"{q.subject} {q.predicate} {q.object} ."
        if isinstance(q.graph_name, ox.DefaultGraph):
            default.append(triple)
        else:
            graphs.setdefault(str(q.graph_name), []).append(triple)
    parts = ["INSERT DATA {", *default]
    for g, triples in graphs.items():
        parts.append(f"GRAPH {g} {{")
        parts.extend(triples)
        parts.append("}")
    parts.append("}")
    return "\n".join(parts)
