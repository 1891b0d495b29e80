"""A real ``nats-server -js`` for tests, and helpers to run integrators and read streams."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from provgraph.natsserver import NatsServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh JetStream server on a free loopback port, files under ``tmp_path/nats``."""
    server = NatsServer(tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll ``predicate`` until true; fail the test naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def env_for(data_dir: Path, nats_url: str | None, **extra: str) -> dict[str, str]:
    """Environment of a provgraph subprocess: this checkout first on the path, no stray PROVGRAPH_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVGRAPH_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PROVGRAPH_DATA_DIR"] = str(data_dir)
    if nats_url:
        env["PROVGRAPH_NATS_URL"] = nats_url
    env.update(extra)
    return env


@contextmanager
def serve_process(data_dir: Path, nats_url: str | None, *args: str, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """``provgraph serve`` as a subprocess (stopped by PID: SIGTERM, then SIGKILL)."""
    log = open(data_dir.parent / f"serve-{time.time_ns()}.log", "wb")
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "provgraph", "serve", "--http-port", "0", *args],
                            env=env_for(data_dir, nats_url, **env), stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()


def read_stream(url: str, stream: str, subject: str | None = None, **connect: Any) -> list[Any]:
    """Every message of ``stream`` (ordered), read with a direct get per sequence number."""

    async def main() -> list[Any]:
        import nats

        nc = await nats.connect(url, **connect)
        try:
            jsm = nc.jsm()
            info = await jsm.stream_info(stream)
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                try:
                    msg = await jsm.get_msg(stream, seq)
                except Exception:  # noqa: BLE001 - deleted message
                    continue
                if subject is None or msg.subject == subject:
                    out.append(msg)
            return out
        finally:
            await nc.close()

    return asyncio.run(main())


def stream_state(url: str, stream: str) -> Any:
    async def main() -> Any:
        import nats

        nc = await nats.connect(url)
        try:
            return (await nc.jsm().stream_info(stream)).state
        finally:
            await nc.close()

    return asyncio.run(main())


@contextmanager
def running_integrator(settings: Any, store: Any, **kwargs: Any) -> Iterator[Any]:
    """A real :class:`~provgraph.integrator.Integrator` on its own event-loop thread."""
    import threading

    from provgraph.integrator import Integrator

    integrator = Integrator(settings, store, **kwargs)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    errors: list[BaseException] = []

    def main() -> None:
        async def go() -> None:
            try:
                await integrator.run(stop)
            except BaseException as exc:  # noqa: BLE001 - reported by the fixture
                errors.append(exc)

        loop.run_until_complete(go())

    thread = threading.Thread(target=main, name="test-integrator", daemon=True)
    thread.start()
    try:
        wait_for(lambda: integrator.connected.is_set() or bool(errors), 30, "the integrator to connect")
        if errors:
            raise errors[0]
        integrator.thread = thread  # type: ignore[attr-defined]
        integrator.errors = errors  # type: ignore[attr-defined]
        yield integrator
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()
    if errors:
        raise errors[0]


def sparql_count(store: Any, query: str) -> int:
    """The single ``?n`` of a COUNT query."""
    for row in store.query(query):
        return int(row["n"].value)
    return 0


class RestrictedNatsServer(NatsServer):
    """The users of ``deployment/nats/jetstream.conf``: ``publisher`` may only publish
    provenance, ``integrator`` may do everything."""

    def _config(self) -> Path:
        path = super()._config()
        path.write_text(path.read_text() + (
            "authorization { users = [\n"
            '  { user: publisher, password: pub, permissions: { publish: ["provgraph.v1.>"], '
            'subscribe: ["_INBOX.>"] } }\n'
            '  { user: integrator, password: int, permissions: { publish: [">"], subscribe: [">"] } }\n'
            "] }\n"))
        return path
