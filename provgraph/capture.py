"""The capture API: ``workflow``, ``task``, ``used``, ``generated``, ``flush``.

Hot-path budget: a decorated call adds two context-variable operations, two clock
reads, a counter increment and one ``deque.append`` of a tuple. Binding argument
names, classifying and hashing values, and RDF serialization all happen later on the
emitter's thread. Arguments are therefore read shortly *after* the call: a mutable
argument changed in that window is recorded as changed.
"""

from __future__ import annotations

import atexit
import contextvars
import functools
import inspect
import itertools
import logging
import os
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar, cast, overload

from .emitter import Emitter
from .errors import ConfigError
from .records import (
    CALL_ARGS,
    FUNCTIONS,
    ErrorInfo,
    RunEnd,
    RunInfo,
    RunIO,
    TaskRecord,
    register_function,
    register_run,
    run_of,
)
from .settings import Settings, load_settings
from .transports import Transport, create_transport

__all__ = [
    "configure",
    "current_run",
    "current_task_id",
    "flush",
    "generated",
    "get_emitter",
    "new_task_id",
    "shutdown",
    "task",
    "used",
    "workflow",
]

log = logging.getLogger("provgraph")
F = TypeVar("F", bound=Callable[..., Any])
_time_ns = time.time_ns


class _Process:
    """Per-process identity; renewed in a forked child so task IDs never collide."""

    token = secrets.token_hex(6)
    ids = itertools.count(1)


def _renew_process() -> None:
    _Process.token = secrets.token_hex(6)
    _Process.ids = itertools.count(1)
    _State.default_run = None


def new_task_id() -> str:
    """A fresh, globally unique task ID (for adapters minting their own records)."""
    return f"{_Process.token}-{next(_Process.ids)}"


class _Frame:
    """The task currently executing in this context (cheap: built once per call)."""

    __slots__ = ("extras", "n", "run", "token")

    def __init__(self, n: int, run: RunInfo) -> None:
        self.n = n
        self.token = _Process.token
        self.run = run
        self.extras: list[tuple[str, str, Any]] | None = None

    @property
    def task_id(self) -> str:
        return f"{self.token}-{self.n}"


_frame: contextvars.ContextVar[_Frame | None] = contextvars.ContextVar("provgraph_task", default=None)
_run: contextvars.ContextVar[RunInfo | None] = contextvars.ContextVar("provgraph_run", default=None)


class _State:
    emitter: Emitter | None = None
    settings: Settings | None = None
    disabled = False
    default_run: RunInfo | None = None
    lock = threading.Lock()
    telemetry: Any = None  # provgraph.adapters.telemetry.TaskTelemetry when settings.telemetry != "off"
    task_probe: Any = None  # the same object when the level is "task" (snapshots on the task's thread)


# -- runtime -------------------------------------------------------------------------

def configure(settings: Settings | None = None, *, transport: Transport | str | None = None,
              **overrides: Any) -> Emitter:
    """(Re)configure capture. Shuts down the previous emitter (flushing it).

    ``configure(transport=MemoryTransport())`` is how tests capture into memory;
    keyword overrides are settings fields (``configure(facility="hpc", batch_size=500)``);
    ``transport`` may also name a registered transport (``configure(transport="journal")``).
    Raises :class:`~provgraph.errors.ConfigError` for invalid settings.
    """
    if isinstance(transport, str):
        overrides["transport"] = transport
        transport = None
    with _State.lock:
        old = _State.emitter
        _State.emitter = None
        if old is not None:
            _end_default_run(old)
            old.shutdown()
        s = settings if settings is not None else load_settings(**overrides)
        if settings is not None and overrides:
            s = settings.model_copy(update=overrides)
        tr = transport if transport is not None else create_transport(s)
        _set_telemetry(s)
        _State.settings = s
        _State.emitter = Emitter(tr, s, register_atexit=False)
        _State.disabled = False
        _State.default_run = None
        return _State.emitter


def get_emitter() -> Emitter:
    """The process's emitter, created from settings on first use."""
    em = _State.emitter
    if em is not None:
        return em
    return configure()


def _emitter_or_none() -> Emitter | None:
    """For capture paths: never raises; a broken configuration disables capture."""
    em = _State.emitter
    if em is not None or _State.disabled:
        return em
    try:
        return get_emitter()
    except Exception as exc:  # noqa: BLE001
        _State.disabled = True
        log.error("provgraph capture disabled: %s", exc)
        return None


def flush(timeout: float = 10.0) -> bool:
    """Block until everything recorded so far is stored or sent; False on timeout."""
    em = _State.emitter
    return True if em is None else em.force_flush(timeout)


def shutdown(timeout: float = 10.0) -> bool:
    """End the default run, flush and stop capture (it restarts on the next use)."""
    with _State.lock:
        em = _State.emitter
        _State.emitter = None
        if em is None:
            return True
        _end_default_run(em)
        ok = em.shutdown(timeout)
        _set_telemetry(None)
        return ok


def _set_telemetry(s: Settings | None) -> None:
    """Start (or stop) telemetry; imported only when ``settings.telemetry`` is not "off"."""
    old = _State.telemetry
    _State.telemetry = _State.task_probe = None
    if old is not None:
        old.close()
    if s is not None and s.telemetry != "off":
        from .adapters.telemetry import install

        _State.telemetry = install(s)
        _State.task_probe = _State.telemetry if s.telemetry == "task" else None


def _settings() -> Settings:
    return _State.settings if _State.settings is not None else get_emitter().settings


def _default_run() -> RunInfo:
    run = _State.default_run
    if run is None:
        with _State.lock:
            run = _State.default_run
            if run is None:
                s = _settings()
                argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
                run = RunInfo(uuid.uuid4().hex, argv0 or "python", campaign=s.campaign, user=s.user,
                              host=s.hostname, attributes={"implicit": True})
                register_run(run)
                _State.default_run = run
                em = _State.emitter
                if em is not None:
                    em.emit_control(run)
    return run


def _end_default_run(em: Emitter) -> None:
    run = _State.default_run
    if run is not None:
        _State.default_run = None
        em.emit_control(RunEnd(run, _time_ns(), "finished"))


@atexit.register
def _at_exit() -> None:
    """End the implicit run and flush what is queued (bounded by ``publish_timeout``)."""
    s = _State.settings
    shutdown(timeout=2 * s.publish_timeout if s is not None else 10.0)


def current_run() -> RunInfo | None:
    """The workflow run of the calling context (None outside any workflow)."""
    return _run.get()


def current_task_id() -> str | None:
    """The ID of the task executing in the calling context (None outside tasks)."""
    frame = _frame.get()
    return None if frame is None else frame.task_id


# -- workflow ------------------------------------------------------------------------

class workflow:  # noqa: N801 - used like a function: ``with provgraph.workflow("x"):``
    """A workflow run: every task inside is written to this run's named graph.

    Works as ``with``, ``async with`` and as a decorator. Invalid settings raise
    :class:`~provgraph.errors.ConfigError` here, at the start, never mid-run.
    """

    def __init__(self, name: str, *, campaign: str | None = None, run_id: str | None = None,
                 attributes: dict[str, Any] | None = None, source_tool: str | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError("workflow name must be a non-empty string")
        self.name = name
        self.campaign = campaign
        self.run_id = run_id
        self.attributes = dict(attributes or {})
        self.source_tool = source_tool
        self.run: RunInfo | None = None
        self._token: contextvars.Token[RunInfo | None] | None = None

    def __enter__(self) -> RunInfo:
        em = get_emitter()
        s = em.settings
        parent = _run.get()
        self.run = RunInfo(self.run_id or uuid.uuid4().hex, self.name,
                           campaign=self.campaign or (parent.campaign if parent else None) or s.campaign,
                           user=s.user, host=s.hostname, parent_run_id=parent.run_id if parent else None,
                           attributes=self.attributes, source_tool=self.source_tool)
        register_run(self.run)
        self._token = _run.set(self.run)
        em.emit_control(self.run)
        return self.run

    def __exit__(self, etype: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        assert self.run is not None and self._token is not None
        _run.reset(self._token)
        em = _emitter_or_none()
        if em is not None:
            if exc is None:
                em.emit_control(RunEnd(self.run, _time_ns(), "finished"))
            else:
                em.emit_control(RunEnd(self.run, _time_ns(), "failed", ErrorInfo.from_exception(exc)))

    async def __aenter__(self) -> RunInfo:
        return self.__enter__()

    async def __aexit__(self, etype: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        self.__exit__(etype, exc, tb)

    def __call__(self, fn: F) -> F:
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                async with workflow(self.name, campaign=self.campaign, attributes=self.attributes):
                    return await fn(*args, **kwargs)
            return awrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with workflow(self.name, campaign=self.campaign, attributes=self.attributes):
                return fn(*args, **kwargs)
        return wrapper  # type: ignore[return-value]


# -- task ------------------------------------------------------------------------------

_SKIP = frozenset({"self", "cls"})


class FunctionInfo:
    """What the background thread needs to turn a call tuple into a :class:`TaskRecord`."""

    __slots__ = ("_params", "fn", "index", "name", "qualname")

    def __init__(self, fn: Callable[..., Any], name: str | None) -> None:
        self.fn = fn
        self.qualname = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
        self.name: str = name or str(getattr(fn, "__name__", "task"))
        self._params: tuple[list[str], str | None, dict[str, Any]] | None = None
        self.index = -1

    @classmethod
    def of(cls, fn: Callable[..., Any], name: str | None) -> FunctionInfo:
        """The registered info of ``fn`` (see :data:`provgraph.records.FUNCTIONS`). Functions
        that share code, name and (no) defaults share one: decorating a lambda in a loop
        does not grow the registry; others are registered by identity."""
        info = cls(fn, name)
        try:  # the signature is the innermost function's (functools.wraps chains)
            inner = inspect.unwrap(fn)
        except ValueError:  # a __wrapped__ cycle
            inner = fn
        code = getattr(inner, "__code__", None)
        if code is not None and inner is fn and getattr(fn, "__defaults__", None) is None \
                and getattr(fn, "__kwdefaults__", None) is None:
            key: Any = (code, info.name, info.qualname)
        else:
            key = ("id", id(fn), info.name)
        index = register_function(info, key)
        registered: FunctionInfo = FUNCTIONS[index]
        registered.index = index
        return registered

    def _signature(self) -> tuple[list[str], str | None, dict[str, Any]]:
        if self._params is None:
            positional: list[str] = []
            varargs = None
            defaults: dict[str, Any] = {}
            try:
                for p in inspect.signature(self.fn).parameters.values():
                    if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                        positional.append(p.name)
                    elif p.kind is p.VAR_POSITIONAL:
                        varargs = p.name
                    if p.default is not p.empty and p.kind is not p.VAR_KEYWORD:
                        defaults[p.name] = p.default
            except (TypeError, ValueError):
                pass
            self._params = (positional, varargs, defaults)
        return self._params

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        positional, varargs, defaults = self._signature()
        bound: dict[str, Any] = {}
        npos = len(positional)
        for i, value in enumerate(args):
            if i < npos:
                bound[positional[i]] = value
            elif varargs:
                bound[f"{varargs}[{i - npos}]"] = value
            else:
                bound[f"arg{i}"] = value
        bound.update(kwargs)
        for name, value in defaults.items():
            bound.setdefault(name, value)
        for name in _SKIP.intersection(bound):
            if positional and positional[0] == name:
                del bound[name]
        return bound

    def to_record(self, call: tuple[Any, ...]) -> TaskRecord:
        """The :class:`TaskRecord` of a call record (layout: :mod:`provgraph.records`)."""
        _, run_id, token, n, ptoken, pn, kwargs, t0, t1, result, exc, extras = call[:CALL_ARGS]
        args = call[CALL_ARGS:]
        rec = TaskRecord(
            task_id=f"{token}-{n}", run=run_of(run_id), name=self.name, started_ns=t0, ended_ns=t1,
            inputs=self.bind(args, kwargs or {}), outputs=_outputs(result), function=self.qualname,
            parent_id=None if ptoken is None else f"{ptoken}-{pn}",
        )
        if exc is not None:
            rec.status = "failed"
            rec.error = ErrorInfo.from_exception(exc)
        if extras:
            for direction, name, value in extras:
                if direction == "telemetry":
                    rec.telemetry.append(value)
                    continue
                (rec.inputs if direction == "in" else rec.outputs)[name] = value
        tel = _State.telemetry
        if tel is not None:
            tel.attach(rec)
        return rec


def _telemetry_mark(frame: _Frame, probe: Any, start: bool) -> None:
    """Level "task": a snapshot at the start or end of a call (never raises)."""
    try:
        samples = probe.begin() if start else probe.end()
        if frame.extras is None:
            frame.extras = []
        frame.extras.extend(("telemetry", "", s) for s in samples)
    except Exception:
        log.debug("provgraph: telemetry snapshot failed", exc_info=True)


def _outputs(result: Any) -> dict[str, Any]:
    if result is None:
        return {}
    if isinstance(result, dict) and result and all(isinstance(k, str) for k in result) and len(result) <= 64:
        return dict(result)
    if isinstance(result, tuple) and len(result) <= 64:
        fields = getattr(result, "_fields", None)
        if fields:
            return dict(zip(fields, result, strict=False))
        return {f"return[{i}]": v for i, v in enumerate(result)}
    if isinstance(result, _Yielded):
        return {f"yield[{i}]": v for i, v in enumerate(result.items)}
    return {"return": result}


class _Yielded:
    __slots__ = ("items",)

    def __init__(self, items: list[Any]) -> None:
        self.items = items


@overload
def task(fn: F, /) -> F: ...
@overload
def task(*, name: str | None = None) -> Callable[[F], F]: ...


def task(fn: F | None = None, /, *, name: str | None = None) -> F | Callable[[F], F]:
    """Record each call of ``fn`` as a ``prov:Activity``.

    Arguments (bound to parameter names, defaults included) are what it used; the
    return value (a dict's items, a tuple's elements, a generator's items) is what it
    generated. Exceptions are recorded (status ``failed``, type, message, traceback)
    and re-raised unchanged. Works on functions, methods, ``async def`` and generators.
    """
    if fn is None:
        return lambda f: _decorate(f, name)
    return _decorate(fn, name)


def _decorate(fn: F, name: str | None) -> F:
    info = FunctionInfo.of(fn, name)
    if inspect.iscoroutinefunction(fn):
        wrapped = _wrap_async(fn, info)
    elif inspect.isgeneratorfunction(fn):
        wrapped = _wrap_generator(fn, info)
    else:
        wrapped = _wrap_sync(fn, info)
    return cast(F, wrapped)


def _wrap_sync(fn: Callable[..., Any], info: FunctionInfo) -> Callable[..., Any]:
    frame_var, run_var, ids, fid = _frame, _run, _Process, info.index

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        em = _State.emitter or _emitter_or_none()
        if em is None:
            return fn(*args, **kwargs)
        parent = frame_var.get()
        frame = _Frame(next(ids.ids), run_var.get() or _default_run())
        probe = _State.task_probe
        if probe is not None:
            _telemetry_mark(frame, probe, True)
        token = frame_var.set(frame)
        t0 = _time_ns()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            t1 = _time_ns()
            frame_var.reset(token)
            if probe is not None:
                _telemetry_mark(frame, probe, False)
            em.emit(_call_record(fid, frame, parent, args, kwargs, t0, t1, None, exc))
            raise
        t1 = _time_ns()
        frame_var.reset(token)
        if probe is not None:
            _telemetry_mark(frame, probe, False)
        if parent is None:  # the common case, inline (see provgraph.records for the layout)
            head = (fid, frame.run.run_id, frame.token, frame.n, None, None, kwargs or None, t0, t1, result, None,
                    frame.extras)
            em.emit(head + args)
        else:
            em.emit(_call_record(fid, frame, parent, args, kwargs, t0, t1, result, None))
        return result

    return wrapper


def _call_record(fid: int, frame: _Frame, parent: _Frame | None, args: tuple[Any, ...], kwargs: dict[str, Any],
                 t0: int, t1: int, result: Any, exc: BaseException | None) -> tuple[Any, ...]:
    """A call record (layout: :mod:`provgraph.records`): no frame objects in it."""
    head = (fid, frame.run.run_id, frame.token, frame.n, None if parent is None else parent.token,
            None if parent is None else parent.n, kwargs or None, t0, t1, result, exc, frame.extras)
    return head + args


def _wrap_async(fn: Callable[..., Any], info: FunctionInfo) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        em = _State.emitter or _emitter_or_none()
        if em is None:
            return await fn(*args, **kwargs)
        parent = _frame.get()
        frame = _Frame(next(_Process.ids), _run.get() or _default_run())
        probe = _State.task_probe
        if probe is not None:
            _telemetry_mark(frame, probe, True)
        token = _frame.set(frame)
        t0 = _time_ns()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            t1 = _time_ns()
            _frame.reset(token)
            if probe is not None:
                _telemetry_mark(frame, probe, False)
            em.emit(_call_record(info.index, frame, parent, args, kwargs, t0, t1, None, exc))
            raise
        t1 = _time_ns()
        _frame.reset(token)
        if probe is not None:
            _telemetry_mark(frame, probe, False)
        em.emit(_call_record(info.index, frame, parent, args, kwargs, t0, t1, result, None))
        return result

    return wrapper


def _wrap_generator(fn: Callable[..., Any], info: FunctionInfo) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        em = _State.emitter or _emitter_or_none()
        if em is None:
            return (yield from fn(*args, **kwargs))
        limit = em.settings.max_yielded
        parent = _frame.get()
        frame = _Frame(next(_Process.ids), _run.get() or _default_run())
        items: list[Any] = []
        t0 = _time_ns()
        gen = fn(*args, **kwargs)
        to_send: Any = None
        exc_out: BaseException | None = None
        try:
            while True:
                token = _frame.set(frame)
                try:
                    item = gen.send(to_send)
                except StopIteration as stop:
                    return stop.value
                finally:
                    _frame.reset(token)
                if len(items) < limit:
                    items.append(item)
                try:
                    to_send = yield item
                except GeneratorExit:
                    gen.close()
                    raise
                except BaseException as thrown:  # noqa: BLE001 - forwarded into the user's generator
                    token = _frame.set(frame)
                    try:
                        item = gen.throw(thrown)
                    finally:
                        _frame.reset(token)
                    if len(items) < limit:
                        items.append(item)
                    to_send = yield item
        except GeneratorExit:
            raise
        except BaseException as exc:  # recorded, then re-raised
            exc_out = exc
            raise
        finally:
            em.emit(_call_record(info.index, frame, parent, args, kwargs, t0, _time_ns(), _Yielded(items),
                                 exc_out))

    return wrapper


# -- explicit artifacts ----------------------------------------------------------------

def _record_io(direction: str, obj: Any, name: str | None) -> None:
    try:
        frame = _frame.get()
        if name is None:
            path = obj if isinstance(obj, (str, os.PathLike)) else getattr(obj, "path", None)
            if isinstance(path, (str, os.PathLike)):
                name = os.path.basename(os.fsdecode(os.fspath(path))) or "artifact"
            else:
                name = "used" if direction == "in" else "generated"
        if frame is not None:
            if frame.extras is None:
                frame.extras = []
            frame.extras.append((direction, name, obj))
            return
        em = _emitter_or_none()
        if em is not None:
            em.emit(RunIO(_run.get() or _default_run(), direction, name, obj))
    except Exception:
        log.debug("provgraph: could not record %s artifact", direction, exc_info=True)


def used(obj: Any, *, name: str | None = None) -> None:
    """Declare that the current task (or workflow run) used ``obj`` (a path, bytes, ...)."""
    _record_io("in", obj, name)


def generated(obj: Any, *, name: str | None = None) -> None:
    """Declare that the current task (or workflow run) generated ``obj``."""
    _record_io("out", obj, name)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_process)
