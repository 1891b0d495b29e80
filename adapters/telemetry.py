"""Resource telemetry for tasks: psutil (CPU, memory, disk and network I/O) and NVML (GPU).

Two levels, chosen by ``settings.telemetry``:

``"task"``
    a snapshot when a task starts and one when it ends, taken on the task's own thread
    (phases ``start`` and ``end``). Costs one snapshot at each end of every task
    (see ``benchmarks/telemetry_overhead.py``), so it suits tasks of milliseconds or more.
``"sampler"``
    one background thread takes a snapshot every ``telemetry_interval`` seconds into a
    small ring buffer; when a task's record is built (on the emitter's thread, never on
    the task's), the snapshots taken while it ran are attached to it (phases
    ``sample-0``, ``sample-1``, ...). The task itself pays nothing.
``"off"``
    nothing is measured; the capture hot path is unchanged.

A snapshot is a list of dicts whose keys are ``pg:`` terms (``cpuPercent``,
``cpuTimeUser``, ``cpuTimeSystem``, ``memoryRss``, ``memoryPercent``, ``diskReadBytes``,
``diskWriteBytes``, ``netSentBytes``, ``netRecvBytes``, ``sampledAt``) plus ``phase``:
process figures for CPU time, memory and disk I/O (system-wide disk counters where the
platform has no per-process ones), system-wide network counters (re-read at most every
``NET_REFRESH_S``, 50 ms). Each GPU adds one dict
(``gpuIndex``, ``gpuMemoryUsed`` in bytes, ``gpuUtilization`` in %, ``gpuPowerWatts``),
phase ``<phase>-gpu<i>``. No GPU, no driver or no ``pynvml`` means no GPU dicts, never an
error; NVML is initialised once per process.

Nothing here raises into the caller: a failing probe yields fewer keys.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
import time
import warnings
from collections import deque
from datetime import UTC, datetime
from typing import Any

from provgraph.errors import require
from provgraph.records import TaskRecord
from provgraph.settings import Settings

__all__ = ["Probe", "Sampler", "TaskTelemetry", "gpu_count", "install", "probe", "uninstall"]

log = logging.getLogger("provgraph.telemetry")

#: system-wide network counters are re-read at most this often (seconds)
NET_REFRESH_S = 0.05
Sample = dict[str, Any]


class _Nvml:
    """NVML handles, initialised once per process; absent GPU/driver → no handles."""

    lock = threading.Lock()
    tried = False
    pid = 0
    module: Any = None
    handles: list[Any] = []

    @classmethod
    def ensure(cls) -> list[Any]:
        if cls.tried and cls.pid == os.getpid():
            return cls.handles
        with cls.lock:
            if cls.tried and cls.pid == os.getpid():
                return cls.handles
            cls.tried, cls.pid, cls.handles = True, os.getpid(), []
            try:
                with warnings.catch_warnings():  # the pynvml shim warns that it is deprecated
                    warnings.simplefilter("ignore")
                    import pynvml
                pynvml.nvmlInit()
                cls.module = pynvml
                cls.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            except Exception as exc:  # noqa: BLE001 - no pynvml, no driver, no GPU: no GPU data
                log.debug("provgraph telemetry: no GPU data (%s)", exc)
                cls.handles = []
            return cls.handles


def gpu_count() -> int:
    """How many GPUs NVML reports here (0 without GPU, driver or pynvml)."""
    return len(_Nvml.ensure())


def _gpu_samples(phase: str, at: datetime) -> list[Sample]:
    handles = _Nvml.ensure()
    if not handles:
        return []
    nv = _Nvml.module
    out: list[Sample] = []
    for i, h in enumerate(handles):
        s: Sample = {"phase": f"{phase}-gpu{i}", "gpuIndex": i, "sampledAt": at}
        try:
            s["gpuMemoryUsed"] = int(nv.nvmlDeviceGetMemoryInfo(h).used)
        except Exception:  # noqa: BLE001
            pass
        try:
            s["gpuUtilization"] = float(nv.nvmlDeviceGetUtilizationRates(h).gpu)
        except Exception:  # noqa: BLE001
            pass
        try:
            s["gpuPowerWatts"] = nv.nvmlDeviceGetPowerUsage(h) / 1000.0
        except Exception:  # noqa: BLE001 - not every board reports power
            pass
        out.append(s)
    return out


class Probe:
    """Reads this process's counters; one per process (see :func:`probe`)."""

    def __init__(self, *, gpu: bool = True) -> None:
        psutil: Any = require("psutil", "telemetry")
        self._psutil: Any = psutil
        self._proc = psutil.Process()
        self._proc.cpu_percent(None)  # first call primes the CPU-percent baseline
        self._proc_io = hasattr(self._proc, "io_counters")
        self._total_memory = float(psutil.virtual_memory().total) or 1.0
        self._net: tuple[float, Any] = (0.0, None)
        self._gpu = gpu
        self._lock = threading.Lock()

    def snapshot(self, phase: str) -> list[Sample]:
        """The host/process figures now (one dict) and one dict per GPU."""
        at = datetime.now(UTC)
        s: Sample = {"phase": phase, "sampledAt": at}
        ps, proc = self._psutil, self._proc
        try:
            with self._lock, proc.oneshot():  # cpu_percent keeps state between calls
                s["cpuPercent"] = float(proc.cpu_percent(None))
                ct = proc.cpu_times()
                s["cpuTimeUser"], s["cpuTimeSystem"] = float(ct.user), float(ct.system)
                mem = proc.memory_info()
                s["memoryRss"] = int(mem.rss)
                # what psutil's memory_percent() computes, without re-reading /proc/meminfo
                s["memoryPercent"] = round(mem.rss / self._total_memory * 100, 4)
                if self._proc_io:
                    io = proc.io_counters()
                    s["diskReadBytes"], s["diskWriteBytes"] = int(io.read_bytes), int(io.write_bytes)
        except Exception:
            log.debug("provgraph telemetry: process counters failed", exc_info=True)
        try:
            if not self._proc_io:
                dio = ps.disk_io_counters()
                if dio is not None:
                    s["diskReadBytes"], s["diskWriteBytes"] = int(dio.read_bytes), int(dio.write_bytes)
            nio = self._net_counters()
            if nio is not None:
                s["netSentBytes"], s["netRecvBytes"] = int(nio.bytes_sent), int(nio.bytes_recv)
        except Exception:
            log.debug("provgraph telemetry: system counters failed", exc_info=True)
        out = [s]
        if self._gpu:
            out.extend(_gpu_samples(phase, at))
        return out


    def _net_counters(self) -> Any:
        """System-wide network counters, read at most every :data:`NET_REFRESH_S` seconds
        (reading them costs more than every process figure together)."""
        now = time.monotonic()
        at, value = self._net
        if value is None or now - at >= NET_REFRESH_S:
            value = self._psutil.net_io_counters()
            self._net = (now, value)
        return value


class _ProbeHolder:
    lock = threading.Lock()
    probe: Probe | None = None
    pid = 0


def probe() -> Probe:
    """This process's :class:`Probe` (created once; renewed in a forked child)."""
    p = _ProbeHolder.probe
    if p is not None and _ProbeHolder.pid == os.getpid():
        return p
    with _ProbeHolder.lock:
        if _ProbeHolder.probe is None or _ProbeHolder.pid != os.getpid():
            _ProbeHolder.probe = Probe()
            _ProbeHolder.pid = os.getpid()
        return _ProbeHolder.probe


class Sampler:
    """A daemon thread snapshotting every ``interval`` seconds into a ring buffer.

    :meth:`attach` adds to a task record the snapshots taken while it ran (at most
    ``max_per_task``, evenly spread), or, for a task shorter than the interval, the
    snapshot taken just before it started when that is less than one interval older.
    """

    def __init__(self, interval: float = 1.0, *, keep: int = 3600, max_per_task: int = 16,
                 source: Probe | None = None) -> None:
        self.interval = interval
        self.max_per_task = max_per_task
        self._probe = source or probe()
        self._times: deque[int] = deque(maxlen=keep)
        self._samples: deque[list[Sample]] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.taken = 0

    def start(self) -> Sampler:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="provgraph-telemetry", daemon=True)
            self._thread.start()
        return self

    def sample_now(self) -> None:
        """Take one snapshot into the buffer (the thread calls this every interval)."""
        t = time.time_ns()
        snap = self._probe.snapshot("sample")
        with self._lock:
            self._times.append(t)
            self._samples.append(snap)
            self.taken += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample_now()
            except Exception:
                log.debug("provgraph telemetry: sample failed", exc_info=True)
            self._stop.wait(self.interval)

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def between(self, start_ns: int, end_ns: int) -> list[list[Sample]]:
        """Snapshots taken in ``[start_ns, end_ns]`` (or the one just before ``start_ns``)."""
        with self._lock:
            times = list(self._times)
            samples = list(self._samples)
        lo = bisect.bisect_left(times, start_ns)
        hi = bisect.bisect_right(times, end_ns)
        if lo < hi:
            chosen = samples[lo:hi]
            if len(chosen) > self.max_per_task:
                step = len(chosen) / self.max_per_task
                chosen = [chosen[int(i * step)] for i in range(self.max_per_task)]
            return chosen
        if lo > 0 and start_ns - times[lo - 1] <= self.interval * 1e9:
            return [samples[lo - 1]]
        return []

    def attach(self, rec: TaskRecord) -> None:
        """Add the snapshots of ``rec``'s run time to ``rec.telemetry`` (phases ``sample-i``)."""
        if rec.started_ns is None:
            return
        end = rec.ended_ns if rec.ended_ns is not None else rec.started_ns
        for i, snap in enumerate(self.between(rec.started_ns, end)):
            for s in snap:
                d = dict(s)
                d["phase"] = str(d["phase"]).replace("sample", f"sample-{i}", 1)
                rec.telemetry.append(d)


class TaskTelemetry:
    """What the capture runtime calls: ``begin``/``end`` on the task's thread (level
    ``task``), ``attach`` on the emitter's thread (level ``sampler``)."""

    def __init__(self, level: str, interval: float) -> None:
        self.level = level
        self.probe = probe()
        self.sampler = Sampler(interval, source=self.probe).start() if level == "sampler" else None

    def begin(self) -> list[Sample]:
        return self.probe.snapshot("start")

    def end(self) -> list[Sample]:
        return self.probe.snapshot("end")

    def attach(self, rec: TaskRecord) -> None:
        if self.sampler is not None:
            self.sampler.attach(rec)

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()


def install(settings: Settings) -> TaskTelemetry | None:
    """The telemetry of ``settings.telemetry`` (None when ``"off"``).

    Raises :class:`~provgraph.errors.MissingDependencyError` without psutil.
    """
    if settings.telemetry == "off":
        return None
    return TaskTelemetry(settings.telemetry, settings.telemetry_interval)


def uninstall(tel: TaskTelemetry | None) -> None:
    if tel is not None:
        tel.close()
