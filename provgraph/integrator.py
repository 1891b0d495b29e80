"""The integrator: JetStream consumer → store, acking only what is committed.

Loop (one per process; several processes may share the durable consumer when they
write to one shared store, e.g. an Oxigraph server through ``store_url``):

1. fetch up to ``integrator_fetch`` messages from the pull consumer;
2. parse every message by its ``Content-Type`` (N-Triples, N-Quads, Turtle, TriG,
   JSON-LD, RDF/XML with pyoxigraph; PROV-JSON, PROV-XML, PROV-N with the ``prov``
   library). A message that cannot be parsed is re-published to the dead-letter
   stream with the reason in the ``Provgraph-Error`` header and acked;
3. commit every parsed message of the fetch to the store at once, then ack them.
   If the commit fails nothing is acked: the messages are redelivered after a
   back-off, and the integrator keeps running.

Graphs: statements in named graphs (TriG, N-Quads) keep their graph; statements in
the default graph (N-Triples, Turtle, JSON-LD, RDF/XML, or outside any ``GRAPH``
block) go to the graph in the ``Provgraph-Graph`` header if there is one, else to
the run graph of the subject's workflow run (``<iri base>graph/<run>``, the same graph
the emitter writes that run to), or ``urn:provgraph:nats/<stream>/<sequence>`` when
the subject names no run. A PROV document goes to ``urn:provgraph:import/sha256-…``
of its bytes, as ``provgraph import`` does.

Commit modes (``integrator_commit``): ``bulk`` (default, on-disk store) loads the
fetch with Oxigraph's bulk loader after every message parsed; a crash mid-load may
leave part of a fetch in the store, but nothing was acked, so redelivery completes
it (RDF is a set: loading twice is harmless). ``transaction`` commits each fetch in
one ACID transaction; readers never see part of a fetch. A :class:`RemoteStore`
always gets one request (one transaction) per fetch.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyoxigraph as ox

from . import jetstream
from .errors import ParseError, ProvgraphError, TransportError, require
from .metrics import Metrics
from .remote import RemoteStore
from .store import Store

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from .settings import Settings

__all__ = ["PROV_CONTENT_TYPES", "RDF_CONTENT_TYPES", "Integrator", "Parsed", "commit", "drained", "parse_message",
           "wait_drained"]

log = logging.getLogger("provgraph.integrator")

#: media types of RDF the integrator accepts (parameters such as ``;charset=utf-8`` are ignored)
RDF_CONTENT_TYPES: dict[str, ox.RdfFormat] = {
    "application/trig": ox.RdfFormat.TRIG,
    "application/n-quads": ox.RdfFormat.N_QUADS,
    "application/n-triples": ox.RdfFormat.N_TRIPLES,
    "text/turtle": ox.RdfFormat.TURTLE,
    "application/ld+json": ox.RdfFormat.JSON_LD,
    "application/rdf+xml": ox.RdfFormat.RDF_XML,
}
#: media types of PROV documents → :mod:`provgraph.interchange` format names
PROV_CONTENT_TYPES: dict[str, str] = {
    "application/prov+json": "prov-json",
    "application/provenance+xml": "provxml",
    "text/provenance-notation": "provn",
}
#: the integrator keeps fetching while more is pending, up to this many bytes per commit
COMMIT_MAX_BYTES = 64 * 1024 * 1024
#: a flowing stream is gathered at least this long after the previous fetch, however big
#: it is (a fast publisher's next messages join the same load)
MIN_GATHER_S = 0.25
#: bytes per statement assumed for a message without a ``Provgraph-Triples`` header
STATEMENT_BYTES_GUESS = 100
#: one pull request asks for at most this many bytes (messages x the server's max_payload)
PULL_MAX_BYTES = 16 * 1024 * 1024
_CONCATENABLE = {ox.RdfFormat.TRIG, ox.RdfFormat.N_QUADS, ox.RdfFormat.N_TRIPLES, ox.RdfFormat.TURTLE}
_BASE = re.compile(rb"@base|(^|\n)\s*BASE\s", re.IGNORECASE)
_NEWLINES = re.compile(r"[\r\n]+")


@dataclass(slots=True)
class Parsed:
    """A message that parsed: what to commit, or why it cannot be."""

    data: bytes = b""
    fmt: ox.RdfFormat = ox.RdfFormat.N_QUADS
    graph: str = ""
    triples: int = 0
    quads: list[ox.Quad] | None = None
    error: str | None = None
    concatenable: bool = field(default=False)


def _graph_for(settings: Settings, subject: str, headers: dict[str, str], seq: int | None) -> str:
    explicit = headers.get(jetstream.HDR_GRAPH)
    if explicit:
        return explicit
    parsed = jetstream.subject_run(subject)
    if parsed is not None and parsed[1] != jetstream.NO_RUN:
        facility, run = parsed
        base = settings.iri_base if facility == settings.facility else f"urn:provgraph:{facility}/"
        return f"{base}graph/{run}"
    return f"urn:provgraph:nats/{settings.nats_stream}/{seq if seq is not None else 0}"


def parse_message(data: bytes, content_type: str | None, graph: str, *, keep_quads: bool) -> Parsed:
    """Parse one message body; never raises (a failure is ``Parsed.error``)."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if not ctype:
        return Parsed(error="no Content-Type header (see docs/protocol.md for the accepted types)")
    if ctype in PROV_CONTENT_TYPES:
        return _parse_prov(data, PROV_CONTENT_TYPES[ctype], graph, keep_quads=keep_quads)
    fmt = RDF_CONTENT_TYPES.get(ctype)
    if fmt is None:
        known = ", ".join([*RDF_CONTENT_TYPES, *PROV_CONTENT_TYPES])
        return Parsed(error=f"unsupported Content-Type {ctype!r} (accepted: {known})")
    target = ox.NamedNode(graph)
    try:
        if keep_quads:
            quads = [q if not isinstance(q.graph_name, ox.DefaultGraph)
                     else ox.Quad(q.subject, q.predicate, q.object, target)
                     for q in ox.parse(data, format=fmt, rename_blank_nodes=True)]
            count = len(quads)
        else:
            quads = None
            count = 0
            for _ in ox.parse(data, format=fmt):
                count += 1
    except (SyntaxError, ValueError, UnicodeError) as exc:
        return Parsed(error=f"invalid {ctype}: {_one_line(str(exc))}")
    except Exception as exc:  # noqa: BLE001 - the integrator must survive any input
        return Parsed(error=f"invalid {ctype}: {type(exc).__name__}: {_one_line(str(exc))}")
    concat = fmt in _CONCATENABLE and b"_:" not in data and not (
        fmt in (ox.RdfFormat.TRIG, ox.RdfFormat.TURTLE) and _BASE.search(data))
    return Parsed(data=data, fmt=fmt, graph=graph, triples=count, quads=quads, concatenable=concat)


def _parse_prov(data: bytes, fmt: str, graph: str, *, keep_quads: bool) -> Parsed:
    from .interchange import import_document

    scratch = Store()
    try:
        doc_graph = import_document(scratch, data, fmt)
    except ParseError as exc:
        return Parsed(error=_one_line(str(exc)))
    except Exception as exc:  # noqa: BLE001
        return Parsed(error=f"invalid {fmt} document: {type(exc).__name__}: {_one_line(str(exc))}")
    body = scratch.dump("nquads")
    quads = list(scratch.quads()) if keep_quads else None
    return Parsed(data=body, fmt=ox.RdfFormat.N_QUADS, graph=doc_graph, triples=len(scratch), quads=quads,
                  concatenable=b"_:" not in body)


def _one_line(text: str) -> str:
    return _NEWLINES.sub(" ", text).strip()[:900]


def commit(store: Store | RemoteStore, parsed: Sequence[Parsed], mode: str) -> int:
    """Write every parsed message to ``store`` (see the module docstring); returns the
    number of statements parsed. Raises on store failure (then nothing may be acked)."""
    if not parsed:
        return 0
    triples = sum(p.triples for p in parsed)
    if isinstance(store, RemoteStore) or mode == "transaction":
        quads: list[ox.Quad] = []
        for p in parsed:
            if p.quads is None:
                raise ProvgraphError("transaction commits need parsed quads")
            quads.extend(p.quads)
        if isinstance(store, RemoteStore):
            store.load(ox.serialize(quads, format=ox.RdfFormat.N_QUADS) or b"", "nquads")
        else:
            store.oxigraph.extend(quads)
        return triples
    groups: dict[tuple[ox.RdfFormat, str], list[bytes]] = {}
    singles: list[Parsed] = []
    for p in parsed:
        if p.concatenable:
            groups.setdefault((p.fmt, p.graph), []).append(p.data)
        else:
            singles.append(p)
    ox_store = store.oxigraph
    # every message was parsed strictly already: the loader may skip IRI validation
    for (fmt, graph), datas in groups.items():
        ox_store.bulk_load(b"\n".join(datas), format=fmt, to_graph=ox.NamedNode(graph), lenient=True)
    for p in singles:
        ox_store.bulk_load(p.data, format=p.fmt, to_graph=ox.NamedNode(p.graph), lenient=True)
    return triples


@dataclass(slots=True)
class _Fetched:
    """One fetch between the two stages: parsed messages to commit, dead letters to ack."""

    keepalive: asyncio.Task[None]
    good: list[Msg] = field(default_factory=list)
    parsed: list[Parsed] = field(default_factory=list)
    done: list[Msg] = field(default_factory=list)


def _seq(msg: Msg) -> int:
    try:
        return int(msg.metadata.sequence.stream)
    except Exception:  # noqa: BLE001
        return 0


def _delivered(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:  # noqa: BLE001
        return 0


def _statements(msg: Msg) -> int:
    """Statements in ``msg``: its ``Provgraph-Triples`` header, else a guess from its size."""
    try:
        return int((msg.headers or {})[jetstream.HDR_TRIPLES])
    except (KeyError, ValueError, TypeError):
        return len(msg.data) // STATEMENT_BYTES_GUESS


def _flushed(msg: Msg) -> bool:
    """The publisher flushed after ``msg`` (``Provgraph-Flush: true``): nothing follows soon."""
    return (msg.headers or {}).get(jetstream.HDR_FLUSH, "").lower() == "true"


def _pending(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_pending)
    except Exception:  # noqa: BLE001 - not a JetStream message
        return 0


class Integrator:
    """Consumes the provgraph stream into ``store`` (see the module docstring).

    ``max_backoff`` caps the wait after a failed commit (it doubles from 0.5 s).
    """

    def __init__(self, settings: Settings, store: Store | RemoteStore, *, metrics: Metrics | None = None,
                 url: str | None = None, fetch: int | None = None, fetch_timeout: float = 1.0,
                 max_backoff: float = 30.0) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics or Metrics()
        self.url = url or settings.nats_url
        self.fetch = fetch or settings.integrator_fetch
        self.fetch_timeout = fetch_timeout
        self.linger = settings.integrator_linger
        self.commit_triples = settings.integrator_commit_triples
        self._last_fetch = 0.0
        self.max_backoff = max_backoff
        self.mode = "transaction" if isinstance(store, RemoteStore) else settings.integrator_commit
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="provgraph-commit")
        self._parse_executor = ThreadPoolExecutor(1, thread_name_prefix="provgraph-parse")
        self._backoff = 0.0
        self._last_info = 0.0
        self._max_payload = 1024 * 1024
        self.connected = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; what was fetched is committed and acked first."""
        require("nats", "nats")

        if not self.url:
            raise TransportError("the integrator needs nats_url (PROVGRAPH_NATS_URL)")
        nc = await jetstream.connect(self.settings, url=self.url)
        committer: asyncio.Task[None] | None = None
        queue: asyncio.Queue[_Fetched | None] = asyncio.Queue(maxsize=1)
        try:
            self._max_payload = nc.max_payload
            js = nc.jetstream(timeout=max(5.0, self.settings.publish_timeout))
            await jetstream.ensure_layout(js, self.settings)
            sub = await js.pull_subscribe_bind(durable=self.settings.nats_consumer,
                                               stream=self.settings.nats_stream)
            committer = asyncio.create_task(self._commit_loop(queue))
            self.connected.set()
            log.info("integrator: consuming %s/%s from %s", self.settings.nats_stream,
                     self.settings.nats_consumer, self.url)
            # stage 1 (here): fetch, parse, dead-letter; stage 2 (committer): commit, ack.
            # Parsing fetch k+1 overlaps committing fetch k.
            while not stop.is_set() and not committer.done():
                msgs = await self._fetch(sub)
                if msgs:
                    await queue.put(await self._prepare(js, msgs))
        finally:
            self.connected.clear()
            if committer is not None and not committer.done():
                await queue.put(None)
                await committer
            try:
                await nc.close()
            except Exception:
                log.debug("integrator: close failed", exc_info=True)
            self._executor.shutdown(wait=True)
            self._parse_executor.shutdown(wait=True)

    async def _fetch(self, sub: Any) -> list[Msg]:
        """Up to ``integrator_fetch`` messages; keeps fetching (up to :data:`COMMIT_MAX_BYTES`)
        while the consumer reports more pending, so a backlog is committed in big loads."""
        import nats.errors

        # a pull asks for at most PULL_MAX_BYTES worth of messages: the server drops a
        # connection whose outbound buffer overflows (slow consumer)
        per_pull = max(1, min(self.fetch, PULL_MAX_BYTES // max(1, self._max_payload)))
        try:
            msgs: list[Msg] = await sub.fetch(per_pull, timeout=self.fetch_timeout)
        except (TimeoutError, nats.errors.TimeoutError):
            if time.monotonic() - self._last_info > 2.0:
                self._last_info = time.monotonic()
                await self._refresh_lag(sub)
            return []
        except Exception as exc:  # noqa: BLE001 - connection trouble: nats-py reconnects
            log.warning("integrator: fetch failed (%s); retrying", exc)
            await asyncio.sleep(1.0)
            return []
        self.metrics.inc("received_messages", len(msgs))  # counted at once: received > committed while lingering
        size = sum(len(m.data) for m in msgs)
        statements = sum(map(_statements, msgs))
        flushed = any(map(_flushed, msgs))
        # a steady stream: gather until ``integrator_commit_triples`` statements are in hand
        # or ``linger`` has passed since the previous fetch, so that each bulk load is big
        # enough to be worth its fixed cost (new index files, then compaction). A message
        # after a quiet spell is committed at once: the previous fetch is long past; so is
        # one its publisher flushed after (the end of a run, an explicit flush).
        linger_until = self._last_fetch + self.linger
        while msgs and len(msgs) < self.fetch and size < COMMIT_MAX_BYTES:
            if _pending(msgs[-1]) > 0:  # a backlog: take what is there
                wait, want = 0.25, min(per_pull, self.fetch - len(msgs))
            elif flushed or (statements >= self.commit_triples
                             and time.monotonic() >= self._last_fetch + MIN_GATHER_S):
                break
            else:  # lingering: one message at a time (a pull for n waits for all n or its timeout)
                wait, want = linger_until - time.monotonic(), 1
                if wait <= 0.005:
                    break
            try:
                more: list[Msg] = await sub.fetch(want, timeout=wait)
            except Exception:  # noqa: BLE001 - nothing more right now: commit what we have
                break
            self.metrics.inc("received_messages", len(more))
            msgs.extend(more)
            size += sum(len(m.data) for m in more)
            statements += sum(map(_statements, more))
            flushed = flushed or any(map(_flushed, more))
        self._last_fetch = time.monotonic()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("integrator: fetched %s", [(_seq(m), _delivered(m)) for m in msgs])
        return msgs

    async def _refresh_lag(self, sub: Any) -> None:
        try:
            info = await sub.consumer_info()
            self.metrics.consumer_lag = int(info.num_pending or 0)
            self.metrics.ack_pending = int(info.num_ack_pending or 0)
        except Exception:
            log.debug("integrator: consumer_info failed", exc_info=True)

    async def process(self, js: Any, msgs: list[Msg]) -> None:
        """Parse, dead-letter, commit and ack one fetch (both stages, one after the other)."""
        self.metrics.inc("received_messages", len(msgs))
        await self._commit(await self._prepare(js, msgs))

    async def _prepare(self, js: Any, msgs: list[Msg]) -> _Fetched:
        """Stage 1: parse every message; dead-letter the ones that cannot be parsed."""
        fetched = _Fetched(keepalive=asyncio.create_task(self._in_progress(msgs)))
        m = self.metrics
        items: list[tuple[bytes, str | None, str]] = []
        for msg in msgs:
            headers = msg.headers or {}
            seq: int | None = None
            try:
                meta = msg.metadata
                seq = meta.sequence.stream
                if meta.num_delivered > 1:
                    m.inc("redelivered_messages")
                m.consumer_lag = meta.num_pending
            except Exception:  # noqa: BLE001 - not a JetStream message: no metadata
                pass
            items.append((msg.data, headers.get("Content-Type"),
                          _graph_for(self.settings, msg.subject, headers, seq)))
        keep = self.mode != "bulk"
        loop = asyncio.get_running_loop()
        parsed: list[Parsed] = await loop.run_in_executor(
            self._parse_executor, lambda: [parse_message(d, c, g, keep_quads=keep) for d, c, g in items])
        for msg, p in zip(msgs, parsed, strict=True):
            if p.error is None:
                fetched.good.append(msg)
                fetched.parsed.append(p)
            elif await self._dead_letter(js, msg, p.error):
                fetched.done.append(msg)
        return fetched

    async def _commit_loop(self, queue: asyncio.Queue[_Fetched | None]) -> None:
        while True:
            fetched = await queue.get()
            if fetched is None:
                return
            try:
                await self._commit(fetched)
            except Exception:
                log.exception("integrator: unexpected error while committing")

    async def _commit(self, fetched: _Fetched) -> None:
        """Stage 2: commit the parsed messages of one fetch, then ack them (and the dead letters)."""
        m = self.metrics
        good = fetched.good
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            triples = await loop.run_in_executor(self._executor, commit, self.store, fetched.parsed, self.mode)
        except Exception as exc:  # noqa: BLE001 - store down, disk full, lock...: redeliver later
            fetched.keepalive.cancel()
            m.inc("commit_failures")
            self._backoff = min(self.max_backoff, max(0.5, self._backoff * 2))
            log.error("integrator: commit of %d messages failed (%s); not acked, retrying in %.1fs",
                      len(good), exc, self._backoff)
            for msg in good:
                try:
                    await msg.nak(delay=self._backoff)
                except Exception:  # noqa: BLE001
                    pass
            await self._ack(fetched.done)
            await asyncio.sleep(self._backoff)
            return
        fetched.keepalive.cancel()
        self._backoff = 0.0
        if good:
            m.observe_commit(time.perf_counter() - t0)
            m.inc("commits")
            m.inc("committed_batches", len(good))
            m.inc("committed_triples", triples)
        await self._ack(good + fetched.done)

    async def _in_progress(self, msgs: list[Msg]) -> None:
        """While a commit runs, tell JetStream every third of the ack wait that it is in
        progress, so a long commit is not redelivered to another integrator meanwhile."""
        interval = max(0.5, self.settings.nats_ack_wait / 3)
        while True:
            await asyncio.sleep(interval)
            for msg in msgs:
                try:
                    await msg.in_progress()
                except Exception:
                    log.debug("integrator: in_progress failed", exc_info=True)

    async def _ack(self, msgs: list[Msg]) -> None:
        for msg in msgs:
            try:
                await msg.ack()
            except Exception:
                log.debug("integrator: ack failed", exc_info=True)
        if msgs:
            try:
                await msgs[0]._client.flush(timeout=5)
            except Exception:
                log.debug("integrator: flush of acks failed", exc_info=True)

    async def _dead_letter(self, js: Any, msg: Msg, reason: str) -> bool:
        headers = dict(msg.headers or {})
        headers[jetstream.HDR_ERROR] = reason
        headers[jetstream.HDR_SUBJECT] = msg.subject
        try:
            seq = msg.metadata.sequence.stream
            headers["Nats-Msg-Id"] = f"dlq-{self.settings.nats_stream}-{seq}"
        except Exception:  # noqa: BLE001
            headers.pop("Nats-Msg-Id", None)
        try:
            await js.publish(jetstream.dlq_subject(msg.subject), msg.data, headers=headers)
        except Exception as exc:  # noqa: BLE001 - keep the message: it is redelivered and retried
            log.error("integrator: could not dead-letter a message from %s (%s); it will be redelivered",
                      msg.subject, exc)
            return False
        self.metrics.inc("dead_lettered_messages")
        log.warning("integrator: dead-lettered a message from %s: %s", msg.subject, reason)
        return True


async def drained(settings: Settings, url: str | None = None) -> bool:
    """True when the consumer has nothing pending: every message in the stream was
    delivered and acked (i.e. committed or dead-lettered)."""
    nc = await jetstream.connect(settings, url=url)
    try:
        info = await nc.jsm().consumer_info(settings.nats_stream, settings.nats_consumer)
        return int(info.num_pending or 0) == 0 and int(info.num_ack_pending or 0) == 0
    finally:
        await nc.close()


def wait_drained(info: Mapping[str, Any], timeout: float = 120.0, *, settings: Settings | None = None) -> None:
    """Block until the integrator of a running ``provgraph serve`` (``info`` = its
    ``serve.json``) has committed every message published so far; :class:`TransportError`
    after ``timeout`` seconds."""
    from .settings import load_settings

    url = str(info.get("nats_url") or "")
    s = settings or load_settings(nats_url=url or None)
    deadline = time.monotonic() + timeout
    while True:
        if asyncio.run(drained(s, url or None)):
            return
        if time.monotonic() > deadline:
            raise TransportError(f"the integrator did not commit everything within {timeout:.0f}s")
        time.sleep(0.2)
