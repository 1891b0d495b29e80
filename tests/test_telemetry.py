"""Telemetry: real psutil figures, GPU absent → no GPU keys, levels off/task/sampler."""

from __future__ import annotations

import mmap
import os
import time
from datetime import UTC, datetime
from typing import Any

import pytest

import provgraph
from provgraph.namespaces import PG
from provgraph.records import RunInfo, TaskRecord

telemetry = pytest.importorskip("provgraph.adapters.telemetry")
psutil = pytest.importorskip("psutil")

GPU_KEYS = {"gpuIndex", "gpuMemoryUsed", "gpuUtilization", "gpuPowerWatts"}
HOST_KEYS = {"cpuPercent", "cpuTimeUser", "cpuTimeSystem", "memoryRss", "memoryPercent", "diskReadBytes",
             "diskWriteBytes", "netSentBytes", "netRecvBytes", "sampledAt"}


def _burn(seconds: float) -> int:
    end, n = time.process_time() + seconds, 0
    while time.process_time() < end:
        n += 1
    return n


def test_snapshot_values_are_present_and_sane() -> None:
    probe = telemetry.probe()
    before = probe.snapshot("start")[0]
    # 32 MiB of fresh anonymous pages, touched: RSS must grow (a bytearray may reuse heap
    # pages earlier tests freed, which are already resident)
    ballast = mmap.mmap(-1, 32 << 20)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    _burn(0.2)
    after = probe.snapshot("end")[0]
    assert HOST_KEYS <= set(after) and after["phase"] == "end"
    assert set(after) - {"phase"} <= set(PG.iris()), "every key must be a pg: term"
    rss = psutil.Process().memory_info().rss
    assert 0.5 * rss <= after["memoryRss"] <= 1.5 * rss
    assert after["memoryRss"] - before["memoryRss"] >= 16 << 20
    assert 0 < after["memoryPercent"] < 100
    assert after["cpuTimeUser"] + after["cpuTimeSystem"] >= before["cpuTimeUser"] + before["cpuTimeSystem"] + 0.15
    assert 0 < after["cpuPercent"] <= 100 * (os.cpu_count() or 1)
    for key in ("diskReadBytes", "diskWriteBytes", "netSentBytes", "netRecvBytes"):
        assert isinstance(after[key], int) and after[key] >= before[key] >= 0
    assert isinstance(after["sampledAt"], datetime) and after["sampledAt"] >= before["sampledAt"]
    assert abs((datetime.now(UTC) - after["sampledAt"]).total_seconds()) < 5
    ballast.close()


def test_no_gpu_means_no_gpu_keys_and_no_error() -> None:
    if telemetry.gpu_count() > 0:
        samples = telemetry.probe().snapshot("x")
        gpu = [s for s in samples if "gpuIndex" in s]
        assert len(gpu) == telemetry.gpu_count()
        assert all(s["phase"] == f"x-gpu{s['gpuIndex']}" and s["gpuMemoryUsed"] > 0 for s in gpu)
        pytest.skip("a GPU is present here: checked its samples instead")
    samples = telemetry.probe().snapshot("start")
    assert len(samples) == 1 and not (GPU_KEYS & set(samples[0]))
    assert telemetry.gpu_count() == 0  # asked twice: initialised once, still no error


def _task_samples(memory: provgraph.MemoryTransport) -> dict[str, dict[str, str]]:
    store = provgraph.Store(None)
    store.load(memory.nquads().encode(), "nquads")
    out: dict[str, dict[str, str]] = {}
    for sol in store.query("""PREFIX pg: <https://w3id.org/provgraph/ns#>
            SELECT ?phase ?p ?v WHERE { ?t pg:telemetry ?s . ?s pg:telemetryPhase ?phase ; ?p ?v }"""):
        out.setdefault(sol["phase"].value, {})[sol["p"].value.rsplit("#", 1)[-1]] = sol["v"].value
    return out


def test_level_task_records_start_and_end_on_decorated_tasks(memory: provgraph.MemoryTransport) -> None:
    provgraph.configure(transport=memory, telemetry="task", flush_interval=0.05)

    @provgraph.task
    def crunch(seconds: float) -> int:
        return _burn(seconds)

    with provgraph.workflow("telemetry-task"):
        crunch(0.2)
    assert provgraph.flush()
    samples = _task_samples(memory)
    assert set(samples) == {"start", "end"}
    for phase in ("start", "end"):
        assert HOST_KEYS <= set(samples[phase])
    cpu = {p: float(samples[p]["cpuTimeUser"]) + float(samples[p]["cpuTimeSystem"]) for p in samples}
    assert cpu["end"] - cpu["start"] >= 0.15


def test_level_off_adds_nothing(memory: provgraph.MemoryTransport) -> None:
    @provgraph.task
    def quick(x: int) -> int:
        return x

    quick(1)
    assert provgraph.flush()
    assert str(PG.telemetry) not in memory.nquads() and "quick" in memory.nquads()
    from provgraph.capture import _State

    assert _State.telemetry is None and _State.task_probe is None


def test_level_sampler_links_samples_to_running_tasks(memory: provgraph.MemoryTransport) -> None:
    provgraph.configure(transport=memory, telemetry="sampler", telemetry_interval=0.05, flush_interval=0.05)

    @provgraph.task
    def slow() -> None:
        time.sleep(0.4)  # releases the GIL: the sampler's ~8 snapshots are not starved by other threads

    slow()
    assert provgraph.flush()
    samples = _task_samples(memory)
    phases = sorted(samples)
    assert len(phases) >= 3 and all(p.startswith("sample-") for p in phases), phases
    assert all(HOST_KEYS <= set(s) for s in samples.values())
    provgraph.shutdown()
    from provgraph.capture import _State

    assert _State.telemetry is None  # the sampler thread was stopped with capture


def test_sampler_window_and_nearest_preceding_sample() -> None:
    sampler = telemetry.Sampler(10.0, max_per_task=4)  # not started: samples taken by hand
    run = RunInfo("r", "w")
    t0 = time.time_ns()
    for _ in range(10):
        sampler.sample_now()
    t1 = time.time_ns()
    rec = TaskRecord("t", run, "x", started_ns=t0, ended_ns=t1)
    sampler.attach(rec)
    assert [s["phase"] for s in rec.telemetry if "gpuIndex" not in s] == [f"sample-{i}" for i in range(4)]
    # a short task after the last sample gets that sample (taken less than an interval before)
    short: Any = TaskRecord("u", run, "y", started_ns=t1 + 1000, ended_ns=t1 + 2000)
    sampler.attach(short)
    assert [s["phase"] for s in short.telemetry if "gpuIndex" not in s] == ["sample-0"]
    old = TaskRecord("v", run, "z", started_ns=t1 + 20 * 10**9, ended_ns=t1 + 21 * 10**9)
    sampler.attach(old)
    assert old.telemetry == []
