"""The HTTP application: SPARQL 1.1 Protocol endpoint, Graph Store Protocol (read),
service description, lineage/path API, named queries, health and metrics.

Routes::

    GET/POST /sparql              SPARQL 1.1 Protocol (query; update with a bearer token)
    GET      /sparql              (no query) the service description, in Turtle
    GET      /rdf-graphs/service  Graph Store Protocol read: ?graph=IRI or ?default
    GET      /lineage             ?node=IRI&direction=upstream|downstream|both&depth=N&as_of=&types=
    GET      /path                ?from=IRI&to=IRI&max_depth=N
    GET      /queries             the named-query library, with parameters
    GET      /queries/{name}      run a named query: ?param=value ...
    GET      /healthz             liveness and pool state
    GET      /metrics             Prometheus text (when the app is given a metrics callable)

Starlette and uvicorn are optional (``pip install 'provgraph[server]'``).
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import pyoxigraph as ox

from ..errors import (
    NotFoundError,
    ProvgraphError,
    QueryError,
    QueryTimeoutError,
    StoreError,
    require,
)
from .execution import Answer, CancelledQueryError, QueryRunner, serialize_graph
from .guard import OutboundRefusedError, check_outbound, has_dataset_clause, query_form
from .negotiation import RDF_FORMATS, RESULT_FORMATS, Format, NotAcceptableError, negotiate

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from ..remote import RemoteStore
    from ..settings import Settings
    from ..store import Store

__all__ = ["RunningServer", "build_app", "serve", "start"]

log = logging.getLogger("provgraph.http")
MAX_BODY = 8 << 20  #: largest query / update body accepted (bytes)
_SD = "http://www.w3.org/ns/sparql-service-description#"
_FMT = "http://www.w3.org/ns/formats/"
_SHORT = {"prov:": "http://www.w3.org/ns/prov#", "pg:": "https://w3id.org/provgraph/ns#"}


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def _status_of(exc: BaseException) -> tuple[int, dict[str, str]]:
    if isinstance(exc, _HTTPError):
        return exc.status, exc.headers
    if isinstance(exc, NotAcceptableError):
        return 406, {}
    if isinstance(exc, OutboundRefusedError):
        return 403, {}
    if isinstance(exc, QueryTimeoutError):
        return 503, {"Retry-After": "1"}
    if isinstance(exc, NotFoundError):
        return 404, {}
    if isinstance(exc, QueryError):
        return 400, {}
    if isinstance(exc, StoreError):
        return 502, {}
    return 500, {}


def _expand(name: str) -> str:
    for short, ns in _SHORT.items():
        if name.startswith(short):
            return ns + name[len(short):]
    return name


def _multi(params: Any, name: str) -> list[str]:
    """All values of a repeatable parameter; comma-separated values are split."""
    out: list[str] = []
    for v in params.getlist(name):
        out.extend(p.strip() for p in v.split(",") if p.strip())
    return out


def _int_param(params: Any, name: str, default: int | None = None) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise _HTTPError(400, f"{name} must be an integer, not {raw!r}") from None


def build_app(backend: Store | RemoteStore, settings: Settings, *,
              metrics: Callable[[], str] | None = None, workers: int | None = None) -> Starlette:
    """The Starlette application serving ``backend`` (see the module docstring).

    ``settings`` gives ``query_timeout``, ``query_max_results``, ``update_token``,
    ``service_allowlist`` and ``cors_origins``; ``metrics`` (optional) returns the
    Prometheus text served at ``/metrics``; ``workers`` bounds concurrent queries
    (default: ``settings.query_workers`` where that setting exists, else 4)."""
    require("starlette", "server")
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    from .. import lineage as lineage_mod
    from .. import queries as query_lib

    pool = workers if workers is not None else int(getattr(settings, "query_workers", 4))
    runner = QueryRunner(timeout=settings.query_timeout, max_results=settings.query_max_results, workers=pool)
    allowlist = list(settings.service_allowlist)
    token = settings.update_token
    started = time.time()
    counters = {"queries": 0, "updates": 0, "errors": 0}

    def fail(exc: BaseException, as_json: bool) -> Response:
        status, headers = _status_of(exc)
        if status >= 400:
            counters["errors"] += 1
        message = str(exc) or type(exc).__name__
        if status == 500:
            message = f"internal error: {type(exc).__name__}: {message}"
        if as_json:
            return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)
        return PlainTextResponse(message + "\n", status_code=status, headers=headers)

    def guarded(as_json: bool) -> Callable[[Callable[[Request], Awaitable[Response]]],
                                           Callable[[Request], Awaitable[Response]]]:
        def wrap(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
            async def endpoint(request: Request) -> Response:
                try:
                    return await handler(request)
                except (ProvgraphError, _HTTPError, NotAcceptableError) as exc:
                    return fail(exc, as_json)
                except CancelledQueryError:  # pragma: no cover - only while the pool shuts down
                    return fail(QueryTimeoutError("the query was abandoned"), as_json)
                except Exception as exc:  # a bug must still answer, and be logged
                    log.exception("error serving %s", request.url.path)
                    return fail(exc, as_json)
            return endpoint
        return wrap

    def respond(answer: Answer) -> Response:
        headers = {"Vary": "Accept"}
        if answer.truncated:
            headers["X-Provgraph-Truncated"] = "true"
            headers["X-Provgraph-Result-Limit"] = str(runner.max_results)
        return Response(answer.body, media_type=answer.format.content_type, headers=headers)

    def chooser(request: Request, override: str | None) -> Callable[[str], Format]:
        accept = request.headers.get("accept")

        def choose(kind: str) -> Format:
            return negotiate(RESULT_FORMATS if kind in ("solutions", "boolean") else RDF_FORMATS, accept, override)
        return choose

    # -- SPARQL protocol -------------------------------------------------------------
    def execute(text: str, default_graphs: list[str], named_graphs: list[str]) -> Any:
        if not default_graphs and not named_graphs:
            # FROM / FROM NAMED in the query choose the dataset; else the union of all graphs
            return backend.query(text, union_default_graph=not has_dataset_clause(text))
        from ..store import Store as _Store

        if not isinstance(backend, _Store):
            raise QueryError("default-graph-uri / named-graph-uri are supported on the embedded store only; "
                             "use FROM / FROM NAMED in the query")
        try:
            kwargs: dict[str, Any] = {}
            if default_graphs:
                kwargs["default_graph"] = [ox.NamedNode(g) for g in default_graphs]
            else:
                kwargs["use_default_graph_as_union"] = True
            if named_graphs:
                kwargs["named_graphs"] = [ox.NamedNode(g) for g in named_graphs]
            return backend.oxigraph.query(text, **kwargs)
        except SyntaxError as exc:
            raise QueryError(f"invalid SPARQL: {exc}") from exc
        except ValueError as exc:
            raise QueryError(f"invalid graph IRI: {exc}") from exc

    async def run_query(request: Request, text: str, default_graphs: list[str], named_graphs: list[str],
                        override: str | None) -> Response:
        if not text.strip():
            raise QueryError("empty SPARQL query")
        choose = chooser(request, override)
        counters["queries"] += 1

        def work(cancel: threading.Event) -> Answer:
            # checks scan the whole text (and may parse it with rdflib): on the pool, under the time limit
            check_outbound(text, allowlist)
            form = query_form(text)
            if form is not None:  # refuse an unacceptable format before evaluating
                choose("solutions" if form in ("SELECT", "ASK") else "graph")
            return runner.answer(execute(text, default_graphs, named_graphs), choose, cancel)
        return respond(await runner.run(work))

    async def run_update(request: Request, text: str) -> Response:
        if token is None:
            raise _HTTPError(403, "SPARQL Update is disabled: this endpoint is read-only (set update_token to enable)")
        auth = request.headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if not auth or scheme.lower() != "bearer":
            raise _HTTPError(401, "SPARQL Update needs 'Authorization: Bearer <token>'",
                             {"WWW-Authenticate": 'Bearer realm="provgraph"'})
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise _HTTPError(403, "invalid update token")
        if getattr(backend, "read_only", False):
            raise _HTTPError(403, "the store behind this endpoint is open read-only")
        if not text.strip():
            raise QueryError("empty SPARQL update")
        counters["updates"] += 1

        def work(cancel: threading.Event) -> None:
            check_outbound(text, allowlist)
            try:
                backend.update(text)
            except OSError as exc:
                raise StoreError(f"update failed: {exc}") from exc
            except (ValueError, RuntimeError) as exc:
                raise QueryError(f"update failed: {exc}") from exc
        await runner.run(work)
        return Response(status_code=204)

    @guarded(as_json=False)
    async def sparql(request: Request) -> Response:
        params = request.query_params
        override = params.get("format") or params.get("output")
        dgs, ngs = params.getlist("default-graph-uri"), params.getlist("named-graph-uri")
        if request.method == "GET":
            if "update" in params:
                raise _HTTPError(405, "SPARQL Update must be sent with POST", {"Allow": "POST"})
            if "query" not in params:
                return service_description(request)
            return await run_query(request, params["query"], dgs, ngs, override)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await _read_body(request)
        if ctype == "application/x-www-form-urlencoded":
            form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
            dgs = dgs + form.get("default-graph-uri", [])
            ngs = ngs + form.get("named-graph-uri", [])
            override = override or next(iter(form.get("format", []) + form.get("output", [])), None)
            if "query" in form and "update" in form:
                raise QueryError("send either query= or update=, not both")
            if "query" in form:
                return await run_query(request, form["query"][0], dgs, ngs, override)
            if "update" in form:
                _no_using(form.keys())
                return await run_update(request, form["update"][0])
            raise QueryError("the form has no query= or update= field")
        if ctype == "application/sparql-query":
            return await run_query(request, body.decode("utf-8", "replace"), dgs, ngs, override)
        if ctype == "application/sparql-update":
            _no_using(params.keys())
            return await run_update(request, body.decode("utf-8", "replace"))
        raise _HTTPError(415, f"unsupported Content-Type {ctype or '(none)'!r}: use application/sparql-query, "
                              "application/sparql-update or application/x-www-form-urlencoded")

    def service_description(request: Request) -> Response:
        endpoint = str(request.url.replace(query="", fragment=""))
        langs = "sd:SPARQL11Query" + (", sd:SPARQL11Update" if token else "")
        features = "sd:UnionDefaultGraph" + (", sd:BasicFederatedQuery" if allowlist else "")
        ttl = f"""@prefix sd: <{_SD}> .
@prefix formats: <{_FMT}> .
<{endpoint}> a sd:Service ;
  sd:endpoint <{endpoint}> ;
  sd:supportedLanguage {langs} ;
  sd:feature {features} ;
  sd:resultFormat formats:SPARQL_Results_JSON, formats:SPARQL_Results_XML, formats:SPARQL_Results_CSV,
    formats:SPARQL_Results_TSV, formats:Turtle, formats:N-Triples, formats:JSON-LD, formats:RDF_XML ;
  sd:defaultDataset [ a sd:Dataset ; sd:defaultGraph [ a sd:Graph ] ] .
"""
        fmt = negotiate(RDF_FORMATS, request.headers.get("accept"), request.query_params.get("format"))
        if fmt.rdf == ox.RdfFormat.TURTLE:
            body = ttl.encode()
        else:
            assert fmt.rdf is not None
            body = serialize_graph(list(ox.parse(ttl.encode(), format=ox.RdfFormat.TURTLE)), fmt.rdf)
        return Response(body, media_type=fmt.content_type, headers={"Vary": "Accept"})

    # -- Graph Store Protocol (read) -------------------------------------------------
    @guarded(as_json=False)
    async def graph_store(request: Request) -> Response:
        params = request.query_params
        choose = chooser(request, params.get("format"))
        choose("graph")
        if "graph" in params:
            try:
                g = ox.NamedNode(params["graph"])
            except ValueError as exc:
                raise QueryError(f"graph is not an IRI: {exc}") from exc
        elif "default" in params:
            g = None
        else:
            raise QueryError("name a graph: ?graph=IRI or ?default")

        def work(cancel: threading.Event) -> Answer:
            if g is not None:
                if not bool(backend.query("ASK { GRAPH ?g { ?s ?p ?o } }", substitutions={"g": g})):
                    raise NotFoundError(f"no graph {g.value} in the store")
                result = backend.query("CONSTRUCT { ?s ?p ?o } WHERE { GRAPH ?g { ?s ?p ?o } }",
                                       substitutions={"g": g})
            else:
                result = backend.query("CONSTRUCT { ?s ?p ?o } WHERE { ?s ?p ?o }")
            return runner.answer(result, choose, cancel)
        return respond(await runner.run(work))

    # -- lineage API -----------------------------------------------------------------
    @guarded(as_json=True)
    async def lineage(request: Request) -> Response:
        params = request.query_params
        node = params.get("node")
        if not node:
            raise QueryError("lineage needs ?node=IRI")
        direction = params.get("direction", "upstream")
        depth = _int_param(params, "depth")
        max_nodes = _int_param(params, "max_nodes", settings.query_max_results)
        assert max_nodes is not None
        types = [_expand(t) for t in _multi(params, "types")] or None
        relations = _multi(params, "relations") or None
        as_of = params.get("as_of") or None

        def work(cancel: threading.Event) -> dict[str, Any]:
            return lineage_mod.lineage(backend, node, direction, depth=depth, as_of=as_of, types=types,
                                       relations=relations, max_nodes=min(max_nodes, settings.query_max_results))
        return JSONResponse(await runner.run(work))

    @guarded(as_json=True)
    async def path(request: Request) -> Response:
        params = request.query_params
        source, target = params.get("from"), params.get("to")
        if not source or not target:
            raise QueryError("path needs ?from=IRI&to=IRI")
        max_depth = _int_param(params, "max_depth", 100)

        def work(cancel: threading.Event) -> dict[str, Any]:
            return lineage_mod.path(backend, source, target, max_depth=max_depth)
        return JSONResponse(await runner.run(work))

    # -- named queries ---------------------------------------------------------------
    @guarded(as_json=True)
    async def list_named(request: Request) -> Response:
        return JSONResponse([
            {"name": q.name, "purpose": q.purpose,
             "params": [{"name": p.name, "type": p.type, "optional": p.optional, "description": p.description}
                        for p in q.params]}
            for q in query_lib.list_queries()])

    @guarded(as_json=True)
    async def run_named(request: Request) -> Response:
        named = query_lib.load_query(request.path_params["name"])
        params = {k: v for k, v in request.query_params.items() if k not in ("format", "output")}
        query_lib.bind(named, params)  # unknown / missing / ill-typed parameters: 400 before any work
        override = request.query_params.get("format") or request.query_params.get("output")
        choose = chooser(request, override)

        def work(cancel: threading.Event) -> Answer:
            return runner.answer(query_lib.run(backend, named, params), choose, cancel)
        return respond(await runner.run(work))

    # -- operations ------------------------------------------------------------------
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "service": "provgraph", "uptime_s": round(time.time() - started, 3),
                             "backend": type(backend).__name__, "workers": runner.workers,
                             "busy_workers": runner.busy, "timeouts": runner.timeouts, **counters})

    async def metrics_route(request: Request) -> Response:
        assert metrics is not None
        return PlainTextResponse(metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    routes = [
        Route("/sparql", sparql, methods=["GET", "POST"]),
        Route("/rdf-graphs/service", graph_store, methods=["GET"]),
        Route("/lineage", lineage, methods=["GET"]),
        Route("/path", path, methods=["GET"]),
        Route("/queries", list_named, methods=["GET"]),
        Route("/queries/{name}", run_named, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    if metrics is not None:
        routes.append(Route("/metrics", metrics_route, methods=["GET"]))
    middleware = []
    if settings.cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                                     allow_methods=["GET", "POST"],
                                     allow_headers=["Accept", "Authorization", "Content-Type"],
                                     expose_headers=["X-Provgraph-Truncated", "X-Provgraph-Result-Limit"]))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            runner.close()

    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.runner = runner
    return app


def _no_using(names: Iterable[str]) -> None:
    """The protocol's ``using-graph-uri`` / ``using-named-graph-uri`` are refused, not ignored."""
    given = sorted(n for n in names if n in ("using-graph-uri", "using-named-graph-uri"))
    if given:
        raise QueryError(f"{', '.join(given)} is not supported: write USING / USING NAMED in the update")


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise _HTTPError(413, f"request body over {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise _HTTPError(413, f"request body over {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def serve(app: Starlette, host: str = "127.0.0.1", port: int = 7879, *, log_level: str = "info") -> None:
    """Serve ``app`` with uvicorn until interrupted (blocks)."""
    uvicorn: Any = require("uvicorn", "server")
    uvicorn.run(app, host=host, port=port, log_level=log_level, ws="none")


class RunningServer:
    """A uvicorn server on a background thread (for notebooks and tests); see :func:`start`."""

    def __init__(self, server: Any, thread: threading.Thread, url: str) -> None:
        self._server = server
        self._thread = thread
        self.url = url

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to exit and wait for its thread."""
        self._server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(app: Starlette, host: str = "127.0.0.1", port: int = 0, *, timeout: float = 30.0) -> RunningServer:
    """Start ``app`` on a background thread; ``port=0`` picks a free port. Returns once
    the server accepts connections (``.url`` is its base URL)."""
    uvicorn: Any = require("uvicorn", "server")
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", ws="none", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="provgraph-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise StoreError(f"the HTTP server did not start on {host}:{port}")
        time.sleep(0.01)
    sock = server.servers[0].sockets[0]
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    return RunningServer(server, thread, f"http://{shown}:{bound_port}")

