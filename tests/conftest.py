"""Shared fixtures: every test gets its own data directory and a clean capture runtime."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import provgraph
from provgraph.capture import _State


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test touches the user's data dir or leaks a configured emitter."""
    data = tmp_path / "pgdata"
    for key in [k for k in __import__("os").environ if k.startswith("PROVGRAPH_")]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PROVGRAPH_DATA_DIR", str(data))
    monkeypatch.chdir(tmp_path)
    yield
    provgraph.shutdown(timeout=10)
    _State.disabled = False
    _State.settings = None


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "pgdata"


@pytest.fixture
def memory() -> provgraph.MemoryTransport:
    """Capture into memory: ``memory.nquads()`` holds everything flushed."""
    transport = provgraph.MemoryTransport()
    provgraph.configure(transport=transport, flush_interval=0.05)
    return transport
