"""The embedded store: an on-disk (or in-memory) Oxigraph dataset.

* every batch is committed in one transaction (:meth:`Store.add_nquads`), so a reader
  never sees half a batch and a failed parse writes nothing;
* queries see the union of all named graphs as the default graph;
* RocksDB lets one process write an on-disk store at a time. Writers that find it
  held spool their batches into ``<store>/inbox/`` (see
  :mod:`provgraph.transports.journal`); whoever opens the store for writing next
  ingests the inbox first, in order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pyoxigraph as ox

from .errors import ParseError, QueryError, StoreError, StoreLockedError
from .namespaces import PG, PROV, RDF

if TYPE_CHECKING:
    from .remote import RemoteStore
    from .settings import Settings

__all__ = ["FORMATS", "Store"]

#: short names → pyoxigraph formats (RDF serializations the store reads and writes)
FORMATS: dict[str, ox.RdfFormat] = {
    "nquads": ox.RdfFormat.N_QUADS,
    "ntriples": ox.RdfFormat.N_TRIPLES,
    "turtle": ox.RdfFormat.TURTLE,
    "trig": ox.RdfFormat.TRIG,
    "jsonld": ox.RdfFormat.JSON_LD,
    "rdfxml": ox.RdfFormat.RDF_XML,
    "n3": ox.RdfFormat.N3,
}


class Store:
    """A provgraph dataset in Oxigraph. ``path=None`` gives an in-memory store."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, read_only: bool = False) -> None:
        self.path = Path(path) if path is not None else None
        self.read_only = read_only
        try:
            if self.path is None:
                self._ox = ox.Store()
            elif read_only:
                if not (self.path / "CURRENT").exists():
                    raise StoreError(f"no provgraph store at {self.path}")
                self._ox = ox.Store.read_only(str(self.path))
            else:
                self.path.mkdir(parents=True, exist_ok=True)
                self._ox = ox.Store(str(self.path))
        except OSError as exc:
            if "lock" in str(exc).lower():
                raise StoreLockedError(
                    f"the store at {self.path} is held by another process for writing; "
                    "open it read-only or stop that process"
                ) from exc
            raise StoreError(f"cannot open store at {self.path}: {exc}") from exc
        if not read_only and self.path is not None:
            self.ingest_inbox()

    @property
    def inbox(self) -> Path | None:
        return None if self.path is None else self.path / "inbox"

    @property
    def oxigraph(self) -> ox.Store:
        """The underlying :class:`pyoxigraph.Store` (for bulk paths and advanced use)."""
        return self._ox

    # -- writing ---------------------------------------------------------------
    def add_nquads(self, data: bytes | str) -> None:
        """Commit one N-Quads batch atomically; raises :class:`ParseError` and writes nothing."""
        self.load(data, "nquads")

    def load(self, data: bytes | str | IO[bytes], fmt: str = "nquads", *, graph: str | None = None,
             base_iri: str | None = None) -> None:
        """Parse ``data`` in ``fmt`` and commit it in one transaction."""
        self._check_writable()
        try:
            kwargs: dict[str, Any] = {"format": FORMATS[fmt]}
            if graph is not None:
                kwargs["to_graph"] = ox.NamedNode(graph)
            if base_iri is not None:
                kwargs["base_iri"] = base_iri
            self._ox.load(data, **kwargs)
        except KeyError as exc:
            raise ParseError(f"unknown RDF format {fmt!r}; known: {', '.join(FORMATS)}") from exc
        except SyntaxError as exc:
            raise ParseError(f"invalid {fmt}: {exc}") from exc
        except (ValueError, TypeError) as exc:
            raise ParseError(f"invalid {fmt}: {exc}") from exc
        except OSError as exc:
            raise StoreError(f"store write failed: {exc}") from exc

    def load_batch(self, data: bytes | str, fmt: str = "trig") -> int:
        """Load one batch fast: parse it completely first (a malformed batch raises
        :class:`ParseError` and writes nothing), then write it with Oxigraph's bulk
        loader, about 4x faster than :meth:`load`'s transaction. The write itself is not
        transactional: an I/O failure or a crash in the middle can leave part of the
        batch, which re-sending the batch completes (RDF is a set). Returns the quad count.
        """
        self._check_writable()
        try:
            quads = list(ox.parse(data, format=FORMATS[fmt]))
        except KeyError as exc:
            raise ParseError(f"unknown RDF format {fmt!r}; known: {', '.join(FORMATS)}") from exc
        except (SyntaxError, ValueError, TypeError) as exc:
            raise ParseError(f"invalid {fmt}: {exc}") from exc
        try:
            self._ox.bulk_extend(quads)
        except OSError as exc:
            raise StoreError(f"store write failed: {exc}") from exc
        return len(quads)

    def _check_writable(self) -> None:
        if self.read_only:
            raise StoreError("the store is open read-only")

    def ingest_inbox(self) -> int:
        """Load spooled batches other processes left in the inbox; returns batches loaded."""
        from .transports.journal import journal_files, read_journal

        inbox = self.inbox
        if inbox is None:
            return 0
        loaded = 0
        for f in journal_files(inbox):
            bad = False
            for jb in read_journal(f):
                try:
                    self.load(jb.data, jb.to_batch().format)
                    loaded += 1
                except ParseError:
                    bad = True
            if bad:
                f.rename(f.with_suffix(".rejected"))
            else:
                try:
                    f.unlink()
                except OSError:
                    pass
        return loaded

    # -- reading ---------------------------------------------------------------
    def query(self, sparql: str, *, substitutions: dict[str, Any] | None = None,
              union_default_graph: bool | None = None) -> Any:
        """Run a SPARQL query. The default graph is the union of all named graphs, unless
        the query names its dataset with ``FROM``/``FROM NAMED`` (``union_default_graph=None``,
        the default) or ``union_default_graph`` says otherwise."""
        if union_default_graph is None:
            from .http.guard import has_dataset_clause

            union_default_graph = not has_dataset_clause(sparql)
        try:
            kwargs: dict[str, Any] = {"use_default_graph_as_union": union_default_graph}
            if substitutions:
                kwargs["substitutions"] = {ox.Variable(k): v for k, v in substitutions.items()}
            return self._ox.query(sparql, **kwargs)
        except SyntaxError as exc:
            raise QueryError(f"invalid SPARQL: {exc}") from exc
        except OSError as exc:
            raise StoreError(f"query failed: {exc}") from exc
        except (ValueError, TypeError, RuntimeError) as exc:
            raise QueryError(f"query failed: {exc}") from exc

    def update(self, sparql: str) -> None:
        self._check_writable()
        try:
            self._ox.update(sparql)
        except SyntaxError as exc:
            raise QueryError(f"invalid SPARQL Update: {exc}") from exc

    def quads(self, graph: str | None = None) -> Iterator[ox.Quad]:
        g = ox.NamedNode(graph) if graph else None
        return iter(self._ox.quads_for_pattern(None, None, None, g))

    def named_graphs(self) -> list[str]:
        return sorted(g.value for g in self._ox.named_graphs() if isinstance(g, ox.NamedNode))

    def dump(self, fmt: str = "nquads", *, graph: str | None = None) -> bytes:
        kwargs: dict[str, Any] = {"format": FORMATS[fmt]}
        if graph is not None:
            kwargs["from_graph"] = ox.NamedNode(graph)
        elif fmt not in ("nquads", "trig"):
            raise ValueError(f"{fmt} holds one graph: choose a graph, or use nquads/trig")
        out = self._ox.dump(**kwargs)
        return out if isinstance(out, bytes) else b""

    def __len__(self) -> int:
        return len(self._ox)

    def count(self, rdf_class: str) -> int:
        q = f"SELECT (COUNT(DISTINCT ?s) AS ?n) WHERE {{ ?s <{RDF.type}> <{rdf_class}> }}"
        for row in self.query(q):
            return int(row["n"].value)
        return 0

    def stats(self) -> dict[str, int]:
        return {
            "triples": len(self),
            "activities": self.count(PROV.Activity),
            "tasks": self.count(PG.Task),
            "entities": self.count(PROV.Entity),
            "data_artifacts": self.count(PG.DataArtifact),
            "workflow_runs": self.count(PG.WorkflowRun),
            "named_graphs": len(self.named_graphs()),
        }

    def flush(self) -> None:
        if not self.read_only and self.path is not None:
            self._ox.flush()

    def close(self) -> None:
        self.flush()
        del self._ox

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_backend(settings: Settings, *, read_only: bool = False) -> Store | RemoteStore:
    """The configured store: an Oxigraph/SPARQL server when ``store_url`` is set, else
    the on-disk store (read-only opens a snapshot another process may be writing)."""
    if settings.store_url:
        from .remote import RemoteStore

        return RemoteStore(settings.store_url, token=settings.store_token, timeout=settings.query_timeout)
    return Store(settings.store_dir, read_only=read_only)
