"""Embedded-store transport: commit each batch to the on-disk Oxigraph store.

If another process holds the store, batches go to the store's inbox journal instead
and are loaded by the next process that opens the store for writing.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import StoreLockedError
from ..remote import RemoteStore
from ..store import Store
from .base import Batch, Transport
from .journal import JournalTransport

__all__ = ["StoreTransport"]

_INHERITED: list[Store | RemoteStore] = []


class StoreTransport(Transport):
    name = "store"

    def __init__(self, path: str | os.PathLike[str] | None, *, store: Store | RemoteStore | None = None,
                 inbox_max_bytes: int = 1 << 30) -> None:
        self.path = Path(path) if path is not None else None
        self._store: Store | RemoteStore | None = store
        self._owns = store is None
        self._inbox: JournalTransport | None = None
        self._inbox_max = inbox_max_bytes

    @property
    def store(self) -> Store | RemoteStore | None:
        return self._store

    def _target(self) -> Store | RemoteStore | JournalTransport:
        if self._store is not None:
            return self._store
        if self._inbox is not None:
            return self._inbox
        try:
            self._store = Store(self.path)
            return self._store
        except StoreLockedError:
            assert self.path is not None
            self._inbox = JournalTransport(self.path / "inbox", max_bytes=self._inbox_max, prefix="inbox")
            return self._inbox

    def publish(self, batch: Batch) -> None:
        target = self._target()
        if isinstance(target, JournalTransport):
            target.publish(batch)
        elif isinstance(target, Store):
            target.load_batch(batch.data, batch.format)  # validated, then bulk-written
        else:
            target.load(batch.data, batch.format)

    def flush(self, timeout: float) -> bool:
        if self._inbox is not None:
            return self._inbox.flush(timeout)
        if self._store is not None:
            self._store.flush()
        return True

    def close(self, timeout: float) -> bool:
        ok = self.flush(timeout)
        if self._inbox is not None:
            self._inbox.close(timeout)
            self._inbox = None
        if self._store is not None and self._owns:
            self._store.close()
            self._store = None
        return ok

    def after_fork(self) -> None:
        # RocksDB handles must not cross fork: the child opens its own (or spools).
        if self._owns and self._store is not None:
            _INHERITED.append(self._store)  # never closed in the child (RocksDB handles)
            self._store = None
        self._inbox = None
