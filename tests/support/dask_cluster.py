"""Real Dask clusters for tests: LocalCluster (processes or threads) and a CLI-started one."""

from __future__ import annotations

import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from provgraph.settings import Settings
from provgraph.store import Store
from provgraph.transports.journal import journal_files, read_journal

from .servers import free_port, venv_binary

with warnings.catch_warnings():  # distributed imports the deprecated pynvml shim
    warnings.simplefilter("ignore", FutureWarning)
    from distributed import Client, LocalCluster

PREFIXES = """PREFIX prov: <http://www.w3.org/ns/prov#>
PREFIX pg: <https://w3id.org/provgraph/ns#>
PREFIX rdfs: <http://www.w3.org/2000/01/rdf-schema#>
"""


@contextmanager
def local_client(*, processes: bool, n_workers: int = 2) -> Iterator[Client]:
    extra = {"host": "127.0.0.1"} if processes else {}  # threads: in-process comms, nothing listens
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=processes, dashboard_address=None,
                      **extra) as cluster, Client(cluster) as client:
        yield client


def journal_store(settings: Settings) -> Store:
    """An in-memory store holding every batch any process wrote to the journal."""
    store = Store(None)
    for path in journal_files(settings.journal_dir):
        for batch in read_journal(path):
            store.load(batch.data, batch.to_batch().format)
    return store


def rows(store: Store, sparql: str) -> list[dict[str, Any]]:
    """SELECT results as dicts of Python strings/ints (missing variables are None)."""
    result = store.query(PREFIXES + sparql)
    names = [v.value for v in result.variables]
    out = []
    for sol in result:
        row: dict[str, Any] = {}
        for name in names:
            term = sol[name]
            row[name] = None if term is None else term.value
        out.append(row)
    return out


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start (exit code {proc.poll()})") from None
            time.sleep(0.1)


@contextmanager
def cli_cluster(workdir: Path, n_workers: int = 1) -> Iterator[str]:
    """``dask scheduler`` and ``dask worker`` processes on loopback, stopped by PID."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = venv_binary("dask")
    procs: list[subprocess.Popen[bytes]] = []
    logs = [open(workdir / f"dask-{i}.log", "wb") for i in range(n_workers + 1)]
    try:
        sched = subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                  "--no-dashboard"], stdout=logs[0], stderr=subprocess.STDOUT, cwd=workdir)
        procs.append(sched)
        _wait_port(port, sched, "dask scheduler")
        for i in range(n_workers):
            procs.append(subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--no-dashboard",
                                           "--host", "127.0.0.1", "--name", f"w{i}"],
                                          stdout=logs[i + 1], stderr=subprocess.STDOUT, cwd=workdir))
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for fh in logs:
            fh.close()
