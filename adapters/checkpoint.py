"""Observer checkpoints: a small JSON document per observed source, replaced atomically.

Observers (MLflow, log files) remember what they have already turned into provenance
so that a restart neither duplicates nor misses anything. The rule they follow:

1. emit the records of what is new;
2. ``emitter.force_flush()`` — the records are now stored, sent or spilled to the journal;
3. only then :meth:`Checkpoint.save` the new position.

A crash between 2 and 3 re-emits the same records on restart; their IRIs are
deterministic, so the graph does not change. A crash before 2 loses nothing either,
since the checkpoint still points before those records.

The file is written to a temporary name in the same directory, fsynced and renamed over
the old one (``os.replace``), so a reader sees the old or the new document, never half.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from provgraph.settings import Settings

__all__ = ["Checkpoint", "checkpoint_path"]


def checkpoint_path(settings: Settings, kind: str, source: str) -> Path:
    """``data_dir/observers/{kind}-{hash of source}.json``: one file per observed source."""
    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()[:20]
    return settings.data_dir / "observers" / f"{kind}-{digest}.json"


class Checkpoint:
    """A JSON document on disk; :meth:`load` returns ``{}`` when there is none yet."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, Any]:
        """The saved document, ``{}`` if absent. A corrupt file raises ``ValueError``
        (better to stop than to silently re-read or skip a whole source)."""
        try:
            text = self.path.read_text("utf-8")
        except FileNotFoundError:
            return {}
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"checkpoint {self.path} is not a JSON object")
        return data

    def save(self, data: dict[str, Any]) -> None:
        """Replace the document atomically (write, fsync, rename, fsync the directory)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, separators=(",", ":"), sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        try:
            dfd = os.open(self.path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dfd)
        except OSError:
            pass
        finally:
            os.close(dfd)
