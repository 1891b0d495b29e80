"""MLflow observer: runs in a tracking store become PROV activities, with no change to the
user's MLflow code.

::

    from provgraph.adapters.mlflow import MlflowObserver

    with MlflowObserver("sqlite:///mlflow.db") as observer:
        observer.poll_once()                 # or: observer.run_forever(stop_event)

or ``provgraph observe mlflow --tracking-uri sqlite:///mlflow.db``.

The observer reads the store only through MLflow's public client API
(``MlflowClient.search_experiments``, ``search_runs``, ``get_metric_history``,
``list_artifacts``, ``download_artifacts``), so any backend works: a sqlite or SQL
database, a file store, a tracking server.

Mapping (the full table is in ``docs/adapters/mlflow.md``):

* an **experiment** is a workflow run (:class:`~provgraph.records.RunInfo`, label = the
  experiment name, campaign from settings); its ID is derived from the tracking URI and
  the experiment ID, so it is the same on every restart;
* an MLflow **run** is a task (``prov:Activity``, ``pg:Task``) whose ID is derived from
  the tracking URI and the MLflow run ID (:func:`task_id_of`): params are used values
  (numbers parsed), metrics are generated values (the final value as ``{key}``, the
  history as ``{key}@{step}``), logged artifacts are content-hashed entities named
  ``artifact:{path}``, MLflow models ``model:{path}``; the ``mlflow.parentRunId`` tag
  becomes ``pg:parentTask``; FINISHED → ``finished``, FAILED/KILLED → ``failed``; the
  MLflow user is the associated agent;
* runs still RUNNING or SCHEDULED are not recorded yet; they are picked up once they end.

Exactly once, across restarts: after each poll the observer flushes its emitter and only
then writes its checkpoint (``data_dir/observers/mlflow-*.json``: the IDs of the runs
recorded and an end-time watermark). Task IRIs are deterministic, so the records of a
poll that was interrupted before its checkpoint are re-emitted without changing the graph.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse, urlunparse
from urllib.request import url2pathname

from provgraph.emitter import Emitter
from provgraph.errors import ConfigError, ProvgraphError, require
from provgraph.records import Artifact, ErrorInfo, RunInfo, TaskRecord
from provgraph.settings import Settings, load_settings
from provgraph.transports import create_transport

from .checkpoint import Checkpoint, checkpoint_path
from .scalars import parse_scalar

__all__ = ["MlflowObserver", "experiment_run_id", "normalize_uri", "observe", "parse_param", "task_id_of"]

log = logging.getLogger("provgraph.mlflow")

_TERMINAL = {"FINISHED": "finished", "FAILED": "failed", "KILLED": "failed"}
_PAGE = 1000
_FLUSH_EVERY = 500  # records between intermediate flushes (bounds the emitter queue)
_CHECKPOINT_VERSION = 1

#: MLflow params are strings; integers and decimals become numbers, the rest stays text.
parse_param = parse_scalar


def normalize_uri(uri: str) -> str:
    """The tracking URI without credentials; sqlite/file paths made absolute."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return "file://" + os.path.abspath(url2pathname(unquote(parsed.path or uri)))
    if parsed.scheme.startswith("sqlite"):
        path = _sqlite_path(uri)
        return uri if path is None else f"{parsed.scheme}:///{path}"
    if parsed.username or parsed.password:
        host = parsed.hostname or ""
        netloc = host + (f":{parsed.port}" if parsed.port else "")
        return urlunparse(parsed._replace(netloc=netloc))
    return uri


def _sqlite_path(uri: str) -> str | None:
    """The absolute database path of ``sqlite:///rel.db`` / ``sqlite:////abs.db``; None
    for an in-memory database."""
    parsed = urlparse(uri)
    path = parsed.path
    if not path or path == "/" or path == "/:memory:":
        return None
    rel = path[1:]  # sqlite:///x -> "x" (relative), sqlite:////x -> "/x" (absolute)
    return os.path.abspath(unquote(rel))


def experiment_run_id(tracking_uri: str, experiment_id: str) -> str:
    """Deterministic workflow-run ID of one experiment of one tracking store."""
    key = f"{normalize_uri(tracking_uri)}|{experiment_id}".encode()
    return "mlflow-exp-" + hashlib.sha256(key).hexdigest()[:24]


def task_id_of(tracking_uri: str, mlflow_run_id: str) -> str:
    """The provgraph task ID of one MLflow run of one tracking store (deterministic: the
    same on every poll and restart, so re-emitting a run changes nothing)."""
    key = f"{normalize_uri(tracking_uri)}|{mlflow_run_id}".encode()
    return "mlflow-" + hashlib.sha256(key).hexdigest()[:32]


def _local_path(uri: str) -> str | None:
    """The local directory of a ``file://`` or plain-path artifact URI, else None."""
    parsed = urlparse(uri)
    if parsed.scheme == "file" or (parsed.scheme == "" and uri.startswith("/")):
        return url2pathname(unquote(parsed.path))
    return None


def _ms_to_ns(ms: int | None) -> int | None:
    return None if ms is None else int(ms) * 1_000_000


class MlflowObserver:
    """Polls one MLflow tracking store and emits its runs as provenance.

    :param tracking_uri: any MLflow tracking URI (``sqlite:///mlflow.db``, ``http://host:5000``...).
    :param settings: provgraph settings (default: :func:`~provgraph.settings.load_settings`).
    :param emitter: where records go; default: a new emitter on the configured transport,
        owned (and shut down by :meth:`close`) by the observer.
    :param poll_interval: seconds between polls in :meth:`run_forever`.
    :param experiments: only these experiment names (default: every active experiment).
    :param history_max_points: at most this many ``{key}@{step}`` values per metric
        (evenly spaced, always with the first and last step); 0 records no history.
    :param max_download_bytes: artifacts of remote stores larger than this are recorded by
        URI only, not downloaded and hashed.
    :param overlap_s: incremental polls re-read runs that ended up to this long before the
        newest end time seen (clock skew between clients).
    :param full_scan_every: every n-th poll lists every run, not only recently ended ones.
    :param flush_timeout: seconds to wait for the emitter before giving up on a poll
        (nothing is checkpointed then; the next poll re-reads the same runs).
    :raises MissingDependencyError: when MLflow is not installed (extra ``mlflow``).
    :raises ConfigError: a ``sqlite:`` URI naming a database that does not exist, or a
        corrupt checkpoint.
    """

    def __init__(self, tracking_uri: str, *, settings: Settings | None = None, emitter: Emitter | None = None,
                 poll_interval: float = 10.0, experiments: list[str] | None = None,
                 history_max_points: int = 100, max_download_bytes: int = 1 << 30,
                 overlap_s: float = 600.0, full_scan_every: int = 30,
                 flush_timeout: float = 60.0) -> None:
        require("mlflow", "mlflow")
        if urlparse(tracking_uri).scheme.startswith("sqlite"):
            db = _sqlite_path(tracking_uri)
            if db is not None and not os.path.isfile(db):
                # MLflow would create (and migrate) an empty database: observing never writes.
                raise ConfigError(f"tracking_uri: no MLflow database at {db} (from {tracking_uri!r})")
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.uri = normalize_uri(tracking_uri)
        self.settings = settings or load_settings()
        self.poll_interval = poll_interval
        self.experiments = experiments
        self.history_max_points = history_max_points
        self.max_download_bytes = max_download_bytes
        self.overlap_ms = int(overlap_s * 1000)
        self.full_scan_every = max(1, full_scan_every)
        self.flush_timeout = flush_timeout
        source = self.uri if experiments is None else f"{self.uri}|{','.join(sorted(experiments))}"
        self.checkpoint = Checkpoint(checkpoint_path(self.settings, "mlflow", source))  # one per store and filter
        try:
            state = self.checkpoint.load()
        except ValueError as exc:
            raise ConfigError(f"checkpoint {self.checkpoint.path} is corrupt ({exc}); "
                              "delete it to re-read the whole store") from None
        self._seen: dict[str, int] = {str(k): int(v) for k, v in dict(state.get("seen", {})).items()}
        watermark = state.get("watermark")
        self._watermark: int | None = None if watermark is None else int(watermark)
        self._cache_prefix = self.checkpoint.path.stem + "-"
        self._clear_cache()
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self._owns_emitter = emitter is None
        self.emitter = emitter or Emitter(create_transport(self.settings), self.settings)
        self._announced: set[str] = set()
        self._polls = 0
        self.stats = {"polls": 0, "runs": 0, "pending": 0, "errors": 0, "skipped": 0}

    # -- polling ---------------------------------------------------------------------
    def poll_once(self) -> int:
        """Record every run that ended since the last checkpoint; return how many.

        :raises ProvgraphError: the store cannot be read (nothing is checkpointed then,
            the next poll retries), or the records could not be delivered in
            ``flush_timeout`` (they stay queued; the next poll re-reads those runs).
        """
        full = self._watermark is None or self._polls % self.full_scan_every == 0
        self._polls += 1
        self.stats["polls"] += 1
        cache = Path(tempfile.mkdtemp(prefix=self._cache_prefix, dir=self._cache_root()))
        delivered = False
        try:
            new, pending = self._emit_new(cache, full)
            self.stats["pending"] = pending
            if not new:
                delivered = True
                return 0
            if not self.emitter.force_flush(self.flush_timeout):
                self.stats["errors"] += 1
                raise ProvgraphError(f"provgraph mlflow observer: records of {len(new)} runs were not delivered in "
                                     f"{self.flush_timeout:g} s; they will be re-read at the next poll")
            delivered = True
            self._seen.update(new)
            top = max(new.values())
            self._watermark = top if self._watermark is None else max(self._watermark, top)
            self.checkpoint.save({"version": _CHECKPOINT_VERSION, "tracking_uri": self.uri,
                                  "seen": self._seen, "watermark": self._watermark})
            self.stats["runs"] += len(new)
            return len(new)
        finally:
            if delivered:  # downloaded artifacts were hashed: the records are out
                shutil.rmtree(cache, ignore_errors=True)

    def _emit_new(self, cache: Path, full: bool) -> tuple[dict[str, int], int]:
        """Emit a record per newly ended run; ``({run_id: end_ms}, runs still running)``."""
        try:
            experiments = {e.experiment_id: e for e in self._experiments()}
            new: dict[str, int] = {}
            pending = 0
            if not experiments:
                return new, 0
            since = None if full or self._watermark is None else self._watermark - self.overlap_ms
            for run in self._search(list(experiments), since):
                info = run.info
                if info.run_id in self._seen or info.run_id in new:
                    continue
                if info.status not in _TERMINAL:
                    pending += 1
                    continue
                try:
                    record = self._record(run, self._workflow_run(experiments[info.experiment_id]), cache)
                except Exception as exc:  # noqa: BLE001 - one unreadable run must not block the others
                    self.stats["errors"] += 1
                    self.stats["skipped"] += 1
                    log.warning("provgraph mlflow observer: cannot read run %s (%s: %s); it is retried at "
                                "the next full scan", info.run_id, type(exc).__name__, exc)
                    continue
                self.emitter.emit_control(record)
                new[info.run_id] = int(info.end_time or info.start_time or 0)
                if len(new) % _FLUSH_EVERY == 0:
                    self.emitter.force_flush(self.flush_timeout)
            return new, pending
        except ProvgraphError:
            raise
        except Exception as exc:
            self.stats["errors"] += 1
            raise ProvgraphError(f"cannot read the MLflow tracking store {self.uri}: "
                                 f"{type(exc).__name__}: {exc}") from exc

    def run_forever(self, stop_event: threading.Event) -> None:
        """Poll every ``poll_interval`` seconds until ``stop_event`` is set. A failing
        poll is logged and retried at the next interval (the store may be restarting)."""
        while not stop_event.is_set():
            try:
                n = self.poll_once()
                if n:
                    log.info("provgraph mlflow observer: recorded %d runs", n)
            except ProvgraphError as exc:
                log.warning("provgraph mlflow observer: %s (retrying in %g s)", exc, self.poll_interval)
            stop_event.wait(self.poll_interval)

    def close(self, timeout: float = 30.0) -> bool:
        """Flush; shut the emitter down if the observer created it."""
        if self._owns_emitter:
            return self.emitter.shutdown(timeout)
        return self.emitter.force_flush(timeout)

    def __enter__(self) -> MlflowObserver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading the store -------------------------------------------------------------
    def _cache_root(self) -> Path:
        root = self.settings.data_dir / "observers" / "mlflow-cache"
        root.mkdir(parents=True, exist_ok=True)
        return root

    def _clear_cache(self) -> None:
        """Remove downloads a previous (killed) observer of this store left behind."""
        root = self.settings.data_dir / "observers" / "mlflow-cache"
        if root.is_dir():
            for entry in root.iterdir():
                if entry.name.startswith(self._cache_prefix):
                    shutil.rmtree(entry, ignore_errors=True)

    def _experiments(self) -> list[Any]:
        out: list[Any] = []
        token: str | None = None
        while True:
            page = self.client.search_experiments(max_results=_PAGE, page_token=token)
            out.extend(e for e in page if self.experiments is None or e.name in self.experiments)
            token = page.token
            if not token:
                return out

    def _search(self, experiment_ids: list[str], since_ms: int | None) -> Iterator[Any]:
        flt = "" if since_ms is None else f"attributes.end_time >= {max(0, since_ms)}"
        token: str | None = None
        while True:
            page = self.client.search_runs(experiment_ids, filter_string=flt, max_results=_PAGE,
                                           order_by=["attributes.start_time ASC"], page_token=token)
            yield from page
            token = page.token
            if not token:
                return

    def _workflow_run(self, experiment: Any) -> RunInfo:
        """The workflow run of an experiment; emitted with its first recorded run, once per
        observer process (its triples are the same every time, so re-emitting after a
        restart is harmless). Experiments without runs are not recorded."""
        run = RunInfo(
            experiment_run_id(self.tracking_uri, experiment.experiment_id), experiment.name,
            campaign=self.settings.campaign, started_ns=_ms_to_ns(experiment.creation_time) or 0,
            source_tool="mlflow",
            attributes={"mlflow.experimentId": str(experiment.experiment_id), "mlflow.trackingUri": self.uri},
        )
        if run.run_id not in self._announced:
            self._announced.add(run.run_id)
            self.emitter.emit_control(run)
        return run

    def _record(self, run: Any, workflow_run: RunInfo, cache: Path) -> TaskRecord:
        info, data = run.info, run.data
        tags: dict[str, str] = dict(data.tags)
        user = info.user_id or tags.get("mlflow.user")
        wf = workflow_run
        if user and user != wf.user:  # same run ID (same graph), the MLflow user as agent
            wf = RunInfo(wf.run_id, wf.workflow, campaign=wf.campaign, user=user, started_ns=wf.started_ns,
                         source_tool=wf.source_tool)
        status = _TERMINAL[info.status]
        error = None
        if status == "failed":
            error = ErrorInfo(f"MLflowRun{info.status.title()}", f"MLflow run {info.run_id} ended {info.status}")
        inputs: dict[str, Any] = {k: parse_param(v) for k, v in sorted(data.params.items())}
        for ds in getattr(getattr(run, "inputs", None), "dataset_inputs", None) or []:
            self._dataset(ds, inputs)
        outputs: dict[str, Any] = {}
        for key, value in sorted(data.metrics.items()):
            outputs[key] = float(value)
            if self.history_max_points:
                outputs.update(self._history(info.run_id, key))
        for name, value in self._artifacts(info, cache):
            outputs[name] = value
        for name, value in self._logged_models(run, cache):
            outputs[name] = value
        attributes: dict[str, Any] = {"externalId": info.run_id, "sourceTool": "mlflow",
                                      "mlflow.experimentId": str(info.experiment_id)}
        for key, value in sorted(tags.items()):
            if not key.startswith("mlflow."):
                attributes[f"tag.{key}"] = value
            elif key in ("mlflow.source.git.commit", "mlflow.source.type"):
                attributes[key] = value
        parent = tags.get("mlflow.parentRunId")
        return TaskRecord(
            task_id=task_id_of(self.tracking_uri, info.run_id), run=wf,
            name=info.run_name or tags.get("mlflow.runName") or info.run_id,
            started_ns=_ms_to_ns(info.start_time), ended_ns=_ms_to_ns(info.end_time),
            inputs=inputs, outputs=outputs, status=status, error=error,
            parent_id=task_id_of(self.tracking_uri, parent) if parent else None,
            host=tags.get("host") or None,
            function=tags.get("mlflow.source.name") or None, attributes=attributes,
        )

    def _history(self, run_id: str, key: str) -> dict[str, float]:
        points = self.client.get_metric_history(run_id, key)
        if len(points) <= 1:
            return {}
        by_step: dict[int, float] = {}
        for m in sorted(points, key=lambda m: (m.step, m.timestamp)):
            by_step[int(m.step)] = float(m.value)
        steps = sorted(by_step)
        limit = self.history_max_points
        if len(steps) > limit:
            if limit == 1:
                steps = [steps[-1]]
            else:
                idx = sorted({round(i * (len(steps) - 1) / (limit - 1)) for i in range(limit)})
                steps = [steps[i] for i in idx]
        return {f"{key}@{step}": by_step[step] for step in steps}

    def _dataset(self, ds_input: Any, inputs: dict[str, Any]) -> None:
        ds = getattr(ds_input, "dataset", None)
        if ds is None:
            return
        name = f"dataset:{ds.name}"
        source = getattr(ds, "source", "") or ""
        path = None
        try:
            parsed = json.loads(source) if source.startswith("{") else {"uri": source}
            uri = str(parsed.get("uri") or parsed.get("path") or "")
            path = _local_path(uri) if uri else None
        except ValueError:
            pass
        if path and os.path.exists(path):
            inputs[name] = Artifact(path=path)
        else:
            inputs[name] = f"{ds.name}@{getattr(ds, 'digest', '')}"

    def _artifacts(self, info: Any, cache: Path) -> Iterator[tuple[str, Any]]:
        """``(name, value)`` of every logged artifact: a model directory (holding an
        ``MLmodel`` file) as one artifact, any other file on its own."""
        root = _local_path(info.artifact_uri or "")
        stack = [""]
        while stack:
            folder = stack.pop()
            entries = self.client.list_artifacts(info.run_id, folder or None)
            if folder and any(not e.is_dir and e.path.rsplit("/", 1)[-1] == "MLmodel" for e in entries):
                yield f"model:{folder}", self._fetch(info, root, folder, None, cache)
                continue
            for entry in entries:
                if entry.is_dir:
                    stack.append(entry.path)
                else:
                    yield f"artifact:{entry.path}", self._fetch(info, root, entry.path, entry.file_size, cache)

    def _fetch(self, info: Any, root: str | None, rel: str, size: int | None, cache: Path) -> Any:
        """A local artifact is hashed in place; a remote one is downloaded into ``cache``
        (deleted once its record was delivered)."""
        if root is not None:
            return Artifact(path=os.path.join(root, rel))
        uri = f"{info.artifact_uri.rstrip('/')}/{rel}"
        if size is not None and size > self.max_download_bytes:
            return uri
        local = self.client.download_artifacts(info.run_id, rel, dst_path=str(cache / info.run_id))
        return Artifact(path=local)

    def _logged_models(self, run: Any, cache: Path) -> Iterator[tuple[str, Any]]:
        """MLflow 3 logged models (``run.outputs.model_outputs``), stored outside the run's
        artifact tree: hashed as one directory each."""
        outputs = getattr(getattr(run, "outputs", None), "model_outputs", None) or []
        for out in outputs:
            model_id = getattr(out, "model_id", None)
            if not model_id:
                continue
            model = self.client.get_logged_model(model_id)
            location = str(model.artifact_location)
            local = _local_path(location)
            if local is None:
                import mlflow.artifacts

                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=location, dst_path=str(cache / model_id), tracking_uri=self.tracking_uri)
            yield f"model:{model.name or model_id}", Artifact(path=local)


def observe(tracking_uri: str, *, once: bool = False, interval: float = 10.0,
            settings: Settings | None = None, stop_event: threading.Event | None = None) -> int:
    """Run an observer (what ``provgraph observe mlflow`` does); returns the number of
    runs recorded: by a single poll when ``once``, else until ``stop_event`` is set."""
    observer = MlflowObserver(tracking_uri, settings=settings, poll_interval=interval)
    try:
        if once:
            return observer.poll_once()
        observer.run_forever(stop_event or threading.Event())
        return observer.stats["runs"]
    finally:
        observer.close()
