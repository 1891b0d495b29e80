"""In-memory transport: keeps every batch, for tests of your own instrumentation."""

from __future__ import annotations

import threading

from .base import Batch, Transport

__all__ = ["MemoryTransport"]


class MemoryTransport(Transport):
    """Keeps every published batch in memory; ``nquads()`` returns them as one text."""

    name = "memory"

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self._lock = threading.Lock()

    def publish(self, batch: Batch) -> None:
        with self._lock:
            self.batches.append(batch)

    def nquads(self) -> str:
        """Everything published so far, converted to one N-Quads text."""
        import pyoxigraph as ox

        from ..store import FORMATS

        with self._lock:
            batches = list(self.batches)
        out = []
        for b in batches:
            quads = ox.parse(b.data, format=FORMATS[b.format])
            out.append((ox.serialize(quads, format=ox.RdfFormat.N_QUADS) or b"").decode("utf-8"))
        return "".join(out)

    def clear(self) -> None:
        with self._lock:
            self.batches.clear()
