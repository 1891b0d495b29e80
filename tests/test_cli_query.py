"""The ``query``, ``lineage``, ``export`` and ``import`` commands, run through
``provgraph.cli.main`` (and once as a real process) on an on-disk store holding a
campaign recorded with the real capture API."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import prov
import pytest

import provgraph
from provgraph.cli import main
from provgraph.hashing import FileHasher
from provgraph.lineage import lineage
from tests.support import provdag

MALFORMED = Path(prov.__file__).parent / "tests" / "malformed"


@pytest.fixture
def recorded(tmp_path: Path, data_dir: Path) -> dict[str, Any]:
    rec = provdag.record_campaign(tmp_path / "work")
    store = provgraph.Store(data_dir / "store")
    store.add_nquads(str(rec["nquads"]))
    rec["quads"] = len(store)
    store.close()
    return rec


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def iri_of(path: object) -> str:
    found = FileHasher().hash_path(str(path))
    assert found is not None
    return found[0]


# -- query ------------------------------------------------------------------------------------


def test_list_shows_names_purposes_and_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "query", "--list")
    assert code == 0
    for name in ("upstream", "downstream", "cross_workflow", "run_timeline", "failed_tasks", "top_k_models",
                 "hyperparams_vs_kpis", "hyperparams_vs_telemetry"):
        assert f"\n{name}: " in "\n" + out
    assert "--param k (integer, default 5)" in out and "--param order (string, default desc)" in out
    assert "--param node (iri) the entity or activity to start from" in out
    assert "--param workflow (string, optional)" in out


def test_named_query_with_params_in_every_format(recorded: dict[str, Any],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "query", "--name", "failed_tasks", "--param", "workflow=hpsearch", "--format", "json")
    assert code == 0
    rows = json.loads(out)
    assert len(rows) == 1 and rows[0]["errorMessage"] == "training diverged at lr=0.9"
    code, out, _ = cli(capsys, "query", "--name", "top_k_models", "-p", "metric=accuracy", "-p", "model=model",
                       "-p", "k=1", "--format", "csv")
    assert code == 0
    table = list(csv.DictReader(io.StringIO(out)))
    assert {r["rank"] for r in table} == {"1"} and {r["score"] for r in table} == {"0.9"}
    code, out, _ = cli(capsys, "query", "--name", "hyperparams_vs_kpis", "-p", "function=train", "--format", "tsv")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split("\t")[:4] == ["task", "function", "run", "hyperparameter"] and len(lines) == 13
    code, out, _ = cli(capsys, "query", "--name", "upstream", "-p", f"node={iri_of(recorded['report'])}")
    assert code == 0
    assert out.rstrip().endswith("rows)") and "wasGeneratedBy" in out
    code, out, _ = cli(capsys, "query", "--name", "run_timeline", "-p", f"runId={recorded['runs']['acquire']}",
                       "--format", "json")
    assert code == 0 and [r["label"] for r in json.loads(out)] == ["acquire"]


def test_sparql_text_file_and_formats(recorded: dict[str, Any], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    q = "PREFIX pg: <https://w3id.org/provgraph/ns#> SELECT (COUNT(DISTINCT ?t) AS ?n) WHERE { ?t a pg:Task }"
    code, out, _ = cli(capsys, "query", q, "--format", "json")
    assert code == 0 and json.loads(out) == [{"n": 7}]
    f = tmp_path / "q.rq"
    f.write_text(q)
    code, out, _ = cli(capsys, "query", "-f", str(f), "--format", "csv")
    assert code == 0 and out.splitlines() == ["n", "7"]
    code, out, _ = cli(capsys, "query", "ASK { ?s ?p ?o }", "--format", "json")
    assert code == 0 and json.loads(out) == {"boolean": True}
    code, out, _ = cli(capsys, "query", "CONSTRUCT { ?r a ?c } WHERE { ?r a ?c . FILTER(isIRI(?r) && "
                                        "CONTAINS(STR(?r), '/run/')) }")
    assert code == 0 and len(out.splitlines()) == 6  # 3 runs × (prov:Activity, pg:WorkflowRun)
    code, out, _ = cli(capsys, "query", "SELECT ?s WHERE { ?s ?p ?o }", "--limit", "3", "--format", "json")
    assert code == 0 and len(json.loads(out)) == 3


def test_exit_codes(recorded: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "query", "SELECT ?s WHERE { ?s ?p }")
    assert code == 2 and "invalid SPARQL" in err and "error at 1:" in err  # the parser's own message
    code, _, err = cli(capsys, "query", "--name", "no_such_query")
    assert code == 3 and "no named query 'no_such_query'" in err and "upstream" in err
    code, _, err = cli(capsys, "query", "--name", "upstream")
    assert code == 2 and "needs parameter(s): node" in err
    code, _, err = cli(capsys, "query", "--name", "upstream", "-p", "node=not an iri")
    assert code == 2 and "invalid iri" in err
    code, _, err = cli(capsys, "query", "--name", "upstream", "-p", "nodes=urn:x")
    assert code == 2 and "no parameter 'nodes'" in err
    code, _, err = cli(capsys, "query", "--name", "upstream", "-p", "node")
    assert code == 2 and "KEY=VALUE" in err
    code, _, err = cli(capsys, "query", "SELECT * WHERE { ?s ?p ?o }", "-p", "a=b")
    assert code == 2 and "named queries" in err
    code, _, err = cli(capsys, "query", "-f", str(tmp_path / "missing.rq"))
    assert code == 2 and "missing.rq" in err
    code, _, err = cli(capsys, "query")
    assert code == 2
    code, _, err = cli(capsys, "--data-dir", str(tmp_path / "empty"), "query", "ASK { ?s ?p ?o }")
    assert code == 3 and "no provgraph store" in err


def test_exit_code_of_a_real_process(recorded: dict[str, Any], data_dir: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "provgraph", "--data-dir", str(data_dir), "query",
                           "SELECT WHERE"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "invalid SPARQL" in proc.stderr and "Traceback" not in proc.stderr


# -- lineage ------------------------------------------------------------------------------------


def test_lineage_of_a_file(recorded: dict[str, Any], data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = recorded["report"]
    code, out, _ = cli(capsys, "lineage", str(report), "--format", "json")
    assert code == 0
    answer = json.loads(out)
    store = provgraph.Store(data_dir / "store", read_only=True)
    assert answer == lineage(store, iri_of(report))
    assert answer["complete"] and iri_of(recorded["raw"]) in {n["id"] for n in answer["nodes"]}
    # the same bytes under another name have the same lineage
    copy = Path(str(report)).with_name("renamed.txt")
    copy.write_bytes(Path(str(report)).read_bytes())
    code, out2, _ = cli(capsys, "lineage", str(copy), "--format", "json")
    assert code == 0 and json.loads(out2) == answer
    code, out, _ = cli(capsys, "lineage", str(report))
    assert code == 0 and out.startswith(f"upstream lineage of {iri_of(report)}") and "complete" in out
    assert re.search(r"^\s+1  activity\s+\S+/task/\S+  evaluate$", out, re.M)  # tasks show their names
    code, out, _ = cli(capsys, "lineage", str(report), "--depth", "1")
    assert code == 0 and "INCOMPLETE" in out and "frontier" in out
    code, out, _ = cli(capsys, "lineage", str(recorded["raw"]), "--direction", "downstream", "--format", "dot")
    assert code == 0 and out.startswith("digraph lineage {") and out.rstrip().endswith("}")
    assert "shape=box" in out and "label=\"used\"" in out and 'label="preprocess", shape=box' in out
    code, out, _ = cli(capsys, "lineage", iri_of(recorded["raw"]), "--direction", "both", "--max-nodes", "3",
                       "--format", "json")
    assert code == 0 and len(json.loads(out)["nodes"]) == 3 and not json.loads(out)["complete"]
    code, out, _ = cli(capsys, "lineage", str(report), "--as-of", "2000-01-01T00:00:00Z", "--format", "json")
    assert code == 0 and [n["id"] for n in json.loads(out)["nodes"]] == [iri_of(report)]
    code, out, _ = cli(capsys, "lineage", str(report), "--agents", "--depth", "2", "--format", "json")
    assert code == 0 and "agent" in {n["kind"] for n in json.loads(out)["nodes"]}


def test_lineage_path_and_errors(recorded: dict[str, Any], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "lineage", "--path", str(recorded["raw"]), str(recorded["report"]))
    assert code == 0 and "led to" in out and "step(s)" in out
    code, out, _ = cli(capsys, "lineage", "--path", str(recorded["raw"]), str(recorded["report"]), "--format",
                       "json")
    answer = json.loads(out)
    assert answer["found"] and answer["nodes"][0] == iri_of(recorded["raw"])
    assert answer["nodes"][-1] == iri_of(recorded["report"]) and answer["length"] == 6
    code, out, _ = cli(capsys, "lineage", "--path", str(recorded["config"]), str(recorded["models"][0.3]))
    assert code == 0 and "led to" in out  # the config file preprocess declared with provgraph.used
    code, out, _ = cli(capsys, "lineage", "--path", str(recorded["models"][0.3]), str(recorded["report"]))
    assert code == 1 and "no chain" in out
    unknown = tmp_path / "never-recorded.bin"
    unknown.write_bytes(b"nothing captured this")
    code, _, err = cli(capsys, "lineage", str(unknown))
    assert code == 3 and "is not in the store" in err and f"{unknown} is {iri_of(unknown)}" in err
    code, _, err = cli(capsys, "lineage", "no/such/file.txt")
    assert code == 3 and "no such file" in err
    code, _, err = cli(capsys, "lineage", "urn:provgraph:nothing")
    assert code == 3
    code, _, err = cli(capsys, "lineage", str(recorded["raw"]), "--as-of", "last tuesday")
    assert code == 2 and "ISO 8601" in err
    code, _, err = cli(capsys, "lineage")
    assert code == 2


# -- export / import ------------------------------------------------------------------------------


def test_export_import_round_trip(recorded: dict[str, Any], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "campaign.provjson"
    code, _, err = cli(capsys, "export", "--format", "prov-json", "-o", str(out_file))
    assert code == 0, err
    other = tmp_path / "other"
    code, out, err = cli(capsys, "--data-dir", str(other), "import", str(out_file))
    assert code == 0, err
    assert "statements added to <urn:provgraph:import/sha256-" in out
    code, out, _ = cli(capsys, "--data-dir", str(other), "import", str(out_file), "--json")
    assert code == 0 and json.loads(out)["statements_added"] == 0  # importing twice is harmless
    code, out, _ = cli(capsys, "--data-dir", str(other), "lineage", str(recorded["report"]), "--format", "json")
    assert code == 0 and iri_of(recorded["raw"]) in {n["id"] for n in json.loads(out)["nodes"]}
    # one run as TriG, imported elsewhere, keeps its graph
    trig = tmp_path / "hp.trig"
    code, _, _ = cli(capsys, "export", "--format", "trig", "--run", recorded["runs"]["hpsearch"], "-o", str(trig))
    assert code == 0
    code, out, _ = cli(capsys, "--data-dir", str(tmp_path / "third"), "import", str(trig), "--json")
    assert code == 0
    third = provgraph.Store(tmp_path / "third" / "store", read_only=True)
    assert third.named_graphs() == [f"urn:provgraph:local/graph/{recorded['runs']['hpsearch']}"]
    code, out, _ = cli(capsys, "export", "--format", "provn", "--campaign", provdag.CAMPAIGN)
    assert code == 0 and out.startswith("document") and "acquire" in out and "evaluate" not in out
    code, out, _ = cli(capsys, "export", "--format", "turtle", "--lineage", iri_of(recorded["report"]),
                       "--depth", "2")
    assert code == 0 and "@prefix prov:" in out
    code, by_file, _ = cli(capsys, "export", "--format", "turtle", "--lineage", str(recorded["report"]),
                           "--depth", "2")
    assert code == 0 and by_file == out
    code, _, err = cli(capsys, "export", "--run", "no-such-run")
    assert code == 3 and "no workflow run" in err


def test_import_refuses_bad_files_and_keeps_the_store(recorded: dict[str, Any], data_dir: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "import", str(MALFORMED / "not_json.json"))
    assert code == 2 and "not_json.json" in err and "invalid prov-json" in err
    good = Path(prov.__file__).parent / "tests" / "json" / "activity1.json"
    code, out, err = cli(capsys, "import", str(MALFORMED / "wrong_root.xml"), str(good),
                         str(MALFORMED / "foreign_vocabulary.ttl"))
    assert code == 2 and "2 of 3 files not imported" in err
    assert "activity1.json: " in out and "statements added" in out
    code, _, err = cli(capsys, "import", "--format", "turtle", str(MALFORMED / "not_turtle.ttl"))
    assert code == 2
    code, _, err = cli(capsys, "import", "/no/such/file.json")
    assert code == 3
    code, _, err = cli(capsys, "import", str(good), "--graph", "not an iri")
    assert code == 2 and "absolute IRI" in err
    alone = provgraph.Store()
    from provgraph.interchange import import_file

    import_file(alone, good)
    store = provgraph.Store(data_dir / "store", read_only=True)
    assert len(store) == recorded["quads"] + len(alone)  # only activity1.json was added
