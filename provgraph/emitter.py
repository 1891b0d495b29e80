"""The batching emitter: *when* to send, written once for every transport.

Contract of :meth:`Emitter.emit` (the user's hot path): it appends to a bounded
``deque`` and returns; it never blocks, never does I/O and never raises. When the
queue is full the record is dropped and counted (``stats()["dropped"]``): a
provenance system must not slow the science down. Size the queue (``queue_size``)
for your burst rate; the drop counter tells you when it was too small.

A daemon thread wakes every ``flush_interval`` seconds or when a batch is full, maps
records to N-Quads (:class:`~provgraph.mapping.Mapper`), and hands each batch to the
transport. A batch the transport refuses is spilled to the local journal
(``data_dir/journal``) for ``provgraph replay``; a record that cannot be mapped is
counted and logged once. Nothing is lost silently.

Lifecycle: :meth:`force_flush` and :meth:`shutdown` take timeouts and return whether
they finished; shutdown is idempotent and runs at interpreter exit; in a forked child
the queue and thread are rebuilt (the parent's pending records stay the parent's).
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import threading
import time
import weakref
from collections import deque
from typing import Any

from .mapping import Mapper
from .records import RunEnd
from .settings import Settings
from .transports.base import NQUADS, TRIG, Batch, Transport
from .transports.journal import JournalTransport

__all__ = ["Emitter"]

log = logging.getLogger("provgraph")


class _FlushMarker:
    __slots__ = ("done", "ok")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = True


class _LogOnce:
    def __init__(self) -> None:
        self._seen: set[str] = set()

    def __call__(self, key: str, msg: str, *args: Any, exc_info: bool = True) -> None:
        if key in self._seen:
            log.debug(msg, *args, exc_info=exc_info)
            return
        self._seen.add(key)
        log.warning(msg + " (further occurrences are counted, not logged)", *args, exc_info=exc_info)


_EMITTERS: weakref.WeakSet[Emitter] = weakref.WeakSet()
#: the background thread works at most this long before it lets other threads run ...
_YIELD_AFTER_S = 0.002
#: ... by sleeping this long (a zero sleep gives the GIL straight back to itself)
_YIELD_S = 0.00005


class Emitter:
    """Bounded queue + background batching thread in front of one :class:`Transport`."""

    def __init__(self, transport: Transport, settings: Settings, *, mapper: Mapper | None = None,
                 spill: Transport | None = None, register_atexit: bool = True) -> None:
        self.transport = transport
        self.settings = settings
        self.mapper = mapper or Mapper(settings)
        self._header = self.mapper.trig_header.encode("utf-8")
        self._spill = spill
        self._max = settings.queue_size
        self._batch = settings.batch_size
        self._interval = settings.flush_interval
        self._log_once = _LogOnce()
        self._counts = {"dropped": 0, "records": 0, "failed_records": 0, "batches": 0, "triples": 0,
                        "failed_batches": 0, "spilled_batches": 0, "lost_batches": 0}
        self._closed = False
        self._token = secrets.token_hex(8)
        self._seq = 0
        self._start()
        _EMITTERS.add(self)
        if register_atexit:
            atexit.register(self._atexit)

    def _start(self) -> None:
        self._queue: deque[Any] = deque()
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="provgraph-emitter", daemon=True)
        self._thread.start()

    # -- hot path ------------------------------------------------------------------
    def emit(self, record: Any) -> None:
        """Enqueue ``record``; never blocks, never raises. Drops (and counts) when full."""
        q = self._queue
        n = len(q)
        if n >= self._max:
            self._counts["dropped"] += 1
            return
        q.append(record)
        if n % self._batch == self._batch - 1:
            self._wake.set()

    def emit_control(self, record: Any) -> None:
        """Enqueue a rare structural record (run start/end) that is never dropped."""
        self._queue.append(record)
        if len(self._queue) >= self._max:
            self._wake.set()

    # -- background thread ---------------------------------------------------------
    def _run(self) -> None:
        q = self._queue
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            try:
                self._drain(q)
            except Exception:  # noqa: BLE001 - the thread must survive anything
                self._log_once("drain", "provgraph emitter: unexpected error")
            if self._stop and not q:
                return

    def _drain(self, q: deque[Any]) -> None:
        groups: dict[str, list[bytes]] = {}
        raw: list[bytes] = []
        records = 0
        mapper = self.mapper
        # Batches are cut at ``batch_size`` records, and at what the transport sends as one
        # unit (less room for the header and graph lines) so it never re-splits them.
        limit = self.transport.max_batch_bytes
        budget = limit - 4096 if limit else 1 << 62
        size = 0
        # the mapper counts the triples of what it maps: batch = difference of its counter
        t0 = mapper.triples
        clock = time.perf_counter
        next_yield = clock() + _YIELD_AFTER_S
        polled = 0
        run_ended = False  # the drain's last batch then tells consumers not to wait for more
        while q:
            polled += 1
            if polled & 31 == 0 and clock() > next_yield:
                # let the host's threads (an event loop waiting for the GIL) run now rather
                # than after the interpreter's 5 ms switch interval
                time.sleep(_YIELD_S)
                next_yield = clock() + _YIELD_AFTER_S
            item = q.popleft()
            if isinstance(item, _FlushMarker):
                self._publish(groups, raw, records, mapper.triples - t0, flushed=True)
                groups, raw, records, size, t0, run_ended = {}, [], 0, 0, mapper.triples, False
                item.ok = self._transport_flush()
                item.done.set()
                continue
            try:
                e0 = mapper.triples
                graph, statements = mapper.map(item)
                # encoded one by one: joining bytes then needs one big buffer, not two
                encoded = [text.encode("utf-8", "replace") for text in statements]
                n = sum(map(len, encoded))
                if size + n > budget and records:  # this record starts the next batch
                    self._publish(groups, raw, records, e0 - t0)
                    groups, raw, records, size, t0 = {}, [], 0, 0, e0
                size += n
                if graph is None:
                    raw.extend(encoded)
                else:
                    group = groups.get(graph)
                    if group is None:
                        group = groups[graph] = []
                    group.extend(encoded)
                records += 1
                if type(item) is RunEnd:
                    run_ended = True
            except Exception:  # noqa: BLE001
                self._counts["failed_records"] += 1
                self._log_once(f"map:{type(item).__qualname__}", "provgraph: could not map a %s record",
                               type(item).__qualname__)
            if records >= self._batch:
                self._publish(groups, raw, records, mapper.triples - t0)
                groups, raw, records, size, t0 = {}, [], 0, 0, mapper.triples
        self._publish(groups, raw, records, mapper.triples - t0, flushed=run_ended)

    def _publish(self, groups: dict[str, list[bytes]], raw: list[bytes], records: int, triples: int, *,
                 flushed: bool = False) -> None:
        """One TriG batch for the mapped records, holding ``triples`` triples (and an
        N-Quads one for raw RDF); ``flushed``: see :class:`~provgraph.transports.base.Batch`."""
        self._counts["records"] += records
        if groups:
            parts = [self._header]
            for graph, statements in groups.items():
                parts.append(f"{graph} {{\n".encode("utf-8", "replace"))
                parts.extend(statements)
                parts.append(b"}\n")
            self._send(b"".join(parts), triples, tuple(g[1:-1] for g in groups), TRIG, flushed)
        if raw:
            data = b"".join(raw)
            self._send(data, data.count(b"\n"), (), NQUADS, flushed)

    def _send(self, data: bytes, triples: int, graphs: tuple[str, ...], content_type: str,
              flushed: bool = False) -> None:
        self._seq += 1
        # a cheap, unique and stable ID: re-sending this batch (retry, spill, replay) reuses it
        batch = Batch(data, triples, graphs, batch_id=f"{self._token}-{self._seq}", content_type=content_type,
                      flushed=flushed)
        try:
            self.transport.publish(batch)
            self._counts["batches"] += 1
            self._counts["triples"] += batch.triples
        except Exception as exc:  # noqa: BLE001
            self._counts["failed_batches"] += 1
            self._log_once(f"publish:{type(exc).__qualname__}",
                           "provgraph: transport %r failed (%s); spilling to the journal",
                           self.transport.name, exc, exc_info=False)
            self._spill_batch(batch)

    def _spill_batch(self, batch: Batch) -> None:
        try:
            if self._spill is None:
                self._spill = JournalTransport(self.settings.journal_dir,
                                               max_bytes=self.settings.journal_max_bytes, prefix="spill")
            self._spill.publish(batch)
            self._spill.flush(1.0)
            self._counts["spilled_batches"] += 1
        except Exception:  # noqa: BLE001
            self._counts["lost_batches"] += 1
            self._log_once("spill", "provgraph: could not spill a batch to the journal; batch lost")

    def _transport_flush(self) -> bool:
        try:
            return self.transport.flush(self.settings.publish_timeout)
        except Exception:  # noqa: BLE001
            self._log_once("flush", "provgraph: transport flush failed")
            return False

    # -- lifecycle -----------------------------------------------------------------
    def force_flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything emitted so far is mapped and delivered; False on timeout."""
        if not self._thread.is_alive():
            return not self._queue
        marker = _FlushMarker()
        self._queue.append(marker)
        self._wake.set()
        return marker.done.wait(timeout) and marker.ok

    def shutdown(self, timeout: float = 10.0) -> bool:
        """Flush, stop the thread and close the transport. Idempotent."""
        if self._closed:
            return True
        self._closed = True
        deadline = time.monotonic() + timeout
        ok = self.force_flush(timeout)
        self._stop = True
        self._wake.set()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        try:
            ok = self.transport.close(max(0.1, deadline - time.monotonic())) and ok
        except Exception:  # noqa: BLE001
            self._log_once("close", "provgraph: transport close failed")
            ok = False
        if self._spill is not None:
            self._spill.close(1.0)
        return ok and not self._thread.is_alive()

    def _atexit(self) -> None:
        if not self._closed:
            self.shutdown(timeout=self.settings.publish_timeout * 2)

    def stats(self) -> dict[str, int]:
        out = dict(self._counts)
        out["queued"] = len(self._queue)
        return out

    def _after_fork(self) -> None:
        self._token = secrets.token_hex(8)
        self._seq = 0
        self._log_once = _LogOnce()
        self._counts = dict.fromkeys(self._counts, 0)
        self.mapper = Mapper(self.settings, self.mapper.hasher)
        self.transport.after_fork()
        if self._spill is not None:
            self._spill.after_fork()
        if not self._closed:
            self._start()


def _reinit_after_fork() -> None:
    for emitter in list(_EMITTERS):
        emitter._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_after_fork)
