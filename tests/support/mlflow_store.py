"""A real MLflow sqlite tracking store filled by an unmodified MLflow script, run as a
subprocess exactly as a user would (``MLFLOW_TRACKING_URI=sqlite:///... python script.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# A user's training script: plain MLflow, no provgraph. Writes the IDs of its runs to
# argv[1] so tests can compare them with what the observer recorded.
SCRIPT = r'''
import sys, time
from pathlib import Path
import mlflow

ids_file, prefix, count, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
out = Path(ids_file).open("a")

def note(run):
    out.write(run.info.run_id + "\n"); out.flush()

mlflow.set_experiment("training")
if prefix == "full":
    data = Path("weights.bin"); data.write_bytes(bytes(range(256)) * 4)
    with mlflow.start_run(run_name="sweep") as parent:
        note(parent)
        mlflow.log_params({"lr": "0.01", "epochs": 3, "optimizer": "adam", "data": str(data.resolve())})
        for step, loss in enumerate([0.9, 0.5, 0.25]):
            mlflow.log_metric("loss", loss, step=step)
        mlflow.log_metric("accuracy", 0.75)
        mlflow.log_artifact(str(data), artifact_path="checkpoints")
        with mlflow.start_run(run_name="fold-1", nested=True) as child:
            note(child)
            mlflow.log_param("fold", 1)
            mlflow.log_metric("val_loss", 0.3)
    try:
        with mlflow.start_run(run_name="diverged") as bad:
            note(bad)
            mlflow.log_param("lr", "10.0")
            raise FloatingPointError("loss is NaN")
    except FloatingPointError:
        pass
    stopped = mlflow.start_run(run_name="stopped")
    note(stopped)
    mlflow.end_run(status="KILLED")
for i in range(count):
    if prefix == "gated" and i == count // 2:  # half-way: wait until the test says "continue"
        while not Path("continue").exists():
            time.sleep(0.05)
    with mlflow.start_run(run_name=f"{prefix}-{i}") as run:
        note(run)
        mlflow.log_param("i", i)
        mlflow.log_metric("score", i / 10)
    time.sleep(pause)
if prefix == "hold":  # a run that stays RUNNING until the file "release" appears
    with mlflow.start_run(run_name="held") as run:
        mlflow.log_param("held", "yes")
        note(run)
        while not Path("release").exists():
            time.sleep(0.05)
        mlflow.log_metric("score", 1.0)
'''


def log_runs(workdir: Path, uri: str, ids_file: Path, prefix: str, count: int, pause: float = 0.0,
             *, wait: bool = True) -> subprocess.Popen[bytes]:
    """Run the script in ``workdir`` against the store at ``uri``; ``wait`` for it to end.
    Its output goes to ``workdir/train-{prefix}.out`` (a pipe nobody reads could fill up)."""
    script = workdir / "train.py"
    if not script.exists():
        script.write_text(SCRIPT)
    env = clean_env(MLFLOW_TRACKING_URI=uri)
    out = workdir / f"train-{prefix}.out"
    with open(out, "wb") as fh:
        proc = subprocess.Popen([sys.executable, str(script), str(ids_file), prefix, str(count), str(pause)],
                                cwd=workdir, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if wait:
        proc.wait(timeout=120)
        assert proc.returncode == 0, f"MLflow script failed:\n{out.read_text(errors='replace')}"
    return proc


def observer_command(data_dir: Path, uri: str, *extra: str) -> list[str]:
    """``provgraph observe mlflow`` as a user starts it (into the on-disk store of ``data_dir``)."""
    return [sys.executable, "-m", "provgraph", "--data-dir", str(data_dir), "observe", "mlflow",
            "--tracking-uri", uri, *extra]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without provgraph/MLflow settings of the test process, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROVGRAPH_", "MLFLOW_"))}
    env.update(extra)
    return env


def run_ids(ids_file: Path) -> list[str]:
    """The MLflow run IDs the script wrote so far (complete lines only)."""
    if not ids_file.exists():
        return []
    text = ids_file.read_text()
    return [line for line in text[: text.rfind("\n") + 1].splitlines() if line]
