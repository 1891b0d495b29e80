"""``provgraph replay [JOURNAL_DIR]``: send batches left in a journal.

A journal holds batches that could not be delivered when they were recorded (NATS
down at exit, a full queue to the store, ...): files ``*.nq`` under
``DATA_DIR/journal`` by default. ``replay`` publishes them to NATS (the configured
``nats_url``, or the one of a running ``provgraph serve``) awaiting every PubAck, or
with ``--to-store`` loads them straight into the store, one transaction per batch.
A file is deleted only when every batch in it was confirmed; a torn tail (a writer
killed mid-batch) is kept as ``*.torn``; a file with a batch the store refuses is
renamed ``*.rejected``. Files of a process that is still running are skipped
(``--force`` to include them).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ParseError
from . import settings_from_args

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("replay", help="send batches left in a journal to NATS or the store",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("journal_dir", nargs="?", help="journal directory (default: DATA_DIR/journal)")
    p.add_argument("--to-store", action="store_true", help="load into the store instead of publishing to NATS")
    p.add_argument("--nats-url", help="NATS server (default: settings, then a running serve)")
    p.add_argument("--force", action="store_true", help="include files of processes that are still running")
    p.set_defaults(func=run)


def _writer_alive(path: Path) -> bool:
    """Journal files are ``<prefix>-<time_ns>-<pid>.nq``: is that process (not us) alive?"""
    try:
        pid = int(path.stem.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _finish(path: Path, end: int) -> str:
    """Delete a fully sent file; keep an unsent torn tail as ``*.torn``."""
    if path.stat().st_size > end:
        path.rename(path.with_suffix(".torn"))
        return "torn tail kept"
    path.unlink()
    return "deleted"


async def _to_nats(settings: Any, url: str, files: list[Path]) -> int:
    from .. import jetstream
    from ..transports.nats import publish_file

    nc = await jetstream.connect(settings, url=url)
    try:
        js = nc.jetstream(timeout=settings.publish_timeout)
        try:  # a publisher may lack the right to manage streams; then the stream must exist already
            await jetstream.ensure_layout(js, settings, consumer=False)
        except Exception as exc:  # noqa: BLE001
            logging.getLogger("provgraph.replay").info("could not ensure the stream: %s", exc)
        total = 0
        for f in files:
            count, end = await publish_file(js, settings, f, max_payload=nc.max_payload,
                                            window=settings.nats_max_inflight)
            total += count
            print(f"{f.name}: {count} batches published to {url}; {_finish(f, end)}")
        return total
    finally:
        await nc.close()


def _to_store(args: argparse.Namespace, files: list[Path]) -> tuple[int, int]:
    from ..transports.journal import read_journal
    from . import open_store

    store = open_store(args, write=True)
    total = rejected = 0
    try:
        for f in files:
            count = bad = 0
            end = 0
            for jb in read_journal(f):
                try:
                    store.load(jb.data, jb.to_batch().format)
                    count += 1
                except ParseError as exc:
                    bad += 1
                    print(f"{f.name}: batch {jb.batch_id} refused: {exc}")
                end = jb.end_offset
            total += count
            rejected += bad
            if bad:
                f.rename(f.with_suffix(".rejected"))
                print(f"{f.name}: {count} batches loaded, {bad} refused; kept as {f.with_suffix('.rejected').name}")
            else:
                print(f"{f.name}: {count} batches loaded into the store; {_finish(f, end)}")
        store.flush()
    finally:
        store.close()
    return total, rejected


def run(args: argparse.Namespace) -> int:
    from ..natsserver import serve_nats_url
    from ..transports.journal import journal_files

    settings = settings_from_args(args)
    directory = Path(args.journal_dir) if args.journal_dir else settings.journal_dir
    if not directory.is_dir():
        print(f"no journal at {directory}: nothing to replay")
        return 0
    files = journal_files(directory)
    skipped = [f for f in files if not args.force and _writer_alive(f)]
    files = [f for f in files if f not in skipped]
    for f in skipped:
        print(f"{f.name}: skipped, its process is still running (--force to include it)")
    if not files:
        print(f"no journal files to replay in {directory}")
        return 0
    if args.to_store:
        total, rejected = _to_store(args, files)
        print(f"replayed {total} batches into the store" + (f"; {rejected} refused" if rejected else ""))
        return 1 if rejected else 0
    url = args.nats_url or settings.nats_url or serve_nats_url(settings.data_dir)
    if not url:
        raise ConfigError("replay: no NATS server configured (PROVGRAPH_NATS_URL or --nats-url) and no "
                          "`provgraph serve` running on this data dir; use --to-store to load the store directly")
    total = asyncio.run(_to_nats(settings, url, files))
    print(f"replayed {total} batches to {url}")
    return 0
