"""Dask observer: every task a Dask cluster runs becomes a ``prov:Activity``.

One line registers it (a scheduler plugin and a worker plugin)::

    from distributed import Client
    import provgraph.adapters.dask as pg_dask

    client = Client(...)
    observer = pg_dask.register(client, workflow="hyperparameter-search", campaign="mida")
    ...                                   # unchanged Dask code
    observer.close()                      # end the run, flush every worker

What is recorded, per executed task (one activity per attempt that ran):

* key (``pg:externalId``), function (``pg:function``, label = its name), the arguments
  bound to the function's parameter names (a dependency's result appears as the input
  of the parameter it was passed to), the result as outputs (a dict's items and a
  tuple's elements are named outputs, as for ``@provgraph.task``), values classified by
  the core mapper (arrays, bytes and files are content-hashed entities; small scalars are
  per-task values);
* ``prov:wasInformedBy`` each dependency's task, start and end time of the execution
  (the worker's ``compute`` start/stop), worker host (``prov:atLocation``) and worker
  address, status, exception type, message and traceback on failure;
* from the scheduler: the time the task was submitted (``pg:submittedAtTime``) and the
  attempt number (``pg:attempt``, 1 + the retries before it).

Task IRIs are deterministic: the ID of a task is a hash of the run ID and the Dask key,
so the scheduler, every worker and every dependent agree on it without talking to each
other. A failed attempt gets that ID plus ``-r<dask run id>``, so a retried task that
then succeeds is one finished activity plus one failed activity per failed attempt.

Where the work happens. The plugins carry the :class:`~provgraph.records.RunInfo` and
the :class:`~provgraph.settings.Settings` to the scheduler and the workers (the user's
code passes nothing). Each process builds one emitter from those settings (reusing the
capture emitter of the process when it has the same settings, e.g. a threaded
``LocalCluster``): with the embedded store, worker processes spool into the store's
inbox; with NATS they publish; with the journal they append to it. The hooks run on the
worker's and scheduler's event loop and only append a tuple to the emitter's bounded
queue: no I/O, no hashing, no argument binding there; all that happens on the emitter
thread. A provgraph bug is logged once and never breaks the Dask job (Dask also guards
plugin hooks).

Not recorded: tasks that never ran (a dependency failed, or the run was cancelled),
data that was ``scatter``-ed (it appears as an input, not as an activity), and values
that the worker already spilled to disk when the hook ran (read them from disk would be
I/O in the hook).
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from typing import Any

from provgraph import capture
from provgraph.emitter import Emitter
from provgraph.errors import require
from provgraph.mapping import time_literal
from provgraph.namespaces import PG, Minter
from provgraph.records import ErrorInfo, GraphStatements, RunEnd, RunInfo, TaskRecord
from provgraph.settings import Settings, load_settings
from provgraph.transports import create_transport

with warnings.catch_warnings():  # distributed imports the deprecated pynvml shim
    warnings.simplefilter("ignore", FutureWarning)
    require("distributed", "dask")
    from dask._task_spec import Alias, DataNode, GraphNode, NestedContainer, Task, TaskRef
    from dask.utils import funcname
    from distributed import Client, SchedulerPlugin, WorkerPlugin

__all__ = ["DaskObserver", "SchedulerObserver", "WorkerObserver", "dask_task_id", "register"]

log = logging.getLogger("provgraph.dask")
_MISSING = object()


def dask_task_id(run_id: str, key: Any) -> str:
    """The provgraph task ID of Dask key ``key`` in run ``run_id`` (same on every node)."""
    return hashlib.blake2b(f"{run_id}\x00{key}".encode("utf-8", "replace"), digest_size=12).hexdigest()


# -- one emitter per process and settings -----------------------------------------------

class _Shared:
    lock = threading.Lock()
    emitters: dict[str, list[Any]] = {}  # settings JSON -> [Emitter, users]


def _acquire(settings: Settings) -> tuple[Emitter, str | None]:
    """The capture emitter of this process if it has these settings, else a shared one."""
    em = capture._State.emitter
    if em is not None and em.settings == settings:
        return em, None
    key = settings.model_dump_json()
    with _Shared.lock:
        entry = _Shared.emitters.get(key)
        if entry is None:
            entry = _Shared.emitters[key] = [Emitter(create_transport(settings), settings), 0]
        entry[1] += 1
        return entry[0], key


def _release(key: str | None, timeout: float) -> bool:
    if key is None:
        return True
    with _Shared.lock:
        entry = _Shared.emitters.get(key)
        if entry is None:
            return True
        entry[1] -= 1
        if entry[1] > 0:
            return bool(entry[0].force_flush(timeout))
        del _Shared.emitters[key]
    return bool(entry[0].shutdown(timeout))


class _LogOnce:
    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, what: str) -> None:
        if what not in self.seen:
            self.seen.add(what)
            log.warning("provgraph dask observer: %s failed (further failures are not logged)", what,
                        exc_info=True)


# -- worker side ------------------------------------------------------------------------

class _TaskBuilder:
    """Turns the tuple a worker hook enqueued into a :class:`TaskRecord` (emitter thread)."""

    def __init__(self, run: RunInfo, host: str, address: str) -> None:
        self.run = run
        self.host = host
        self.address = address
        self._infos: dict[Any, capture.FunctionInfo] = {}
        self.telemetry: Any = None

    def _info(self, fn: Callable[..., Any]) -> capture.FunctionInfo:
        try:
            info = self._infos.get(fn)
        except TypeError:  # unhashable callable
            return capture.FunctionInfo(fn, funcname(fn))
        if info is None:
            if len(self._infos) > 4096:
                self._infos.clear()
            info = self._infos[fn] = capture.FunctionInfo(fn, funcname(fn))
        return info

    def to_record(self, item: tuple[Any, ...]) -> TaskRecord:
        _, key, spec, deps, value, startstops, run_id, exc, tb_text, failed = item
        run = self.run
        tid = dask_task_id(run.run_id, key)
        start = stop = None
        for ss in reversed(startstops):
            if ss.get("action") == "compute":
                start, stop = int(ss["start"] * 1e9), int(ss["stop"] * 1e9)
                break
        if stop is None:
            stop = time.time_ns()
        if isinstance(spec, Task):
            info = self._info(spec.func)
            name, function = info.name, info.qualname
            args = tuple(_evaluate(a, deps) for a in spec.args)
            kwargs = {k: _evaluate(v, deps) for k, v in spec.kwargs.items()}
            inputs = {k: v for k, v in info.bind(args, kwargs).items() if v is not _MISSING}
            if name == "_execute_subgraph":
                name = _key_name(key)
        else:
            name, function, inputs = _key_name(key), None, {}
        rec = TaskRecord(
            task_id=f"{tid}-r{run_id}" if failed else tid, run=run, name=name, started_ns=start, ended_ns=stop,
            inputs=inputs, function=function, host=self.host,
            informed_by=[dask_task_id(run.run_id, k) for k in deps],
            attributes={"externalId": str(key), "daskWorker": self.address},
        )
        if failed:
            rec.status = "failed"
            rec.error = _error(exc, tb_text)
        elif value is not _MISSING:
            rec.outputs = capture._outputs(value)
        if self.telemetry is not None:
            self.telemetry.attach(rec)
        return rec


def _error(exc: tuple[Any, str], tb_text: str | None) -> ErrorInfo:
    """The worker's stored exception (pickled, unpickled here, off the hook) as ErrorInfo."""
    stored, text = exc
    err: Any = getattr(stored, "data", stored)
    if isinstance(err, (bytes, bytearray)):
        try:
            from distributed.protocol import pickle

            err = pickle.loads(err)
        except Exception:  # noqa: BLE001 - an exception class not importable here
            err = None
    if isinstance(err, BaseException):
        return ErrorInfo(type(err).__qualname__, str(err)[:4000], tb_text or None)
    etype, _, rest = (text or "Exception()").partition("(")
    return ErrorInfo(etype or "Exception", rest.rstrip(")").strip("'\"")[:4000] or (text or ""), tb_text or None)


def _key_name(key: Any) -> str:
    from dask.utils import key_split

    return str(key_split(key))


def _safe(node: Any) -> bool:
    """True when evaluating ``node`` runs no user function (containers and references)."""
    if isinstance(node, (TaskRef, DataNode, Alias)):
        return True
    if isinstance(node, NestedContainer):
        return all(_safe(a) for a in node.args if isinstance(a, (GraphNode, TaskRef)))
    return not isinstance(node, GraphNode)


def _evaluate(arg: Any, values: dict[Any, Any]) -> Any:
    """An argument as the function received it, from the dependencies' values."""
    if isinstance(arg, TaskRef):
        return values.get(arg.key, _MISSING)
    if isinstance(arg, GraphNode):
        if not _safe(arg) or any(values.get(k, _MISSING) is _MISSING for k in arg.dependencies):
            return _MISSING
        return arg({k: values[k] for k in arg.dependencies})
    return arg


class WorkerObserver(WorkerPlugin):
    """Records each task this worker executes (hooks only enqueue)."""

    idempotent = False

    def __init__(self, run: RunInfo, settings: Settings) -> None:
        self.run = run
        self.settings = settings
        self._emitter: Emitter | None = None
        self._key: str | None = None
        self._log_once = _LogOnce()

    def __getstate__(self) -> dict[str, Any]:
        return {"run": self.run, "settings": self.settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["run"], state["settings"])  # type: ignore[misc]

    def setup(self, worker: Any) -> None:
        try:
            self._emitter, self._key = _acquire(self.settings)
            self._builder = _TaskBuilder(self.run, socket.gethostname(), str(worker.address))
            if self.settings.telemetry != "off":
                self._builder.telemetry = _worker_telemetry(self.settings)
            self._tasks = worker.state.tasks
            self._data = getattr(worker.data, "fast", worker.data)
        except Exception:  # noqa: BLE001 - never break the worker
            self._emitter = None
            self._log_once("setup")

    def teardown(self, worker: Any) -> None:
        em, self._emitter = self._emitter, None
        if em is not None:
            _release(self._key, self.settings.publish_timeout)

    def flush(self, timeout: float = 10.0) -> bool:
        em = self._emitter
        return True if em is None else em.force_flush(timeout)

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if (finish != "memory" and finish != "error") or (start != "executing" and start != "long-running"):
            return
        em = self._emitter
        if em is None:
            return
        try:
            ts = self._tasks.get(key)
            if ts is None:
                return
            data = self._data
            deps = {d.key: data.get(d.key, _MISSING) for d in ts.dependencies}
            if finish == "memory":
                em.emit((self._builder, key, ts.run_spec, deps, data.get(key, _MISSING), list(ts.startstops),
                         ts.run_id, None, None, False))
            else:
                em.emit((self._builder, key, ts.run_spec, deps, _MISSING, list(ts.startstops), ts.run_id,
                         (ts.exception, ts.exception_text), ts.traceback_text, True))
        except Exception:  # noqa: BLE001
            self._log_once("worker transition hook")


def _worker_telemetry(settings: Settings) -> Any:
    """Sampler-level telemetry for a worker process (the hooks never take snapshots)."""
    from provgraph.adapters.telemetry import Sampler

    with _Telemetry.lock:
        if _Telemetry.sampler is None or not _Telemetry.sampler.running:
            _Telemetry.sampler = Sampler(settings.telemetry_interval).start()
        return _Telemetry.sampler


class _Telemetry:
    lock = threading.Lock()
    sampler: Any = None


# -- scheduler side ---------------------------------------------------------------------

_SUBMITTED = f"<{PG.submittedAtTime}>"
_ATTEMPT = f"<{PG.attempt}>"


class SchedulerObserver(SchedulerPlugin):
    """Records the run (start/end) and, per task, submission time and attempt number."""

    idempotent = False

    def __init__(self, run: RunInfo, settings: Settings, *, owns_run: bool = True) -> None:
        self.run = run
        self.settings = settings
        self.owns_run = owns_run
        self._emitter: Emitter | None = None
        self._key: str | None = None
        self._submitted: dict[Any, int] = {}
        self._attempts: dict[Any, int] = {}
        # facts of finished attempts, handed to the emitter in bulk (formatted off the loop)
        self._pending: list[tuple[Any, int | None, int | None, int | None]] = []
        self._next_emit = 0.0
        self._log_once = _LogOnce()
        self._finished = False
        mint = Minter(settings.iri_base)
        self._graph = f"<{mint.graph(run.run_id)}>"
        self._task_base = mint.task("")

    def __getstate__(self) -> dict[str, Any]:
        return {"run": self.run, "settings": self.settings, "owns_run": self.owns_run}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["run"], state["settings"], owns_run=state["owns_run"])  # type: ignore[misc]

    async def start(self, scheduler: Any) -> None:
        try:
            self._scheduler = scheduler
            self._emitter, self._key = _acquire(self.settings)
            if self.owns_run:
                self._emitter.emit_control(self.run)
        except Exception:  # noqa: BLE001
            self._emitter = None
            self._log_once("scheduler start")

    def transition(self, key: Any, start: str, finish: str, *args: Any, stimulus_id: str = "",
                   **kwargs: Any) -> None:
        em = self._emitter
        if em is None:
            return
        try:
            if start == "released":
                if key not in self._submitted:
                    self._submitted[key] = time.time_ns()
            elif finish == "processing":
                self._attempts[key] = self._attempts.get(key, 0) + 1
            elif start == "processing":
                if finish == "memory":
                    self._pending.append((key, self._submitted.pop(key, None), self._attempts.pop(key, None), None))
                elif finish == "erred" or "erred" in stimulus_id:  # a failed attempt (retried or final)
                    ts = self._scheduler.tasks.get(key)
                    run_id = getattr(ts, "run_id", None)
                    submitted = self._submitted.get(key) if finish != "erred" else self._submitted.pop(key, None)
                    attempts = self._attempts.get(key) if finish != "erred" else self._attempts.pop(key, None)
                    self._pending.append((key, submitted, attempts, run_id))
                else:
                    return
                if len(self._pending) >= _FACTS_PER_EMIT or time.monotonic() >= self._next_emit:
                    self._emit_pending(em)
            elif finish == "forgotten":
                self._submitted.pop(key, None)
                self._attempts.pop(key, None)
        except Exception:  # noqa: BLE001
            self._log_once("scheduler transition hook")

    def _emit_pending(self, em: Emitter) -> None:
        facts, self._pending = self._pending, []
        self._next_emit = time.monotonic() + self.settings.flush_interval
        if facts:
            em.emit((_FactsBuilder(self), facts))

    def flush(self, timeout: float = 10.0) -> bool:
        """Hand over the pending facts and wait until the emitter delivered them."""
        em = self._emitter
        if em is None:
            return True
        self._emit_pending(em)
        return em.force_flush(timeout)

    def finish(self, timeout: float = 10.0, status: str = "finished") -> bool:
        """End the run (when this plugin owns it) and flush; idempotent."""
        if self._finished:
            return True
        self._finished = True
        em, self._emitter = self._emitter, None
        if em is None:
            return True
        self._emit_pending(em)
        if self.owns_run:
            em.emit_control(RunEnd(self.run, time.time_ns(), status))
        if self._key is None:
            return em.force_flush(timeout)
        return _release(self._key, timeout)

    async def close(self) -> None:
        self.finish(self.settings.publish_timeout)


#: finished attempts whose facts the scheduler hook collects before one hand-over
_FACTS_PER_EMIT = 256


class _FactsBuilder:
    """Formats the scheduler's facts on the emitter thread (the hook only collects them)."""

    __slots__ = ("observer",)

    def __init__(self, observer: SchedulerObserver) -> None:
        self.observer = observer

    def to_record(self, item: tuple[Any, ...]) -> GraphStatements:
        """Two statements per task, in the run's graph (they travel in its ``GRAPH`` block,
        so the integrator loads them with the workers' tasks): when it was submitted and
        which attempt this was."""
        o = self.observer
        lines = []
        for key, submitted, attempts, run_id in item[1]:
            tid = dask_task_id(o.run.run_id, key)
            if run_id is not None:
                tid = f"{tid}-r{run_id}"
            t = f"<{o._task_base}{tid}>"
            if submitted is not None:
                lines.append(f"{t} {_SUBMITTED} {time_literal(submitted)} .\n")
            if attempts is not None:
                lines.append(f"{t} {_ATTEMPT} {attempts} .\n")
        return GraphStatements(o._graph, lines, len(lines))


# -- registration -----------------------------------------------------------------------

class DaskObserver:
    """What :func:`register` returns: the run, ``flush`` and ``close`` (also a context manager)."""

    def __init__(self, client: Client, run: RunInfo, name: str) -> None:
        self.client = client
        self.run = run
        self.name = name
        self.closed = False

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every worker and the scheduler delivered what they recorded."""
        name = self.name

        def _flush_worker(dask_worker: Any) -> bool:
            plugin = dask_worker.plugins.get(name)
            return True if plugin is None else bool(plugin.flush(timeout))

        def _flush_scheduler(dask_scheduler: Any) -> bool:
            plugin = dask_scheduler.plugins.get(name)
            return True if plugin is None else bool(plugin.flush(timeout))

        ok = all(self.client.run(_flush_worker).values())
        return bool(self.client.run_on_scheduler(_flush_scheduler)) and ok

    def close(self, timeout: float = 30.0, *, status: str = "finished") -> bool:
        """End the run: flush and detach the worker plugins, end the run on the scheduler."""
        if self.closed:
            return True
        self.closed = True
        name = self.name
        ok = True
        try:
            self.client.unregister_worker_plugin(name)
        except Exception:
            log.warning("provgraph: could not remove the worker plugin %s", name, exc_info=True)
            ok = False

        def _finish(dask_scheduler: Any) -> bool:
            plugin = dask_scheduler.plugins.get(name)
            if plugin is None:
                return True
            done = bool(plugin.finish(timeout, status))
            dask_scheduler.remove_plugin(name)
            return done

        try:
            ok = bool(self.client.run_on_scheduler(_finish)) and ok
        except Exception:
            log.warning("provgraph: could not end the run on the scheduler", exc_info=True)
            ok = False
        return ok

    def __enter__(self) -> DaskObserver:
        return self

    def __exit__(self, etype: Any, exc: BaseException | None, tb: Any) -> None:
        self.close(status="finished" if exc is None else "failed")


def register(client: Client, *, workflow: str | None = None, campaign: str | None = None,
             settings: Settings | None = None, run_id: str | None = None) -> DaskObserver:
    """Record every task ``client``'s cluster runs from now on, as one workflow run.

    Inside ``with provgraph.workflow(...)`` and without ``workflow=``, the tasks join
    that run; otherwise a run named ``workflow`` (default ``"dask"``) is started here and
    ended by :meth:`DaskObserver.close`. ``settings`` default to the capture settings
    of this process (``provgraph.configure``), else to the environment/TOML settings.
    """
    if settings is None:
        settings = capture._State.settings or load_settings()
    parent = capture.current_run()
    owns = not (workflow is None and parent is not None)
    if owns:
        run = RunInfo(run_id or uuid.uuid4().hex, workflow or "dask",
                      campaign=campaign or (parent.campaign if parent else None) or settings.campaign,
                      user=settings.user, host=settings.hostname,
                      parent_run_id=parent.run_id if parent else None, source_tool="dask")
    else:
        assert parent is not None
        run = parent
    name = f"provgraph-{run.run_id}"
    client.register_plugin(SchedulerObserver(run, settings, owns_run=owns), name=name)
    client.register_plugin(WorkerObserver(run, settings), name=name)
    return DaskObserver(client, run, name)
