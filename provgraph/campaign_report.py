"""The MIDA paper's three integrated analyses over a campaign, as text tables.

Used by ``provgraph demo``; callable on any store whose campaign evaluates models::

    from provgraph import campaign_report
    print(campaign_report.render(store, metric="mse", top=3))

1. **Top-K models by an evaluation metric, with their backward lineage** (named query
   ``top_k_models``, then :func:`provgraph.lineage.lineage` upstream of each model):
   every workflow run the model's lineage crosses, the hyperparameters of the task that
   trained it and the parameters of the acquisition the data came from;
2. **hyperparameters vs KPIs** (``hyperparams_vs_kpis``), one row per training task;
3. **hyperparameters vs telemetry** (``hyperparams_vs_telemetry``), one row per task and
   telemetry phase.

Nothing here knows the workflows' names or IDs: the links between the acquisition, the
training and the evaluation are content hashes found by the queries.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from . import queries
from .lineage import lineage
from .namespaces import PG, PROV, RDFS

__all__ = ["acquisitions_upstream", "render", "table", "top_models"]


def _value(term: Any) -> Any:
    if term is None:
        return None
    value = getattr(term, "value", term)
    datatype = getattr(getattr(term, "datatype", None), "value", "")
    if datatype.endswith(("#integer", "#int", "#long")):
        return int(value)
    if datatype.endswith(("#double", "#decimal", "#float")):
        return float(value)
    if datatype.endswith("#boolean"):
        return value == "true"
    return value


def _rows(result: Any) -> list[dict[str, Any]]:
    names = [v.value for v in result.variables]
    return [{n: _value(sol[n]) for n in names} for sol in result]


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain text table (numbers right-aligned, floats to 5 significant digits)."""
    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.5g}"
        return str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) for i in range(len(header))]
    out = ["  ".join(h.rjust(w) if n else h.ljust(w) for h, w, n in zip(header, widths, numeric, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    for r in cells:
        out.append("  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(r, widths, numeric, strict=True)))
    return "\n".join(out)


def _short(iri: str) -> str:
    if iri.startswith("ni:///sha-256;"):
        return "ni:…" + iri[-10:]
    return iri.rsplit("/", 1)[-1]


def top_models(store: Any, metric: str, k: int, order: str = "asc", model: str | None = None) -> list[dict[str, Any]]:
    """``[{rank, model, score, task}]``: the named query ``top_k_models``, one row per model."""
    params: dict[str, Any] = {"metric": metric, "k": k, "order": order}
    if model is not None:
        params["model"] = model
    rows = _rows(queries.run(store, "top_k_models", params))
    seen: dict[str, dict[str, Any]] = {}
    for r in rows:
        seen.setdefault(r["modelArtifact"], {"rank": r["rank"], "model": r["modelArtifact"], "score": r["score"],
                                             "task": r.get("producer")})
    return sorted(seen.values(), key=lambda r: (r["rank"], r["model"]))


def _scalars_used(store: Any, tasks: Iterable[str]) -> dict[str, dict[str, Any]]:
    tasks = list(tasks)
    if not tasks:
        return {}
    values = " ".join(f"<{t}>" for t in tasks)  # IRIs from the store itself, not user input
    q = (f"SELECT DISTINCT ?t ?name ?v WHERE {{ VALUES ?t {{ {values} }} ?t <{PROV.used}> ?e . "
         f"?e <{PG.parameterName}> ?name ; <{PROV.value}> ?v }}")
    out: dict[str, dict[str, Any]] = defaultdict(dict)
    for r in _rows(store.query(q)):
        out[r["t"]][r["name"]] = r["v"]
    return out


def _labels_and_workflows(store: Any, tasks: Iterable[str]) -> dict[str, tuple[str, str]]:
    tasks = list(tasks)
    if not tasks:
        return {}
    values = " ".join(f"<{t}>" for t in tasks)
    q = (f"SELECT DISTINCT ?t ?label ?wf WHERE {{ VALUES ?t {{ {values} }} ?t <{RDFS.label}> ?label ; "
         f"<{PG.inWorkflowRun}> ?run . ?run <{RDFS.label}> ?wf }}")
    return {r["t"]: (r["label"], r["wf"]) for r in _rows(store.query(q))}


def acquisitions_upstream(store: Any, node: str) -> dict[str, Any]:
    """What is upstream of ``node``: tasks per workflow, and the root tasks (those that
    used no artifact: acquisitions) with their parameters."""
    result = lineage(store, node, "upstream")
    tasks = [n["id"] for n in result["nodes"] if n.get("kind") == "activity"]
    info = _labels_and_workflows(store, tasks)
    per_workflow: dict[str, int] = defaultdict(int)
    for label_wf in info.values():
        per_workflow[label_wf[1]] += 1
    used_artifact = {e["source"] for e in result["edges"]
                     if e["relation"].endswith("used") and e["target"].startswith("ni:")}
    roots = [t for t in tasks if t not in used_artifact]
    params = _scalars_used(store, roots)
    return {"workflows": dict(per_workflow), "roots": {t: (info.get(t, ("?", "?")), params.get(t, {}))
                                                      for t in roots},
            "complete": result["complete"], "nodes": len(result["nodes"])}


def _pivot(rows: list[dict[str, Any]], key: str, col: str, val: str) -> dict[Any, dict[str, Any]]:
    out: dict[Any, dict[str, Any]] = defaultdict(dict)
    for r in rows:
        out[r[key]][r[col]] = r[val]
    return out


def render(store: Any, *, metric: str = "mse", top: int = 3, order: str = "asc", model: str | None = "model_path",
           function: str = "train") -> str:
    """The three analyses as text: models ranked by the scalar output ``metric`` of the
    tasks that generated or used them under the name ``model``; hyperparameters of the
    tasks labelled ``function``."""
    parts: list[str] = []
    best = top_models(store, metric, top, order, model)
    parts.append(f"\n(1) Top-{top} models by {metric} ({'lowest' if order == 'asc' else 'highest'} first), "
                 "with their backward lineage")
    if not best:
        parts.append(f"    no model has a metric named {metric!r}")
    trained_by = {}
    for m in best:
        up = acquisitions_upstream(store, m["model"])
        hp = _scalars_used(store, [m["task"]]).get(m["task"], {}) if m["task"] else {}
        trained_by[m["model"]] = m
        parts.append(f"  #{m['rank']} {_short(m['model'])}  {metric}={m['score']:.5g}  "
                     f"evaluated with {', '.join(f'{k}={v}' for k, v in sorted(hp.items()) if k != 'model_path')}")
        parts.append("      lineage crosses: " + ", ".join(f"{wf} ({n} tasks)"
                                                          for wf, n in sorted(up["workflows"].items())))
        for (label, wf), params in up["roots"].values():
            shown = ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
            parts.append(f"      ← {wf}: {label}({shown})")

    kpis = _rows(queries.run(store, "hyperparams_vs_kpis", {"function": function}))
    hp = _pivot(kpis, "task", "hyperparameter", "hpValue")
    kp = _pivot(kpis, "task", "kpi", "kpiValue")
    hp_names = sorted({r["hyperparameter"] for r in kpis})
    kpi_names = sorted({r["kpi"] for r in kpis})
    parts.append(f"\n(2) Hyperparameters vs KPIs ({function} tasks: {len(hp)})")
    rows = [[_short(t), *[hp[t].get(h) for h in hp_names], *[kp[t].get(k) for k in kpi_names]] for t in sorted(hp)]
    rows.sort(key=lambda r: tuple((v is None, v) for v in r[1:]))
    parts.append(table(rows, ["task", *hp_names, *kpi_names]) if rows else "    (none)")

    tel = _rows(queries.run(store, "hyperparams_vs_telemetry", {"function": function}))
    parts.append(f"\n(3) Hyperparameters vs telemetry ({function} tasks; samples taken while each ran)")
    hps: dict[str, dict[str, Any]] = defaultdict(dict)
    samples: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in tel:
        hps[r["task"]][r["hyperparameter"]] = r["hpValue"]
        samples[r["task"]][r["phase"]] = r
    tel_hp = sorted({r["hyperparameter"] for r in tel})
    rows = []
    for t in sorted(samples):
        ss = list(samples[t].values())
        cpu = [float(x["cpuPercent"]) for x in ss if x.get("cpuPercent") is not None]
        rss = [float(x["memoryRss"]) for x in ss if x.get("memoryRss") is not None]
        gpu = [float(x["gpuUtilization"]) for x in ss if x.get("gpuUtilization") is not None]
        rows.append([_short(t), *[hps[t].get(h) for h in tel_hp], len(ss),
                     sum(cpu) / len(cpu) if cpu else None, max(rss) / 2**20 if rss else None,
                     max(gpu) if gpu else None])
    header = ["task", *tel_hp, "samples", "mean CPU %", "peak RSS MiB", "peak GPU %"]
    parts.append(table(rows, header) if rows else "    (no telemetry recorded)")
    return "\n".join(parts)
