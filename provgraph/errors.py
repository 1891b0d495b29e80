"""The one exception hierarchy of provgraph.

::

    ProvgraphError
    ├── ConfigError          invalid settings (names the field and allowed values)
    ├── StoreError           the store cannot be opened, read or written
    │   └── StoreLockedError another process holds the on-disk store for writing
    ├── ParseError           an RDF / PROV document could not be parsed
    ├── QueryError           a SPARQL query is malformed or failed
    │   └── QueryTimeoutError
    ├── NotFoundError        an IRI / named query / workflow run is unknown
    └── TransportError       a transport (journal, NATS, ...) failed
        └── MissingDependencyError  an optional dependency is not installed

Capture code (decorators, ``used``/``generated``, plugins) never raises any of these
into user code: failures there are logged once and counted.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "MissingDependencyError",
    "NotFoundError",
    "ParseError",
    "ProvgraphError",
    "QueryError",
    "QueryTimeoutError",
    "StoreError",
    "StoreLockedError",
    "TransportError",
]


class ProvgraphError(Exception):
    """Base class of every error provgraph raises on purpose."""


class ConfigError(ProvgraphError, ValueError):
    """Settings are invalid; the message names the field and what is allowed."""


class StoreError(ProvgraphError):
    """The store cannot be opened, read or written."""


class StoreLockedError(StoreError):
    """Another process holds the on-disk store for writing."""


class ParseError(ProvgraphError, ValueError):
    """An RDF or PROV document could not be parsed; nothing of it was stored."""


class QueryError(ProvgraphError, ValueError):
    """A SPARQL query is malformed or failed during evaluation."""


class QueryTimeoutError(QueryError):
    """A query ran past its time limit."""


class NotFoundError(ProvgraphError, LookupError):
    """An IRI, named query or workflow run is unknown."""


class TransportError(ProvgraphError):
    """A transport could not deliver a batch."""


class MissingDependencyError(TransportError, ImportError):
    """An optional dependency is missing; the message names the pip extra."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(
            f"provgraph needs the optional package {module!r} for this feature: "
            f"pip install 'provgraph[{extra}]'"
        )
        self.module = module
        self.extra = extra


def require(module: str, extra: str) -> object:
    """Import an optional dependency lazily or raise :class:`MissingDependencyError`."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(module, extra) from exc
