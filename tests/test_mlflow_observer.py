"""The MLflow observer on a real sqlite tracking store filled by an unmodified MLflow script."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import provgraph
from provgraph.cli import main as cli_main
from provgraph.errors import ConfigError
from provgraph.hashing import hash_bytes
from provgraph.settings import load_settings
from provgraph.store import Store
from provgraph.testing import capture

from .support.mlflow_store import clean_env, log_runs, observer_command, run_ids
from .support.rdf import select
from .support.servers import free_port

pg_mlflow = pytest.importorskip("provgraph.adapters.mlflow")


def _uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _checkpoint(data_dir: Path) -> dict[str, Any]:
    files = list((data_dir / "observers").glob("mlflow-*.json"))
    if not files:
        return {}
    return dict(json.loads(files[0].read_text()))


def _wait(what: str, cond: Any, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_runs_params_metrics_artifacts_parents_statuses(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    ids_file = tmp_path / "ids.txt"
    log_runs(tmp_path, uri, ids_file, "full", 2)
    sweep, fold, diverged, stopped, plain0, plain1 = run_ids(ids_file)
    weights = (tmp_path / "weights.bin").read_bytes()

    @provgraph.task
    def load_weights(path: Path) -> int:  # a provgraph task that reads the same file
        return len(path.read_bytes())

    with capture() as cap:
        only_default = pg_mlflow.MlflowObserver(uri, emitter=provgraph.get_emitter(), experiments=["Default"])
        assert only_default.poll_once() == 0  # the script logged nothing to "Default"
        assert only_default.checkpoint.path != pg_mlflow.MlflowObserver(uri, emitter=provgraph.get_emitter(),
                                                                        ).checkpoint.path
        observer = pg_mlflow.MlflowObserver(uri, emitter=provgraph.get_emitter(), experiments=["training"])
        assert observer.poll_once() == 6
        assert observer.poll_once() == 0  # nothing new: nothing re-emitted
        load_weights(tmp_path / "weights.bin")
        store = cap.store()
        from mlflow.tracking import MlflowClient

        user = MlflowClient(uri).get_run(sweep).info.user_id

    tasks = {r["key"]: r for r in select(store, """
        SELECT ?t ?key ?label ?status ?start ?end ?run ?wf ?user ?parent ?etype WHERE {
          ?t a prov:Activity, pg:Task ; pg:externalId ?key ; rdfs:label ?label ; pg:status ?status ;
             prov:startedAtTime ?start ; prov:endedAtTime ?end ; pg:inWorkflowRun ?run ;
             prov:wasAssociatedWith ?agent .
          ?agent rdfs:label ?user . ?run rdfs:label ?wf ; pg:sourceTool "mlflow" .
          OPTIONAL { ?t pg:parentTask ?p . ?p pg:externalId ?parent }
          OPTIONAL { ?t pg:errorType ?etype } }""")}
    assert set(tasks) == {sweep, fold, diverged, stopped, plain0, plain1}
    assert {k: r["label"] for k, r in tasks.items()} == {
        sweep: "sweep", fold: "fold-1", diverged: "diverged", stopped: "stopped", plain0: "full-0",
        plain1: "full-1"}
    assert {k: (r["status"], r["etype"]) for k, r in tasks.items()} == {
        sweep: ("finished", None), fold: ("finished", None), diverged: ("failed", "MLflowRunFailed"),
        stopped: ("failed", "MLflowRunKilled"), plain0: ("finished", None), plain1: ("finished", None)}
    assert {k for k, r in tasks.items() if r["parent"]} == {fold}
    assert tasks[fold]["parent"] == sweep
    assert [(r["wf"], r["user"]) for r in tasks.values()] == [("training", user)] * 6
    assert all(_time(r["start"]) <= _time(r["end"]) for r in tasks.values())
    assert tasks[sweep]["t"] == "urn:provgraph:local/task/" + pg_mlflow.task_id_of(uri, sweep)
    experiments = select(store, """SELECT ?run ?label ?id WHERE { ?run a pg:WorkflowRun ; pg:sourceTool "mlflow" ;
        rdfs:label ?label ; <urn:provgraph:local/attr/mlflow.experimentId> ?id }""")
    assert [(r["label"], r["run"]) for r in experiments] == [  # the empty "Default" experiment is not recorded
        ("training", "urn:provgraph:local/run/" + pg_mlflow.experiment_run_id(uri, experiments[0]["id"]))]

    by_label = {t["label"]: t for t in cap_tasks(store)}
    data_path = str((tmp_path / "weights.bin").resolve())
    assert by_label["sweep"]["inputs"] == {"lr": 0.01, "epochs": 3, "optimizer": "adam",
                                           "data": hash_bytes(weights)}  # an existing path: hashed
    assert data_path  # the param named the file the script wrote
    assert by_label["sweep"]["outputs"] == {"loss": 0.25, "loss@0": 0.9, "loss@1": 0.5, "loss@2": 0.25,
                                            "accuracy": 0.75,
                                            "artifact:checkpoints/weights.bin": hash_bytes(weights)}
    assert by_label["fold-1"]["inputs"] == {"fold": 1} and by_label["fold-1"]["outputs"] == {"val_loss": 0.3}
    assert by_label["diverged"]["inputs"] == {"lr": 10.0} and by_label["diverged"]["outputs"] == {}
    assert by_label["full-1"]["outputs"] == {"score": 0.1}

    # the logged artifact is the very entity a provgraph task used: one lineage graph
    links = select(store, f"""SELECT ?mlflow ?task WHERE {{
        <{hash_bytes(weights)}> prov:wasGeneratedBy ?m . ?m pg:externalId ?mlflow .
        ?t prov:used <{hash_bytes(weights)}> ; rdfs:label ?task . FILTER NOT EXISTS {{ ?t pg:externalId ?x }} }}""")
    assert links == [{"mlflow": sweep, "task": "load_weights"}]


def cap_tasks(store: Store) -> list[dict[str, Any]]:
    """Inputs/outputs per task, by parameter name (values, or artifact IRIs)."""
    out: dict[str, dict[str, Any]] = {}
    for r in select(store, """SELECT ?t ?label WHERE { ?t a pg:Task ; rdfs:label ?label }"""):
        out[r["t"]] = {"label": r["label"], "inputs": {}, "outputs": {}}
    rows = select(store, """SELECT ?t ?dir ?name ?v ?e WHERE {
        { ?t prov:used ?e . BIND("inputs" AS ?dir)
          OPTIONAL { ?e pg:parameterName ?n1 } OPTIONAL { ?t prov:qualifiedUsage ?q1 . ?q1 prov:entity ?e ;
                                                                              pg:parameterName ?n2 } }
        UNION
        { ?e prov:wasGeneratedBy ?t . BIND("outputs" AS ?dir)
          OPTIONAL { ?e pg:parameterName ?n1 } OPTIONAL { ?e prov:qualifiedGeneration ?q2 . ?q2 prov:activity ?t ;
                                                                                  pg:parameterName ?n2 } }
        OPTIONAL { ?e prov:value ?v } BIND(COALESCE(?n1, ?n2) AS ?name) }""")
    store_values = {(r["t"], r["e"]): r["v"] for r in rows}
    for r in rows:
        value: Any = r["e"] if r["v"] is None else _number(store_values[(r["t"], r["e"])])
        entry = out[r["t"]][r["dir"]]
        assert r["name"] not in entry or entry[r["name"]] == value, f"two values for {r['name']}"
        entry[r["name"]] = value
    return list(out.values())


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def test_running_run_is_recorded_when_it_ends(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    ids_file = tmp_path / "ids.txt"
    proc = log_runs(tmp_path, uri, ids_file, "hold", 2, wait=False)
    try:
        _wait("the held run to start", lambda: len(run_ids(ids_file)) == 3 or proc.poll() is not None)
        first, second, held = run_ids(ids_file)
        with capture() as cap:
            observer = pg_mlflow.MlflowObserver(uri, emitter=provgraph.get_emitter())
            assert observer.poll_once() == 2
            assert observer.stats["pending"] == 1
            (tmp_path / "release").touch()
            assert proc.wait(60) == 0
            assert observer.poll_once() == 1  # an incremental poll (end-time watermark) finds it
            assert observer.stats["pending"] == 0 and observer.stats["polls"] == 2
            tasks = {t["label"]: t for t in cap.tasks()}
    finally:
        if proc.poll() is None:
            proc.kill()
    assert set(tasks) == {"hold-0", "hold-1", "held"}
    assert tasks["held"]["status"] == "finished"
    assert tasks["held"]["inputs"] == {"held": "yes"} and tasks["held"]["outputs"] == {"score": 1.0}
    checkpoint = _checkpoint(load_settings().data_dir)
    assert set(checkpoint["seen"]) == {first, second, held}


def test_observer_killed_and_restarted_records_every_run_once(tmp_path: Path) -> None:
    """SIGKILL an observer process mid-stream, restart it: no run missing, none twice."""
    uri = _uri(tmp_path)
    ids_file = tmp_path / "ids.txt"
    data_dir = tmp_path / "observer-data"
    env = clean_env(PROVGRAPH_TRANSPORT="store", PROVGRAPH_FLUSH_INTERVAL="0.05")
    script = log_runs(tmp_path, uri, ids_file, "gated", 10, pause=0.05, wait=False)
    _wait("the first run", lambda: len(run_ids(ids_file)) >= 1 or script.poll() is not None)
    first_out, second_out = open(tmp_path / "observer-1.out", "wb"), open(tmp_path / "observer-2.out", "wb")
    observer = subprocess.Popen(observer_command(data_dir, uri, "--interval", "0.1"), env=env, cwd=tmp_path,
                                stdout=first_out, stderr=subprocess.STDOUT)
    restarted: subprocess.Popen[bytes] | None = None
    try:
        _wait("the observer to checkpoint 3 runs",
              lambda: len(_checkpoint(data_dir).get("seen", {})) >= 3 or observer.poll() is not None)
        assert observer.poll() is None, (tmp_path / "observer-1.out").read_text()
        observer.send_signal(signal.SIGKILL)
        observer.wait(10)
        before = set(_checkpoint(data_dir)["seen"])
        assert script.poll() is None and len(run_ids(ids_file)) == 5  # half of the runs are still to come
        (tmp_path / "continue").touch()

        restarted = subprocess.Popen(observer_command(data_dir, uri, "--interval", "0.1"), env=env,
                                     cwd=tmp_path, stdout=second_out, stderr=subprocess.STDOUT)
        assert script.wait(120) == 0
        expected = set(run_ids(ids_file))
        assert len(expected) == 10
        _wait("the restarted observer to see every run",
              lambda: set(_checkpoint(data_dir).get("seen", {})) == expected or restarted.poll() is not None)
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(60)
        out = (tmp_path / "observer-2.out").read_text()
        assert restarted.returncode == 0, out
    finally:
        for proc in (script, observer, restarted):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        first_out.close()
        second_out.close()
    assert f"recorded {len(expected) - len(before)} MLflow runs" in out  # nothing re-read after the restart

    once = subprocess.run(observer_command(data_dir, uri, "--once"), env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert once.returncode == 0, once.stderr
    assert "recorded 0 MLflow runs" in once.stdout

    with Store(data_dir / "store", read_only=True) as store:
        tasks = select(store, "SELECT ?t ?key WHERE { ?t a pg:Task ; pg:externalId ?key }")
        assert len(tasks) == len(expected) and {r["key"] for r in tasks} == expected
        per_task = select(store, """SELECT ?key (COUNT(DISTINCT ?v) AS ?scores) (COUNT(DISTINCT ?s) AS ?starts)
            (COUNT(DISTINCT ?i) AS ?params) WHERE {
              ?t pg:externalId ?key ; prov:startedAtTime ?s ; prov:used ?in .
              ?in pg:parameterName "i" ; prov:value ?i .
              ?out prov:wasGeneratedBy ?t ; pg:parameterName "score" ; prov:value ?v } GROUP BY ?key""")
        assert len(per_task) == len(expected)
        assert all((r["scores"], r["starts"], r["params"]) == ("1", "1", "1") for r in per_task), per_task
        scores = select(store, """SELECT ?label ?v WHERE { ?t rdfs:label ?label .
            ?out prov:wasGeneratedBy ?t ; pg:parameterName "score" ; prov:value ?v }""")
        assert {r["label"]: float(r["v"]) for r in scores} == {f"gated-{i}": i / 10 for i in range(10)}


def test_bad_tracking_uri_and_unreachable_server_are_clear_errors(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere" / "mlflow.db"
    with pytest.raises(ConfigError, match=r"no MLflow database at .*nowhere"):
        pg_mlflow.MlflowObserver(f"sqlite:///{missing}")
    assert not missing.parent.exists()  # the observer never creates a store

    assert cli_main(["observe", "mlflow", "--tracking-uri", f"sqlite:///{missing}", "--once"]) == 2
    assert "no MLflow database at" in capsys.readouterr().err

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    url = f"http://127.0.0.1:{free_port()}"
    assert cli_main(["observe", "mlflow", "--tracking-uri", url, "--once"]) == 1
    err = capsys.readouterr().err
    assert f"cannot read the MLflow tracking store {url}" in err
    assert not list((load_settings().data_dir / "observers").glob("mlflow-*.json"))  # nothing checkpointed


def test_ids_and_param_parsing_are_deterministic(tmp_path: Path) -> None:
    rel = pg_mlflow.normalize_uri("sqlite:///mlflow.db")
    assert rel == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert pg_mlflow.normalize_uri(f"sqlite:///{tmp_path / 'mlflow.db'}") == rel
    assert pg_mlflow.normalize_uri("http://u:secret@host:5000") == "http://host:5000"
    assert pg_mlflow.task_id_of("sqlite:///mlflow.db", "abc") == pg_mlflow.task_id_of(rel, "abc")
    assert pg_mlflow.task_id_of(rel, "abc") != pg_mlflow.task_id_of("http://host:5000", "abc")
    assert [pg_mlflow.parse_param(v) for v in ("3", "-0.5", "1e-4", "007", "adam", "nan", "")] == [
        3, -0.5, 1e-4, "007", "adam", "nan", ""]


def test_mida_campaign_is_one_lineage_graph(tmp_path: Path) -> None:
    """The three MIDA workflows, each observed its own way: the microscope's log (log
    observer), training with ``@provgraph.task``, the unmodified MLflow evaluation
    (``examples/mida_campaign/evaluate.py``, MLflow observer). Content hashes join them."""
    from provgraph.adapters.logs import LogFileObserver, load_patterns

    example = Path(__file__).resolve().parents[1] / "examples" / "mida_campaign"
    frames, models, log_file = tmp_path / "frames", tmp_path / "models", tmp_path / "microscope.log"
    subprocess.run([sys.executable, str(example / "microscope.py"), str(frames), str(log_file), "--frames", "5",
                    "--size", "20"], check=True, timeout=120, env=clean_env())
    spec = importlib.util.spec_from_file_location("mida_hpsearch", example / "hpsearch.py")
    assert spec is not None and spec.loader is not None
    hpsearch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hpsearch)
    features, train = provgraph.task(hpsearch.features), provgraph.task(hpsearch.train)
    models.mkdir()
    uri = _uri(tmp_path)

    with capture() as cap:
        emitter = provgraph.get_emitter()
        LogFileObserver(log_file, load_patterns(example / "microscope_patterns.toml"), emitter=emitter).poll_once()
        with provgraph.workflow("hyperparameter-search", campaign="mida"):
            parts = [features(str(f)) for f in sorted(frames.glob("*.npz"))[:2]]
            summary = [{"lr": lr, "l2": 0.0, "epochs": 5, **train(lr, 0.0, 5, str(models), *parts)}
                       for lr in (0.01, 0.02)]
        (models / "summary.json").write_text(json.dumps(summary))
        evaluation = subprocess.run([sys.executable, str(example / "evaluate.py"), str(models), str(frames),
                                     "--top", "2"], cwd=tmp_path, env=clean_env(MLFLOW_TRACKING_URI=uri),
                                    capture_output=True, text=True, timeout=120)
        assert evaluation.returncode == 0, evaluation.stderr
        assert pg_mlflow.MlflowObserver(uri, emitter=emitter).poll_once() == 2
        lineage = cap.sparql("""SELECT DISTINCT ?eval ?frame ?seed WHERE {
            ?e pg:sourceTool "mlflow" ; rdfs:label ?eval ; prov:used ?model .
            ?model prov:wasGeneratedBy ?t . ?t rdfs:label "train" ; prov:used ?part .
            ?part prov:wasGeneratedBy ?f . ?f rdfs:label "features" ; prov:used ?frame .
            ?frame prov:wasGeneratedBy ?a . ?a rdfs:label "acquire" ; prov:used ?s .
            ?s pg:parameterName "seed" ; prov:value ?seed }""")
        evals = {t["label"]: t for t in cap.tasks() if t["label"].startswith("eval-")}
    frame_ids = {hash_bytes(f.read_bytes()) for f in sorted(frames.glob("*.npz"))[:2]}
    assert {(r["eval"], r["frame"], r["seed"]) for r in lineage} == {
        (e, f, "7") for e in ("eval-rank1", "eval-rank2") for f in frame_ids}
    plots = {hash_bytes(p.read_bytes()) for p in tmp_path.glob("mlruns/**/frame_mse.svg")}
    assert len(plots) == 2 and {t["outputs"]["artifact:frame_mse.svg"] for t in evals.values()} == plots
    for t in evals.values():
        assert set(t["outputs"]) == {"mse", "frame_mse", "frame_mse@0", "frame_mse@1", "frame_mse@2",
                                     "artifact:frame_mse.svg"}
        assert t["inputs"]["epochs"] == 5 and t["inputs"]["lr"] in (0.01, 0.02)
