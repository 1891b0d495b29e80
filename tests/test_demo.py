"""The MIDA campaign end to end (``provgraph demo``): three workflows as separate
processes, observed without code changes, linked only by content hashes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from provgraph.hashing import FileHasher
from provgraph.lineage import lineage
from provgraph.namespaces import PG, PROV, RDFS
from provgraph.store import Store


def _run_demo(tmp_path: Path, pipeline: str) -> tuple[str, Path]:
    root = tmp_path / "campaign"
    proc = subprocess.run([sys.executable, "-m", "provgraph", "demo", "--dir", str(root), "--frames", "6",
                           "--pipeline", pipeline], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, root


def _select(store: Store, q: str) -> list[dict[str, str]]:
    res = store.query(q)
    names = [v.value for v in res.variables]
    return [{n: (sol[n].value if sol[n] is not None else None) for n in names} for sol in res]


def _check_campaign(out: str, root: Path) -> None:
    for section in ("(1) Top-3 models by mse", "(2) Hyperparameters vs KPIs", "(3) Hyperparameters vs telemetry"):
        assert section in out, out
    store = Store(root / ".provgraph" / "store", read_only=True)
    # three workflow runs of three workflows, one campaign
    runs = _select(store, f"SELECT DISTINCT ?run ?wf WHERE {{ ?run a <{PG.WorkflowRun}> ; <{RDFS.label}> ?wf ; "
                          f"<{PG.inCampaign}> ?c }}")
    assert sorted(r["wf"] for r in runs) == ["hpsearch", "microscope-acquisition", "mida-evaluation"], runs

    # the best evaluated model (lowest held-out MSE) ...
    best = _select(store, f"""SELECT ?ev ?model ?mse WHERE {{
        ?m <{PROV.wasGeneratedBy}> ?ev ; <{PG.parameterName}> "mse" ; <{PROV.value}> ?mse .
        ?ev <{PROV.used}> ?model . ?model a <{PG.DataArtifact}> }} ORDER BY ?mse LIMIT 1""")
    assert best, "no evaluation run used a model artifact"
    model = best[0]["model"]
    # ... is the model file the search wrote, by content
    hasher = FileHasher()
    files = {hasher.hash_path(str(p))[0]: p for p in (root / "models").glob("*.npz")}  # type: ignore[index]
    assert model in files, (model, list(files))
    # its backward lineage reaches the microscope's acquisition and its parameters
    up = lineage(store, model, "upstream")
    assert up["complete"]
    tasks = [n["id"] for n in up["nodes"] if n["kind"] == "activity"]
    values = " ".join(f"<{t}>" for t in tasks)
    wfs = _select(store, f"SELECT DISTINCT ?wf WHERE {{ VALUES ?t {{ {values} }} ?t <{PG.inWorkflowRun}> ?r . "
                         f"?r <{RDFS.label}> ?wf }}")
    assert {w["wf"] for w in wfs} >= {"hpsearch", "microscope-acquisition"}
    params = _select(store, f"""SELECT DISTINCT ?name ?v WHERE {{ VALUES ?t {{ {values} }}
        ?t <{PG.inWorkflowRun}> ?r . ?r <{RDFS.label}> "microscope-acquisition" .
        ?t <{PROV.used}> ?e . ?e <{PG.parameterName}> ?name ; <{PROV.value}> ?v }}""")
    got = {p["name"]: p["v"] for p in params}
    assert got.get("exposure_ms") in ("20.0", "20") and got.get("magnification") == "40", got
    # every frame the model was trained on is an image the microscope generated
    frames = {n["id"] for n in up["nodes"]} & {
        r["e"] for r in _select(store, f"SELECT ?e WHERE {{ ?e <{PROV.wasGeneratedBy}> ?t . "
                                       f"?t <{PG.inWorkflowRun}> ?r . ?r <{RDFS.label}> \"microscope-acquisition\" }}")}
    assert len(frames) == 6
    # no identifier passed between the workflows: the only nodes two runs share are hashes
    shared = _select(store, """SELECT DISTINCT ?x WHERE {
        GRAPH ?g1 { ?x ?p1 ?o1 } GRAPH ?g2 { ?x ?p2 ?o2 } FILTER(?g1 != ?g2)
        FILTER(!STRSTARTS(STR(?x), "ni:") && !CONTAINS(STR(?x), "/host/") && !CONTAINS(STR(?x), "/user/")
               && !CONTAINS(STR(?x), "/facility/") && !STRSTARTS(STR(?x), "urn:provgraph:campaign/"))
    }""")
    assert shared == [], shared
    store.close()


@pytest.mark.slow
def test_demo_campaign_embedded_store(tmp_path: Path) -> None:
    out, root = _run_demo(tmp_path, "store")
    assert "pipeline: store" in out
    _check_campaign(out, root)


@pytest.mark.slow
def test_demo_campaign_over_nats(tmp_path: Path) -> None:
    pytest.importorskip("provgraph.integrator")
    out, root = _run_demo(tmp_path, "nats")
    assert "pipeline: nats" in out
    _check_campaign(out, root)
