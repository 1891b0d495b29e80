"""``provgraph demo``: the MIDA campaign, end to end, on this machine.

Three workflows run as separate processes and share nothing but files:

1. a synthetic microscope (a plain script that only writes images and a log) — observed
   by the log observer;
2. a Dask hyperparameter search over denoising models (LocalCluster, 2 worker processes)
   — observed by the Dask plugins, with per-task telemetry;
3. an MLflow evaluation of the best models (unmodified MLflow code, sqlite tracking
   store) — observed by the MLflow observer.

Everything is started and stopped for you: ``provgraph serve`` (a local nats-server with
JetStream, the integrator, the on-disk store and the SPARQL endpoint) when the ``nats``
extra is installed, else the embedded store. Then the three integrated analyses of the
query library print: the top-K models by held-out MSE with their backward lineage to
the microscope's parameters, hyperparameters vs KPIs, hyperparameters vs telemetry.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import NotFoundError, ProvgraphError

__all__ = ["register", "run_demo"]

MARKER = ".provgraph-demo"
CAMPAIGN = "mida-demo"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run the MIDA demo campaign end to end and print its analyses",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", type=Path, default=Path("provgraph-demo"), metavar="DIR",
                   help="working directory of the campaign (default ./provgraph-demo; replaced on each run)")
    p.add_argument("--frames", type=int, default=12, help="images the microscope acquires (12)")
    p.add_argument("--workers", type=int, default=2, help="Dask worker processes (2)")
    p.add_argument("--top", type=int, default=3, help="models evaluated and ranked (3)")
    p.add_argument("--pipeline", choices=("auto", "nats", "store"), default="auto",
                   help="nats: provgraph serve (nats-server + integrator); store: embedded store only; "
                        "auto: nats when the extra is installed")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    return run_demo(args.dir, frames=args.frames, workers=args.workers, top=args.top, pipeline=args.pipeline)


# -- progress ----------------------------------------------------------------------------
class _Progress:
    def __init__(self, total: int) -> None:
        self.total, self.n, self.t0 = total, 0, time.perf_counter()

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        self.n += 1
        print(f"[{self.n}/{self.total}] {what} ...", flush=True)
        t = time.perf_counter()
        yield
        print(f"      done in {time.perf_counter() - t:.1f} s", flush=True)


def _example_dir() -> Path:
    """The campaign scripts: shipped as ``provgraph.mida_campaign`` (examples/mida_campaign)."""
    try:
        from .. import mida_campaign  # type: ignore[attr-defined]

        return Path(mida_campaign.__path__[0])
    except ImportError:
        here = Path(__file__).resolve().parents[2] / "examples" / "mida_campaign"
        if here.is_dir():
            return here
        raise NotFoundError("the demo campaign scripts are not installed (examples/mida_campaign)") from None


def _pipeline(choice: str) -> str:
    if choice != "auto":
        return choice
    try:
        import nats  # noqa: F401

        from ..natsserver import find_nats_server

        find_nats_server()
        from . import serve  # noqa: F401
    except Exception:  # noqa: BLE001 - any missing piece means: embedded store
        return "store"
    return "nats"


def _call(cmd: Sequence[str], env: dict[str, str], *, cwd: Path, log: Path) -> None:
    with open(log, "ab") as out:
        proc = subprocess.run(list(cmd), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        raise ProvgraphError(f"{' '.join(map(str, cmd[:3]))} ... exited with {proc.returncode}; "
                             f"last lines of {log}:\n" + "\n".join(tail))


def _provgraph(*args: str) -> list[str]:
    return [sys.executable, "-m", "provgraph", *args]


class _Serve:
    """``provgraph serve`` in a child process, found through ``data_dir/serve.json``."""

    def __init__(self, env: dict[str, str], data_dir: Path, log: Path, cwd: Path) -> None:
        self.env, self.data_dir, self.log, self.cwd = env, data_dir, log, cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    def start(self, timeout: float = 60.0) -> dict[str, Any]:
        info_file = self.data_dir / "serve.json"
        info_file.unlink(missing_ok=True)
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(_provgraph("serve", "--http-port", "0"), env=self.env, cwd=self.cwd,
                                     stdout=out, stderr=subprocess.STDOUT)
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ProvgraphError(f"provgraph serve exited with {self.proc.returncode}; see {self.log}")
            if info_file.exists():
                try:
                    self.info = json.loads(info_file.read_text())
                except ValueError:
                    pass
                else:
                    if self.info.get("ready", True):
                        return self.info
            time.sleep(0.1)
        self.stop()
        raise ProvgraphError(f"provgraph serve did not become ready in {timeout:.0f} s; see {self.log}")

    def drain(self, timeout: float = 120.0) -> None:
        """Wait until the integrator has committed every published batch."""
        from .. import integrator as integ

        integ.wait_drained(self.info, timeout=timeout)

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_demo(root: Path, *, frames: int = 12, workers: int = 2, top: int = 3, pipeline: str = "auto") -> int:
    """Run the campaign in ``root`` (replaced if it holds a previous demo) and print the analyses."""
    root = root.resolve()
    if root.exists():
        if not (root / MARKER).exists() and any(root.iterdir()):
            raise ProvgraphError(f"{root} exists and is not a provgraph demo directory; choose another --dir")
        shutil.rmtree(root)
    for sub in ("frames", "models", "logs"):
        (root / sub).mkdir(parents=True)
    (root / MARKER).write_text("created by provgraph demo; deleted and rebuilt by the next run\n")
    data_dir, logs, scripts = root / ".provgraph", root / "logs", _example_dir()
    mode = _pipeline(pipeline)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROVGRAPH_", "MLFLOW_"))}
    env |= {"PROVGRAPH_DATA_DIR": str(data_dir), "PROVGRAPH_CAMPAIGN": CAMPAIGN, "PYTHONUNBUFFERED": "1",
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "PROVGRAPH_FACILITY": "demo-lab"}
    if mode == "store":
        env["PROVGRAPH_TRANSPORT"] = "store"
    progress = _Progress(6)
    print(f"provgraph demo: campaign {CAMPAIGN!r} in {root} (pipeline: {mode})", flush=True)

    server = _Serve(env, data_dir, logs / "serve.log", root) if mode == "nats" else None
    try:
        if server is not None:
            with progress.step("starting provgraph serve (nats-server + JetStream, integrator, SPARQL endpoint)"):
                info = server.start()
                print(f"      NATS {info.get('nats_url')}, SPARQL {info.get('http_url')}", flush=True)
        else:
            with progress.step("using the embedded store (install provgraph[nats] for the streaming pipeline)"):
                data_dir.mkdir(parents=True, exist_ok=True)

        with progress.step(f"workflow 1: microscope acquires {frames} images (plain script, log observer)"):
            log_file = logs / "microscope.log"
            _call([sys.executable, str(scripts / "microscope.py"), str(root / "frames"), str(log_file),
                   "--frames", str(frames)], env, cwd=root, log=logs / "microscope.out")
            _call(_provgraph("observe", "log", str(log_file), "--patterns", str(scripts / "microscope_patterns.toml"),
                             "--once"), env, cwd=root, log=logs / "observe-log.out")

        with progress.step(f"workflow 2: Dask hyperparameter search ({workers} worker processes, Dask plugins)"):
            _call([sys.executable, str(scripts / "hpsearch.py"), str(root / "frames"), str(root / "models"),
                   "--workers", str(workers), "--campaign", CAMPAIGN],
                  env | {"PROVGRAPH_TELEMETRY": "sampler", "PROVGRAPH_TELEMETRY_INTERVAL": "0.02"},
                  cwd=root, log=logs / "hpsearch.out")
            print(_indent((logs / "hpsearch.out").read_text(errors="replace"), "lr="), end="")

        with progress.step(f"workflow 3: MLflow evaluation of the {top} best models (MLflow observer)"):
            _call([sys.executable, str(scripts / "evaluate.py"), str(root / "models"), str(root / "frames"),
                   "--top", str(top)], env, cwd=root, log=logs / "evaluate.out")
            print(_indent((logs / "evaluate.out").read_text(errors="replace"), "rank "), end="")
            _call(_provgraph("observe", "mlflow", "--tracking-uri", env["MLFLOW_TRACKING_URI"], "--once"),
                  env, cwd=root, log=logs / "observe-mlflow.out")

        with progress.step("integrating: waiting until every batch is committed"):
            if server is not None:
                server.drain()
                server.stop()
    finally:
        if server is not None:
            server.stop()

    with progress.step("analyses from queries/ (top-K models with lineage, hyperparameters vs KPIs / telemetry)"):
        from ..store import Store

        store = Store(data_dir / "store")
        try:
            from .. import campaign_report

            print(campaign_report.render(store, top=top))
        finally:
            store.close()
    print(f"\nExplore it yourself:\n  provgraph --data-dir {data_dir} stats\n"
          f"  provgraph --data-dir {data_dir} query --name cross_workflow\n"
          f"  provgraph --data-dir {data_dir} serve   # SPARQL endpoint on http://127.0.0.1:7879/sparql")
    return 0


def _indent(text: str, needle: str) -> str:
    return "".join(f"      {line}\n" for line in text.splitlines() if line.lstrip().startswith(needle))
