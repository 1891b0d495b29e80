"""The log observer on the real MIDA microscope (examples/mida_campaign/microscope.py): its
log file followed by ``provgraph observe log``, or its logger handled in-process."""

from __future__ import annotations

import importlib.util
import json
import logging
import logging.handlers
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import provgraph
from provgraph.cli import main as cli_main
from provgraph.errors import ConfigError
from provgraph.hashing import hash_bytes
from provgraph.settings import load_settings
from provgraph.store import Store
from provgraph.testing import capture

from .support.rdf import select

logs = pytest.importorskip("provgraph.adapters.logs")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mida_campaign"
PATTERNS = EXAMPLE / "microscope_patterns.toml"
PARAMS = ("sample", "exposure_ms", "magnification", "frames", "seed")


def microscope(out: Path, log_file: Path, *, frames: int, seed: int, exposure_ms: float = 20.0) -> None:
    """Run the unmodified microscope script, as a user would."""
    subprocess.run([sys.executable, str(EXAMPLE / "microscope.py"), str(out), str(log_file), "--frames",
                    str(frames), "--seed", str(seed), "--exposure-ms", str(exposure_ms), "--size", "24"],
                   check=True, timeout=120, env={k: v for k, v in os.environ.items() if not k.startswith("PROVGRAPH_")})


def load_microscope() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mida_microscope", EXAMPLE / "microscope.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def acquire(scope: ModuleType, out: Path, *args: Any) -> None:
    """The microscope's own ``acquire`` (its ``main`` creates the output folder first)."""
    out.mkdir(parents=True, exist_ok=True)
    scope.acquire(out, *args)


@pytest.fixture
def scope_logger() -> Iterator[logging.Logger]:
    """The logger the microscope's ``acquire`` logs to, with no handlers left behind."""
    logger = logging.getLogger(f"microscope-test-{time.monotonic_ns()}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()


def file_handler(path: Path, handler: logging.FileHandler | None = None) -> logging.FileHandler:
    h = handler or logging.FileHandler(path)
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s microscope: %(message)s"))
    return h


def images(out: Path) -> dict[str, str]:
    """``image[i]`` → the ni: IRI of the bytes of frame i."""
    return {f"image[{int(p.stem.split('_')[1])}]": hash_bytes(p.read_bytes()) for p in sorted(out.glob("*.npz"))}


def acquisitions(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for t in tasks if t["label"] == "acquire"]


def test_microscope_log_becomes_one_activity_per_acquisition(tmp_path: Path) -> None:
    log_file = tmp_path / "microscope.log"
    microscope(tmp_path / "run1", log_file, frames=4, seed=1)
    microscope(tmp_path / "run2", log_file, frames=3, seed=2, exposure_ms=50.0)  # appends to the same log
    first_line = log_file.read_text().splitlines()[0]

    @provgraph.task
    def denoise(frame: Path) -> int:  # an analysis that knows nothing of the microscope's log
        return len(frame.read_bytes())

    with capture() as cap:
        observer = logs.LogFileObserver(log_file, logs.load_patterns(PATTERNS), emitter=provgraph.get_emitter())
        assert observer.poll_once() == 2 * 2 + 4 + 3
        assert observer.poll_once() == 0
        denoise(tmp_path / "run2" / "frame_001.npz")
        tasks = acquisitions(cap.tasks())
        lineage = cap.sparql("""SELECT ?seed ?name WHERE { ?a rdfs:label "acquire" ; prov:used ?s .
            ?s pg:parameterName "seed" ; prov:value ?seed . ?image prov:wasGeneratedBy ?a ;
            prov:qualifiedGeneration ?g . ?g prov:activity ?a ; pg:parameterName ?name .
            ?d rdfs:label "denoise" ; prov:used ?image }""")
        runs = cap.sparql("""SELECT ?run ?label ?campaign ?start WHERE { ?t a pg:Task ; pg:inWorkflowRun ?run .
            ?run rdfs:label ?label ; pg:inCampaign ?c ; prov:startedAtTime ?start ; pg:sourceTool "log" .
            ?c rdfs:label ?campaign }""")
        times = cap.sparql("SELECT ?start ?end WHERE { ?t a pg:Task ; prov:startedAtTime ?start ; "
                           "prov:endedAtTime ?end }")
    assert observer.interpreter.stats == {"lines": 11, "matched": 11, "unmatched": 0, "orphaned": 0, "tasks": 2}
    assert [t["status"] for t in tasks] == ["finished", "finished"]
    assert [t["inputs"] for t in tasks] == [
        {"sample": "SM-BFO-17", "exposure_ms": 20.0, "magnification": 40, "frames": 4, "seed": 1},
        {"sample": "SM-BFO-17", "exposure_ms": 50.0, "magnification": 40, "frames": 3, "seed": 2}]
    assert tasks[0]["outputs"] == images(tmp_path / "run1")
    assert tasks[1]["outputs"] == images(tmp_path / "run2")
    assert len(set(tasks[0]["outputs"].values()) | set(tasks[1]["outputs"].values())) == 7
    assert lineage == [{"seed": "2", "name": "image[1]"}]  # the analysis used the very image acquired
    assert {(r["label"], r["campaign"]) for r in runs} == {("microscope-acquisition", "mida")}
    # times are the log lines' own timestamps (local time), not when the observer read them
    logged = datetime.strptime(first_line[:23], "%Y-%m-%d %H:%M:%S,%f").astimezone()
    assert {datetime.fromisoformat(r["start"]) for r in runs} == {logged}
    assert min(datetime.fromisoformat(r["start"]) for r in times) == logged
    assert all(datetime.fromisoformat(r["start"]) <= datetime.fromisoformat(r["end"]) for r in times)


def test_followed_while_written_and_restarted_with_an_open_task(tmp_path: Path,
                                                                scope_logger: logging.Logger) -> None:
    """The real ``acquire`` logs to a file; the observer reads after every line, and is
    replaced by a new one (restarted from its checkpoint) in the middle of the acquisition."""
    log_file = tmp_path / "microscope.log"
    scope = load_microscope()
    patterns = logs.load_patterns(PATTERNS)
    seen_open: list[int] = []

    with capture() as cap:
        em = provgraph.get_emitter()
        observers = [logs.LogFileObserver(log_file, patterns, emitter=em)]

        class PollAfterEachLine(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                observer = observers[-1]
                observer.poll_once()
                if observer.interpreter.open is not None:
                    seen_open.append(len(observer.interpreter.open["outputs"]))
                if len(seen_open) == 3 and len(observers) == 1:  # restart mid-acquisition
                    observer.close()
                    observers.append(logs.LogFileObserver(log_file, patterns, emitter=em))

        scope_logger.addHandler(file_handler(log_file))
        scope_logger.addHandler(PollAfterEachLine())
        acquire(scope, tmp_path / "frames", 6, 24, 20.0, 40, 3, scope_logger)
        tasks = acquisitions(cap.tasks())
        checkpoint = json.loads(observers[-1].checkpoint.path.read_text())
    assert seen_open == [0, 1, 2, 3, 4, 5, 6]  # the task was open while the images were written
    assert len(observers) == 2 and observers[1].stats["polls"] == 5
    assert len(tasks) == 1
    assert tasks[0]["outputs"] == images(tmp_path / "frames") and len(tasks[0]["outputs"]) == 6
    assert tasks[0]["inputs"]["frames"] == 6 and tasks[0]["inputs"]["seed"] == 3
    assert checkpoint["open"] is None and checkpoint["offset"] == log_file.stat().st_size


def test_observer_process_killed_and_restarted(tmp_path: Path) -> None:
    """``provgraph observe log`` follows the file into the on-disk store, is SIGKILLed,
    the microscope runs again, a restarted observer records only what is new."""
    log_file = tmp_path / "microscope.log"
    data_dir = tmp_path / "observer-data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVGRAPH_")}
    env.update(PROVGRAPH_TRANSPORT="store", PROVGRAPH_FLUSH_INTERVAL="0.05")
    command = [sys.executable, "-m", "provgraph", "--data-dir", str(data_dir), "observe", "log", str(log_file),
               "--patterns", str(PATTERNS)]
    follower_out = open(tmp_path / "follower.out", "wb")  # a file, not a pipe nobody reads
    follower = subprocess.Popen([*command, "--interval", "0.05"], env=env, cwd=tmp_path,
                                stdout=follower_out, stderr=subprocess.STDOUT)
    try:
        microscope(tmp_path / "run1", log_file, frames=5, seed=11)  # the file appears after the observer started

        def recorded() -> int:
            files = list((data_dir / "observers").glob("log-*.json"))
            return int(json.loads(files[0].read_text())["stats"]["tasks"]) if files else 0

        deadline = time.monotonic() + 60
        while recorded() < 1:
            assert follower.poll() is None, (tmp_path / "follower.out").read_text()
            assert time.monotonic() < deadline, "the observer recorded nothing"
            time.sleep(0.05)
        follower.send_signal(signal.SIGKILL)
        follower.wait(10)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait(10)
        follower_out.close()
    microscope(tmp_path / "run2", log_file, frames=3, seed=12)
    once = subprocess.run([*command, "--once"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert once.returncode == 0, once.stderr
    assert "read 5 lines" in once.stdout and "2 tasks recorded" in once.stdout  # the checkpoint's counters

    expected = {**{("run1", k): v for k, v in images(tmp_path / "run1").items()},
                **{("run2", k): v for k, v in images(tmp_path / "run2").items()}}
    with Store(data_dir / "store", read_only=True) as store:
        tasks = select(store, """SELECT ?t ?seed WHERE { ?t a pg:Task ; rdfs:label "acquire" ; prov:used ?u .
            ?u pg:parameterName "seed" ; prov:value ?seed }""")
        assert sorted(r["seed"] for r in tasks) == ["11", "12"]
        values = select(store, """SELECT ?t ?name (COUNT(DISTINCT ?v) AS ?n) WHERE { ?t a pg:Task ; prov:used ?u .
            ?u pg:parameterName ?name ; prov:value ?v } GROUP BY ?t ?name""")
        assert len(values) == 2 * len(PARAMS) and all(r["n"] == "1" for r in values)
        generated = select(store, """SELECT ?seed ?name ?e WHERE { ?t prov:used ?u . ?u pg:parameterName "seed" ;
            prov:value ?seed . ?e prov:wasGeneratedBy ?t ; prov:qualifiedGeneration ?g .
            ?g prov:activity ?t ; pg:parameterName ?name }""")
    got = {("run1" if r["seed"] == "11" else "run2", r["name"]): r["e"] for r in generated}
    assert got == expected and len(generated) == 8


def test_log_handler_in_process(tmp_path: Path, scope_logger: logging.Logger) -> None:
    scope = load_microscope()
    patterns = logs.load_patterns(PATTERNS)

    @provgraph.task
    def calibrate_and_acquire(out: Path) -> None:
        acquire(scope, out, 2, 24, 10.0, 20, 5, scope_logger)

    with capture() as cap:
        handler = logs.LogHandler(patterns)
        scope_logger.addHandler(handler)
        with provgraph.workflow("beamtime", campaign="mida") as run:
            calibrate_and_acquire(tmp_path / "inside")
        acquire(scope, tmp_path / "outside", 3, 24, 30.0, 20, 6, scope_logger)  # no workflow: the handler's run
        scope_logger.removeHandler(handler)
        handler.close()
        tasks = acquisitions(cap.tasks())
        rows = cap.sparql("""SELECT ?seed ?run ?runlabel ?status ?parent WHERE { ?t rdfs:label "acquire" ;
            pg:inWorkflowRun ?run ; prov:used ?u . ?u pg:parameterName "seed" ; prov:value ?seed .
            ?run rdfs:label ?runlabel . OPTIONAL { ?run pg:status ?status }
            OPTIONAL { ?t pg:parentTask ?p . ?p rdfs:label ?parent } }""")
    by_seed = {r["seed"]: r for r in rows}
    assert set(by_seed) == {"5", "6"}
    assert by_seed["5"]["run"].endswith(run.run_id) and by_seed["5"]["parent"] == "calibrate_and_acquire"
    assert (by_seed["6"]["runlabel"], by_seed["6"]["status"], by_seed["6"]["parent"]) == (
        "microscope-acquisition", "finished", None)
    assert [t["outputs"] for t in tasks] == [images(tmp_path / "inside"), images(tmp_path / "outside")]
    assert tasks[1]["inputs"] == {"sample": "SM-BFO-17", "exposure_ms": 30.0, "magnification": 20, "frames": 3,
                                  "seed": 6}


def test_rotation_truncation_and_partial_lines(tmp_path: Path, scope_logger: logging.Logger) -> None:
    scope = load_microscope()
    patterns = logs.load_patterns(PATTERNS)
    log_file = tmp_path / "microscope.log"
    with capture() as cap:
        observer = logs.LogFileObserver(log_file, patterns, emitter=provgraph.get_emitter())
        assert observer.poll_once() == 0  # no file yet

        # a rotating handler: several rotations between two reads of the observer
        rotating = logging.handlers.RotatingFileHandler(log_file, maxBytes=300, backupCount=20)
        scope_logger.addHandler(file_handler(log_file, rotating))
        observer.poll_once()  # opens the (empty) file
        acquire(scope, tmp_path / "rotated", 8, 24, 20.0, 40, 21, scope_logger)
        assert len(list(tmp_path.glob("microscope.log.*"))) >= 3
        assert observer.poll_once() == 10
        assert observer.stats["rotations"] >= 3
        scope_logger.removeHandler(rotating)
        rotating.close()

        # the program restarts and overwrites its log (mode "w"): a longer file than before
        log_file.unlink()
        for old in tmp_path.glob("microscope.log.*"):
            old.unlink()
        plain = file_handler(log_file, logging.FileHandler(log_file, mode="w"))
        scope_logger.addHandler(plain)
        acquire(scope, tmp_path / "first", 1, 24, 20.0, 40, 22, scope_logger)
        assert observer.poll_once() == 3  # a new file: rotation (the old one is gone)
        scope_logger.removeHandler(plain)
        plain.close()
        overwrite = file_handler(log_file, logging.FileHandler(log_file, mode="w"))
        scope_logger.addHandler(overwrite)
        acquire(scope, tmp_path / "second", 4, 24, 20.0, 40, 23, scope_logger)  # same inode, truncated, longer
        assert observer.poll_once() == 6
        assert observer.stats["truncations"] == 1

        # a partial last line waits for its newline
        now = datetime.now().strftime("%Y-%m-%d %H:%M:%S,%f")[:23]
        with open(log_file, "a") as fh:
            fh.write(f"{now} INFO microscope: acquisition started sample=X exposure_ms=1 magnification=2")
            fh.flush()
            assert observer.poll_once() == 0 and observer.interpreter.open is None
            fh.write(f" frames=0 seed=24\n{now} INFO microscope: unrelated line\n")
        assert observer.poll_once() == 2 and observer.interpreter.open is not None
        assert observer.end_open_task() == 1  # the program has exited without its end line
        tasks = acquisitions(cap.tasks())
    assert [t["inputs"]["seed"] for t in tasks] == [21, 22, 23, 24]
    assert tasks[0]["outputs"] == images(tmp_path / "rotated") and len(tasks[0]["outputs"]) == 8
    assert tasks[1]["outputs"] == images(tmp_path / "first")
    assert tasks[2]["outputs"] == images(tmp_path / "second")
    assert [t["status"] for t in tasks] == ["finished", "finished", "finished", "failed"]
    assert tasks[3]["error"] == "the log ended before an end line"
    assert tasks[3]["inputs"] == {"sample": "X", "exposure_ms": 1, "magnification": 2, "frames": 0, "seed": 24}
    assert observer.interpreter.stats["unmatched"] == 1


def test_rotation_while_the_observer_is_stopped(tmp_path: Path, scope_logger: logging.Logger) -> None:
    scope = load_microscope()
    patterns = logs.load_patterns(PATTERNS)
    log_file = tmp_path / "microscope.log"
    rotating = logging.handlers.RotatingFileHandler(log_file, maxBytes=400, backupCount=20)
    scope_logger.addHandler(file_handler(log_file, rotating))
    with capture() as cap:
        em = provgraph.get_emitter()
        first = logs.LogFileObserver(log_file, patterns, emitter=em)
        scope_logger.info("acquisition started sample=S exposure_ms=5 magnification=10 frames=6 seed=31")
        assert first.poll_once() == 1
        first.close()
        acquire(scope, tmp_path / "frames", 6, 24, 5.0, 10, 32, scope_logger)  # rotates while nobody watches
        second = logs.LogFileObserver(log_file, patterns, emitter=em)
        assert second.poll_once() == 8
        tasks = acquisitions(cap.tasks())
    assert second.stats["missed_rotations"] == 0 and second.stats["rotations"] >= 2
    assert [(t["inputs"]["seed"], t["status"]) for t in tasks] == [(31, "failed"), (32, "finished")]
    assert tasks[1]["outputs"] == images(tmp_path / "frames")


BAD = [
    ("[workflow]\nname = 'w'\n[[pattern]]\nname = 'start'\nregex = '(?P<x>[unclosed'\naction = 'start'\n",
     r"pattern 'start': invalid regex"),
    ("[workflow]\nname = 'w'\n[[pattern]]\nname = 'img'\nregex = 'wrote (?P<path>\\S+)'\naction = 'start'\n"
     "files = ['image']\n", r"pattern 'img': files names group\(s\) image that the regex does not define"),
    ("[workflow]\nname = 'w'\n[[pattern]]\nname = 'go'\nregex = 'go'\naction = 'begin'\n",
     r"pattern 'go': unknown action 'begin'"),
    ("[workflow]\nname = 'w'\n[[pattern]]\nname = 'step'\nregex = 'x=(?P<x>\\d+)'\ngenerated = ['x']\n",
     r"no pattern starts a task"),
    ("[workflow]\nname = 'w'\n[[pattern]]\nname = 's'\nregex = 's'\naction = 'start'\nkey = '{frame}'\n",
     r"pattern 's': key uses frame"),
    ("[[pattern]]\nname = 's'\nregex = 's'\naction = 'start'\n", r"\[workflow\] name must be"),
    ("[workflow\nname = 'w'\n", r"is not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_pattern_file_is_a_config_error_naming_the_pattern(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "patterns.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        logs.load_patterns(path)


def test_cli_reports_bad_patterns_and_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD[0][0])
    assert cli_main(["observe", "log", str(tmp_path / "x.log"), "--patterns", str(bad), "--once"]) == 2
    assert "pattern 'start': invalid regex" in capsys.readouterr().err
    assert cli_main(["observe", "log", "x.log", "--patterns", str(tmp_path / "missing.toml"), "--once"]) == 2
    assert "missing.toml does not exist" in capsys.readouterr().err
    assert cli_main(["observe", "log", "x.log", "--patterns", str(PATTERNS), "--interval", "-1"]) == 2
    assert "--interval must be a positive number of seconds" in capsys.readouterr().err

    log_file = tmp_path / "microscope.log"
    microscope(tmp_path / "frames", log_file, frames=2, seed=41)
    with open(log_file, "a") as fh:
        fh.write("some other line\n")
    assert cli_main(["--data-dir", str(load_settings().data_dir), "observe", "log", str(log_file), "--patterns",
                     str(PATTERNS), "--once"]) == 0
    out = capsys.readouterr().out
    assert "read 5 lines" in out and "1 tasks recorded, 4 lines matched, 1 unmatched, 0 outside any task" in out


GENERIC = """
[workflow]
name = "pipeline"

[[pattern]]
name = "convert"                       # one line, one task
regex = 'converted (?P<src>\\S+) -> (?P<dst>\\S+) in (?P<seconds>[0-9.]+)s'
action = "task"
task = "convert {src}"
used = ["src"]
generated = ["dst", "seconds"]
files = ["src", "dst"]

[[pattern]]
name = "fit-start"
regex = 'fit lr=(?P<lr>\\S+)'
action = "start"
task = "fit"

[[pattern]]
name = "epoch"
regex = 'epoch (?P<epoch>\\d+) loss=(?P<loss>\\S+)'
generated = ["loss"]
key = "loss@{epoch}"

[[pattern]]
name = "note"
regex = 'note (?P<note>\\S+)'
used = "*"

[[pattern]]
name = "diverged"
regex = 'ERROR (?P<message>.+)'
action = "fail"
error = "message"
"""


def test_generic_patterns_fail_task_templates_and_counters(tmp_path: Path) -> None:
    patterns_file = tmp_path / "patterns.toml"
    patterns_file.write_text(GENERIC)
    raw, out = tmp_path / "raw.dat", tmp_path / "out.dat"
    raw.write_bytes(b"raw bytes " * 10)
    out.write_bytes(b"converted " * 10)
    log_file = tmp_path / "pipeline.log"
    log_file.write_text("\n".join([
        "epoch 0 loss=1.0",                                  # outside any task: orphaned
        "converted raw.dat -> out.dat in 0.5s",              # relative paths: next to the log
        "fit lr=0.1", "epoch 0 loss=0.9", "note first", "note second", "epoch 1 loss=0.4",
        "something else entirely",                           # unmatched
        "ERROR loss is NaN at epoch 2",
    ]) + "\n")
    with capture() as cap:
        observer = logs.LogFileObserver(log_file, logs.load_patterns(patterns_file), emitter=provgraph.get_emitter())
        assert observer.poll_once() == 9
        tasks = {t["label"]: t for t in cap.tasks()}
    assert observer.interpreter.stats == {"lines": 9, "matched": 8, "unmatched": 1, "orphaned": 1, "tasks": 2}
    convert, fit = tasks["convert raw.dat"], tasks["fit"]
    assert convert["status"] == "finished"
    assert convert["inputs"] == {"src": hash_bytes(raw.read_bytes())}
    assert convert["outputs"] == {"dst": hash_bytes(out.read_bytes()), "seconds": 0.5}
    assert (fit["status"], fit["error"]) == ("failed", "loss is NaN at epoch 2")
    assert fit["inputs"] == {"lr": 0.1, "note": "first", "note#2": "second"}
    assert fit["outputs"] == {"loss@0": 0.9, "loss@1": 0.4}


def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    log_file = tmp_path / "microscope.log"
    log_file.write_text("")
    patterns = logs.load_patterns(PATTERNS)
    with logs.LogFileObserver(log_file, patterns) as observer:
        observer.poll_once()
        path = observer.checkpoint.path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=f"checkpoint {path} is corrupt"):
        logs.LogFileObserver(log_file, patterns)


def test_task_spanning_a_rotation_with_a_gap_before_the_new_file(tmp_path: Path) -> None:
    """logrotate without ``create``: the log is renamed, and appears again only with the
    program's next line. The open task survives, nothing is read twice."""
    log_file = tmp_path / "microscope.log"
    frames = [tmp_path / f"frame_{i}.npz" for i in range(3)]
    for i, frame in enumerate(frames):
        frame.write_bytes(bytes([i]) * 64)
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S,%f")[:23]

    def line(text: str) -> str:
        return f"{stamp} INFO microscope: {text}\n"

    with capture() as cap:
        observer = logs.LogFileObserver(log_file, logs.load_patterns(PATTERNS), emitter=provgraph.get_emitter())
        log_file.write_text(line("acquisition started sample=S exposure_ms=1 magnification=2 frames=3 seed=51")
                            + line(f"wrote image {frames[0]} frame=0"))
        assert observer.poll_once() == 2
        with open(log_file, "a") as fh:
            fh.write(line(f"wrote image {frames[1]} frame=1"))
        log_file.rename(tmp_path / "microscope.log.1")
        assert observer.poll_once() == 1  # the rest of the renamed file; no log file now
        assert observer.poll_once() == 0
        log_file.write_text(line(f"wrote image {frames[2]} frame=2") + line("acquisition finished frames=3"))
        assert observer.poll_once() == 2
        tasks = acquisitions(cap.tasks())
    assert [t["status"] for t in tasks] == ["finished"]
    assert tasks[0]["outputs"] == {f"image[{i}]": hash_bytes(f.read_bytes()) for i, f in enumerate(frames)}
    assert observer.interpreter.stats["lines"] == 5


def test_log_handler_in_an_unchanged_program_delivers_at_exit(tmp_path: Path) -> None:
    """Two lines before the microscope's unchanged ``main``: a handler on its logger. At
    exit the handler's run is ended and everything reaches the on-disk store."""
    data_dir, out = tmp_path / "pgdata-exit", tmp_path / "frames"
    launcher = tmp_path / "launch.py"
    launcher.write_text(f"""
import logging, runpy, sys
from provgraph.adapters.logs import LogHandler, load_patterns
logging.getLogger("microscope").addHandler(LogHandler(load_patterns({str(PATTERNS)!r})))
sys.argv = ["microscope.py", {str(out)!r}, {str(tmp_path / "microscope.log")!r}, "--frames", "3", "--size", "20"]
runpy.run_path({str(EXAMPLE / "microscope.py")!r}, run_name="__main__")
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVGRAPH_")}
    env.update(PROVGRAPH_DATA_DIR=str(data_dir), PROVGRAPH_TRANSPORT="store")
    subprocess.run([sys.executable, str(launcher)], check=True, timeout=120, env=env, cwd=tmp_path)
    with Store(data_dir / "store", read_only=True) as store:
        rows = select(store, """SELECT ?status ?run ?runstatus WHERE { ?t rdfs:label "acquire" ; pg:status ?status ;
            pg:inWorkflowRun ?r . ?r rdfs:label ?run ; pg:status ?runstatus }""")
        generated = select(store, """SELECT ?name ?e WHERE { ?t rdfs:label "acquire" . ?e prov:wasGeneratedBy ?t ;
            prov:qualifiedGeneration ?g . ?g prov:activity ?t ; pg:parameterName ?name }""")
    assert rows == [{"status": "finished", "run": "microscope-acquisition", "runstatus": "finished"}]
    assert {r["name"]: r["e"] for r in generated} == images(out)
