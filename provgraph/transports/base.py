"""The transport interface: *how* a batch is sent. *When* is the emitter's business.

To write a transport, subclass :class:`Transport` and implement :meth:`publish`
(raise on failure; the emitter then spills the batch to the local journal) and, if the
transport buffers, :meth:`flush` and :meth:`close`::

    class PrintTransport(Transport):
        name = "print"

        def publish(self, batch: Batch) -> None:
            print(batch.nquads.decode())

Transports are registered by short name in :data:`provgraph.transports.REGISTRY` and,
for third parties, through the ``provgraph.transports`` entry-point group.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

__all__ = ["Batch", "Transport"]


@dataclass(slots=True)
class Batch:
    """One serialized batch: N-Quads bytes plus what routing needs."""

    nquads: bytes
    triples: int
    graphs: tuple[str, ...] = ()
    batch_id: str = field(default="")
    content_type: str = "application/n-quads"

    def __post_init__(self) -> None:
        if not self.batch_id:
            # deterministic: the same content gets the same id (JetStream de-duplication)
            self.batch_id = hashlib.sha256(self.nquads).hexdigest()[:32]


class Transport:
    """Base class of transports; hooks default to no-ops."""

    name: str = "abstract"

    def publish(self, batch: Batch) -> None:
        """Deliver ``batch`` durably or raise. Called on the emitter's thread only."""
        raise NotImplementedError

    def flush(self, timeout: float) -> bool:
        """Wait until published batches are delivered; True when they all are."""
        return True

    def close(self, timeout: float) -> bool:
        """Release resources; idempotent. True when everything was delivered."""
        return True

    def after_fork(self) -> None:
        """Called in a forked child: drop connections and handles of the parent."""
