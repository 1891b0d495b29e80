"""``provgraph observe``: turn what other tools record into provenance, without touching them.

* ``provgraph observe mlflow --tracking-uri URI [--once]`` polls an MLflow tracking store;
* ``provgraph observe log FILE --patterns CONFIG [--once]`` follows a log file.

Both checkpoint what they have recorded under ``DATA_DIR/observers/``: stop (or kill)
and restart them at will, nothing is recorded twice or missed. SIGTERM and Ctrl-C stop
them after the current poll, flushing what was recorded.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING

from ..errors import ConfigError
from . import settings_from_args

if TYPE_CHECKING:
    from ..adapters.logs import LogFileObserver

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("observe", help="record runs of MLflow or lines of a log file as provenance",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = p.add_subparsers(dest="source", metavar="SOURCE", required=True)

    m = kinds.add_parser("mlflow", help="poll an MLflow tracking store (any backend)")
    m.add_argument("--tracking-uri", required=True, metavar="URI",
                   help="e.g. sqlite:///mlflow.db, http://127.0.0.1:5000")
    m.add_argument("--experiment", action="append", metavar="NAME",
                   help="only this experiment (repeatable; default: all)")
    m.add_argument("--interval", type=float, default=10.0, metavar="S", help="seconds between polls (10)")
    m.add_argument("--once", action="store_true", help="poll once and exit")
    m.set_defaults(func=run_mlflow)

    g = kinds.add_parser("log", help="follow a log file and match its lines against patterns")
    g.add_argument("file", metavar="FILE", help="the log file (it may not exist yet)")
    g.add_argument("--patterns", required=True, metavar="CONFIG", help="TOML pattern file (docs/adapters/logs.md)")
    g.add_argument("--interval", type=float, default=0.5, metavar="S", help="seconds between reads (0.5)")
    g.add_argument("--once", action="store_true", help="read the complete lines there now and exit")
    g.add_argument("--program-exited", action="store_true",
                   help="with --once: the program has ended, so record the task still open (failed if "
                        "the patterns define an end line that never came)")
    g.set_defaults(func=run_log)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
    return stop


def _check_interval(args: argparse.Namespace) -> None:
    if not args.interval > 0:
        raise ConfigError(f"--interval must be a positive number of seconds (got {args.interval:g})")


def run_mlflow(args: argparse.Namespace) -> int:
    from ..adapters.mlflow import MlflowObserver

    _check_interval(args)
    settings = settings_from_args(args)
    observer = MlflowObserver(args.tracking_uri, settings=settings, poll_interval=args.interval,
                              experiments=args.experiment)
    try:
        if args.once:
            n = observer.poll_once()
            print(f"recorded {n} MLflow runs ({observer.stats['pending']} still running)")
            return 0
        stop = _stop_on_signals()
        print(f"observing {args.tracking_uri} every {args.interval:g} s (Ctrl-C to stop)", file=sys.stderr)
        observer.run_forever(stop)
        print(f"recorded {observer.stats['runs']} MLflow runs", file=sys.stderr)
        return 0
    finally:
        observer.close()


def _log_summary(observer: LogFileObserver) -> str:
    s = observer.interpreter.stats
    still = " (1 task still open)" if observer.interpreter.open is not None else ""
    return (f"{s['tasks']} tasks recorded, {s['matched']} lines matched, {s['unmatched']} unmatched, "
            f"{s['orphaned']} outside any task{still}")


def run_log(args: argparse.Namespace) -> int:
    from ..adapters.logs import LogFileObserver, load_patterns

    _check_interval(args)
    settings = settings_from_args(args)
    observer = LogFileObserver(args.file, load_patterns(args.patterns), settings=settings,
                               poll_interval=args.interval)
    try:
        if args.once:
            n = observer.poll_once()
            if args.program_exited:
                observer.end_open_task()
            print(f"read {n} lines of {args.file}: {_log_summary(observer)}")
            return 0
        stop = _stop_on_signals()
        print(f"following {args.file} (Ctrl-C to stop)", file=sys.stderr)
        observer.run_forever(stop)
        print(f"stopped following {args.file}: {_log_summary(observer)}", file=sys.stderr)
        return 0
    finally:
        observer.close()
