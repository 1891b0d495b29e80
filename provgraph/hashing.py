"""Content identity: RFC 6920 ``ni:`` names from SHA-256, with a file-hash cache.

A data artifact is named ``ni:///sha-256;<base64url digest, no padding>``, so the same
bytes meet at the same IRI under any path, on any machine, in any workflow.

* files are hashed by streaming (1 MiB chunks); the digest is cached on
  ``(realpath, size, mtime_ns, inode)`` so an unchanged file is never hashed twice;
* directories are named by a manifest of their files' relative paths and digests;
* byte strings, long texts and arrays (anything with ``__array_interface__``) are
  hashed over their bytes; arrays include dtype and shape in the digest.

These functions run on the emitter's background thread, never on the user's thread.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import threading
from collections import OrderedDict
from typing import Any

__all__ = ["NI_PREFIX", "FileHasher", "hash_array", "hash_bytes", "ni_iri"]

NI_PREFIX = "ni:///sha-256;"
_CHUNK = 1 << 20


def ni_iri(digest: bytes) -> str:
    """The RFC 6920 ``ni`` IRI of a SHA-256 digest."""
    return NI_PREFIX + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def hash_bytes(data: bytes | bytearray | memoryview) -> str:
    return ni_iri(hashlib.sha256(data).digest())


def hash_array(arr: Any) -> str:
    """Hash an array-like (numpy, or anything exposing ``tobytes``/dtype/shape)."""
    h = hashlib.sha256()
    h.update(f"array:{getattr(arr, 'dtype', '')}:{tuple(getattr(arr, 'shape', ()))}:".encode())
    tobytes = getattr(arr, "tobytes", None)
    h.update(tobytes() if callable(tobytes) else bytes(memoryview(arr)))
    return ni_iri(h.digest())


class FileHasher:
    """Streaming file hasher with an LRU cache keyed on path, size, mtime and inode."""

    def __init__(self, max_entries: int = 65_536, dir_max_files: int = 10_000) -> None:
        self._cache: OrderedDict[tuple[str, int, int, int], str] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_entries
        self._dir_max = dir_max_files
        self.hashed = 0  # files actually read (cache misses)

    def stat_key(self, path: str) -> tuple[tuple[str, int, int, int], os.stat_result] | None:
        try:
            real = os.path.realpath(path)
            st = os.stat(real)
        except (OSError, ValueError):
            return None
        return (real, st.st_size, st.st_mtime_ns, st.st_ino), st

    def hash_path(self, path: str) -> tuple[str, int, bool] | None:
        """``(ni_iri, size, is_dir)`` of a file or directory, or None if it is not there."""
        found = self.stat_key(path)
        if found is None:
            return None
        key, st = found
        if stat.S_ISDIR(st.st_mode):
            return self._hash_dir(key[0])
        if not stat.S_ISREG(st.st_mode):
            return None
        return self._hash_file(key), st.st_size, False

    def _hash_file(self, key: tuple[str, int, int, int]) -> str:
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        h = hashlib.sha256()
        with open(key[0], "rb", buffering=0) as fh:
            buf = bytearray(_CHUNK)
            view = memoryview(buf)
            while n := fh.readinto(buf):
                h.update(view[:n])
        iri = ni_iri(h.digest())
        self.hashed += 1
        with self._lock:
            self._cache[key] = iri
            if len(self._cache) > self._max:
                self._cache.popitem(last=False)
        return iri

    def _hash_dir(self, root: str) -> tuple[str, int, bool] | None:
        entries: list[str] = []
        total = 0
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                if len(entries) >= self._dir_max:
                    return None
                full = os.path.join(dirpath, name)
                found = self.stat_key(full)
                if found is None or not stat.S_ISREG(found[1].st_mode):
                    continue
                total += found[1].st_size
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                entries.append(f"{rel}\0{self._hash_file(found[0])}\n")
        manifest = "dir:" + "".join(entries)
        return hash_bytes(manifest.encode()), total, True
