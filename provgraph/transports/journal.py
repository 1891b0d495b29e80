"""Journal: an append-only local file of framed N-Quads batches.

Used as a transport in its own right, as the spill target when another transport
fails (store locked, NATS down), and as the inbox of an on-disk store that another
process holds. Each batch is framed by a comment line that N-Quads parsers ignore::

    #pgbatch <batch_id> <nbytes> <triples> <content-type> [flushed]
    <g> { <s> <p> <o> . ... }        (TriG, or N-Quads lines)

(``flushed``: the batch's :attr:`~provgraph.transports.base.Batch.flushed`.)

so a reader can tell a complete batch from one torn by a crash (a torn tail is
reported and left in place, never half-loaded). Files are named
``<prefix>-<time_ns>-<pid>.nq`` and read back in name order, i.e. in write order.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from .base import NQUADS, Batch, Transport

__all__ = ["JournalBatch", "JournalTransport", "journal_files", "read_journal"]

_MAGIC = b"#pgbatch "


class JournalBatch:
    """One complete batch read back from a journal file."""

    __slots__ = ("batch_id", "content_type", "data", "end_offset", "flushed", "triples")

    def __init__(self, batch_id: str, data: bytes, triples: int, end_offset: int,
                 content_type: str = NQUADS, flushed: bool = False) -> None:
        self.batch_id = batch_id
        self.data = data
        self.triples = triples
        self.end_offset = end_offset
        self.content_type = content_type
        self.flushed = flushed

    def to_batch(self) -> Batch:
        return Batch(self.data, self.triples, batch_id=self.batch_id, content_type=self.content_type,
                     flushed=self.flushed)


class JournalTransport(Transport):
    """Appends batches to ``directory``; bounded by ``max_bytes`` over all its files."""

    name = "journal"

    def __init__(self, directory: str | os.PathLike[str], *, max_bytes: int = 1 << 30,
                 prefix: str = "journal", fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.prefix = prefix
        self.fsync = fsync
        self._fh: int | None = None
        self._path: Path | None = None
        self._lock = threading.Lock()
        self._dirty = False

    @property
    def path(self) -> Path | None:
        return self._path

    def _open(self) -> int:
        if self._fh is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._path = self.directory / f"{self.prefix}-{time.time_ns():020d}-{os.getpid()}.nq"
            self._fh = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        return self._fh

    def used_bytes(self) -> int:
        total = 0
        for f in journal_files(self.directory):
            try:
                total += f.stat().st_size
            except OSError:
                pass
        return total

    def publish(self, batch: Batch) -> None:
        frame = b"%s%s %d %d %s%s\n" % (_MAGIC, batch.batch_id.encode(), len(batch.data), batch.triples,
                                          batch.content_type.encode(), b" flushed" if batch.flushed else b"")
        with self._lock:
            if self.used_bytes() + len(frame) + len(batch.data) > self.max_bytes:
                raise OSError(f"journal {self.directory} is full (max_bytes={self.max_bytes})")
            fd = self._open()
            _write_all(fd, frame, batch.data)
            self._dirty = True

    def flush(self, timeout: float) -> bool:
        with self._lock:
            if self._fh is not None and self._dirty and self.fsync:
                os.fsync(self._fh)
            self._dirty = False
        return True

    def close(self, timeout: float) -> bool:
        self.flush(timeout)
        with self._lock:
            if self._fh is not None:
                os.close(self._fh)
                self._fh = None
        return True

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._fh = None  # the parent's descriptor stays the parent's
        self._path = None


def _write_all(fd: int, head: bytes, body: bytes) -> None:
    """Write ``head`` then ``body`` without joining them (a batch is megabytes)."""
    written = os.writev(fd, [head, body])
    total = len(head) + len(body)
    while written < total:  # a short write: finish from where it stopped
        if written < len(head):
            written += os.writev(fd, [head[written:], body])
        else:
            written += os.write(fd, memoryview(body)[written - len(head):])


def journal_files(directory: str | os.PathLike[str]) -> list[Path]:
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.suffix == ".nq" and p.is_file())


def read_journal(path: str | os.PathLike[str], start: int = 0) -> Iterator[JournalBatch]:
    """Complete batches of one journal file from byte ``start``; a torn tail stops it."""
    with open(path, "rb") as fh:
        fh.seek(start)
        while True:
            header = fh.readline()
            if not header:
                return
            if not header.startswith(_MAGIC):
                raise ValueError(f"{path}: not a provgraph journal frame at offset {fh.tell() - len(header)}")
            fields = header.split()
            try:
                bid, size, triples = fields[1].decode(), int(fields[2]), int(fields[3])
                ctype = fields[4].decode() if len(fields) > 4 else NQUADS
                flushed = len(fields) > 5 and fields[5] == b"flushed"
            except (ValueError, IndexError):
                return  # torn header
            body = fh.read(size)
            if len(body) < size:
                return  # torn body: the writer died mid-batch
            yield JournalBatch(bid, body, triples, fh.tell(), ctype, flushed)
