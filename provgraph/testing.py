"""Test helpers for your own instrumentation (like OpenTelemetry's in-memory exporter).

::

    from provgraph.testing import capture

    def test_my_pipeline():
        with capture() as cap:
            run_my_pipeline()
        assert [t["label"] for t in cap.tasks()] == ["load", "fit"]
        assert cap.tasks()[1]["inputs"]["lr"] == 0.1

``capture()`` routes everything recorded inside it into memory (nothing touches disk or
the network), and restores capture's previous state when it exits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .capture import _State, configure, flush, shutdown
from .store import Store
from .transports.memory import MemoryTransport

__all__ = ["Captured", "capture"]

_PREFIXES = """PREFIX prov: <http://www.w3.org/ns/prov#>
PREFIX pg: <https://w3id.org/provgraph/ns#>
PREFIX rdfs: <http://www.w3.org/2000/01/rdf-schema#>
"""


class Captured:
    """What was recorded inside :func:`capture`, queryable as RDF."""

    def __init__(self, transport: MemoryTransport) -> None:
        self.transport = transport

    def nquads(self) -> str:
        """Everything recorded so far, as N-Quads (flushes first)."""
        flush(10.0)
        return self.transport.nquads()

    def store(self) -> Store:
        """An in-memory store holding everything recorded so far."""
        store = Store()
        data = self.nquads()
        if data:
            store.add_nquads(data)
        return store

    def sparql(self, query: str) -> list[dict[str, Any]]:
        """Rows of a SELECT (``prov:``, ``pg:`` and ``rdfs:`` prefixes predeclared)."""
        result = self.store().query(_PREFIXES + query)
        names = [v.value for v in result.variables]
        return [{n: (None if row[n] is None else row[n].value) for n in names} for row in result]

    def tasks(self) -> list[dict[str, Any]]:
        """Tasks in start order: label, status, error message, inputs and outputs (values or
        artifact IRIs by parameter name)."""
        rows = self.sparql("""
            SELECT ?t ?label ?status ?err ?start WHERE {
              ?t a pg:Task ; rdfs:label ?label ; pg:status ?status .
              OPTIONAL { ?t prov:startedAtTime ?start } OPTIONAL { ?t pg:errorMessage ?err } }
            ORDER BY ?start ?t""")
        io = self.sparql("""
            SELECT ?t ?dir ?name ?value ?e WHERE {
              { ?t prov:used ?e . BIND("in" AS ?dir) } UNION { ?e prov:wasGeneratedBy ?t . BIND("out" AS ?dir) }
              ?t a pg:Task .
              OPTIONAL { ?e prov:value ?value }
              OPTIONAL { ?e pg:parameterName ?n1 }
              OPTIONAL { ?t prov:qualifiedUsage ?u . ?u prov:entity ?e ; pg:parameterName ?n2 }
              OPTIONAL { ?e prov:qualifiedGeneration ?g . ?g prov:activity ?t ; pg:parameterName ?n3 }
              BIND(COALESCE(?n1, ?n2, ?n3) AS ?name) }""")
        store = self.store()
        typed: dict[tuple[str, str, str], Any] = {}
        for row in store.query(_PREFIXES + """SELECT ?t ?e ?value WHERE {
                { ?t prov:used ?e } UNION { ?e prov:wasGeneratedBy ?t } ?e prov:value ?value }"""):
            typed[(row["t"].value, row["e"].value, "v")] = _python(row["value"])
        out: list[dict[str, Any]] = []
        by_iri: dict[str, dict[str, Any]] = {}
        seen: set[str] = set()
        for r in rows:
            if r["t"] in seen:
                continue
            seen.add(r["t"])
            task = {"iri": r["t"], "label": r["label"], "status": r["status"], "error": r["err"],
                    "inputs": {}, "outputs": {}}
            by_iri[r["t"]] = task
            out.append(task)
        for r in io:
            owner = by_iri.get(r["t"])
            if owner is None or r["name"] is None:
                continue
            value = typed.get((r["t"], r["e"], "v"), r["e"])
            owner["inputs" if r["dir"] == "in" else "outputs"][r["name"]] = value
        return out


def _python(term: Any) -> Any:
    dtype = getattr(getattr(term, "datatype", None), "value", "")
    text = term.value
    if dtype.endswith("#integer"):
        return int(text)
    if dtype.endswith("#double"):
        return float(text)
    if dtype.endswith("#boolean"):
        return text == "true"
    return text


@contextmanager
def capture(**overrides: Any) -> Iterator[Captured]:
    """Capture into memory for the duration of the block; settings overrides allowed."""
    previous = _State.settings if _State.emitter is not None else None
    transport = MemoryTransport()
    configure(transport=transport, flush_interval=overrides.pop("flush_interval", 0.05), **overrides)
    try:
        yield Captured(transport)
    finally:
        flush(10.0)
        shutdown(10.0)
        if previous is not None:
            configure(previous)
