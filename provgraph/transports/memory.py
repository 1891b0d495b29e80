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
        with self._lock:
            return "".join(b.nquads.decode("utf-8") for b in self.batches)

    def clear(self) -> None:
        with self._lock:
            self.batches.clear()
