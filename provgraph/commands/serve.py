"""``provgraph serve``: integrator + store + SPARQL endpoint (+ a local NATS server).

* no ``nats_url`` configured: starts ``nats-server -js`` on 127.0.0.1 with its files
  under ``DATA_DIR/nats`` (same port as last time when free, else 4222, else any) and
  stops it on exit;
* consumes the JetStream stream into the store (:mod:`provgraph.integrator`);
* serves SPARQL at ``http://HTTP_HOST:HTTP_PORT/sparql`` and the integrator's counters
  at ``/metrics`` (Prometheus text);
* writes ``DATA_DIR/serve.json`` (NATS URL, HTTP URL, PID) so that ``provgraph status``
  and emitters with the same data directory find it.

SIGTERM / Ctrl-C: stops fetching, finishes and acks the commit in flight, exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import ProvgraphError, TransportError, require
from . import settings_from_args

__all__ = ["register", "run"]

log = logging.getLogger("provgraph.serve")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the integrator (NATS → store) and the SPARQL endpoint",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--http-host", help="address of the SPARQL endpoint (PROVGRAPH_HTTP_HOST)")
    p.add_argument("--http-port", type=int, help="port of the SPARQL endpoint, 0 = any (PROVGRAPH_HTTP_PORT)")
    p.add_argument("--no-http", action="store_true", help="run the integrator only")
    p.add_argument("--nats-url", help="NATS server to consume from (default: start a local one)")
    p.add_argument("--nats-port", type=int, help="port of the local NATS server (default: as last time, or 4222)")
    p.set_defaults(func=run)


def _local_nats_port(settings: Any, wanted: int | None) -> int:
    from ..natsserver import free_port, port_free, read_serve_info

    if wanted:
        return wanted
    previous = read_serve_info(settings.data_dir, live_only=False) or {}
    url = previous.get("nats_url")
    if isinstance(url, str) and url.startswith("nats://127.0.0.1:"):
        port = int(url.rsplit(":", 1)[1])
        if port_free(port):
            return port
    return 4222 if port_free(4222) else free_port()


def _lower_priority(nice: int) -> None:
    """Lower the priority of every thread of this process (the store's own threads
    included) and so of the threads it starts from now on; nats-server, started before,
    keeps its own. Linux sets priorities per thread, other systems per process."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tasks = Path("/proc/self/task")
        tids = [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]
        for tid in tids:
            try:
                if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                    os.setpriority(os.PRIO_PROCESS, tid, nice)
            except ProcessLookupError:  # a thread that just ended
                continue
        log.info("serve: integrator runs at niceness %d (integrator_nice)", nice)
    except OSError as exc:  # pragma: no cover - a sandbox may refuse
        log.warning("serve: could not lower the integrator's priority (%s)", exc)


async def _serve(args: argparse.Namespace, settings: Any) -> int:
    from ..integrator import Integrator
    from ..metrics import Metrics
    from ..natsserver import SERVE_FILE, NatsServer, write_serve_info
    from ..store import open_backend

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    store = open_backend(settings)  # first: a locked store fails before anything is started
    nats: NatsServer | None = None
    url = settings.nats_url
    if not url:
        nats = NatsServer(settings.data_dir / "nats", port=_local_nats_port(settings, args.nats_port),
                          die_with_parent=True)
        try:
            await loop.run_in_executor(None, nats.start)
        except BaseException:
            store.close()
            raise
        url = nats.url
        log.info("serve: started nats-server on %s (files in %s)", url, nats.store_dir)
    _lower_priority(settings.integrator_nice)
    metrics = Metrics()
    integrator = Integrator(settings, store, metrics=metrics, url=url)
    server: Any = None
    http_url: str | None = None
    tasks: list[asyncio.Task[Any]] = []
    serve_file = settings.data_dir / SERVE_FILE
    try:
        tasks.append(asyncio.create_task(integrator.run(stop), name="integrator"))
        if not args.no_http:
            require("uvicorn", "server")
            import uvicorn

            from ..server import build_app

            class _Server(uvicorn.Server):
                def capture_signals(self) -> Any:  # signals are ours (see _serve)
                    import contextlib

                    return contextlib.nullcontext()

            config = uvicorn.Config(build_app(store, settings, metrics=metrics.render), host=settings.http_host,
                                    port=settings.http_port, log_level="warning", lifespan="off")
            server = _Server(config)
            tasks.append(asyncio.create_task(server.serve(), name="http"))
            while not server.started:
                if tasks[-1].done():
                    tasks[-1].result()
                    raise ProvgraphError(f"the HTTP endpoint did not start on {settings.http_host}:"
                                         f"{settings.http_port}")
                await asyncio.sleep(0.02)
            port = server.servers[0].sockets[0].getsockname()[1]
            http_url = f"http://{settings.http_host}:{port}"
        # wait until the integrator is consuming (or failed: wrong credentials, ...)
        while not integrator.connected.is_set():
            if tasks[0].done():
                tasks[0].result()
                return 0 if stop.is_set() else 1
            await asyncio.sleep(0.02)
        write_serve_info(settings.data_dir, {
            "pid": os.getpid(), "nats_url": url, "http_url": http_url, "managed_nats": nats is not None,
            "nats_pid": nats.proc.pid if nats is not None and nats.proc is not None else None,
            "store": str(settings.store_url or settings.store_dir), "started": time.time()})
        print(f"provgraph serve: consuming {url}" + (f", SPARQL at {http_url}/sparql" if http_url else "")
              + f" (data dir {settings.data_dir}); Ctrl-C to stop", file=sys.stderr, flush=True)
        done, _ = await asyncio.wait([asyncio.ensure_future(stop.wait()), *tasks],
                                     return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        for t in tasks:
            if t in done and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        return 0
    finally:
        stop.set()
        if server is not None:
            server.should_exit = True
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError | ProvgraphError):
                log.error("serve: %s", r, exc_info=r)
        try:
            info = serve_file.read_text()
            if f'"pid": {os.getpid()},' in info:
                serve_file.unlink()
        except OSError:
            pass
        store.close()
        if nats is not None:
            nats.stop()


def run(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.http_host:
        overrides["http_host"] = args.http_host
    if args.http_port is not None:
        overrides["http_port"] = args.http_port
    if args.nats_url:
        overrides["nats_url"] = args.nats_url
    settings = settings_from_args(args, **overrides)
    try:
        return asyncio.run(_serve(args, settings))
    except TransportError:
        raise
    except OSError as exc:
        raise ProvgraphError(f"serve: {exc}") from exc
