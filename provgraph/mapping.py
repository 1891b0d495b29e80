"""Records → W3C PROV-O as N-Quads, one named graph per workflow run.

This is the only module that decides what a task *means* in RDF:

* a task is a ``prov:Activity`` (and ``pg:Task``) with start/end times, ``pg:status``,
  ``pg:inWorkflowRun``, the user as associated agent, the host as ``prov:atLocation``,
  its parent task, errors;
* a data artifact (file, directory, bytes, long text, array) is an entity named by its
  content hash; the path, parameter name and host of *this* use/generation are recorded
  on a qualified ``prov:Usage`` / ``prov:Generation``, never in the artifact's identity;
* a small value (number, short string, bool, None, anything else by ``repr``) is a
  per-task entity with ``prov:value`` — two runs that both use ``3`` are not linked.

All IRIs are deterministic (see :mod:`provgraph.namespaces`), so serializing the same
record twice gives the same triples and redelivery is harmless.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any

from .hashing import FileHasher, hash_array, hash_bytes
from .namespaces import DCTERMS, DCTERMS_NS, PG, PG_NS, PROV, PROV_NS, RDFS, RDFS_NS, XSD, XSD_NS, Minter, segment
from .records import (
    CALL_ARGS,
    FUNCTIONS,
    Artifact,
    ErrorInfo,
    GraphStatements,
    RawBatch,
    RunEnd,
    RunInfo,
    RunIO,
    TaskRecord,
    run_of,
)
from .settings import Settings

__all__ = ["Mapper", "classify", "iri", "literal"]


def iri(value: str) -> str:
    return f"<{value}>"


#: prefixes of the Turtle/TriG the mapper writes (the emitter puts them at the top of a batch)
PREFIXES: dict[str, str] = {"prov": PROV_NS, "pg": PG_NS, "rdfs": RDFS_NS, "xsd": XSD_NS, "dcterms": DCTERMS_NS}
TRIG_HEADER = "".join(f"@prefix {p}: <{ns}> .\n" for p, ns in PREFIXES.items())


def term(value: str) -> str:
    """A vocabulary IRI as a prefixed name (``prov:used``), else ``<iri>``."""
    for prefix, ns in PREFIXES.items():
        if value.startswith(ns) and value[len(ns):].isalnum():
            return f"{prefix}:{value[len(ns):]}"
    return f"<{value}>"


_ESC = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"})

# N-Triples forms of the terms used on the hot path.
_A = "a"
_ACTIVITY, _ENTITY, _TASK, _RUN = term(PROV.Activity), term(PROV.Entity), term(PG.Task), term(PG.WorkflowRun)
_ARTIFACT, _USAGE, _GENERATION = term(PG.DataArtifact), term(PROV.Usage), term(PROV.Generation)
_USED, _GEN_BY = term(PROV.used), term(PROV.wasGeneratedBy)
_Q_USAGE, _Q_GEN = term(PROV.qualifiedUsage), term(PROV.qualifiedGeneration)
_P_ENTITY, _P_ACTIVITY, _AT_TIME = term(PROV.entity), term(PROV.activity), term(PROV.atTime)
_STARTED, _ENDED = term(PROV.startedAtTime), term(PROV.endedAtTime)
_VALUE, _ASSOC = term(PROV.value), term(PROV.wasAssociatedWith)
_AT_LOC, _INFORMED, _LABEL = term(PROV.atLocation), term(PROV.wasInformedBy), term(RDFS.label)
_STATUS, _IN_RUN, _FUNCTION, _PARENT = term(PG.status), term(PG.inWorkflowRun), term(PG.function), term(PG.parentTask)
_PNAME, _PATH, _SIZE, _VTYPE = term(PG.parameterName), term(PG.path), term(PG.sizeBytes), term(PG.valueType)
_ETYPE, _EMSG, _ETB, _ATTEMPT = term(PG.errorType), term(PG.errorMessage), term(PG.traceback), term(PG.attempt)
_X_DT, _X_DBL = term(XSD.dateTime), term(XSD.double)


def literal(value: Any) -> str:
    """The Turtle literal of a Python scalar (bool, int, float, str, other → str),
    using the ``xsd:`` prefix of :data:`PREFIXES`."""
    vt = type(value)
    if vt is int:
        return str(value)
    if vt is str:
        return '"' + str(value).translate(_ESC) + '"'
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if math.isnan(value):
            text = "NaN"
        elif math.isinf(value):
            text = "INF" if value > 0 else "-INF"
        else:
            text = repr(value)
        return f'"{text}"^^{_X_DBL}'
    if isinstance(value, datetime):
        return f'"{value.isoformat()}"^^{_X_DT}'
    return '"' + str(value).translate(_ESC) + '"'


_minute_cache: list[Any] = [None, ""]


def time_literal(ns: int) -> str:
    """``xsd:dateTime`` literal (UTC, microseconds) of a ``time.time_ns()`` value."""
    seconds, rest = divmod(ns, 1_000_000_000)
    minute, sec = divmod(seconds, 60)
    cache = _minute_cache
    if cache[0] != minute:  # the date part is formatted once a minute
        cache[1] = datetime.fromtimestamp(minute * 60, tz=UTC).strftime("%Y-%m-%dT%H:%M:")
        cache[0] = minute
    return '"%s%02d.%06dZ"^^%s' % (cache[1], sec, rest // 1000, _X_DT)  # noqa: UP031 - fastest here


class Classified:
    """How one value is represented: a content-hashed artifact or a literal value."""

    __slots__ = ("artifact", "literal", "media_type", "path", "size", "vtype")

    def __init__(
        self,
        artifact: str | None = None,
        literal: str | None = None,
        path: str | None = None,
        size: int | None = None,
        vtype: str | None = None,
        media_type: str | None = None,
    ) -> None:
        self.artifact = artifact
        self.literal = literal
        self.path = path
        self.size = size
        self.vtype = vtype
        self.media_type = media_type


def _is_array(obj: Any) -> bool:
    return hasattr(obj, "__array_interface__") and hasattr(obj, "shape")


def classify(obj: Any, settings: Settings, hasher: FileHasher) -> Classified:
    """Decide whether ``obj`` is a data artifact (hashed) or a small value."""
    if obj is None or isinstance(obj, (bool, int, float)):
        return Classified(literal=None if obj is None else literal(obj), vtype=type(obj).__name__)
    if isinstance(obj, Artifact):
        if obj.data is not None:
            return Classified(artifact=hash_bytes(obj.data), size=len(obj.data), media_type=obj.media_type,
                              vtype="bytes")
        if obj.path is not None:
            found = hasher.hash_path(obj.path)
            if found is not None:
                return Classified(artifact=found[0], size=found[1], path=os.path.abspath(obj.path),
                                  vtype="directory" if found[2] else "file", media_type=obj.media_type)
            return Classified(literal=literal(obj.path), path=os.path.abspath(obj.path), vtype="missing-file")
        return Classified(vtype="Artifact")
    if isinstance(obj, str):
        if len(obj) >= settings.hash_min_chars:
            data = obj.encode("utf-8", "replace")
            return Classified(artifact=hash_bytes(data), size=len(data), vtype="text")
        if settings.hash_files and 0 < len(obj) < 4096 and ("/" in obj or os.sep in obj or "." in obj):
            found = hasher.hash_path(obj) if "\0" not in obj else None
            if found is not None:
                return Classified(artifact=found[0], size=found[1], path=os.path.abspath(obj),
                                  vtype="directory" if found[2] else "file")
        return Classified(literal=literal(obj), vtype="str")
    if isinstance(obj, (PurePath, os.PathLike)):
        path = os.fsdecode(os.fspath(obj))
        found = hasher.hash_path(path) if settings.hash_files else None
        if found is not None:
            return Classified(artifact=found[0], size=found[1], path=os.path.abspath(path),
                              vtype="directory" if found[2] else "file")
        return Classified(literal=literal(path), path=os.path.abspath(path), vtype="missing-file")
    if isinstance(obj, (bytes, bytearray, memoryview)):
        if len(obj) >= settings.hash_min_bytes:
            return Classified(artifact=hash_bytes(obj), size=len(obj), vtype=type(obj).__name__)
        return Classified(literal=literal(bytes(obj).hex()), vtype=type(obj).__name__)
    if _is_array(obj):
        shape = tuple(obj.shape)
        if math.prod(shape) <= 1 and hasattr(obj, "item"):
            try:
                return classify(obj.item(), settings, hasher)
            except Exception:  # noqa: BLE001 - fall through to hashing
                pass
        nbytes = int(getattr(obj, "nbytes", 0))
        return Classified(artifact=hash_array(obj), size=nbytes, vtype=f"{type(obj).__name__}{list(shape)}")
    item = getattr(obj, "item", None)
    if callable(item) and getattr(obj, "shape", None) == ():  # numpy scalar
        try:
            return classify(item(), settings, hasher)
        except Exception:  # noqa: BLE001
            pass
    try:
        text = repr(obj)
    except Exception:  # noqa: BLE001 - unrepresentable objects are still recorded
        text = f"<unrepresentable {type(obj).__qualname__}>"
    if len(text) > settings.value_max_chars:
        text = text[: settings.value_max_chars - 1] + "…"
    return Classified(literal=literal(text), vtype=type(obj).__qualname__)


def flatten(values: dict[str, Any]) -> Iterable[tuple[str, Any]]:
    """Named values, with dicts flattened one level (``config.lr``)."""
    for v in values.values():
        if type(v) is dict:
            return _flatten(values)
    return values.items()


def _flatten(values: dict[str, Any]) -> Iterable[tuple[str, Any]]:
    for name, value in values.items():
        if isinstance(value, dict) and value and len(value) <= 64 and all(isinstance(k, str) for k in value):
            for key, sub in value.items():
                yield f"{name}.{key}", sub
        else:
            yield name, value


#: what may follow ``task:`` unescaped in a prefixed name (IDs and parameter names usually)
_LOCAL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")


class _Slot:
    """A hole in a call template, filled with variable ``a<index>`` of the renderer."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


# How the renderer turns value ``x`` into its literal: ints as they are (the f-string
# formats them), short plain strings quoted, floats and bools by :func:`literal`; None
# (general path) for anything else: a string that may name a file, a container, ...
_CHECK = """
    t = type({x})
    if t is not int:
        if t is str and len({x}) < 256 and "/" not in {x} and "." not in {x} and "\\\\" not in {x}:
            {x} = '"' + {x}.translate(ESC) + '"'
        elif t is float or t is bool:
            {x} = literal({x})
        else:
            return None"""


def _compile(pieces: list[str | _Slot], slots: int, skip: int, nargs: int, has_result: bool,
             mapper: Mapper) -> Callable[..., str | None]:
    """The renderer of one call template, ``render(task number, start ns, end ns, call
    record, result)``: a function specialised to its arity that checks each value,
    formats the times and builds the statements as one f-string (CPython builds it in a
    single pass); None when a value needs the general path. ``pieces`` are text and
    slots: ``a0`` the task number, ``a1``/``a3`` the start/end second's
    ``YYYY-MM-DDTHH:MM:SS.``, ``a2``/``a4`` their microseconds (the last six digits of
    the time in µs), ``a5``... the values (the arguments read from the call record, then
    the result). Text enters the source only as ``repr()`` literals."""
    src: list[str] = []
    for piece in pieces:
        if isinstance(piece, _Slot):
            i = piece.index
            src.append(f"f'{{a{i}}}'")
        elif piece:
            src.append(repr(piece))
    values = [f"a{i}" for i in range(5, slots)]
    code = ["def render(a0, a2, a4, record, result):"]
    for i, name in enumerate(values[: nargs - skip]):  # the arguments, from the call record
        code.append(f"    {name} = record[{CALL_ARGS + skip + i}]")
    if has_result:
        code.append(f"    {values[-1]} = result")
    for x in values:
        code.append(_CHECK.format(x=x))
    code.append("""
    s = a2 // 1000000000
    a1 = cache[1] if s == cache[0] else second(s)
    e = a4 // 1000000000
    a3 = a1 if e == s else second(e)
    a2 = str(a2 // 1000)[-6:]
    a4 = str(a4 // 1000)[-6:]""")
    code.append(f"    return ({' '.join(src)})")
    scope: dict[str, Any] = {"__builtins__": {"len": len, "type": type, "int": int, "str": str,
                                              "float": float, "bool": bool},
                             "ESC": _ESC, "literal": literal, "cache": mapper._second,
                             "second": mapper._second_prefix}
    exec("\n".join(code), scope)
    fn: Callable[..., str | None] = scope["render"]
    return fn


class Mapper:
    """Turns records into N-Quads lines. One per emitter; used by one thread."""

    def __init__(self, settings: Settings, hasher: FileHasher | None = None) -> None:
        self.settings = settings
        self.mint = Minter(settings.iri_base)
        #: the prefixes every batch starts with: :data:`PREFIXES` and ``task:`` for this base
        self.trig_header = TRIG_HEADER + f"@prefix task: <{self.mint.task('')}> .\n"
        self.hasher = hasher or FileHasher(dir_max_files=settings.hash_dir_max_files)
        self._declared: set[tuple[str, str]] = set()
        self._heads: dict[tuple[Any, ...], tuple[str, str, str, int]] = {}
        self._pending_decl: list[str] = []
        self._segments: dict[str, tuple[str, str]] = {}
        self._graphs: dict[str, str] = {}
        self._templates: dict[tuple[Any, ...], tuple[Callable[..., str | None], int, str] | None] = {}
        #: triples in every statement returned by :meth:`map` so far (batches count their own)
        self.triples = 0
        self._second: list[Any] = [-1, ""]  # the last second formatted, and its text
        # the sampler attaches telemetry while a record is built: no fast path then
        self._fast_ok = settings.telemetry != "sampler"

    # -- helpers -------------------------------------------------------------
    def _once(self, graph: str, subject: str, lines: list[str], triples: Iterable[tuple[str, str]]) -> None:
        key = (graph, subject)
        if key in self._declared:
            return
        if len(self._declared) > 200_000:
            self._declared.clear()
        self._declared.add(key)
        for p, o in triples:
            lines.append(f"{subject} {p} {o} .\n")

    def _host(self, graph: str, host: str, lines: list[str]) -> str:
        h = iri(self.mint.host(host))
        self._once(graph, h, lines, ((_A, term(PROV.Location)), (_A, term(PG.Host)), (term(PG.hostname), literal(host)),
                                     (term(PG.facility), iri(self.mint.facility(self.settings.facility)))))
        return h

    def _user(self, graph: str, user: str, lines: list[str]) -> str:
        u = iri(self.mint.user(user))
        self._once(graph, u, lines, ((_A, term(PROV.Agent)), (_A, term(PROV.Person)), (_A, term(PG.User)),
                                     (_LABEL, literal(user))))
        return u

    def graph_of(self, run: RunInfo) -> str:
        g = self._graphs.get(run.run_id)
        if g is None:
            if len(self._graphs) > 10_000:
                self._graphs.clear()
            g = self._graphs[run.run_id] = iri(self.mint.graph(run.run_id))
        return g

    # -- records -------------------------------------------------------------
    def map(self, item: Any) -> tuple[str | None, list[str]]:
        """``(graph, statements)``: Turtle statements (one per line, prefixes of
        :attr:`trig_header`) for the named graph ``graph``, and :attr:`triples` grown by
        the triples they hold; for a :class:`RawBatch`, ``(None, [n-quads])``."""
        if type(item) is tuple:
            first = item[0]
            if type(first) is int:  # a call record of the task decorator (see provgraph.records)
                if self._fast_ok:
                    fast = self._fast_call(item)
                    if fast is not None:
                        return fast
                rec = FUNCTIONS[first].to_record(item)
            else:  # an adapter's tuple: (builder, ...); the builder may also return RDF
                rec = first.to_record(item)
                if type(rec) is RawBatch or type(rec) is GraphStatements:
                    return self.map(rec)
            g = self.graph_of(rec.run)
            lines = self.task(rec, g)
        elif isinstance(item, TaskRecord):
            g = self.graph_of(item.run)
            lines = self.task(item, g)
        elif isinstance(item, RunInfo):
            g, lines = self.graph_of(item), self.run_start(item)
        elif isinstance(item, RunEnd):
            g, lines = self.graph_of(item.run), self.run_end(item)
        elif isinstance(item, RunIO):
            g, lines = self.graph_of(item.run), self.run_io(item)
        elif isinstance(item, RawBatch):
            return None, [item.nquads if item.nquads.endswith("\n") else item.nquads + "\n"]
        elif isinstance(item, GraphStatements):
            self.triples += item.triples
            return item.graph, item.statements
        else:
            raise TypeError(f"cannot map {type(item).__qualname__}")
        # the general path writes one triple per line (a literal never holds a raw newline)
        for text in lines:
            self.triples += text.count("\n")
        return g, lines

    def to_trig(self, item: Any) -> str:
        """One record as a complete TriG document (for tests and tools)."""
        graph, lines = self.map(item)
        if graph is None:
            return "".join(lines)
        return f"{self.trig_header}{graph} {{\n{''.join(lines)}}}\n"

    def run_start(self, run: RunInfo) -> list[str]:
        g = self.graph_of(run)
        r = iri(self.mint.run(run.run_id))
        lines: list[str] = []
        out = lines.append
        wf = iri(self.mint.workflow(run.workflow))
        out(f"{r} {_A} {_ACTIVITY} .\n")
        out(f"{r} {_A} {_RUN} .\n")
        out(f"{r} {_LABEL} {literal(run.workflow)} .\n")
        out(f"{r} {term(DCTERMS.identifier)} {literal(run.run_id)} .\n")
        out(f"{r} {_STARTED} {time_literal(run.started_ns)} .\n")
        out(f"{r} {term(PG.executesWorkflow)} {wf} .\n")
        self._once(g, wf, lines, ((_A, term(PROV.Plan)), (_A, term(PG.Workflow)), (_LABEL, literal(run.workflow))))
        if run.campaign:
            c = iri(self.mint.campaign(run.campaign))
            out(f"{r} {term(PG.inCampaign)} {c} .\n")
            self._once(g, c, lines, ((_A, term(PG.Campaign)), (_LABEL, literal(run.campaign))))
        if run.parent_run_id:
            out(f"{r} {term(DCTERMS.isPartOf)} {iri(self.mint.run(run.parent_run_id))} .\n")
        user = run.user or self.settings.user
        out(f"{r} {_ASSOC} {self._user(g, user, lines)} .\n")
        out(f"{r} {_AT_LOC} {self._host(g, run.host or self.settings.hostname, lines)} .\n")
        if run.source_tool:
            out(f"{r} {term(PG.sourceTool)} {literal(run.source_tool)} .\n")
        for key, value in run.attributes.items():
            out(f"{r} {iri(self.mint.base + 'attr/' + segment(key))} {literal(value)} .\n")
        return lines

    def run_end(self, end: RunEnd) -> list[str]:
        g = self.graph_of(end.run)
        r = iri(self.mint.run(end.run.run_id))
        lines = [
            f"{r} {_ENDED} {time_literal(end.ended_ns)} .\n",
            f"{r} {_STATUS} {literal(end.status)} .\n",
        ]
        if end.error is not None:
            self._error(r, g, end.error, lines)
        return lines

    def run_io(self, rec: RunIO) -> list[str]:
        g = self.graph_of(rec.run)
        r_iri = self.mint.run(rec.run.run_id)
        lines: list[str] = []
        h = self._host(g, rec.run.host or self.settings.hostname, lines)
        at = time_literal(rec.at_ns) if rec.direction == "out" else None
        self._value(r_iri, f"<{r_iri}>", g, rec.direction, rec.name, rec.value, h, at, lines)
        return lines

    def _error(self, subject: str, g: str, err: ErrorInfo, lines: list[str]) -> None:
        lines.append(f"{subject} {_ETYPE} {literal(err.type)} .\n")
        lines.append(f"{subject} {_EMSG} {literal(err.message)} .\n")
        if err.traceback:
            lines.append(f"{subject} {_ETB} {literal(err.traceback)} .\n")

    def _task_head(self, rec: TaskRecord, g: str) -> tuple[str, str, str, int]:
        """The lines every task of one (run, name, function, status, user, host) shares,
        with ``\x00`` standing for the task IRI. Built once, reused for every call."""
        return self._head(g, rec.run, rec.name, rec.function, rec.status, rec.host)

    def _head(self, g: str, run: RunInfo, name: str, function: str | None, status: str,
              task_host: str | None) -> tuple[str, str, str, int]:
        """``(lines, host IRI, compact statement body, triples)`` shared by the tasks of one
        (run, name, function, status, user, host): the lines with ``\x00`` for the task
        IRI, and the same triples as one predicate list (for the call templates)."""
        user = run.user or self.settings.user
        host = task_host or run.host or self.settings.hostname
        key = (g, name, function, status, user, host)
        cached = self._heads.get(key)
        if cached is None:
            decl: list[str] = []
            u = self._user(g, user, decl)
            h = self._host(g, host, decl)
            pairs = [(_LABEL, literal(name)), (_IN_RUN, f"<{self.mint.run(run.run_id)}>"),
                     (_STATUS, literal(status)), (_ASSOC, u), (_AT_LOC, h)]
            if function:
                pairs.append((_FUNCTION, literal(function)))
            lines = [f"\x00 {_A} {_ACTIVITY} .\n", f"\x00 {_A} {_TASK} .\n"]
            lines += [f"\x00 {p} {o} .\n" for p, o in pairs]
            compact = ";".join([f"{_A} {_ACTIVITY},{_TASK}", *(f"{p} {o}" for p, o in pairs)])
            if len(self._heads) > 10_000:
                self._heads.clear()
            cached = self._heads[key] = ("".join(lines), h, compact, len(lines))
            if decl:  # first use in this graph: declare the user and host once
                self._pending_decl.extend(decl)
        return cached

    def task(self, rec: TaskRecord, g: str | None = None) -> list[str]:
        if g is None:
            g = self.graph_of(rec.run)
        t_iri = self.mint.task(rec.task_id)
        t = f"<{t_iri}>"
        head, h, _, _ = self._task_head(rec, g)
        lines: list[str] = []
        if self._pending_decl:
            lines.extend(self._pending_decl)
            self._pending_decl.clear()
        lines.append(head.replace("\x00", t))
        out = lines.append
        at = None
        if rec.ended_ns is not None:
            at = time_literal(rec.ended_ns)
            if rec.started_ns is not None:
                out(f"{t} {_STARTED} {time_literal(rec.started_ns)} .\n{t} {_ENDED} {at} .\n")
            else:
                out(f"{t} {_ENDED} {at} .\n")
        elif rec.started_ns is not None:
            out(f"{t} {_STARTED} {time_literal(rec.started_ns)} .\n")
        if rec.parent_id:
            out(f"{t} {_PARENT} <{self.mint.task(rec.parent_id)}> .\n")
        for other in rec.informed_by:
            out(f"{t} {_INFORMED} <{self.mint.task(other)}> .\n")
        if rec.attempt is not None:
            out(f"{t} {_ATTEMPT} {literal(rec.attempt)} .\n")
        if rec.error is not None:
            self._error(t, g, rec.error, lines)
        for key, value in rec.attributes.items():
            prop = PG.iris()[key] if key in PG.iris() else self.mint.base + "attr/" + segment(key)
            out(f"{t} <{prop}> {literal(value)} .\n")
        scalar = self._scalar_lines
        for name, value in flatten(rec.inputs):
            if not scalar(t_iri, t, g, "in", name, value, lines):
                self._value(t_iri, t, g, "in", name, value, h, None, lines)
        for name, value in flatten(rec.outputs):
            if not scalar(t_iri, t, g, "out", name, value, lines):
                self._value(t_iri, t, g, "out", name, value, h, at, lines)
        for sample in rec.telemetry:
            self._telemetry(t_iri, t, g, sample, lines)
        return lines

    # -- fast path for calls whose arguments and result are all small scalars -----------
    def _fast_call(self, item: tuple[Any, ...]) -> tuple[str, list[str]] | None:
        """The statements of a decorated call from a per-function template, or None when
        the call needs the general path (keyword arguments, an exception, extras such as
        used/generated or telemetry, a value that may be a file, a structured result).
        Produces exactly the triples of :meth:`task` (tests compare both), written as
        compact Turtle: one statement per subject, with predicate lists."""
        fid, run_id, token, n, ptoken, pn, kwargs, t0, t1, result, exc, extras = item[:CALL_ARGS]
        if exc is not None or kwargs or extras or t1 is None or t0 is None:
            return None
        nargs = len(item) - CALL_ARGS
        key = (fid, run_id, nargs, result is None, token)
        templates = self._templates
        if key in templates:
            tpl = templates[key]
        else:
            tpl = self._build_template(FUNCTIONS[fid], run_of(run_id), nargs, result is not None, token)
            if len(templates) > 10_000:
                templates.clear()
            templates[key] = tpl
        if tpl is None:
            return None
        render, triples, g = tpl
        text = render(n, t0, t1, item, result)
        if text is None:
            return None
        if ptoken is None and not self._pending_decl:
            self.triples += triples
            return g, [text]
        lines: list[str] = []
        if self._pending_decl:
            lines.extend(self._pending_decl)
            self.triples += len(self._pending_decl)
            self._pending_decl.clear()
        lines.append(text)
        if ptoken is not None:
            lines.append(f"<{self.mint.task(f'{token}-{n}')}> {_PARENT} <{self.mint.task(f'{ptoken}-{pn}')}> .\n")
            self.triples += triples + 1
        else:
            self.triples += triples
        return g, lines

    def _second_prefix(self, second: int) -> str:
        """``YYYY-MM-DDTHH:MM:SS.`` of a Unix second (UTC), cached for the current second."""
        minute, sec = divmod(second, 60)
        text = time_literal(minute * 60 * 1_000_000_000)[1:18] + f"{sec:02d}."
        self._second[0], self._second[1] = second, text
        return text

    def _build_template(self, info: Any, run: RunInfo, nargs: int, has_result: bool,
                        token: str) -> tuple[Callable[..., str | None], int, str] | None:
        """``(renderer, triples it writes, graph)`` for calls of ``info`` with ``nargs``
        positional arguments in process ``token``; None if such calls need the general
        path. The renderer takes ``(task number, start ns, end ns, call record, result)`` and
        returns the statements, or None when a value is not a small scalar."""
        positional, _, defaults = info._signature()
        if nargs > len(positional):
            return None
        skip = 1 if positional and positional[0] in ("self", "cls") and nargs >= 1 else 0
        names = positional[skip:nargs]
        rest: list[tuple[str, str]] = []  # parameters left to their (scalar) defaults
        for name, value in defaults.items():
            if name in positional[:nargs] or name in ("self", "cls"):
                continue
            if type(value) not in (int, float, bool, str) or (
                    type(value) is str and (len(value) >= 256 or "/" in value or "." in value or "\\" in value)):
                return None
            rest.append((name, literal(value)))
        g = self.graph_of(run)
        _, _, head, head_triples = self._head(g, run, info.name, info.qualname, "finished", None)

        # task IRIs as ``task:`` prefixed names (declared in :attr:`trig_header`) when they can be
        prefixed = _LOCAL_NAME.fullmatch(token) is not None
        prefix = f"task:{token}-" if prefixed else f"<{self.mint.task(token + '-')}"
        t: list[str | _Slot] = [prefix, _Slot(0), "" if prefixed else ">"]
        tpl: list[str | _Slot] = [*t, f" {head};{_STARTED} \"", _Slot(1), _Slot(2),
                                  f"Z\"^^{_X_DT};{_ENDED} \"", _Slot(3), _Slot(4), f"Z\"^^{_X_DT}"]
        values: list[str | _Slot] = []
        used: list[list[str | _Slot]] = []
        slot = 5

        def entity(direction: str, name: str, lit: str | None) -> None:
            nonlocal slot
            seg = self._segments.get(name)
            if seg is None:
                seg = self._segments[name] = (segment(name), literal(name))
            if prefixed and _LOCAL_NAME.fullmatch(seg[0]):
                e: list[str | _Slot] = [prefix, _Slot(0), f"\\/{direction}\\/{seg[0]}"]
            else:
                e = [f"<{self.mint.task(token + '-')}", _Slot(0), f"/{direction}/{seg[0]}>"]
            if lit is None:
                value: str | _Slot = _Slot(slot)
                slot += 1
            else:
                value = lit
            values.extend([*e, f" {_A} {_ENTITY};{_PNAME} {seg[1]};{_VALUE} ", value])
            if direction == "in":
                used.append(e)
                values.append(" .\n")
            else:
                values.extend([f";{_GEN_BY} ", *t, " .\n"])

        for name in names:
            entity("in", name, None)
        for name, lit in rest:
            entity("in", name, lit)
        if has_result:
            entity("out", "return", None)
        if used:
            tpl.append(f";{_USED} ")
            for i, e in enumerate(used):
                tpl.extend([",", *e] if i else e)
        tpl.append(" .\n")
        tpl.extend(values)
        triples = head_triples + 2 + len(used) + 3 * (len(used) + (1 if has_result else 0)) + (1 if has_result else 0)
        return _compile(tpl, slot, skip, nargs, has_result, self), triples, g

    def _scalar_lines(self, t_iri: str, t: str, g: str, direction: str, name: str, value: Any,
                      lines: list[str]) -> bool:
        """Fast path for numbers, booleans and short plain strings; False if not one."""
        vt = type(value)
        if vt is int or vt is float or vt is bool:
            lit = literal(value)
        elif vt is str and len(value) < 256 and "/" not in value and "." not in value and "\\" not in value:
            lit = '"' + value.translate(_ESC) + '"'
        else:
            return False
        seg = self._segments.get(name)
        if seg is None:
            seg = self._segments[name] = (segment(name), literal(name))
        e = f"<{t_iri}/{direction}/{seg[0]}>"
        link = f"{t} {_USED} {e} .\n" if direction == "in" else f"{e} {_GEN_BY} {t} .\n"
        lines.append(f"{e} {_A} {_ENTITY} .\n{e} {_PNAME} {seg[1]} .\n{e} {_VALUE} {lit} .\n{link}")
        return True

    def _value(self, t_iri: str, t: str, g: str, direction: str, name: str, value: Any,
               host: str, at: str | None, lines: list[str]) -> None:
        c = classify(value, self.settings, self.hasher)
        out = lines.append
        if c.artifact is None:
            e = f"<{Minter.value(t_iri, direction, name)}>"
            out(f"{e} {_A} {_ENTITY} .\n")
            out(f"{e} {_PNAME} {literal(name)} .\n")
            if c.literal is not None:
                out(f"{e} {_VALUE} {c.literal} .\n")
            if c.vtype is not None and c.vtype not in ("int", "float", "str", "bool"):
                out(f"{e} {_VTYPE} {literal(c.vtype)} .\n")
            if c.path is not None:
                out(f"{e} {_PATH} {literal(c.path)} .\n")
            out(f"{t} {_USED} {e} .\n" if direction == "in" else f"{e} {_GEN_BY} {t} .\n")
            return
        e = f"<{c.artifact}>"
        out(f"{e} {_A} {_ENTITY} .\n")
        out(f"{e} {_A} {_ARTIFACT} .\n")
        if c.size is not None:
            out(f"{e} {_SIZE} {literal(c.size)} .\n")
        if c.media_type:
            out(f"{e} {term(PG.mediaType)} {literal(c.media_type)} .\n")
        q = f"<{Minter.qualified(t_iri, direction, name)}>"
        if direction == "in":
            out(f"{t} {_USED} {e} .\n")
            out(f"{t} {_Q_USAGE} {q} .\n")
            out(f"{q} {_A} {_USAGE} .\n")
            out(f"{q} {_P_ENTITY} {e} .\n")
        else:
            out(f"{e} {_GEN_BY} {t} .\n")
            out(f"{e} {_Q_GEN} {q} .\n")
            out(f"{q} {_A} {_GENERATION} .\n")
            out(f"{q} {_P_ACTIVITY} {t} .\n")
            if at is not None:
                out(f"{q} {_AT_TIME} {at} .\n")
        out(f"{q} {_PNAME} {literal(name)} .\n")
        out(f"{q} {_AT_LOC} {host} .\n")
        if c.path is not None:
            out(f"{q} {_PATH} {literal(c.path)} .\n")
        if c.vtype is not None:
            out(f"{q} {_VTYPE} {literal(c.vtype)} .\n")

    def _telemetry(self, t_iri: str, t: str, g: str, sample: dict[str, Any], lines: list[str]) -> None:
        phase = str(sample.get("phase", "sample"))
        s = f"<{t_iri}/telemetry/{segment(phase)}>"
        lines.append(f"{t} {term(PG.telemetry)} {s} .\n")
        lines.append(f"{s} {_A} {term(PG.TelemetrySample)} .\n")
        lines.append(f"{s} {term(PG.telemetryPhase)} {literal(phase)} .\n")
        for key, value in sample.items():
            if key == "phase" or value is None or key not in PG.iris():
                continue
            lines.append(f"{s} <{PG.iris()[key]}> {literal(value)} .\n")
