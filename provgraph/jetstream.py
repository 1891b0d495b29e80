"""JetStream layout of provgraph: connection options, the stream, the consumer, the DLQ.

* stream ``settings.nats_stream`` (default ``PROVGRAPH``): subjects ``provgraph.>``,
  file storage, limits retention, :data:`MAX_AGE` (7 days) of history, messages up
  to the server's ``max_payload``, duplicate window :data:`DUPLICATE_WINDOW` (2 min)
  during which a re-sent ``Nats-Msg-Id`` is dropped by the server;
* durable pull consumer ``settings.nats_consumer`` (default ``provgraph-integrator``):
  explicit acks, ack wait ``settings.nats_ack_wait`` (30 s; the integrator extends it
  while a commit is in progress), unlimited deliveries (:data:`MAX_DELIVER`:
  a message that cannot be parsed is dead-lettered, so only a store outage makes a
  message come back, and it must keep coming back until the store is up again);
  several integrators may share it (each fetch goes to one of them);
* dead letters: stream ``<stream>_DLQ`` on ``provgraph-dlq.>``; a message that cannot
  be parsed is re-published there on ``provgraph-dlq.<rest of its subject>`` with the
  reason in the ``Provgraph-Error`` header, then acked.

Everything is created idempotently: calling :func:`ensure_layout` again is harmless and
updates a stream whose limits changed.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from .errors import TransportError, require

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

    from .settings import Settings

__all__ = [
    "ACK_WAIT",
    "DLQ_PREFIX",
    "DUPLICATE_WINDOW",
    "HDR_ERROR",
    "HDR_FLUSH",
    "HDR_GRAPH",
    "HDR_SUBJECT",
    "HDR_TRIPLES",
    "MAX_AGE",
    "MAX_DELIVER",
    "MAX_MSG_SIZE",
    "SUBJECT_PREFIX",
    "connect",
    "connect_options",
    "dlq_subject",
    "ensure_layout",
    "run_token",
    "subject_for",
    "subject_run",
]

SUBJECT_PREFIX = "provgraph.v1"
DLQ_PREFIX = "provgraph-dlq"
MAX_AGE = 7 * 24 * 3600.0
DUPLICATE_WINDOW = 120.0
#: default ack wait (``settings.nats_ack_wait``)
ACK_WAIT = 30.0
MAX_DELIVER = -1
#: largest message the stream accepts (the server's ``max_payload``, 1 MiB by default, is
#: usually the tighter bound; publishers split batches to fit it)
MAX_MSG_SIZE = 8 * 1024 * 1024
#: header of a dead letter: why the integrator refused the message
HDR_ERROR = "Provgraph-Error"
#: header of a dead letter: the subject the message was first published on
HDR_SUBJECT = "Provgraph-Subject"
#: optional header: the named graph for triples of a default-graph format
HDR_GRAPH = "Provgraph-Graph"
#: optional header: how many statements the message holds (the integrator sizes its
#: bulk loads with it; it estimates from the size when absent)
HDR_TRIPLES = "Provgraph-Triples"
#: optional header: ``true`` when the publisher flushed after this message (an explicit
#: flush, the end of a run): the integrator commits it without waiting to gather more
HDR_FLUSH = "Provgraph-Flush"
#: a run token for batches that belong to no single workflow run
NO_RUN = "_"

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-~]")


def run_token(run_id: str) -> str:
    """A workflow-run id as one subject token (percent-encoding '.', '*', '>', space...)."""
    if not run_id:
        return NO_RUN
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group(0).encode("utf-8")), run_id)


def subject_for(facility: str, run_id: str | None) -> str:
    """``provgraph.v1.<facility>.<run-token>``."""
    return f"{SUBJECT_PREFIX}.{facility}.{run_token(run_id or '')}"


def subject_run(subject: str) -> tuple[str, str] | None:
    """``(facility, run_id)`` of a provgraph subject, None if it is not one."""
    parts = subject.split(".")
    if len(parts) != 4 or ".".join(parts[:2]) != SUBJECT_PREFIX:
        return None
    return parts[2], unquote(parts[3])


def dlq_subject(subject: str) -> str:
    rest = subject.split(".", 1)[1] if subject.startswith("provgraph.") else subject
    return f"{DLQ_PREFIX}.{rest}"


def _tls(settings: Settings) -> ssl.SSLContext | None:
    if not (settings.nats_tls_ca or settings.nats_tls_cert or (settings.nats_url or "").startswith("tls://")):
        return None
    ctx = ssl.create_default_context(cafile=str(settings.nats_tls_ca) if settings.nats_tls_ca else None)
    if settings.nats_tls_cert:
        ctx.load_cert_chain(str(settings.nats_tls_cert),
                            str(settings.nats_tls_key) if settings.nats_tls_key else None)
    return ctx


def connect_options(settings: Settings, *, url: str | None = None) -> dict[str, Any]:
    """Keyword arguments of ``nats.connect`` from settings (credentials and TLS pass through)."""
    opts: dict[str, Any] = {
        "servers": [u.strip() for u in (url or settings.nats_url or "").split(",") if u.strip()],
        "name": f"provgraph@{settings.hostname}",
        "connect_timeout": max(1, int(settings.publish_timeout)),
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
    }
    if not opts["servers"]:
        raise TransportError("no NATS server configured (PROVGRAPH_NATS_URL)")
    if settings.nats_user:
        opts["user"] = settings.nats_user
        opts["password"] = settings.nats_password or ""
    if settings.nats_token:
        opts["token"] = settings.nats_token
    if settings.nats_nkey_seed:
        opts["nkeys_seed_str"] = settings.nats_nkey_seed
    if settings.nats_creds:
        opts["user_credentials"] = str(settings.nats_creds)
    tls = _tls(settings)
    if tls is not None:
        opts["tls"] = tls
    return opts


def _explain(url: str, exc: BaseException) -> TransportError:
    text = str(exc) or type(exc).__name__
    if _is_auth(exc):
        return TransportError(f"NATS at {url} rejected the credentials ({text}); check "
                              "PROVGRAPH_NATS_USER/PASSWORD/TOKEN/NKEY_SEED/CREDS")
    return TransportError(f"cannot connect to NATS at {url}: {text}")


async def connect(settings: Settings, *, url: str | None = None, **extra: Any) -> Client:
    """Connect with the configured credentials; a clear :class:`TransportError` on failure.

    The first connection is tried once (bounded by ``connect_timeout``); once connected
    the client reconnects forever. Wrong credentials never hang.
    """
    nats = require("nats", "nats")
    opts = connect_options(settings, url=url)
    opts.update(extra)
    errors: list[BaseException] = []

    connected = False

    async def on_error(exc: BaseException) -> None:
        if connected:  # after the first connection: say it (reconnects, slow consumer, permissions)
            text = str(exc) or type(exc).__name__
            # a publisher without the right to manage streams is normal (see deployment/nats)
            level = logging.DEBUG if "$js.api." in text.lower() else logging.WARNING
            logging.getLogger("provgraph.nats").log(level, "NATS: %s", text)
        else:
            errors.append(exc)

    user_cb = opts.pop("error_cb", None)

    async def error_cb(exc: Exception) -> None:
        await on_error(exc)
        if user_cb is not None:
            await user_cb(exc)

    reconnects = opts.get("max_reconnect_attempts", -1)
    # nats-py retries the *first* connection forever when max_reconnect_attempts < 0:
    # try each server twice, then give up with a clear error; reconnect forever after.
    opts["max_reconnect_attempts"] = 1
    # a failed TLS handshake can leave nats-py waiting: bound the attempt, and stop at once on
    # an error no retry can fix (a certificate that does not verify, rejected credentials)
    limit = 2 * (float(opts["connect_timeout"]) + float(opts["reconnect_time_wait"])) * len(opts["servers"]) + 2
    attempt = asyncio.ensure_future(nats.connect(error_cb=error_cb, **opts))  # type: ignore[attr-defined]
    deadline = asyncio.get_running_loop().time() + limit
    try:
        while True:
            done, _ = await asyncio.wait({attempt}, timeout=0.05)
            if done:
                client: Client = attempt.result()
                break
            hopeless = next((e for e in errors if isinstance(e, ssl.SSLError) or _is_auth(e)), None)
            if hopeless is not None or asyncio.get_running_loop().time() > deadline:
                attempt.cancel()
                await asyncio.gather(attempt, return_exceptions=True)
                if hopeless is not None and _is_auth(hopeless):
                    raise _explain(", ".join(opts["servers"]), hopeless)
                cause = hopeless or (errors[-1] if errors else None)
                raise TransportError(
                    f"cannot connect to NATS at {', '.join(opts['servers'])}: "
                    f"{cause or f'no connection within {limit:.0f}s'}"
                    + ("; check PROVGRAPH_NATS_TLS_CA/CERT/KEY" if isinstance(cause, ssl.SSLError) else ""))
    except TransportError:
        raise
    except Exception as exc:
        cause = next((e for e in errors if _is_auth(e)), errors[-1] if errors else exc)
        raise _explain(", ".join(opts["servers"]), cause) from exc
    client.options["max_reconnect_attempts"] = reconnects
    connected = True
    return client


def _is_auth(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return "authorization" in text or "authentication" in text


def _stream_config(settings: Settings) -> Any:
    from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

    return StreamConfig(
        name=settings.nats_stream, subjects=["provgraph.>"], storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS, discard=DiscardPolicy.OLD, max_age=MAX_AGE,
        duplicate_window=DUPLICATE_WINDOW, max_msg_size=MAX_MSG_SIZE, description="provgraph PROV batches",
    )


def _dlq_config(settings: Settings) -> Any:
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig

    return StreamConfig(
        name=f"{settings.nats_stream}_DLQ", subjects=[f"{DLQ_PREFIX}.>"], storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS, max_age=30 * 24 * 3600.0,
        description="provgraph messages the integrator could not parse",
    )


async def _ensure_stream(js: JetStreamContext, config: Any) -> None:
    from nats.js.errors import BadRequestError, NotFoundError

    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            return
        except BadRequestError:  # created meanwhile by another process
            info = await js.stream_info(config.name)
    current = info.config
    if (set(current.subjects or []) != set(config.subjects) or current.max_age != config.max_age
            or current.duplicate_window != config.duplicate_window):
        await js.update_stream(config)


async def ensure_layout(js: JetStreamContext, settings: Settings, *, consumer: bool = True) -> None:
    """Create (or update) the stream, the dead-letter stream and the durable consumer."""
    await _ensure_stream(js, _stream_config(settings))
    await _ensure_stream(js, _dlq_config(settings))
    if consumer:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        cfg = ConsumerConfig(durable_name=settings.nats_consumer, ack_policy=AckPolicy.EXPLICIT,
                             deliver_policy=DeliverPolicy.ALL, ack_wait=settings.nats_ack_wait,
                             max_ack_pending=100_000,
                             max_deliver=MAX_DELIVER, filter_subject="provgraph.>")
        try:
            await js.add_consumer(settings.nats_stream, cfg)
        except Exception as exc:  # noqa: BLE001 - an existing consumer with other settings: keep it
            logging.getLogger("provgraph.jetstream").warning(
                "consumer %s exists with other settings (%s); using it as it is", settings.nats_consumer, exc)
