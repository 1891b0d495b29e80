"""Workflow 2: 'analyze' reads a *copy* of a.bin under another path and writes b.bin.

No ID is passed from workflow 1: provgraph links the two through a.bin's content hash.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import provgraph


@provgraph.task
def analyze(raw: Path, window: int) -> Path:
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    out = raw.with_name("b.bin")
    out.write_text(f"{digest} window={window}\n")
    return out


if __name__ == "__main__":
    raw = Path(sys.argv[1])
    with provgraph.workflow("analyze", campaign="two-workflows-demo"):
        print("analyze wrote", analyze(raw, 3))
