"""Running SPARQL for the endpoint: bounded concurrency, time limit, result limit.

pyoxigraph cannot cancel a running query, but it releases the GIL while it evaluates,
so queries run on a small pool of worker threads (``workers``, default 4) while the
event loop keeps serving other requests. A request waits at most ``timeout`` seconds
for its answer, then gets :class:`~provgraph.errors.QueryTimeoutError` (HTTP 503).
The abandoned evaluation is told to stop: it checks between result rows, so a query
that streams rows stops at once, and one stuck inside a single step (a big sort or
aggregate) holds its worker until that step ends. Work that has not started when its
time is up never starts. At most ``workers`` queries therefore run at a time whatever
clients do; the health, metrics and lineage-listing routes never wait on this pool.

The result limit (``max_results``) truncates: at most that many solutions or triples
are returned and :attr:`Answer.truncated` is set (the endpoint adds the header
``X-Provgraph-Truncated: true``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import pyoxigraph as ox

from ..errors import QueryError, QueryTimeoutError, StoreError
from .negotiation import Format

__all__ = ["Answer", "CancelledQueryError", "QueryRunner", "term_json"]

T = TypeVar("T")

_PREFIXES = {
    "prov": "http://www.w3.org/ns/prov#",
    "pg": "https://w3id.org/provgraph/ns#",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "rdfs": "http://www.w3.org/2000/01/rdf-schema#",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
    "dcterms": "http://purl.org/dc/terms/",
}
_XSD_STRING = "http://www.w3.org/2001/XMLSchema#string"


class CancelledQueryError(Exception):
    """Raised inside a worker whose request has given up waiting."""


@dataclass
class Answer:
    """A serialized query answer."""

    kind: str  # "solutions", "boolean" or "graph"
    body: bytes
    format: Format
    truncated: bool = False
    count: int = 0


def term_json(term: Any) -> dict[str, Any]:
    """A term in SPARQL 1.1 Query Results JSON form."""
    if isinstance(term, ox.NamedNode):
        return {"type": "uri", "value": term.value}
    if isinstance(term, ox.BlankNode):
        return {"type": "bnode", "value": term.value}
    if isinstance(term, ox.Literal):
        out: dict[str, Any] = {"type": "literal", "value": term.value}
        if term.language:
            out["xml:lang"] = term.language
        elif term.datatype.value != _XSD_STRING:
            out["datatype"] = term.datatype.value
        return out
    if isinstance(term, ox.Triple):
        return {"type": "triple", "value": {"subject": term_json(term.subject),
                                            "predicate": term_json(term.predicate),
                                            "object": term_json(term.object)}}
    raise QueryError(f"cannot serialize a {type(term).__name__}")


class QueryRunner:
    """Runs blocking store work on a bounded pool with a per-request time limit."""

    def __init__(self, *, timeout: float, max_results: int, workers: int = 4) -> None:
        self.timeout = timeout
        self.max_results = max_results
        self.workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="provgraph-query")
        self._lock = threading.Lock()
        self.busy = 0
        self.timeouts = 0

    async def run(self, work: Callable[[threading.Event], T]) -> T:
        """Run ``work(cancel)`` on the pool; :class:`QueryTimeoutError` after ``timeout``.
        ``work`` should check ``cancel`` between steps and raise :class:`CancelledQueryError`."""
        cancel = threading.Event()
        deadline = time.monotonic() + self.timeout

        def job() -> T:
            if cancel.is_set() or time.monotonic() > deadline:
                raise CancelledQueryError()
            with self._lock:
                self.busy += 1
            try:
                return work(cancel)
            except BaseException as exc:
                # pyoxigraph results may only be dropped on the thread that made them: the
                # tracebacks' frames hold them, so they go here, not on the event loop
                _drop_tracebacks(exc)
                raise exc from exc.__cause__
            finally:
                with self._lock:
                    self.busy -= 1

        fut = asyncio.wrap_future(self._pool.submit(job))
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.timeout)
        except TimeoutError:
            cancel.set()
            fut.add_done_callback(_consume)
            self.timeouts += 1
            raise QueryTimeoutError(
                f"the query ran longer than the endpoint's limit of {self.timeout:g} s "
                "(query_timeout); narrow it or add LIMIT") from None

    def close(self) -> None:
        """Stop taking work; queued jobs are cancelled, running ones end on their own."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- evaluation in a worker ---------------------------------------------------------
    def answer(self, result: Any, choose: Callable[[str], Format], cancel: threading.Event) -> Answer:
        """Serialize a pyoxigraph (or RemoteStore) query result in the negotiated format,
        stopping at ``max_results`` rows and when ``cancel`` is set."""
        try:
            if isinstance(result, ox.QueryBoolean) or isinstance(result, bool):
                fmt = choose("boolean")
                assert fmt.results is not None
                doc = {"head": {}, "boolean": bool(result)}
                body = json.dumps(doc).encode()
                if fmt.results != ox.QueryResultsFormat.JSON:
                    body = ox.parse_query_results(body, format=ox.QueryResultsFormat.JSON).serialize(
                        format=fmt.results) or b""
                return Answer("boolean", body, fmt, False, 1)
            if isinstance(result, ox.QuerySolutions):
                fmt = choose("solutions")
                variables = [v.value for v in result.variables]
                rows: list[dict[str, Any]] = []
                truncated = False
                for sol in result:
                    if cancel.is_set():
                        raise CancelledQueryError()
                    if len(rows) >= self.max_results:
                        truncated = True
                        break
                    row = {}
                    for v in variables:
                        t = sol[v]
                        if t is not None:
                            row[v] = term_json(t)
                    rows.append(row)
                body = json.dumps({"head": {"vars": variables}, "results": {"bindings": rows}},
                                  ensure_ascii=False).encode()
                assert fmt.results is not None
                if fmt.results != ox.QueryResultsFormat.JSON:
                    body = ox.parse_query_results(body, format=ox.QueryResultsFormat.JSON).serialize(
                        format=fmt.results) or b""
                return Answer("solutions", body, fmt, truncated, len(rows))
            # a graph: QueryTriples, or a list of triples from a RemoteStore
            fmt = choose("graph")
            triples: list[ox.Triple] = []
            seen: set[ox.Triple] = set()  # a graph is a set: the union of graphs may repeat triples
            truncated = False
            for t in result:
                if cancel.is_set():
                    raise CancelledQueryError()
                if t in seen:
                    continue
                if len(triples) >= self.max_results:
                    truncated = True
                    break
                seen.add(t)
                triples.append(t)
            assert fmt.rdf is not None
            return Answer("graph", serialize_graph(triples, fmt.rdf), fmt, truncated, len(triples))
        except (CancelledQueryError, QueryError):
            raise
        except SyntaxError as exc:
            raise QueryError(str(exc)) from exc
        except OSError as exc:
            raise StoreError(f"query failed: {exc}") from exc
        except (ValueError, TypeError, RuntimeError) as exc:
            raise QueryError(f"query failed: {exc}") from exc


def serialize_graph(triples: list[ox.Triple] | list[ox.Quad], fmt: ox.RdfFormat) -> bytes:
    """Triples (or quads) in ``fmt``; Turtle/TriG with the usual provgraph prefixes."""
    if fmt in (ox.RdfFormat.N_QUADS, ox.RdfFormat.TRIG):
        quads = [t if isinstance(t, ox.Quad) else ox.Quad(t.subject, t.predicate, t.object, ox.DefaultGraph())
                 for t in triples]
        return ox.serialize(quads, format=fmt, **_prefix_kw(fmt)) or b""
    plain = [ox.Triple(t.subject, t.predicate, t.object) if isinstance(t, ox.Quad) else t for t in triples]
    return ox.serialize(plain, format=fmt, **_prefix_kw(fmt)) or b""


def _prefix_kw(fmt: ox.RdfFormat) -> dict[str, Any]:
    if fmt in (ox.RdfFormat.TURTLE, ox.RdfFormat.TRIG):
        return {"prefixes": _PREFIXES}
    return {}


def _drop_tracebacks(exc: BaseException) -> None:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        cur.__traceback__ = None
        cur = cur.__cause__ or cur.__context__


def _consume(fut: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of an abandoned job so asyncio does not warn about it."""
    if not fut.cancelled():
        fut.exception()
