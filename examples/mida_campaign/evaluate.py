"""Workflow 3 — MLflow evaluation of the best models (unmodified MLflow code).

Reads the search's summary, evaluates the K best models on held-out frames and logs,
per model, an MLflow run with the model path and hyperparameters as params, the MSE as
a metric (with a per-frame history) and a plot as an artifact. provgraph's MLflow
observer polls the tracking store; this script does not know provgraph exists.

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db python evaluate.py MODELS_DIR FRAMES_DIR [--top 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
from hpsearch import features


def plot_svg(errors: list[float], path: Path) -> None:
    w, h, top = 320, 120, max(errors) or 1.0
    pts = " ".join(f"{10 + i * (w - 20) / max(1, len(errors) - 1):.1f},{h - 10 - e / top * (h - 20):.1f}"
                   for i, e in enumerate(errors))
    path.write_text(f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}">'
                    f'<polyline fill="none" stroke="black" points="{pts}"/></svg>\n')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("models", type=Path)
    ap.add_argument("frames", type=Path)
    ap.add_argument("--top", type=int, default=3)
    args = ap.parse_args()
    summary = sorted(json.loads((args.models / "summary.json").read_text()), key=lambda r: r["train_mse"])
    held_out = sorted(args.frames.glob("*.npz"))[-3:]
    mlflow.set_experiment("mida-evaluation")
    for rank, entry in enumerate(summary[: args.top], start=1):
        with np.load(entry["model"]) as m:
            w, b = m["weights"], float(m["bias"])
        with mlflow.start_run(run_name=f"eval-rank{rank}"):
            mlflow.log_params({"model_path": entry["model"], "lr": entry["lr"], "l2": entry["l2"],
                               "epochs": entry["epochs"]})
            errors = []
            for step, frame in enumerate(held_out):
                data = features(str(frame))
                err = float(np.mean((data[:, :9] @ w + b - data[:, 9]) ** 2))
                errors.append(err)
                mlflow.log_metric("frame_mse", err, step=step)
            mlflow.log_metric("mse", float(np.mean(errors)))
            with tempfile.TemporaryDirectory() as tmp:
                plot = Path(tmp) / "frame_mse.svg"
                plot_svg(errors, plot)
                mlflow.log_artifact(str(plot))
            print(f"  rank {rank}: {Path(entry['model']).name} held-out MSE {np.mean(errors):.5f}")


if __name__ == "__main__":
    main()
