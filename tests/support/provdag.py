"""A generated provenance DAG (tasks, content-hashed artifacts, parameters) for lineage
tests and benchmarks, with the same edges as a networkx graph for an independent check.

Tasks come in workflow runs of ``run_length``; task ``i`` generates artifact ``i``, uses
the previous task's artifact in its run, its own parameter entity and, with probability
``cross``, one artifact of an earlier task (a cross-run link); some tasks were informed
by the previous task or have a parent task.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

BASE = "https://example.org/fac/"
PROV = "http://www.w3.org/ns/prov#"
PG = "https://w3id.org/provgraph/ns#"
RDF_TYPE = "<http://www.w3.org/1999/02/22-rdf-syntax-ns#type>"
XSD = "http://www.w3.org/2001/XMLSchema#"


def task(i: int) -> str:
    return f"{BASE}task/t{i}"


def artifact(i: int) -> str:
    return f"ni:///sha-256;a{i}"


def param(i: int) -> str:
    return f"{BASE}task/t{i}/in/lr"


def edges(n_tasks: int, *, seed: int = 7, run_length: int = 20, cross: float = 0.05,
          window: int = 5000) -> Iterator[tuple[str, str, str]]:
    """(subject, relation name, object) in PROV direction."""
    rng = random.Random(seed)
    for i in range(n_tasks):
        t = task(i)
        yield artifact(i), "wasGeneratedBy", t
        yield t, "used", param(i)
        if i % run_length:
            yield t, "used", artifact(i - 1)
            if rng.random() < 0.2:
                yield t, "wasInformedBy", task(i - 1)
        if i >= run_length and rng.random() < cross:
            j = rng.randrange(max(0, i - window), i - (i % run_length)) if i - (i % run_length) > 0 else 0
            yield t, "used", artifact(j)
            if rng.random() < 0.3:
                yield artifact(i), "wasDerivedFrom", artifact(j)
        if i % run_length > 1 and rng.random() < 0.05:
            yield t, "parentTask", task(i - (i % run_length))


_PRED = {"wasGeneratedBy": f"<{PROV}wasGeneratedBy>", "used": f"<{PROV}used>",
         "wasInformedBy": f"<{PROV}wasInformedBy>", "wasDerivedFrom": f"<{PROV}wasDerivedFrom>",
         "parentTask": f"<{PG}parentTask>"}


def nquads(n_tasks: int, *, seed: int = 7, run_length: int = 20, cross: float = 0.05,
           chunk: int = 20000) -> Iterator[bytes]:
    """The DAG as N-Quads (one named graph per run), with the non-lineage statements a
    real store holds (types, labels, start times, values), in chunks of bytes."""
    lines: list[str] = []
    started = 0
    for s, rel, o in edges(n_tasks, seed=seed, run_length=run_length, cross=cross):
        if rel == "wasGeneratedBy":  # once per task: its own statements
            i = int(o.rsplit("t", 1)[1])
            g = f"<{BASE}graph/r{i // run_length}>"
            t = f"<{o}>"
            started += 1
            sec = i % 60
            lines.append(
                f"{t} {RDF_TYPE} <{PROV}Activity> {g} .\n{t} {RDF_TYPE} <{PG}Task> {g} .\n"
                f"{t} <http://www.w3.org/2000/01/rdf-schema#label> \"step{i % run_length}\" {g} .\n"
                f"{t} <{PG}inWorkflowRun> <{BASE}run/r{i // run_length}> {g} .\n"
                f"{t} <{PROV}startedAtTime> \"2026-01-01T{(i // 3600) % 24:02d}:{(i // 60) % 60:02d}:{sec:02d}Z\""
                f"^^<{XSD}dateTime> {g} .\n"
                f"<{s}> {RDF_TYPE} <{PROV}Entity> {g} .\n<{s}> {RDF_TYPE} <{PG}DataArtifact> {g} .\n"
                f"<{param(i)}> {RDF_TYPE} <{PROV}Entity> {g} .\n"
                f"<{param(i)}> <{PROV}value> \"{(i % 7) / 10}\"^^<{XSD}double> {g} .\n")
        elif s.startswith(f"{BASE}task/t"):  # a task's relation: in its run's graph
            g = f"<{BASE}graph/r{int(s.rsplit('/t', 1)[1]) // run_length}>"
        else:  # an artifact's derivation
            g = f"<{BASE}graph/misc>"
        lines.append(f"<{s}> {_PRED[rel]} <{o}> {g} .\n")
        if len(lines) >= chunk:
            yield "".join(lines).encode()
            lines.clear()
    if lines:
        yield "".join(lines).encode()


def digraph(n_tasks: int, **kwargs: object) -> object:
    """A ``networkx.DiGraph`` with an edge ``subject → object`` per relation."""
    import networkx as nx

    g = nx.DiGraph()
    g.add_edges_from((s, o) for s, _, o in edges(n_tasks, **kwargs))  # type: ignore[arg-type]
    return g


# -- a small campaign recorded with the real capture API ------------------------------

CAMPAIGN = "mida-test"
LEARNING_RATES = (0.01, 0.1, 0.3, 0.9)  # 0.9 fails (diverges)


def record_campaign(workdir: object, **settings: object) -> dict[str, object]:
    """Run three small workflows with ``@provgraph.task`` into memory and return what a
    test needs to know: ``nquads`` (everything captured), the files written and the run
    IDs. ``acquire`` writes raw.bin; ``hpsearch`` preprocesses it (declaring a config
    file with ``provgraph.used``) and trains one model per learning rate (the last one
    fails); ``evaluate`` reads the best model under another name. Telemetry is
    ``task``-level unless ``settings`` say otherwise."""
    import shutil
    from pathlib import Path

    import provgraph
    from provgraph.testing import capture

    root = Path(str(workdir))
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, object] = {"runs": {}}

    @provgraph.task
    def acquire(n_frames: int) -> Path:
        p = root / "raw.bin"
        p.write_bytes(bytes(range(n_frames)) * 100)
        return p

    @provgraph.task
    def preprocess(raw: Path) -> Path:
        cfg = root / "preprocess.toml"
        cfg.write_text("normalize = true\n")
        provgraph.used(cfg)
        p = root / "clean.bin"
        p.write_bytes(raw.read_bytes()[::-1])
        return p

    @provgraph.task
    def train(data: Path, lr: float, epochs: int) -> dict[str, object]:
        if lr > 0.5:
            raise ValueError(f"training diverged at lr={lr}")
        model = root / f"model-{lr}.bin"
        model.write_bytes(data.read_bytes()[:64] + str(lr).encode())
        return {"model": model, "accuracy": round(0.9 - abs(lr - 0.1), 3), "loss": round(lr * 2, 3)}

    @provgraph.task
    def evaluate(model: Path, split: str) -> dict[str, object]:
        report = root / "report.txt"
        report.write_text(f"{model.name} {split} ok\n")
        return {"report": report, "score": 0.77}

    with capture(telemetry=settings.pop("telemetry", "task"), **settings) as cap:
        with provgraph.workflow("acquire", campaign=CAMPAIGN) as run:
            raw = acquire(8)
        out["runs"]["acquire"] = run.run_id  # type: ignore[index]
        models = {}
        with provgraph.workflow("hpsearch", campaign=CAMPAIGN) as run:
            clean = preprocess(raw)
            for lr in LEARNING_RATES:
                try:
                    models[lr] = train(clean, lr, epochs=3)["model"]
                except ValueError:
                    pass
        out["runs"]["hpsearch"] = run.run_id  # type: ignore[index]
        best = root / "copy-of-best-model.bin"
        shutil.copy(models[0.1], best)  # type: ignore[arg-type]
        with provgraph.workflow("evaluate", campaign="other-campaign") as run:
            evaluate(best, "test")
        out["runs"]["evaluate"] = run.run_id  # type: ignore[index]
        out["nquads"] = cap.nquads()
    out.update(raw=raw, clean=clean, models=models, best=best, report=root / "report.txt",
               config=root / "preprocess.toml")
    return out
