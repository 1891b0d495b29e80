"""The Python client: one API over the embedded store, a provgraph endpoint, or any
SPARQL 1.1 endpoint (an Oxigraph server, ...).

::

    from provgraph.client import Client

    c = Client()                                   # the configured store (read-only)
    c = Client("~/.local/share/provgraph/store")   # an on-disk store, read-only
    c = Client("http://host:7879")                 # a provgraph endpoint
    c = Client("http://host:7878/query")           # any SPARQL 1.1 query endpoint

    c.sparql("SELECT ?t WHERE { ?t a pg:Task ; pg:status ?s }", s="failed")
    c.lineage("ni:///sha-256;...", direction="upstream", depth=3)
    c.tasks(filter={"generated.loss": {"$lt": 0.1}}, sort=[("generated.loss", 1)], limit=5)

How a URL is used: ``…/sparql`` or a bare ``http://host:port`` that answers
``/healthz`` as provgraph is a provgraph endpoint (SPARQL at ``/sparql``; lineage and
path through its HTTP API). A bare URL of any other server is taken to be an Oxigraph
server (SPARQL at ``/query``); any other URL is a SPARQL query endpoint as given. On a
plain SPARQL endpoint, lineage and path run the same traversal with SPARQL queries.

Bindings (``**bindings``) are typed RDF terms, never text: Python ``str`` is a string
literal (use :meth:`Client.iri` for an IRI), ``int``/``float``/``bool``/``datetime``
their XSD types. Results come back as Python values: IRIs as ``str``, numbers as
``int``/``float``, ``xsd:dateTime`` as timezone-aware ``datetime``, booleans as ``bool``.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyoxigraph as ox

from . import queries as query_lib
from . import taskquery
from .errors import NotFoundError, QueryError, QueryTimeoutError, StoreError, require
from .http.guard import has_dataset_clause
from .namespaces import PG_NS, PROV_NS, RDFS_NS, XSD_NS
from .remote import RemoteStore
from .store import Store

if TYPE_CHECKING:
    import pandas
    import rdflib

    from .settings import Settings

__all__ = ["Client", "to_python"]

_PREFIXES = {"prov": PROV_NS, "pg": PG_NS, "rdfs": RDFS_NS, "xsd": XSD_NS}
_INTEGER = {f"{XSD_NS}{t}" for t in ("integer", "int", "long", "short", "byte", "nonNegativeInteger",
                                    "positiveInteger", "negativeInteger", "nonPositiveInteger", "unsignedLong",
                                    "unsignedInt", "unsignedShort", "unsignedByte")}
_FLOAT = {f"{XSD_NS}{t}" for t in ("double", "float", "decimal")}


def to_python(term: Any) -> Any:
    """A pyoxigraph term as a Python value (``None`` stays ``None``)."""
    if term is None:
        return None
    if isinstance(term, ox.NamedNode):
        return term.value
    if isinstance(term, ox.BlankNode):
        return f"_:{term.value}"
    if isinstance(term, ox.Literal):
        dt = term.datatype.value
        text = term.value
        try:
            if dt in _INTEGER:
                return int(text)
            if dt in _FLOAT:
                return float(text.replace("INF", "inf"))
            if dt == f"{XSD_NS}boolean":
                return text in ("true", "1")
            if dt == f"{XSD_NS}dateTime":
                value = datetime.fromisoformat(text.replace("Z", "+00:00"))
                return value if value.tzinfo else value.replace(tzinfo=UTC)
            if dt == f"{XSD_NS}date":
                return date.fromisoformat(text[:10])
        except ValueError:
            return text
        return text
    if isinstance(term, ox.Triple):
        return (to_python(term.subject), to_python(term.predicate), to_python(term.object))
    return str(term)


def _bound(value: Any) -> ox.NamedNode | ox.Literal | ox.BlankNode:
    if isinstance(value, (ox.NamedNode, ox.Literal, ox.BlankNode)):
        return value
    if isinstance(value, bool):
        return ox.Literal("true" if value else "false", datatype=ox.NamedNode(XSD_NS + "boolean"))
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=UTC)
        return ox.Literal(dt.isoformat(), datatype=ox.NamedNode(XSD_NS + "dateTime"))
    if isinstance(value, (int, float, str)):
        return query_lib.to_term(value)
    raise QueryError(f"cannot bind a {type(value).__name__} ({value!r}); use str, int, float, bool, "
                     "datetime or Client.iri(...)")


class _EndpointStore(RemoteStore):
    """A :class:`RemoteStore` on a SPARQL endpoint that also understands provgraph's
    answers: a truncated answer (``X-Provgraph-Truncated``) raises instead of being taken
    for the whole one, 503 is a timeout, 401/403 refusals are query errors."""

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
                if resp.headers.get("X-Provgraph-Truncated", "").lower() == "true":
                    limit = resp.headers.get("X-Provgraph-Result-Limit", "?")
                    raise QueryError(f"{url} truncated the answer at {limit} results (its query_max_results): "
                                     "narrow the query, or page it with LIMIT / OFFSET")
                return resp.read(), resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            body = exc.read().decode("utf-8", "replace")[:2000].strip()
            if exc.code == 404:
                raise NotFoundError(f"{url}: not found: {body}") from None
            if exc.code == 503 and "query_timeout" in body:
                raise QueryTimeoutError(body) from None
            if exc.code in (400, 401, 403, 406):
                raise QueryError(f"{url} refused the request (HTTP {exc.code}): {body}") from None
            raise StoreError(f"{url}: HTTP {exc.code}: {body}") from None
        except TimeoutError as exc:
            raise QueryTimeoutError(f"{url}: no answer within {self.timeout} s") from exc
        except urllib.error.URLError as exc:
            raise StoreError(f"cannot reach {url}: {exc.reason}") from exc


def _prologue(query: str) -> str:
    """``query`` with the prov:, pg:, rdfs: and xsd: prefixes declared unless it declares them."""
    lower = query.lower()
    missing = [f"PREFIX {p}: <{ns}>\n" for p, ns in _PREFIXES.items() if f"prefix {p}:" not in lower]
    return "".join(missing) + query


class Client:
    """Query provenance: SPARQL, lineage, paths, named queries and the task API.

    ``target``: ``None`` (the configured store, read-only), a path to an on-disk store
    (opened read-only), an ``http(s)://`` URL (see the module docstring), or a
    :class:`~provgraph.store.Store` / :class:`~provgraph.remote.RemoteStore`."""

    def __init__(self, target: str | os.PathLike[str] | Store | RemoteStore | None = None, *,
                 token: str | None = None, timeout: float = 30.0, settings: Settings | None = None) -> None:
        self.timeout = timeout
        self._token = token
        self._api: str | None = None  # base URL of a provgraph HTTP API
        self._probed = False
        self._owned = False
        self.store: Store | RemoteStore
        if isinstance(target, (Store, RemoteStore)):
            self.store = target
            self._probed = True
            return
        if target is None:
            from .settings import load_settings
            from .store import open_backend

            self.store = open_backend(settings or load_settings(), read_only=True)
            self._owned = True
            self._probed = True
            return
        text = os.fspath(target)
        if text.startswith(("http://", "https://")):
            self.store = _EndpointStore(query_url=self._query_url(text.rstrip("/")), token=token, timeout=timeout)
            return
        self.store = Store(Path(text).expanduser(), read_only=True)
        self._owned = True
        self._probed = True

    # -- endpoints -------------------------------------------------------------------------
    def _query_url(self, url: str) -> str:
        parts = urllib.parse.urlsplit(url)
        if parts.path.endswith("/sparql"):
            self._api = url[: -len("/sparql")]
            return url
        if parts.path in ("", "/"):
            if self._is_provgraph(url):
                self._api = url
                self._probed = True
                return url + "/sparql"
            self._probed = True
            return url + "/query"  # an Oxigraph server
        self._probed = True
        return url

    def _is_provgraph(self, base: str) -> bool:
        headers = {"Accept": "application/json"}
        try:
            with urllib.request.urlopen(urllib.request.Request(base + "/healthz", headers=headers),
                                        timeout=self.timeout) as resp:
                return bool(json.loads(resp.read()).get("service") == "provgraph")
        except (OSError, ValueError, AttributeError):
            return False

    @property
    def api_url(self) -> str | None:
        """Base URL of the provgraph HTTP API used for lineage and path (``None``: the
        traversal runs here, over SPARQL or the embedded store)."""
        return self._provgraph_api()

    def _provgraph_api(self) -> str | None:
        if not self._probed:
            self._probed = True
            if self._api is not None and not self._is_provgraph(self._api):
                self._api = None
        return self._api

    def _get_json(self, route: str, params: dict[str, Any]) -> Any:
        base = self._provgraph_api()
        assert base is not None
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None}, doseq=True)
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        req = urllib.request.Request(f"{base}{route}?{query}", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                message = str(json.loads(exc.read()).get("error", ""))
            except (ValueError, AttributeError):  # not JSON, or not an object
                message = ""
            message = message or f"HTTP {exc.code}"
            if exc.code == 404:
                raise NotFoundError(message) from None
            if exc.code == 400:
                raise QueryError(message) from None
            if exc.code == 503:
                raise QueryTimeoutError(message) from None
            raise StoreError(f"{base}{route}: {message}") from None
        except TimeoutError as exc:
            raise QueryTimeoutError(f"{base}{route}: no answer within {self.timeout} s") from exc
        except urllib.error.URLError as exc:
            raise StoreError(f"cannot reach {base}: {exc.reason}") from exc

    # -- SPARQL ------------------------------------------------------------------------------
    @staticmethod
    def iri(value: str) -> ox.NamedNode:
        """An IRI to pass as a binding (a plain ``str`` binds a string literal)."""
        try:
            return ox.NamedNode(value)
        except ValueError as exc:
            raise QueryError(f"not an IRI: {value!r}: {exc}") from exc

    def _run(self, query: str, bindings: dict[str, Any]) -> Any:
        query = _prologue(query)
        union = not has_dataset_clause(query)  # FROM / FROM NAMED choose the dataset
        if not bindings:
            return self.store.query(query, union_default_graph=union)
        terms = {k: _bound(v) for k, v in bindings.items()}
        for name in terms:
            if not name.isidentifier():
                raise QueryError(f"invalid variable name {name!r}")
        # a VALUES row at the top of the outermost WHERE: unlike pyoxigraph substitutions it
        # needs no projected variable, and it means the same on every store
        return self.store.query(query_lib.with_values(query, terms), union_default_graph=union)  # type: ignore[arg-type]

    def sparql(self, query: str, **bindings: Any) -> list[dict[str, Any]]:
        """Rows of a SELECT query as dicts of Python values (unbound variables are ``None``).
        ``prov:``, ``pg:``, ``rdfs:`` and ``xsd:`` prefixes are predeclared."""
        return self._rows(self._run(query, bindings))

    @staticmethod
    def _rows(result: Any) -> list[dict[str, Any]]:
        if not isinstance(result, ox.QuerySolutions):
            raise QueryError("not a SELECT query: use ask() or construct()")
        names = [v.value for v in result.variables]
        return [{n: to_python(row[n]) for n in names} for row in result]

    def ask(self, query: str, **bindings: Any) -> bool:
        """The answer of an ASK query."""
        result = self._run(query, bindings)
        if not isinstance(result, (ox.QueryBoolean, bool)):
            raise QueryError("not an ASK query")
        return bool(result)

    def construct(self, query: str, **bindings: Any) -> rdflib.Graph:
        """The graph of a CONSTRUCT or DESCRIBE query, as an :class:`rdflib.Graph`."""
        import rdflib

        result = self._run(query, bindings)
        if isinstance(result, (ox.QuerySolutions, ox.QueryBoolean, bool)):
            raise QueryError("not a CONSTRUCT or DESCRIBE query")
        data = ox.serialize(list(result), format=ox.RdfFormat.N_TRIPLES) or b""
        return rdflib.Graph().parse(data=data.decode(), format="nt")

    # -- lineage -----------------------------------------------------------------------------
    def lineage(self, node: str, direction: str = "upstream", *, depth: int | None = None,
                as_of: datetime | str | None = None, types: Iterable[str] | None = None,
                relations: Iterable[str] | None = None, max_nodes: int | None = 100_000) -> dict[str, Any]:
        """What ``node`` came from (``upstream``), led to (``downstream``) or both; see
        :func:`provgraph.lineage.lineage` for the answer's shape."""
        if self._provgraph_api() is not None:
            return dict(self._get_json("/lineage", {
                "node": node, "direction": direction, "depth": depth,
                "as_of": as_of.isoformat() if isinstance(as_of, datetime) else as_of,
                "types": list(types) if types is not None else None,
                "relations": list(relations) if relations is not None else None, "max_nodes": max_nodes}))
        from .lineage import lineage

        return lineage(self.store, node, direction, depth=depth, as_of=as_of, types=types, relations=relations,
                       max_nodes=max_nodes)

    def path(self, source: str, target: str, *, max_depth: int | None = 100) -> dict[str, Any]:
        """How ``source`` led to ``target``; see :func:`provgraph.lineage.path`."""
        if self._provgraph_api() is not None:
            return dict(self._get_json("/path", {"from": source, "to": target, "max_depth": max_depth}))
        from .lineage import path

        return path(self.store, source, target, max_depth=max_depth)

    def query_named(self, name: str, **params: Any) -> Any:
        """Run a query of the library (``provgraph query --list``) with typed parameters:
        rows as dicts for SELECT, a bool for ASK, an rdflib Graph for CONSTRUCT."""
        result = query_lib.run(self.store, name, params)
        if isinstance(result, ox.QuerySolutions):
            return self._rows(result)
        if isinstance(result, (ox.QueryBoolean, bool)):
            return bool(result)
        import rdflib

        data = ox.serialize(list(result), format=ox.RdfFormat.N_TRIPLES) or b""
        return rdflib.Graph().parse(data=data.decode(), format="nt")

    # -- tasks -------------------------------------------------------------------------------
    def tasks(self, filter: dict[str, Any] | None = None, projection: Sequence[str] | None = None,
              aggregation: Sequence[tuple[str, str]] | None = None, group_by: Sequence[str] | str | None = None,
              sort: Sequence[tuple[str, Any]] | None = None, limit: int | None = None, *,
              as_frame: bool = False) -> list[dict[str, Any]] | pandas.DataFrame:
        """Tasks as documents, FlowCept style (see :mod:`provgraph.taskquery`).

        Without ``aggregation``: one dict per matching task (``id``, ``name``, ``status``,
        ``workflow``, ..., ``used: {arg: value}``, ``generated: {output: value}``),
        restricted to ``projection`` when given, ordered by ``sort`` (default: start
        time), at most ``limit``. With ``aggregation``: one dict per group of
        ``group_by`` values with the aggregates (``max_generated_accuracy``).
        ``as_frame=True`` returns a pandas DataFrame (nested fields as ``used.lr``
        columns; ``pip install 'provgraph[dataframe]'``)."""
        if aggregation:
            compiled = taskquery.aggregate_query(filter, aggregation, group_by, sort, limit)
            rows = self._rows(self.store.query(compiled.sparql))
            out = [{compiled.columns[k]: v for k, v in row.items()} for row in rows]
            return self._frame(out, flat=True) if as_frame else out
        if group_by:
            raise QueryError("group_by needs an aggregation, e.g. aggregation=[('count', 'id')]")
        if projection is not None:
            for name in [projection] if isinstance(projection, str) else projection:
                if name not in ("used", "generated"):
                    taskquery.check_field(name)
        order = [r["t"] for r in self._rows(self.store.query(taskquery.select_query(filter, sort, limit)))]
        docs: dict[str, dict[str, Any]] = {t: {"id": t, "used": {}, "generated": {}} for t in order}
        for i in range(0, len(order), 200):
            for row in self._rows(self.store.query(taskquery.documents_query(order[i:i + 200]))):
                doc = docs[row["t"]]
                fname, value = row["field"], row["v"]
                if fname.startswith("used.") or fname.startswith("generated."):
                    kind, _, param = fname.partition(".")
                    doc.setdefault(kind, {}).setdefault(param, value)
                else:
                    doc.setdefault(fname, value)
        result = [taskquery.project(docs[t], projection) for t in order]
        return self._frame(result, flat=False) if as_frame else result

    @staticmethod
    def _frame(rows: list[dict[str, Any]], *, flat: bool) -> pandas.DataFrame:
        pd: Any = require("pandas", "dataframe")
        if flat:
            return pd.DataFrame(rows)
        return pd.json_normalize(rows, max_level=1)

    # -- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        """Close the store if this client opened it."""
        if self._owned:
            self.store.close()
            self._owned = False

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.store!r})"
