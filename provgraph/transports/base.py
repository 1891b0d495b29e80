"""The transport interface: *how* a batch is sent. *When* is the emitter's business.

To write a transport, subclass :class:`Transport` and implement :meth:`publish`
(raise on failure; the emitter then spills the batch to the local journal) and, if the
transport buffers, :meth:`flush` and :meth:`close`::

    class PrintTransport(Transport):
        name = "print"

        def publish(self, batch: Batch) -> None:
            print(batch.data.decode())

Transports are registered by short name in :data:`provgraph.transports.REGISTRY` and,
for third parties, through the ``provgraph.transports`` entry-point group.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

__all__ = ["CONTENT_TYPES", "NQUADS", "TRIG", "Batch", "Transport"]


#: media type → pyoxigraph short format name (see :data:`provgraph.store.FORMATS`)
CONTENT_TYPES: dict[str, str] = {
    "application/trig": "trig",
    "application/n-quads": "nquads",
    "application/n-triples": "ntriples",
    "text/turtle": "turtle",
    "application/ld+json": "jsonld",
    "application/rdf+xml": "rdfxml",
}
TRIG = "application/trig"
NQUADS = "application/n-quads"


@dataclass(slots=True)
class Batch:
    """One serialized batch of RDF plus what routing needs.

    ``data`` is TriG (what the emitter writes: one ``GRAPH`` block per workflow run,
    prefixed names) or N-Quads, as ``content_type`` says; ``graphs`` are the named graphs
    it writes to; ``batch_id`` is stable for this batch (resending it reuses the ID, so
    JetStream's duplicate window drops a re-sent batch). ``flushed`` marks the last batch
    before an explicit flush or the end of a workflow run: nothing follows it soon, so a
    consumer should make it visible at once rather than wait to gather more.
    """

    data: bytes
    triples: int
    graphs: tuple[str, ...] = ()
    batch_id: str = field(default="")
    content_type: str = NQUADS
    flushed: bool = False

    def __post_init__(self) -> None:
        if not self.batch_id:
            # deterministic: the same content gets the same id
            self.batch_id = hashlib.sha256(self.data).hexdigest()[:32]

    @property
    def format(self) -> str:
        """Short format name for :meth:`provgraph.Store.load`."""
        return CONTENT_TYPES[self.content_type.split(";")[0].strip()]


class Transport:
    """Base class of transports; hooks default to no-ops."""

    name: str = "abstract"

    def publish(self, batch: Batch) -> None:
        """Deliver ``batch`` durably or raise. Called on the emitter's thread only."""
        raise NotImplementedError

    #: the largest batch this transport sends as one unit (bytes), or None for no limit:
    #: the emitter cuts batches to fit, so the transport need not re-split them
    max_batch_bytes: int | None = None

    def flush(self, timeout: float) -> bool:
        """Wait until published batches are delivered; True when they all are."""
        return True

    def close(self, timeout: float) -> bool:
        """Release resources; idempotent. True when everything was delivered."""
        return True

    def after_fork(self) -> None:
        """Called in a forked child: drop connections and handles of the parent."""
