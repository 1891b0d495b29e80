"""``provgraph status``: where the pipeline stands.

Shows the running ``provgraph serve`` (from ``DATA_DIR/serve.json``), the JetStream
stream, consumer and dead-letter stream (messages, pending, redelivered), the
integrator's counters (read from the serve's ``/metrics``), the unsent local journal
and the store's counts. Each part that cannot be reached is reported as such.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import urllib.request
from typing import Any

from ..errors import ProvgraphError
from . import open_store, settings_from_args

__all__ = ["gather", "register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="state of serve, the NATS stream/consumer, the integrator and the store",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--nats-url", help="NATS server to inspect (default: settings, then serve.json)")
    p.set_defaults(func=run)


async def _jetstream(settings: Any, url: str) -> dict[str, Any]:
    from .. import jetstream

    nc = await jetstream.connect(settings, url=url)
    try:
        jsm = nc.jsm()
        out: dict[str, Any] = {}
        try:
            s = await jsm.stream_info(settings.nats_stream)
            out["stream"] = {"name": settings.nats_stream, "messages": s.state.messages, "bytes": s.state.bytes,
                             "first_seq": s.state.first_seq, "last_seq": s.state.last_seq,
                             "consumers": s.state.consumer_count}
        except Exception as exc:  # noqa: BLE001
            out["stream"] = {"name": settings.nats_stream, "error": str(exc) or type(exc).__name__}
        try:
            c = await jsm.consumer_info(settings.nats_stream, settings.nats_consumer)
            out["consumer"] = {"name": settings.nats_consumer, "pending": c.num_pending,
                               "ack_pending": c.num_ack_pending, "redelivered": c.num_redelivered,
                               "delivered_seq": c.delivered.stream_seq if c.delivered else None,
                               "ack_floor_seq": c.ack_floor.stream_seq if c.ack_floor else None}
        except Exception as exc:  # noqa: BLE001
            out["consumer"] = {"name": settings.nats_consumer, "error": str(exc) or type(exc).__name__}
        try:
            d = await jsm.stream_info(f"{settings.nats_stream}_DLQ")
            out["dead_letters"] = {"name": f"{settings.nats_stream}_DLQ", "messages": d.state.messages}
        except Exception as exc:  # noqa: BLE001
            out["dead_letters"] = {"error": str(exc) or type(exc).__name__}
        return out
    finally:
        await nc.close()


def gather(args: argparse.Namespace) -> dict[str, Any]:
    """Everything ``status`` shows, as a dict."""
    from ..metrics import parse
    from ..natsserver import read_serve_info
    from ..transports.journal import journal_files

    settings = settings_from_args(args)
    out: dict[str, Any] = {"data_dir": str(settings.data_dir)}
    serve = read_serve_info(settings.data_dir)
    out["serve"] = serve
    url = getattr(args, "nats_url", None) or settings.nats_url or (serve or {}).get("nats_url")
    out["nats_url"] = url
    if url:
        try:
            out.update(asyncio.run(_jetstream(settings, str(url))))
        except ProvgraphError as exc:
            out["nats_error"] = str(exc)
    http_url = (serve or {}).get("http_url")
    if http_url:
        try:
            with urllib.request.urlopen(f"{http_url}/metrics", timeout=5) as resp:
                samples = parse(resp.read().decode("utf-8"))
            out["integrator"] = {k[len("provgraph_integrator_"):].removesuffix("_total"): v
                                 for k, v in samples.items()
                                 if k.startswith("provgraph_integrator_") and "{" not in k}
        except OSError as exc:
            out["integrator"] = {"error": f"cannot read {http_url}/metrics: {exc}"}
    files = journal_files(settings.journal_dir)
    out["journal"] = {"dir": str(settings.journal_dir), "files": len(files),
                      "bytes": sum(f.stat().st_size for f in files if f.exists())}
    try:
        store = open_store(args)
        try:
            out["store"] = store.stats()
        finally:
            store.close()
    except ProvgraphError as exc:
        out["store"] = {"error": str(exc)}
    return out


def _print(status: dict[str, Any]) -> None:
    def section(title: str, values: dict[str, Any] | None) -> None:
        print(f"{title}:")
        if not values:
            print("  (none)")
            return
        width = max(len(str(k)) for k in values)
        for key, value in values.items():
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            print(f"  {str(key).replace('_', ' '):<{width}}  {value}")

    print(f"data dir: {status['data_dir']}")
    serve = status.get("serve")
    print("serve: " + (f"running (pid {serve['pid']}), NATS {serve.get('nats_url')}, HTTP {serve.get('http_url')}"
                       if serve else "not running"))
    if status.get("nats_url") is None:
        print("nats: not configured (PROVGRAPH_NATS_URL) and no serve running")
    elif "nats_error" in status:
        print(f"nats: {status['nats_error']}")
    else:
        section("stream", status.get("stream"))
        section("consumer", status.get("consumer"))
        section("dead letters", status.get("dead_letters"))
    if "integrator" in status:
        section("integrator", status["integrator"])
    section("journal (not yet sent)", status.get("journal"))
    section("store", status.get("store"))


def run(args: argparse.Namespace) -> int:
    status = gather(args)
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        _print(status)
    return 0
