"""Workflow 1: 'acquire' writes a.bin. It shares nothing with workflow 2 but the bytes."""

from __future__ import annotations

import sys
from pathlib import Path

import provgraph


@provgraph.task
def acquire(out_dir: Path, n_frames: int) -> Path:
    path = out_dir / "a.bin"
    path.write_bytes(bytes(range(256)) * n_frames)
    return path


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    with provgraph.workflow("acquire", campaign="two-workflows-demo"):
        print("acquire wrote", acquire(out, 3))
