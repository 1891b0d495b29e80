"""NATS stopped for 20 s in the middle of a workflow: nothing is lost, the workflow does
not slow down (takes about 30 s: two ~25 s workflows run side by side)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from provgraph.natsserver import NatsServer
from provgraph.settings import load_settings
from provgraph.store import Store
from tests.support.nats import env_for, running_integrator, sparql_count, wait_for

PG = "https://w3id.org/provgraph/ns#"

_WORKFLOW = textwrap.dedent("""
    import json, sys, time, provgraph

    @provgraph.task
    def step(data: bytes, i: int) -> bytes:
        time.sleep(float(sys.argv[2]))   # the science
        return data[::-1]

    n = int(sys.argv[1])
    em = provgraph.get_emitter()
    t0 = time.perf_counter()
    with provgraph.workflow("outage", run_id=sys.argv[3]):
        for i in range(n):
            step(b"sample-%06d-" % i + b"z" * 40, i)
    t1 = time.perf_counter()
    ok = provgraph.flush(60)
    t2 = time.perf_counter()
    tr = em.transport
    print(json.dumps({"loop_s": t1 - t0, "flush_s": t2 - t1, "flush_ok": ok, "emitter": em.stats(),
                      "transport": tr.name, "spilled": tr.stats.spilled_batches,
                      "replayed": tr.stats.replayed_batches}), flush=True)
""")

N_TASKS = 5_000
SLEEP = 0.005  # 5,000 x 5 ms = 25 s of work


def _run_workflow(script: Path, data: Path, url: str, run: str, out: dict[str, object]) -> None:
    proc = subprocess.run([sys.executable, str(script), str(N_TASKS), str(SLEEP), run], capture_output=True,
                          timeout=240, env=env_for(data, url, PROVGRAPH_PUBLISH_TIMEOUT="2"))
    out["rc"] = proc.returncode
    out["stderr"] = proc.stderr.decode()[-3000:]
    if proc.returncode == 0:
        out.update(json.loads(proc.stdout.decode().strip().splitlines()[-1]))


def test_nats_down_for_20s_loses_nothing_and_costs_no_time(tmp_path: Path) -> None:
    script = tmp_path / "wf.py"
    script.write_text(_WORKFLOW)
    down = NatsServer(tmp_path / "nats-down").start()
    steady = NatsServer(tmp_path / "nats-steady").start()
    try:
        settings = load_settings(nats_url=down.url, data_dir=tmp_path / "integrator")
        store = Store()
        with running_integrator(settings, store) as integrator:
            results: dict[str, dict[str, object]] = {"outage": {}, "baseline": {}}
            threads = [
                threading.Thread(target=_run_workflow, args=(script, tmp_path / "a", down.url, "with-outage",
                                                             results["outage"])),
                threading.Thread(target=_run_workflow, args=(script, tmp_path / "b", steady.url, "no-outage",
                                                             results["baseline"])),
            ]
            for t in threads:
                t.start()
            time.sleep(3.0)
            assert all(t.is_alive() for t in threads)
            down.stop()
            stopped = time.monotonic()
            time.sleep(20.0)
            assert threads[0].is_alive(), "the workflow ended before NATS came back: make it longer"
            down.start()  # same port, same JetStream directory
            outage_s = time.monotonic() - stopped
            for t in threads:
                t.join(240)
            a, b = results["outage"], results["baseline"]
            assert a["rc"] == 0, a["stderr"]
            assert b["rc"] == 0, b["stderr"]
            assert a["transport"] == b["transport"] == "nats"
            assert a["flush_ok"] is True and b["flush_ok"] is True
            assert a["emitter"]["dropped"] == 0 and a["emitter"]["lost_batches"] == 0  # type: ignore[index]
            assert a["spilled"] > 0 and a["replayed"] > 0, a  # the outage really went through the journal
            wall_a = float(a["loop_s"]) + float(a["flush_s"])  # type: ignore[arg-type]
            wall_b = float(b["loop_s"]) + float(b["flush_s"])  # type: ignore[arg-type]
            print(f"\nNATS down {outage_s:.1f}s; workflow wall time with outage {wall_a:.2f}s "
                  f"(flush {a['flush_s']:.2f}s), without {wall_b:.2f}s: {100 * (wall_a / wall_b - 1):+.1f}%")
            assert wall_a < 1.05 * wall_b
            query = f"""SELECT (COUNT(DISTINCT ?t) AS ?n) WHERE {{ ?t a <{PG}Task> ; <{PG}inWorkflowRun> ?r .
                        ?r <http://purl.org/dc/terms/identifier> "with-outage" }}"""
            wait_for(lambda: sparql_count(store, query) == N_TASKS, 60, "every task of the outage run")
            assert integrator.thread.is_alive()
        assert not list((tmp_path / "a" / "journal").glob("*.nq")), "journal left behind"
    finally:
        down.stop()
        steady.stop()
