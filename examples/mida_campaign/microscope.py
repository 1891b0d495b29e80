"""Workflow 1 — a synthetic microscope acquisition (the MIDA paper's Workflow 1).

A plain script with no provgraph import: it writes images and logs its parameters and
the path of every image it writes. provgraph's log observer turns those log lines into
provenance (see ``microscope_patterns.toml``).

    python microscope.py OUT_DIR LOG_FILE [--frames 12] [--exposure-ms 20] [--seed 7]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np


def acquire(out: Path, frames: int, size: int, exposure_ms: float, magnification: int, seed: int,
            log: logging.Logger) -> None:
    rng = np.random.default_rng(seed)
    log.info("acquisition started sample=%s exposure_ms=%s magnification=%s frames=%s seed=%s",
             "SM-BFO-17", exposure_ms, magnification, frames, seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(frames):
        clean = np.zeros((size, size))
        for _ in range(int(rng.integers(3, 7))):  # atomic columns as gaussian blobs
            cy, cx = rng.uniform(4, size - 4, 2)
            clean += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (magnification / 20) ** 2))
        noisy = clean + rng.normal(0, 1.0 / np.sqrt(exposure_ms), clean.shape)
        path = out / f"frame_{i:03d}.npz"
        np.savez(path, noisy=noisy.astype(np.float32), clean=clean.astype(np.float32))
        log.info("wrote image %s frame=%d", path.resolve(), i)
    log.info("acquisition finished frames=%d", frames)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", type=Path)
    ap.add_argument("log_file", type=Path)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--exposure-ms", type=float, default=20.0)
    ap.add_argument("--magnification", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.log_file.parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=args.log_file, level=logging.INFO,
                        format="%(asctime)s %(levelname)s microscope: %(message)s")
    acquire(args.out, args.frames, args.size, args.exposure_ms, args.magnification, args.seed,
            logging.getLogger("microscope"))


if __name__ == "__main__":
    main()
