"""Transports by short name. Third parties register under the entry-point group
``provgraph.transports`` (``name = "package.module:factory"``; the factory takes a
:class:`~provgraph.settings.Settings` and returns a :class:`Transport`)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .base import Batch, Transport
from .journal import JournalTransport
from .memory import MemoryTransport

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = [
    "REGISTRY",
    "Batch",
    "JournalTransport",
    "MemoryTransport",
    "NullTransport",
    "Transport",
    "create_transport",
]


class NullTransport(Transport):
    """Discards batches (capture switched off, but the API still works)."""

    name = "none"

    def publish(self, batch: Batch) -> None:
        return None


def _store(settings: Settings) -> Transport:
    from .store import StoreTransport

    if settings.store_url:
        from ..store import open_backend

        return StoreTransport(None, store=open_backend(settings))
    return StoreTransport(settings.store_dir, inbox_max_bytes=settings.journal_max_bytes)


def _journal(settings: Settings) -> Transport:
    return JournalTransport(settings.journal_dir, max_bytes=settings.journal_max_bytes)


def _lazy(path: str) -> Callable[[Settings], Transport]:
    def factory(settings: Settings) -> Transport:
        module, _, attr = path.partition(":")
        fn: Callable[[Settings], Transport] = getattr(importlib.import_module(module), attr)
        return fn(settings)

    return factory


REGISTRY: dict[str, Callable[[Settings], Transport]] = {
    "store": _store,
    "journal": _journal,
    "memory": lambda settings: MemoryTransport(),
    "none": lambda settings: NullTransport(),
    "nats": _lazy("provgraph.transports.nats:from_settings"),
}


def create_transport(settings: Settings) -> Transport:
    name = settings.resolved_transport()
    if settings.transport == "auto" and not settings.nats_url:
        # a live `provgraph serve` on this data dir says where its NATS server is
        from ..natsserver import serve_nats_url

        url = serve_nats_url(settings.data_dir)
        if url:
            settings, name = settings.model_copy(update={"nats_url": url}), "nats"
    factory = REGISTRY.get(name)
    if factory is None:
        for ep in entry_points(group="provgraph.transports"):
            if ep.name == name:
                factory = ep.load()
                break
    if factory is None:
        raise ConfigError(f"transport: unknown transport {name!r} (allowed: {', '.join(REGISTRY)})")
    return factory(settings)
