"""Log observer: the lines a program logs become PROV activities and entities.

A program that logs what it does (parameters, files written) needs no instrumentation:
a TOML *pattern file* says which lines start a task, which add used or generated values
or files, and which end it. Two ways to feed lines in:

* :class:`LogFileObserver` follows a log file like ``tail -F`` (rotation, truncation, a
  partial last line), from another process, and checkpoints its position so a restart
  neither duplicates nor misses anything (``provgraph observe log FILE --patterns P``);
* :class:`LogHandler` is a :class:`logging.Handler` attached in-process.

Pattern file (the full reference is ``docs/adapters/logs.md``)::

    [workflow]
    name = "microscope-acquisition"      # label of the workflow run
    campaign = "mida"                    # optional

    [log]                                # optional; for log files
    timestamp = '^(?P<time>\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d,\\d{3})'
    time_format = "%Y-%m-%d %H:%M:%S,%f" # strptime; default ISO 8601
    timezone = "local"                   # "local", "UTC" or "+02:00"

    [[pattern]]
    name = "start"                       # unique; named in errors
    regex = 'acquisition started exposure_ms=(?P<exposure_ms>\\S+)'
    action = "start"                     # start | step | end | fail | task
    task = "acquire"                     # label of the task; may use {group}

    [[pattern]]
    name = "image"
    regex = 'wrote image (?P<image>.+) frame=(?P<frame>\\d+)$'
    generated = ["image"]                # groups recorded as generated (used = [...])
    files = ["image"]                    # groups that are file paths: content-hashed
    key = "{group}[{frame}]"             # the name they are recorded under

The first pattern whose regex matches a line (``re.search``) applies; lines that match
none are counted and ignored. Group values that look like numbers become numbers; file
paths become entities named by their content hash (``ni:///sha-256;...``), so the
images a microscope logs link to the analysis that reads the same files.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import re
import string
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any, BinaryIO

from provgraph import capture
from provgraph.emitter import Emitter
from provgraph.errors import ConfigError, ProvgraphError
from provgraph.records import Artifact, ErrorInfo, RunEnd, RunInfo, TaskRecord
from provgraph.settings import Settings, load_settings
from provgraph.transports import create_transport

from .checkpoint import Checkpoint, checkpoint_path
from .scalars import parse_scalar

__all__ = ["LogFileObserver", "LogHandler", "LogInterpreter", "Pattern", "PatternSet", "load_patterns",
           "parse_patterns"]

log = logging.getLogger("provgraph.logs")

ACTIONS = ("start", "step", "end", "fail", "task")
_CHUNK = 1 << 20
_FLUSH_EVERY = 1000  # records between intermediate flushes of the file observer
_CHECKPOINT_VERSION = 1
_HEAD = 256  # bytes at the start of a file that identify it (truncation and rewrite detection)
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip")


# -- pattern files ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Pattern:
    """One configured line pattern (see the module docstring)."""

    name: str
    regex: re.Pattern[str]
    action: str
    task: str | None = None
    used: tuple[str, ...] = ()
    generated: tuple[str, ...] = ()
    files: frozenset[str] = frozenset()
    key: str = "{group}"
    error: str | None = None


@dataclass(frozen=True, slots=True)
class PatternSet:
    """A validated pattern file: the workflow, the time format and the patterns in order."""

    workflow: str
    patterns: tuple[Pattern, ...]
    campaign: str | None = None
    timestamp: re.Pattern[str] | None = None
    time_format: str | None = None
    tz: tzinfo | None = None  # None: local time
    base_dir: Path | None = None
    source: str = "<patterns>"
    has_end: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "has_end", any(p.action in ("end", "fail") for p in self.patterns))

    def match(self, line: str) -> tuple[Pattern, dict[str, str]] | None:
        """The first pattern matching ``line`` and its named groups that matched."""
        for p in self.patterns:
            m = p.regex.search(line)
            if m is not None:
                return p, {k: v for k, v in m.groupdict().items() if v is not None}
        return None

    def line_time(self, line: str) -> int | None:
        """The time a log line carries (``[log] timestamp``), in ns; None if it has none."""
        if self.timestamp is None:
            return None
        m = self.timestamp.search(line)
        if m is None:
            return None
        text = m.group("time")
        try:
            if self.time_format:
                dt = datetime.strptime(text, self.time_format)
            else:
                dt = datetime.fromisoformat(text)
        except ValueError:
            return None
        if dt.tzinfo is None and self.tz is not None:
            dt = dt.replace(tzinfo=self.tz)
        return int(dt.timestamp() * 1_000_000) * 1000


def load_patterns(path: str | os.PathLike[str]) -> PatternSet:
    """Read and validate a TOML pattern file.

    :raises ConfigError: the file is missing or not TOML, or a pattern is invalid (the
        message names the pattern and what is wrong).
    """
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"pattern file {p} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"pattern file {p} is not valid TOML: {exc}") from None
    return parse_patterns(data, source=str(p))


def parse_patterns(data: dict[str, Any], *, source: str = "<patterns>") -> PatternSet:
    """Validate a pattern document already parsed from TOML (see :func:`load_patterns`)."""

    def fail(msg: str) -> ConfigError:
        return ConfigError(f"pattern file {source}: {msg}")

    unknown = set(data) - {"workflow", "log", "pattern"}
    if unknown:
        raise fail(f"unknown section(s) {', '.join(sorted(unknown))} (allowed: workflow, log, pattern)")
    wf = _table(data.get("workflow", {}), "[workflow]", fail)
    _only(wf, {"name", "campaign"}, "[workflow]", fail)
    name = wf.get("name")
    if not isinstance(name, str) or not name:
        raise fail("[workflow] name must be a non-empty string")
    campaign = wf.get("campaign")
    if campaign is not None and not isinstance(campaign, str):
        raise fail("[workflow] campaign must be a string")
    opts = _table(data.get("log", {}), "[log]", fail)
    _only(opts, {"timestamp", "time_format", "timezone", "base_dir"}, "[log]", fail)
    timestamp = None
    if "timestamp" in opts:
        timestamp = _compile(opts["timestamp"], "[log] timestamp", fail)
        if "time" not in timestamp.groupindex:
            raise fail("[log] timestamp needs a named group (?P<time>...)")
    time_format = opts.get("time_format")
    if time_format is not None and not isinstance(time_format, str):
        raise fail("[log] time_format must be a strptime format string")
    tz = _timezone(opts.get("timezone", "local"), fail)
    base_dir = Path(str(opts["base_dir"])) if "base_dir" in opts else None
    raw = data.get("pattern")
    if not isinstance(raw, list) or not raw:
        raise fail("needs at least one [[pattern]]")
    patterns: list[Pattern] = []
    names: set[str] = set()
    for i, entry in enumerate(raw):
        pattern = _pattern(entry, i, fail)
        if pattern.name in names:
            raise fail(f"pattern {pattern.name!r}: the name is used twice")
        names.add(pattern.name)
        patterns.append(pattern)
    if not any(p.action in ("start", "task") for p in patterns):
        raise fail("no pattern starts a task (action = \"start\" or \"task\")")
    return PatternSet(name, tuple(patterns), campaign=campaign, timestamp=timestamp, time_format=time_format,
                      tz=tz, base_dir=base_dir, source=source)


def _table(value: Any, where: str, fail: Callable[[str], ConfigError]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise fail(f"{where} must be a table")
    return value


def _only(table: dict[str, Any], allowed: set[str], where: str, fail: Callable[[str], ConfigError]) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise fail(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(allowed))})")


def _compile(regex: Any, where: str, fail: Callable[[str], ConfigError]) -> re.Pattern[str]:
    if not isinstance(regex, str) or not regex:
        raise fail(f"{where}: regex must be a non-empty string")
    try:
        return re.compile(regex)
    except re.error as exc:
        raise fail(f"{where}: invalid regex {regex!r}: {exc}") from None


def _timezone(value: Any, fail: Callable[[str], ConfigError]) -> tzinfo | None:
    if value == "local":
        return None
    if value in ("UTC", "Z"):
        return UTC
    m = re.fullmatch(r"([+-])(\d\d):?(\d\d)", str(value))
    if m is None:
        raise fail(f"[log] timezone must be \"local\", \"UTC\" or an offset like \"+02:00\" (got {value!r})")
    sign = 1 if m.group(1) == "+" else -1
    return timezone(sign * timedelta(hours=int(m.group(2)), minutes=int(m.group(3))))


def _fields(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}


def _pattern(entry: Any, index: int, fail: Callable[[str], ConfigError]) -> Pattern:
    if not isinstance(entry, dict):
        raise fail(f"[[pattern]] #{index + 1} must be a table")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise fail(f"[[pattern]] #{index + 1} needs a name")
    where = f"pattern {name!r}"
    _only(entry, {"name", "regex", "action", "task", "used", "generated", "files", "key", "error"}, where, fail)
    regex = _compile(entry.get("regex"), where, fail)
    groups = set(regex.groupindex)
    action = entry.get("action", "step")
    if action not in ACTIONS:
        raise fail(f"{where}: unknown action {action!r} (allowed: {', '.join(ACTIONS)})")

    def group_list(key: str) -> tuple[str, ...] | None:
        if key not in entry:
            return None
        value = entry[key]
        if value == "*":
            return tuple(sorted(groups))
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise fail(f"{where}: {key} must be a list of group names or \"*\"")
        missing = [v for v in value if v not in groups]
        if missing:
            raise fail(f"{where}: {key} names group(s) {', '.join(missing)} that the regex does not define "
                       f"(it defines: {', '.join(sorted(groups)) or 'none'})")
        return tuple(value)

    used, generated, files = group_list("used"), group_list("generated"), group_list("files")
    if used is None and generated is None:
        if action in ("start", "task"):
            used = tuple(sorted(groups))
        elif action == "end":
            generated = tuple(sorted(groups))
        elif action == "step":
            raise fail(f"{where}: a step records nothing; list its groups in used = [...] or generated = [...]")
    recorded = set(used or ()) | set(generated or ())
    if files and not set(files) <= recorded:
        raise fail(f"{where}: files {sorted(set(files) - recorded)} must also be listed in used or generated")
    task = entry.get("task")
    if task is not None:
        if action not in ("start", "task") or not isinstance(task, str) or not task:
            raise fail(f"{where}: task (the label of the task) is a non-empty string, for start/task patterns")
        bad = _fields(task) - groups
        if bad:
            raise fail(f"{where}: task label uses {', '.join(sorted(bad))}, not a group of the regex")
    key = entry.get("key", "{group}")
    if not isinstance(key, str) or not key:
        raise fail(f"{where}: key must be a non-empty template string")
    bad = _fields(key) - groups - {"group"}
    if bad:
        raise fail(f"{where}: key uses {', '.join(sorted(bad))}, neither {{group}} nor a group of the regex")
    error = entry.get("error")
    if error is not None and (action != "fail" or error not in groups):
        raise fail(f"{where}: error names the group holding the message, for fail patterns")
    return Pattern(name, regex, action, task=task or (name if action in ("start", "task") else None),
                   used=used or (), generated=generated or (), files=frozenset(files or ()), key=key, error=error)


# -- lines → records ----------------------------------------------------------------------

class LogInterpreter:
    """Turns lines into :class:`TaskRecord` objects by a :class:`PatternSet` (no I/O).

    ``run_for(start_ns)`` gives the workflow run of a task starting then; ``new_id(key,
    line)`` the ID of a task started by ``line`` (``key`` is the line's position, or None).
    The open task is plain JSON (:meth:`state` / :meth:`restore`) so observers can
    checkpoint it.
    """

    def __init__(self, patterns: PatternSet, run_for: Callable[[int], RunInfo],
                 new_id: Callable[[str | None, str], str], *, base_dir: Path | None = None,
                 parent_of: Callable[[], str | None] | None = None) -> None:
        self.patterns = patterns
        self.run_for = run_for
        self.new_id = new_id
        self.base_dir = patterns.base_dir if patterns.base_dir is not None else base_dir
        self.parent_of = parent_of
        self.open: dict[str, Any] | None = None
        self._open_run: RunInfo | None = None
        self.stats = {"lines": 0, "matched": 0, "unmatched": 0, "orphaned": 0, "tasks": 0}
        self._orphan_logged = False

    def state(self) -> dict[str, Any] | None:
        """The open task as JSON-ready data (a copy), None when no task is open."""
        return None if self.open is None else dict(json.loads(json.dumps(self.open)))

    def restore(self, state: dict[str, Any] | None) -> None:
        self.open = None if state is None else dict(state)
        self._open_run = None

    def feed(self, line: str, at_ns: int, key: str | None = None) -> list[TaskRecord]:
        """Interpret one line (without its newline) logged at ``at_ns``; the records of
        the tasks it completed."""
        self.stats["lines"] += 1
        found = self.patterns.match(line)
        if found is None:
            self.stats["unmatched"] += 1
            return []
        self.stats["matched"] += 1
        pattern, groups = found
        out: list[TaskRecord] = []
        if pattern.action in ("start", "task"):
            if self.open is not None:
                out.append(self._implicit_end(at_ns))
            self.open = {"id": self.new_id(key, line), "label": _format(pattern.task or pattern.name, groups),
                         "start_ns": at_ns, "parent": self.parent_of() if self.parent_of else None,
                         "inputs": {}, "outputs": {}, "key": key}
            self._open_run = self.run_for(at_ns)  # the run of the context that logged the start line
            self._add(pattern, groups)
            if pattern.action == "task":
                out.append(self._close(at_ns, "finished", None))
            return out
        if self.open is None:
            self.stats["orphaned"] += 1
            if not self._orphan_logged:
                self._orphan_logged = True
                log.info("provgraph log observer: line matched %r outside any task (ignored; counted as "
                         "orphaned): %.200s", pattern.name, line)
            return out
        self._add(pattern, groups)
        if pattern.action == "end":
            out.append(self._close(at_ns, "finished", None))
        elif pattern.action == "fail":
            message = groups.get(pattern.error, line) if pattern.error else line
            out.append(self._close(at_ns, "failed", ErrorInfo(pattern.name, message[:4000])))
        return out

    def end_open_task(self, at_ns: int) -> list[TaskRecord]:
        """The program has ended: close the open task, if any (failed when the patterns
        define an end line that never came, finished otherwise)."""
        if self.open is None:
            return []
        if self.patterns.has_end:
            return [self._close(at_ns, "failed", ErrorInfo("IncompleteTask", "the log ended before an end line"))]
        return [self._close(at_ns, "finished", None)]

    def _implicit_end(self, at_ns: int) -> TaskRecord:
        if self.patterns.has_end:
            return self._close(at_ns, "failed", ErrorInfo(
                "IncompleteTask", "the log started a new task before this one's end line"))
        return self._close(at_ns, "finished", None)

    def _add(self, pattern: Pattern, groups: dict[str, str]) -> None:
        assert self.open is not None
        for direction, names in (("inputs", pattern.used), ("outputs", pattern.generated)):
            target: dict[str, list[str]] = self.open[direction]
            for group in names:
                if group not in groups:
                    continue
                name = _format(pattern.key, groups, group=group)
                value = groups[group]
                kind = "value"
                if group in pattern.files:
                    kind = "file"
                    value = self._resolve(value)
                entry = [kind, value]
                unique, n = name, 1
                while unique in target and target[unique] != entry:
                    n += 1
                    unique = f"{name}#{n}"
                target[unique] = entry

    def _resolve(self, path: str) -> str:
        p = Path(path.strip())
        if not p.is_absolute() and self.base_dir is not None:
            p = self.base_dir / p
        return os.path.abspath(p)

    def _close(self, at_ns: int, status: str, error: ErrorInfo | None) -> TaskRecord:
        task = self.open
        assert task is not None
        run = self._open_run or self.run_for(int(task["start_ns"]))
        self.open = self._open_run = None
        self.stats["tasks"] += 1
        attributes: dict[str, Any] = {}
        if task.get("key"):
            attributes["externalId"] = task["key"]
        return TaskRecord(
            task_id=task["id"], run=run, name=task["label"],
            started_ns=int(task["start_ns"]), ended_ns=max(at_ns, int(task["start_ns"])),
            inputs={k: _value(v) for k, v in task["inputs"].items()},
            outputs={k: _value(v) for k, v in task["outputs"].items()},
            status=status, error=error, parent_id=task.get("parent"), attributes=attributes,
        )


def _age_rank(name: str) -> int:
    """Among rotated files written in the same clock tick, ``NAME.3`` is older than
    ``NAME.1`` (logging.handlers.RotatingFileHandler, logrotate); other names sort by name."""
    suffix = name.rsplit(".", 1)[-1]
    return -int(suffix) if suffix.isdigit() else 0


def _format(template: str, groups: dict[str, str], **extra: str) -> str:
    try:
        return template.format(**{**groups, **extra})
    except (KeyError, IndexError, ValueError):  # an optional group that did not match
        return template


def _value(entry: list[str]) -> Any:
    kind, text = entry
    return Artifact(path=text) if kind == "file" else parse_scalar(text)


# -- following a file ---------------------------------------------------------------------

class LogFileObserver:
    """Follows one log file (like ``tail -F``) and emits the tasks its lines describe.

    * only complete lines are read; a partial last line waits for its newline;
    * rotation (the path now names another file): the old file is read to its end first,
      then every file rotated after it, then the new one from its start; truncation or
      rewrite (the file shrank, or its first bytes changed): read from the start;
    * the position (inode + byte offset), the workflow run and the task still open are
      checkpointed under ``data_dir/observers/`` after the emitter flushed, so a restart
      resumes exactly there (also after a rotation that happened while it was down,
      when the rotated file is found next to the log as ``NAME.*``).

    Task IDs are hashes of the workflow name, the file's path and inode, the byte offset
    and the text of the start line: re-reading a line after a crash gives the same IRIs.

    :param path: the log file; it need not exist yet.
    :param patterns: a :class:`PatternSet` (:func:`load_patterns`).
    :param settings: provgraph settings (default: :func:`~provgraph.settings.load_settings`).
    :param emitter: where records go; default: a new emitter on the configured transport,
        shut down by :meth:`close`.
    :param poll_interval: seconds between reads in :meth:`run_forever`.
    :param encoding: of the log (undecodable bytes are replaced, never fatal).
    """

    def __init__(self, path: str | os.PathLike[str], patterns: PatternSet, *, settings: Settings | None = None,
                 emitter: Emitter | None = None, poll_interval: float = 0.5, encoding: str = "utf-8",
                 flush_timeout: float = 60.0) -> None:
        self.path = Path(os.path.abspath(path))
        self.patterns = patterns
        self.settings = settings or load_settings()
        self.poll_interval = poll_interval
        self.encoding = encoding
        self.flush_timeout = flush_timeout
        self.checkpoint = Checkpoint(checkpoint_path(self.settings, "log", f"{self.path}|{patterns.workflow}"))
        try:
            state = self.checkpoint.load()
        except ValueError as exc:
            raise ConfigError(f"checkpoint {self.checkpoint.path} is corrupt ({exc}); "
                              "delete it to re-read the log from its start") from None
        self._run_state: dict[str, Any] | None = state.get("run")
        self._run: RunInfo | None = None
        self.interpreter = LogInterpreter(patterns, self._run_for, self._task_id, base_dir=self.path.parent)
        self.interpreter.restore(state.get("open"))
        self.interpreter.stats.update({k: int(v) for k, v in dict(state.get("stats", {})).items()})
        self._cp_inode: int | None = state.get("inode")
        self._cp_offset: int = int(state.get("offset", 0))
        self._cp_head: bytes = bytes.fromhex(state.get("head", ""))
        self._done: list[int] = [int(i) for i in state.get("done", [])]  # rotated files read to their end
        self._fh: BinaryIO | None = None
        self._ino: int | None = None
        self._offset = 0
        self._head = b""
        self._owns_emitter = emitter is None
        self.emitter = emitter or Emitter(create_transport(self.settings), self.settings)
        self._announced = False
        self._pending = 0  # records emitted since the last checkpoint
        self._saved: dict[str, Any] = state
        self.stats = {"polls": 0, "rotations": 0, "truncations": 0, "missed_rotations": 0}

    # -- the run and task IDs --------------------------------------------------------
    def _run_for(self, start_ns: int) -> RunInfo:
        if self._run is None:
            if self._run_state is None:
                key = f"{self.path}|{self._ino}|{self.patterns.workflow}".encode()
                self._run_state = {"id": "log-" + hashlib.sha256(key).hexdigest()[:24], "started_ns": start_ns}
            self._run = RunInfo(self._run_state["id"], self.patterns.workflow, campaign=self.patterns.campaign
                                or self.settings.campaign, user=self.settings.user, host=self.settings.hostname,
                                started_ns=int(self._run_state["started_ns"]), source_tool="log",
                                attributes={"logFile": str(self.path)})
        if not self._announced:
            self._announced = True
            self.emitter.emit_control(self._run)
        return self._run

    def _task_id(self, key: str | None, line: str) -> str:
        text = f"{self.patterns.workflow}|{key}|{line}"  # key: path, inode and byte offset of the line
        return "log-" + hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:32]

    # -- polling ---------------------------------------------------------------------
    def poll_once(self) -> int:
        """Read the complete lines appended since the last poll, emit the tasks they
        complete, flush, checkpoint; return the number of lines read.

        :raises ProvgraphError: the records could not be delivered in ``flush_timeout``
            (nothing is checkpointed; the lines are read again after a restart).
        """
        self.stats["polls"] += 1
        lines = self._follow()
        self._commit()
        return lines

    def end_open_task(self) -> int:
        """The program has exited: emit the task still open (see
        :meth:`LogInterpreter.end_open_task`) and checkpoint; return 0 or 1."""
        records = self.interpreter.end_open_task(time.time_ns())
        self._emit(records)
        self._commit()
        return len(records)

    def run_forever(self, stop_event: threading.Event) -> None:
        """Poll every ``poll_interval`` seconds until ``stop_event`` is set, then read
        what is left once more. Failures are logged and retried."""
        while True:
            stopping = stop_event.is_set()
            try:
                self.poll_once()
            except (ProvgraphError, OSError) as exc:
                log.warning("provgraph log observer: %s (retrying in %g s)", exc, self.poll_interval)
            if stopping:
                return
            stop_event.wait(self.poll_interval)

    def close(self, timeout: float = 30.0) -> bool:
        """Close the file; flush, and shut the emitter down if the observer created it."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._owns_emitter:
            return self.emitter.shutdown(timeout)
        return self.emitter.force_flush(timeout)

    def __enter__(self) -> LogFileObserver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the file ----------------------------------------------------------------------
    def _follow(self) -> int:
        try:
            st: os.stat_result | None = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if self._fh is None:
            return 0 if st is None else self._resume(st)
        if st is None or st.st_ino != self._ino:  # rotated away: finish the old file, then the newer ones
            assert self._ino is not None
            n = self._catch_up(self._ino, None, st)
            return n if st is None else n + self._read(to_end=False)
        if self._rewritten(self._fh, self._offset, self._head):
            self.stats["truncations"] += 1
            log.info("provgraph log observer: %s was truncated or rewritten; reading it from the start", self.path)
            self._offset, self._head = 0, b""
        return self._read(to_end=False)

    def _position(self) -> tuple[int | None, int, bytes]:
        """``(inode, offset, head)`` of the last line interpreted: in memory once this
        process has read a file (open or finished), else from the checkpoint."""
        if self._ino is not None:
            return self._ino, self._offset, self._head
        return self._cp_inode, self._cp_offset, self._cp_head

    def _resume(self, st: os.stat_result) -> int:
        """No file open (first poll, or the log was gone): continue from the position."""
        ino, offset, head = self._position()
        if ino is not None and ino != st.st_ino:
            return self._catch_up(ino, offset, st, head) + self._read(to_end=False)
        if not self._open_inode(st.st_ino, 0, self.path):
            return 0  # deleted between stat and open: the next poll looks again
        assert self._fh is not None
        if ino == st.st_ino:
            if self._rewritten(self._fh, offset, head):
                self.stats["truncations"] += 1
            else:
                self._offset, self._head = offset, head
        return self._read(to_end=False)

    def _catch_up(self, old_ino: int, offset: int | None, st: os.stat_result | None, head: bytes = b"") -> int:
        """The file at ``old_ino`` was rotated away: read it to its end (from ``offset``,
        or from where this process was), then every file rotated after it (``NAME.*``,
        oldest first), then open the new file at ``st``.

        Files are always opened by inode: when a rotation moves a file between listing
        and opening, it is looked up again, so a file is never read in another's place."""
        n = 0
        old_mtime: int | None = None
        if offset is None:  # this process was following it: the handle still reads it
            assert self._fh is not None
            old_mtime = os.fstat(self._fh.fileno()).st_mtime_ns
        elif self._open_inode(old_ino, offset):
            assert self._fh is not None
            old_mtime = os.fstat(self._fh.fileno()).st_mtime_ns
            if self._rewritten(self._fh, offset, head):
                self._offset, self._head = 0, b""
            else:
                self._head = head
        else:
            self.stats["missed_rotations"] += 1
            log.warning("provgraph log observer: %s was rotated while the observer was stopped and the old "
                        "file (inode %d) is not next to it; its lines after byte %d are not recorded",
                        self.path, old_ino, offset)
        if self._fh is not None:
            n += self._finish_file()
        if old_mtime is not None:
            current = None if st is None else st.st_ino
            for path, ino in self._rotated_after(old_mtime, {old_ino, current}):
                if self._open_inode(ino, 0, path):
                    n += self._finish_file()
        if st is not None:
            self._open_inode(st.st_ino, 0, self.path)  # gone again: the next poll starts from the position
        return n

    def _open_inode(self, ino: int, offset: int, first: Path | None = None) -> bool:
        """Open the file with inode ``ino`` at ``offset``: at ``first``, else wherever a
        rotation moved it (the log's path or a rotated name). False when it is gone."""
        tried: set[Path] = set()
        for _ in range(4):
            path = first if first is not None and first not in tried else self._locate(ino)
            if path is None:
                return False
            tried.add(path)
            try:
                fh = open(path, "rb")  # kept open while following
            except OSError:
                continue
            if os.fstat(fh.fileno()).st_ino == ino:
                self._fh, self._ino, self._offset, self._head = fh, ino, offset, b""
                return True
            fh.close()
        return False

    def _locate(self, ino: int) -> Path | None:
        try:
            if os.stat(self.path).st_ino == ino:
                return self.path
        except OSError:
            pass
        for path, other, _ in self._siblings():
            if other == ino:
                return path
        return None

    def _finish_file(self) -> int:
        assert self._fh is not None and self._ino is not None
        n = self._read(to_end=True)
        self._fh.close()
        self._fh = None
        self.stats["rotations"] += 1
        if self._ino not in self._done:
            self._done = [*self._done[-15:], self._ino]
        return n

    def _siblings(self) -> list[tuple[Path, int, int]]:
        """``(path, inode, mtime_ns)`` of the rotated files next to the log (``NAME.*``,
        ``NAME-*``, ``NAME_*``; compressed ones are skipped)."""
        out: list[tuple[Path, int, int]] = []
        try:
            entries = list(os.scandir(self.path.parent))
        except OSError:
            return out
        base = self.path.name
        for entry in entries:
            name = entry.name
            if name == base or not name.startswith(base) or name[len(base)] not in ".-_" or name.endswith(_COMPRESSED):
                continue
            try:
                if entry.is_file():
                    out.append((Path(entry.path), entry.inode(), entry.stat().st_mtime_ns))
            except OSError:  # removed meanwhile (backupCount reached)
                continue
        return out

    def _rotated_after(self, mtime_ns: int, exclude: set[int | None]) -> list[tuple[Path, int]]:
        found = [(m, _age_rank(p.name), p.name, p, i) for p, i, m in self._siblings()
                 if m >= mtime_ns and i not in exclude and i not in self._done]
        return [(p, i) for _, _, _, p, i in sorted(found)]

    @staticmethod
    def _rewritten(fh: BinaryIO, offset: int, head: bytes) -> bool:
        """True when the file is shorter than ``offset`` or no longer starts with ``head``
        (truncated, or truncated and written past the old offset before this poll)."""
        if os.fstat(fh.fileno()).st_size < offset:
            return True
        if not head:
            return False
        fh.seek(0)
        return fh.read(len(head)) != head

    def _read(self, *, to_end: bool) -> int:
        """Interpret the complete lines after ``_offset`` (and a last partial line when
        ``to_end``: the file will not grow any more)."""
        fh = self._fh
        assert fh is not None
        fh.seek(self._offset)
        n = 0
        rest = b""
        while True:
            chunk = fh.read(_CHUNK)
            if not chunk:
                break
            data = rest + chunk
            end = data.rfind(b"\n")
            if end < 0:
                rest = data
                continue
            start = self._offset
            for raw in data[: end + 1].splitlines(keepends=True):
                self._line(raw, start)
                start += len(raw)
                n += 1
            self._offset = start
            rest = data[end + 1:]
        if rest and to_end:
            self._line(rest, self._offset)
            self._offset += len(rest)
            n += 1
        if len(self._head) < min(_HEAD, self._offset):  # remember how the file starts
            self._head = os.pread(fh.fileno(), min(_HEAD, self._offset), 0)
        return n

    def _line(self, raw: bytes, offset: int) -> None:
        text = raw.decode(self.encoding, "replace").rstrip("\r\n")
        at = self.patterns.line_time(text) or time.time_ns()
        self._emit(self.interpreter.feed(text, at, f"{self.path}:{self._ino}:{offset}"))

    def _emit(self, records: Iterable[TaskRecord]) -> None:
        for rec in records:
            self.emitter.emit_control(rec)  # never dropped: an observer can wait for its emitter
            self._pending += 1
            if self._pending % _FLUSH_EVERY == 0:
                self.emitter.force_flush(self.flush_timeout)

    def _commit(self) -> None:
        """Flush what was emitted, then save the position (never the other way round)."""
        if self._pending:
            if not self.emitter.force_flush(self.flush_timeout):
                raise ProvgraphError(f"provgraph log observer: {self._pending} records of {self.path} were not "
                                     f"delivered in {self.flush_timeout:g} s; not checkpointed")
            self._pending = 0
        ino, offset, head = self._position()
        state: dict[str, Any] = {
            "version": _CHECKPOINT_VERSION, "path": str(self.path), "workflow": self.patterns.workflow,
            "inode": ino, "offset": offset, "head": head.hex(), "done": list(self._done),
            "run": None if self._run_state is None else dict(self._run_state), "open": self.interpreter.state(),
            "stats": dict(self.interpreter.stats)}
        if state != self._saved:
            self.checkpoint.save(state)
            self._saved = state


# -- in-process handler -------------------------------------------------------------------

class LogHandler(logging.Handler):
    """A :class:`logging.Handler` that turns the messages it sees into tasks.

    ::

        handler = LogHandler(load_patterns("microscope_patterns.toml"))
        logging.getLogger("microscope").addHandler(handler)

    Messages (``record.getMessage()``, without any formatter prefix) are matched on the
    logging thread — a few regex searches, no I/O; files are hashed on the emitter's
    thread. A task joins the provgraph workflow run of the context that logged its start
    line (and becomes a child of the provgraph task logging it), else a run of its own
    (named by the pattern file, ended by :meth:`close`). It never raises into the
    program: errors are reported once through :meth:`logging.Handler.handleError`.

    :param emitter: default: the process's capture emitter (``provgraph.configure``).
    """

    def __init__(self, patterns: PatternSet, *, emitter: Emitter | None = None, level: int = logging.NOTSET,
                 base_dir: str | os.PathLike[str] | None = None) -> None:
        super().__init__(level)
        self.patterns = patterns
        self._emitter = emitter
        self._own_run: RunInfo | None = None
        self._failed = False
        self._finished = False
        self.interpreter = LogInterpreter(patterns, self._run_for, self._new_id,
                                          base_dir=Path(base_dir) if base_dir is not None else Path.cwd(),
                                          parent_of=capture.current_task_id)
        # runs before provgraph's own exit hook (registered earlier), so the end is delivered
        atexit.register(self.finish)

    def _emitter_now(self) -> Emitter | None:
        return self._emitter if self._emitter is not None else capture._emitter_or_none()

    def _run_for(self, start_ns: int) -> RunInfo:
        run = capture.current_run()
        if run is not None:
            return run
        if self._own_run is None:
            settings = capture._State.settings or load_settings()
            self._own_run = RunInfo(uuid.uuid4().hex, self.patterns.workflow,
                                    campaign=self.patterns.campaign or settings.campaign, user=settings.user,
                                    host=settings.hostname, started_ns=start_ns, source_tool="log")
            em = self._emitter_now()
            if em is not None:
                em.emit_control(self._own_run)
        return self._own_run

    @staticmethod
    def _new_id(key: str | None, line: str) -> str:
        return capture.new_task_id()

    def emit(self, record: logging.LogRecord) -> None:
        """Match one log record (never raises)."""
        try:
            records = self.interpreter.feed(record.getMessage(), int(record.created * 1e9))
            if records:
                em = self._emitter_now()
                if em is not None:
                    for rec in records:
                        em.emit(rec)
        except Exception:  # noqa: BLE001 - never break the program that logs
            if not self._failed:
                self._failed = True
                self.handleError(record)

    def finish(self) -> None:
        """The program is done logging: record the task still open (failed when its end
        line never came) and end the handler's own run. Idempotent; runs at exit."""
        if self._finished:
            return
        self._finished = True
        try:
            em = self._emitter if self._emitter is not None else capture._State.emitter  # never start one now
            if em is None:
                return
            for rec in self.interpreter.end_open_task(time.time_ns()):
                em.emit(rec)
            if self._own_run is not None:
                em.emit_control(RunEnd(self._own_run, time.time_ns(), "finished"))
                self._own_run = None
        except Exception:  # noqa: BLE001 - never break the program (or its exit)
            sys.stderr.write("provgraph: LogHandler.finish failed\n")

    def close(self) -> None:
        """:meth:`finish`, then detach (``logging`` calls this at shutdown)."""
        try:
            self.finish()
        finally:
            atexit.unregister(self.finish)
            super().close()
