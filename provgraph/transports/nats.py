"""NATS JetStream transport: durable, lossless streaming of batches to the integrator.

How it sends (see ``docs/protocol.md`` for the wire format):

* nats-py runs on an asyncio event loop in a thread this transport owns; the
  emitter's thread only hands batches over (:meth:`NatsTransport.publish`), never the
  user's thread;
* a batch is split into messages that fit the server's ``max_payload`` (at graph
  blocks and statement lines, every part valid TriG/N-Quads on its own, TriG parts
  repeating the prefix header), one message per workflow run, on subject
  ``provgraph.v1.<facility>.<run>`` with headers ``Content-Type`` and a stable
  ``Nats-Msg-Id`` (``<batch_id>`` or ``<batch_id>.<part>``) so JetStream's duplicate
  window drops a re-sent message;
* a batch counts as sent only when JetStream acknowledged every part (PubAck);
  up to ``nats_max_inflight`` batches await their PubAcks at once.

Outage: when NATS is unreachable, disconnects, or does not acknowledge within
``publish_timeout``, the transport switches to *spill* mode: the batches not yet
acknowledged and every new one are appended, in order, to a journal file of its own
under ``settings.journal_dir`` (bounded by ``journal_max_bytes``; ``fsync`` per batch).
When the connection is back it replays the journal in order (deleting a file only
when every batch in it was acknowledged), then returns to direct mode, so new batches
follow the spilled ones. :meth:`NatsTransport.publish` waits at most ``publish_timeout``
for a free slot; nothing here ever blocks longer. What is still in the journal at
:meth:`close` stays there for ``provgraph replay``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import TransportError, require
from ..jetstream import HDR_FLUSH, HDR_TRIPLES
from .base import NQUADS, TRIG, Batch, Transport
from .journal import JournalTransport, journal_files, read_journal

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

    from ..settings import Settings

__all__ = ["NatsTransport", "Part", "from_settings", "publish_file", "split_batch"]

log = logging.getLogger("provgraph.nats")

#: bytes kept free in every message for headers
HEADER_ROOM = 1024


class Part:
    """One message of a batch: its run (for the subject), ID suffix and payload."""

    __slots__ = ("data", "msg_id", "run", "triples")

    def __init__(self, data: bytes, msg_id: str, run: str | None, triples: int) -> None:
        self.data = data
        self.msg_id = msg_id
        self.run = run
        self.triples = triples

    def headers(self, batch: Batch) -> dict[str, str]:
        out = {"Content-Type": batch.content_type, "Nats-Msg-Id": self.msg_id, HDR_TRIPLES: str(self.triples)}
        if batch.flushed:
            out[HDR_FLUSH] = "true"
        return out


def _prefix_header(data: bytes) -> tuple[bytes, int]:
    """The ``@prefix``/``PREFIX``/``@base`` lines at the top of a TriG text, and where they end."""
    pos = 0
    n = len(data)
    while pos < n:
        eol = data.find(b"\n", pos)
        if eol < 0:
            eol = n - 1
        line = data[pos:eol + 1].lstrip()
        if line.startswith((b"@prefix", b"@base", b"PREFIX", b"BASE", b"prefix", b"base")) or not line.strip():
            pos = eol + 1
            continue
        break
    return data[:pos], pos


def _chunks(body: bytes, limit: int) -> list[bytes]:
    """``body`` (whole lines) cut at line ends into pieces of at most ``limit`` bytes."""
    out: list[bytes] = []
    start, n = 0, len(body)
    while n - start > limit:
        cut = body.rfind(b"\n", start, start + limit)
        if cut < 0:
            raise ValueError(f"a single statement is larger than the message limit ({limit} bytes)")
        out.append(body[start:cut + 1])
        start = cut + 1
    if start < n:
        out.append(body[start:])
    return out


def _trig_blocks(data: bytes, start: int) -> list[tuple[bytes, bytes]] | None:
    """``[(graph line, body)]`` of an emitter-shaped TriG text (``<g> {`` / lines / ``}``),
    or None when the text has another shape."""
    blocks: list[tuple[bytes, bytes]] = []
    pos, n = start, len(data)
    while pos < n:
        eol = data.find(b"\n", pos)
        if eol < 0:
            return None
        line = data[pos:eol]
        if not line.strip():
            pos = eol + 1
            continue
        if not line.endswith(b" {") or not line.startswith(b"<"):
            return None
        end = data.find(b"\n}\n", eol)
        if end < 0:
            if data.endswith(b"\n}", eol):
                end = n - 2
            else:
                return None
        if end < eol:  # empty block: "<g> {\n}\n"
            return None
        blocks.append((line[:-2].strip(), data[eol + 1:end + 1]))
        pos = end + 3
    return blocks


def split_batch(batch: Batch, limit: int, graph_base: str | None = None) -> list[Part]:
    """Messages of ``batch``, each at most ``limit`` bytes of payload.

    TriG in the emitter's shape becomes one message per graph (more when a graph is
    bigger than ``limit``), each with the prefix header; N-Quads is cut at line ends.
    ``graph_base`` (``<iri_base>graph/``) turns a graph IRI back into its run ID for the
    subject. Raises :class:`ValueError` when the batch is too big and cannot be cut.
    """
    ctype = batch.content_type.split(";")[0].strip()
    single_run = None
    if graph_base and len(batch.graphs) == 1 and batch.graphs[0].startswith(graph_base):
        single_run = batch.graphs[0][len(graph_base):]
    if len(batch.data) <= limit and (len(batch.graphs) == 1 or (not batch.graphs and ctype != TRIG)):
        return [Part(batch.data, batch.batch_id, single_run, batch.triples)]  # the emitter's usual case
    if ctype == TRIG:
        header, start = _prefix_header(batch.data)
        blocks = _trig_blocks(batch.data, start)
        if blocks is None or (len(blocks) == 1 and len(batch.data) <= limit):
            if len(batch.data) > limit:
                raise ValueError(f"TriG batch of {len(batch.data)} bytes is larger than the message limit "
                                 f"({limit}) and not in a shape that can be cut")
            return [Part(batch.data, batch.batch_id, single_run, batch.triples)]
        parts: list[Part] = []
        for gline, body in blocks:
            graph = gline.decode("utf-8", "replace")[1:-1]
            run = graph[len(graph_base):] if graph_base and graph.startswith(graph_base) else None
            head = header + gline + b" {\n"
            for piece in _chunks(body, limit - len(head) - 2):
                parts.append(Part(head + piece + b"}\n", "", run, piece.count(b"\n")))
    elif ctype in (NQUADS, "application/n-triples"):
        if len(batch.data) <= limit:
            return [Part(batch.data, batch.batch_id, single_run, batch.triples)]
        parts = [Part(piece, "", None, piece.count(b"\n")) for piece in _chunks(batch.data, limit)]
    else:
        if len(batch.data) > limit:
            raise ValueError(f"{ctype} batch of {len(batch.data)} bytes is larger than the message limit ({limit})")
        return [Part(batch.data, batch.batch_id, single_run, batch.triples)]
    if len(parts) == 1:
        parts[0].msg_id = batch.batch_id
    else:
        for i, p in enumerate(parts):
            p.msg_id = f"{batch.batch_id}.{i + 1}"
    return parts


class _Stats:
    __slots__ = ("acked_batches", "acked_messages", "lost_batches", "replayed_batches", "spilled_batches",
                 "unsendable")

    def __init__(self) -> None:
        self.lost_batches = 0
        self.acked_batches = 0
        self.acked_messages = 0
        self.spilled_batches = 0
        self.replayed_batches = 0
        self.unsendable = 0


class NatsTransport(Transport):
    """Publishes batches to JetStream with PubAcks; spills to a journal during outages.

    ``connect_wait`` bounds how long the constructor waits for the first connection
    attempt (default ``publish_timeout``; a refused connection ends it at once); until
    NATS is reachable batches go to the journal. Wrong credentials raise
    :class:`TransportError` at once.
    """

    name = "nats"
    #: the server's max_payload less the room kept for headers: what one message carries
    max_batch_bytes: int

    def __init__(self, settings: Settings, *, url: str | None = None, connect_wait: float | None = None,
                 journal_dir: str | Path | None = None) -> None:
        require("nats", "nats")
        self.settings = settings
        self.url = url or settings.nats_url
        if not self.url:
            raise TransportError("the NATS transport needs nats_url (PROVGRAPH_NATS_URL)")
        self.timeout = settings.publish_timeout
        self.graph_base = f"{settings.iri_base}graph/"
        self.journal_dir = Path(journal_dir) if journal_dir is not None else settings.journal_dir
        self.stats = _Stats()
        self._lock = threading.Lock()
        self._spilling = True  # until connected
        self._unconfirmed: dict[int, Batch] = {}
        self._seq = 0
        self._fatal: TransportError | None = None
        self._closing = False
        self._unreachable = False  # a connection attempt failed or the connection dropped
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self.max_batch_bytes = 1024 * 1024 - HEADER_ROOM  # until the server says its max_payload
        self._replaying = False
        self._prefix = f"nats-{secrets.token_hex(4)}"
        self._journal = JournalTransport(self.journal_dir, max_bytes=settings.journal_max_bytes,
                                         prefix=self._prefix, fsync=True)
        self._connected = threading.Event()
        self._start_loop()
        self._submit(self._connect_forever())
        self._connected.wait(self.timeout if connect_wait is None else connect_wait)
        if self._fatal is not None:
            self.close(1.0)
            raise self._fatal

    # -- event loop thread -----------------------------------------------------------
    def _start_loop(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._window = threading.BoundedSemaphore(self.settings.nats_max_inflight)
        self._thread = threading.Thread(target=self._loop.run_forever, name="provgraph-nats", daemon=True)
        self._thread.start()

    def _submit(self, coro: Coroutine[Any, Any, Any]) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def _connect_forever(self) -> None:
        from .. import jetstream

        delay = 0.2
        while not self._closing:
            try:
                nc = await jetstream.connect(
                    self.settings, url=self.url, disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected, connect_timeout=max(1, min(5, int(self.timeout))))
            except TransportError as exc:
                if "check PROVGRAPH_NATS_" in str(exc):  # credentials or certificates: no retry helps
                    self._fatal = exc
                    self._connected.set()
                    log.error("provgraph: %s", exc)
                    return
                self._unreachable = True
                self._connected.set()  # the first attempt is over: the constructor need not wait
                log.debug("provgraph: NATS not reachable (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._nc = nc
            self._unreachable = False
            self._js = nc.jetstream(timeout=self.timeout)
            self.max_batch_bytes = nc.max_payload - HEADER_ROOM
            self._connected.set()
            self._loop.create_task(self._ensure_stream())
            self._start_replay()
            return

    async def _ensure_stream(self) -> None:
        """Create the stream if it is missing, so batches are durable before any integrator
        ran. A publisher may lack the right to (see deployment/nats): then the integrator
        creates it, and until then batches wait in the journal."""
        from .. import jetstream

        js = self._js
        if js is None:
            return
        try:
            await asyncio.wait_for(jetstream.ensure_layout(js, self.settings, consumer=False), self.timeout)
        except Exception as exc:  # noqa: BLE001
            log.debug("provgraph: could not ensure the JetStream stream: %s", exc)

    async def _on_disconnected(self) -> None:
        self._unreachable = True
        if not self._closing:
            self._spill_unconfirmed("NATS connection lost")

    async def _on_reconnected(self) -> None:
        self._unreachable = False
        if self._nc is not None:
            self.max_batch_bytes = self._nc.max_payload - HEADER_ROOM
        self._start_replay()

    # -- mode switching ----------------------------------------------------------------
    def _spill_unconfirmed(self, why: str) -> None:
        """Switch to spill mode; every batch not yet acknowledged goes to the journal, in order."""
        with self._lock:
            first = not self._spilling
            self._spilling = True
            pending = [self._unconfirmed[k] for k in sorted(self._unconfirmed)]
            self._unconfirmed.clear()
            for batch in pending:
                try:
                    self._journal_write(batch)
                except OSError as exc:  # journal full or unwritable: counted and said, never silent
                    self.stats.lost_batches += 1
                    log.error("provgraph: batch %s was not acknowledged by NATS and cannot be journaled "
                              "(%s); it is lost", batch.batch_id, exc)
        if first:
            log.warning("provgraph: %s; spilling batches to %s until NATS is back", why, self.journal_dir)
        self._loop.call_soon_threadsafe(self._schedule_replay, 1.0)

    def _journal_write(self, batch: Batch) -> None:
        """Append to the journal (lock held). A full journal raises: the emitter then counts
        the batch as failed and spills it to its own journal, or counts it lost."""
        self._journal.publish(batch)
        self._journal.flush(1.0)
        self.stats.spilled_batches += 1

    def _schedule_replay(self, delay: float) -> None:
        if not self._closing:
            self._loop.call_later(delay, self._start_replay)

    def _start_replay(self) -> None:
        if self._replaying or self._closing or self._nc is None:
            return
        self._replaying = True
        self._loop.create_task(self._replay())

    def _own_files(self) -> list[Path]:
        return [f for f in journal_files(self.journal_dir) if f.name.startswith(self._prefix + "-")]

    async def _replay(self) -> None:
        """Send the journal in order; back to direct mode once it is empty."""
        try:
            while not self._closing:
                with self._lock:
                    files = [f for f in self._own_files() if f.stat().st_size > 0]
                    if not files:
                        for f in self._own_files():
                            f.unlink(missing_ok=True)
                        if self._spilling and self.stats.spilled_batches:
                            log.warning("provgraph: NATS is back; journal replayed")
                        self._spilling = False
                        return
                    self._journal.close(1.0)  # seal: new spills start a later file
                for f in files:
                    if not await self._replay_file(f):
                        nc = self._nc
                        # connected but refused (e.g. the stream is not created yet): retry soon
                        self._schedule_replay(0.25 if nc is not None and nc.is_connected else 1.0)
                        return
                    f.unlink(missing_ok=True)
        finally:
            self._replaying = False

    async def _replay_file(self, path: Path) -> bool:
        pending: set[asyncio.Task[bool]] = set()
        ok = True
        for jb in read_journal(path):
            if not ok or self._closing:
                break
            while len(pending) >= self.settings.nats_max_inflight:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                ok = ok and all(t.result() for t in done)
            task = asyncio.ensure_future(self._send_batch(jb.to_batch()))
            task.add_done_callback(self._count_replayed)
            pending.add(task)
        if pending:
            done, _ = await asyncio.wait(pending)
            ok = ok and all(t.result() for t in done)
        return ok and not self._closing

    def _count_replayed(self, task: asyncio.Task[bool]) -> None:
        if not task.cancelled() and task.exception() is None and task.result():
            self.stats.replayed_batches += 1

    # -- sending -------------------------------------------------------------------------
    async def _send_batch(self, batch: Batch) -> bool:
        """Publish every part and await its PubAck; False (never raises) on failure."""
        from .. import jetstream

        js = self._js
        nc = self._nc
        if js is None or nc is None or not nc.is_connected:
            return False
        try:
            parts = split_batch(batch, self.max_batch_bytes, self.graph_base)
        except ValueError as exc:
            self._unsendable(batch, str(exc))
            return True
        facility = self.settings.facility
        try:
            coros = [js.publish(jetstream.subject_for(facility, p.run), p.data, timeout=self.timeout,
                                headers=p.headers(batch))
                     for p in parts]
            if len(coros) == 1:
                await coros[0]
            else:
                await asyncio.gather(*coros)
        except Exception as exc:  # noqa: BLE001 - timeouts, no stream, disconnects: all mean "not sent"
            log.debug("provgraph: publish of batch %s failed: %r", batch.batch_id, exc)
            return False
        self.stats.acked_messages += len(parts)
        return True

    def _unsendable(self, batch: Batch, why: str) -> None:
        """A batch no message can carry: kept in an ``unsent`` journal for ``provgraph replay --store``."""
        self.stats.unsendable += 1
        log.error("provgraph: batch %s cannot be sent over NATS (%s); kept in %s for `provgraph replay "
                  "--to-store`", batch.batch_id, why, self.journal_dir)
        try:
            j = JournalTransport(self.journal_dir, max_bytes=self.settings.journal_max_bytes, prefix="unsent")
            j.publish(batch)
            j.close(1.0)
        except OSError:
            log.exception("provgraph: could not keep unsendable batch %s; it is lost", batch.batch_id)

    async def _send_direct(self, seq: int, batch: Batch) -> None:
        try:
            ok = await self._send_batch(batch)
        finally:
            self._window.release()
        if ok:
            with self._lock:
                if self._unconfirmed.pop(seq, None) is not None:
                    self.stats.acked_batches += 1
        else:
            self._spill_unconfirmed("NATS did not acknowledge a batch")

    # -- Transport API ---------------------------------------------------------------------
    def publish(self, batch: Batch) -> None:
        """Hand ``batch`` to the event loop (waits at most ``publish_timeout`` for a slot),
        or append it to the journal while NATS is away."""
        if self._closing:
            raise TransportError("the NATS transport is closed")
        while True:
            acquired = False
            if not self._spilling:
                acquired = self._window.acquire(timeout=self.timeout)
                if not acquired:
                    self._spill_unconfirmed(f"NATS did not acknowledge within {self.timeout}s")
            with self._lock:  # the mode is decided under the lock the replayer switches it with
                if self._spilling:
                    if acquired:
                        self._window.release()
                    self._journal_write(batch)
                    return
                if acquired:
                    self._seq += 1
                    seq = self._seq
                    self._unconfirmed[seq] = batch
                    break
            # the replayer went back to direct mode meanwhile: take the direct path
        self._submit(self._send_direct(seq, batch))

    def pending(self) -> int:
        """Batches not yet acknowledged by JetStream (in flight or in the journal)."""
        with self._lock:
            inflight = len(self._unconfirmed)
        journaled = sum(1 for f in self._own_files() for _ in read_journal(f))
        return inflight + journaled

    def spilling(self) -> bool:
        """True while batches go to the journal (NATS away or the journal not yet replayed)."""
        return self._spilling

    def flush(self, timeout: float) -> bool:
        """Wait until every batch was acknowledged (journal replayed included); False at
        once while NATS is unreachable (the batches are safe in the journal)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                busy = bool(self._unconfirmed) or self._spilling
            if not busy:
                return True
            if time.monotonic() >= deadline or self._fatal is not None or self._unreachable:
                return False  # NATS away: waiting would not deliver anything; the journal keeps it
            time.sleep(0.01)

    def close(self, timeout: float) -> bool:
        """Flush (bounded by ``timeout``), then disconnect. Unsent batches stay in the journal."""
        if self._closing:
            return not self._own_files()
        ok = self.flush(timeout) if self._fatal is None else False
        if not ok:
            self._spill_unconfirmed("closing before NATS acknowledged everything")
        self._closing = True
        with self._lock:
            self._journal.close(1.0)
        try:
            self._submit(self._shutdown()).result(3.0)
        except Exception:
            log.debug("provgraph: NATS close failed", exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(2.0)
        left = self._own_files()
        if left:
            log.warning("provgraph: %d journal file(s) not yet sent to NATS are kept in %s; "
                        "run `provgraph replay` to send them", len(left), self.journal_dir)
        return not left

    async def _shutdown(self) -> None:
        """Close the connection and cancel this loop's other tasks (reconnects, replays)."""
        nc = self._nc
        if nc is not None:
            try:
                await asyncio.wait_for(nc.close(), 2.0)
            except Exception:
                log.debug("provgraph: NATS close failed", exc_info=True)
        me = asyncio.current_task()
        others = [t for t in asyncio.all_tasks() if t is not me]
        for t in others:
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def after_fork(self) -> None:
        """In a forked child: the parent's loop thread and socket are not ours; start afresh."""
        self._lock = threading.Lock()
        self.stats = _Stats()
        self._unconfirmed = {}
        self._spilling = True
        self._nc = None
        self._js = None
        self._replaying = False
        self._closing = False
        self._unreachable = False
        self._prefix = f"nats-{secrets.token_hex(4)}"
        self._journal = JournalTransport(self.journal_dir, max_bytes=self.settings.journal_max_bytes,
                                         prefix=self._prefix, fsync=True)
        self._connected = threading.Event()
        self._start_loop()
        self._submit(self._connect_forever())


def from_settings(settings: Settings) -> Transport:
    """The ``nats`` transport of :data:`provgraph.transports.REGISTRY`."""
    return NatsTransport(settings)


async def publish_file(js: JetStreamContext, settings: Settings, path: str | Path, *, max_payload: int,
                       window: int = 64) -> tuple[int, int]:
    """Publish every complete batch of the journal file ``path`` with PubAcks (``window`` at
    once); returns ``(batches, end offset)``. Raises :class:`TransportError` on the first
    batch JetStream did not acknowledge (a later run sends the file again; the duplicate
    window and RDF's set semantics make that harmless)."""
    from .. import jetstream

    graph_base = f"{settings.iri_base}graph/"
    pending: list[asyncio.Future[Any]] = []
    count = 0
    end = 0

    async def drain() -> None:
        try:
            await asyncio.gather(*pending)
        except Exception as exc:
            raise TransportError(f"NATS did not acknowledge a batch of {path}: {exc!r}") from exc
        finally:
            pending.clear()

    for jb in read_journal(path):
        batch = jb.to_batch()
        try:
            parts = split_batch(batch, max_payload - HEADER_ROOM, graph_base)
        except ValueError as exc:
            raise TransportError(f"batch {batch.batch_id} of {path} cannot be sent over NATS ({exc}); "
                                 "load it with `provgraph replay --to-store`") from exc
        for p in parts:
            pending.append(asyncio.ensure_future(js.publish(
                jetstream.subject_for(settings.facility, p.run), p.data, timeout=settings.publish_timeout,
                headers=p.headers(batch))))
        count += 1
        end = jb.end_offset
        if len(pending) >= window:
            await drain()
    await drain()
    return count, end
