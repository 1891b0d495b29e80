"""Workflow 2 — a Dask hyperparameter search over denoising models.

Two chained maps on a Dask cluster: ``features`` turns each microscope frame into
training pairs (3x3 noisy patch → clean centre pixel), then ``train`` fits one linear
denoiser per hyperparameter set by gradient descent (real arithmetic, real files) and
writes the model file. The only provgraph line is the plugin registration: every task,
its arguments, results, dependencies, host and failures are captured by the plugin.

    python hpsearch.py FRAMES_DIR MODELS_DIR [--workers 2]
"""

from __future__ import annotations

import argparse
import json
from itertools import product
from pathlib import Path

import numpy as np


def features(frame_path: str) -> np.ndarray:
    """Rows of [9 noisy neighbours..., clean centre] for every interior pixel."""
    with np.load(frame_path) as data:
        noisy, clean = data["noisy"], data["clean"]
    h, w = noisy.shape
    cols = [noisy[dy:h - 2 + dy, dx:w - 2 + dx].ravel() for dy in range(3) for dx in range(3)]
    return np.column_stack([*cols, clean[1:-1, 1:-1].ravel()]).astype(np.float32)


def train(lr: float, l2: float, epochs: int, models_dir: str, *parts: np.ndarray) -> dict[str, object]:
    data = np.concatenate(parts)
    x, y = data[:, :9], data[:, 9]
    w = np.full(9, 1 / 9, dtype=np.float64)
    b = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(epochs):
            err = x @ w + b - y
            w -= lr * (x.T @ err / len(y) + l2 * w)
            b -= lr * float(err.mean())
        mse = float(np.mean((x @ w + b - y) ** 2))
    if not np.isfinite(mse) or mse > 1e3:
        raise FloatingPointError(f"training diverged (lr={lr})")
    path = Path(models_dir) / f"denoiser_lr{lr}_l2{l2}_e{epochs}.npz"
    np.savez(path, weights=w, bias=b)
    return {"model": str(path), "train_mse": mse}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("frames", type=Path)
    ap.add_argument("models", type=Path)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--campaign", default="mida-demo")
    args = ap.parse_args()
    args.models.mkdir(parents=True, exist_ok=True)

    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        from provgraph.adapters import dask as pg_dask

        pg_dask.register(client, workflow="hpsearch", campaign=args.campaign)  # the only provgraph line

        frames = sorted(str(p.resolve()) for p in args.frames.glob("*.npz"))
        feats = client.map(features, frames)  # first map
        grid = list(product([0.05, 0.2, 0.8, 3.5], [0.0, 0.01], [40]))
        models = [client.submit(train, lr, l2, ep, str(args.models.resolve()), *feats, pure=False)
                  for lr, l2, ep in grid]  # second map, chained on the first
        results = []
        for (lr, l2, ep), fut in zip(grid, models, strict=True):
            try:
                res = fut.result()
            except FloatingPointError as exc:
                print(f"  lr={lr} l2={l2}: failed ({exc})")
                continue
            results.append({"lr": lr, "l2": l2, "epochs": ep, **res})
            print(f"  lr={lr} l2={l2}: train MSE {res['train_mse']:.5f}")
    (args.models / "summary.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
