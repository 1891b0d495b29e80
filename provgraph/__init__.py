"""provgraph: W3C PROV capture, integration and lineage queries for scientific workflows.

Capture::

    import provgraph

    with provgraph.workflow("train", campaign="sm-bfo-2026"):

        @provgraph.task
        def fit(dataset: Path, lr: float) -> Path: ...

    provgraph.flush()

Query (the embedded store, a ``provgraph serve`` endpoint or any SPARQL 1.1 endpoint)::

    client = provgraph.Client()                      # or Client("http://host:7879/sparql")
    client.sparql("SELECT ...")
    client.lineage("ni:///sha-256;...", direction="upstream", depth=5)
    client.tasks(filter={"generated.loss": {"$lt": 0.1}}, sort=[("generated.loss", 1)])

Files, byte strings and arrays are identified by content hash (``ni:///sha-256;...``),
so workflows that touch the same bytes meet in one graph without sharing any ID.
"""

from __future__ import annotations

from .capture import (
    configure,
    current_run,
    current_task_id,
    flush,
    generated,
    get_emitter,
    new_task_id,
    shutdown,
    task,
    used,
    workflow,
)
from .client import Client
from .emitter import Emitter
from .errors import (
    ConfigError,
    MissingDependencyError,
    NotFoundError,
    ParseError,
    ProvgraphError,
    QueryError,
    QueryTimeoutError,
    StoreError,
    StoreLockedError,
    TransportError,
)
from .records import Artifact, ErrorInfo, RawBatch, RunEnd, RunInfo, TaskRecord
from .settings import Settings, load_settings
from .store import Store
from .transports import Batch, JournalTransport, MemoryTransport, Transport

__version__ = "0.1.0"

__all__ = [
    "Artifact",
    "Batch",
    "Client",
    "ConfigError",
    "Emitter",
    "ErrorInfo",
    "JournalTransport",
    "MemoryTransport",
    "MissingDependencyError",
    "NotFoundError",
    "ParseError",
    "ProvgraphError",
    "QueryError",
    "QueryTimeoutError",
    "RawBatch",
    "RunEnd",
    "RunInfo",
    "Settings",
    "Store",
    "StoreError",
    "StoreLockedError",
    "TaskRecord",
    "Transport",
    "TransportError",
    "__version__",
    "configure",
    "current_run",
    "current_task_id",
    "flush",
    "generated",
    "get_emitter",
    "load_settings",
    "new_task_id",
    "shutdown",
    "task",
    "used",
    "workflow",
]
