"""Helpers to inspect captured N-Quads with a real (in-memory) Oxigraph store."""

from __future__ import annotations

from typing import Any

import provgraph

PREFIXES = """
PREFIX prov: <http://www.w3.org/ns/prov#>
PREFIX pg:   <https://w3id.org/provgraph/ns#>
PREFIX rdfs: <http://www.w3.org/2000/01/rdf-schema#>
"""


def load(nquads: str) -> provgraph.Store:
    store = provgraph.Store()
    store.add_nquads(nquads)
    return store


def select(store: provgraph.Store, body: str) -> list[dict[str, Any]]:
    """Rows of a SELECT as dicts of plain Python values (IRIs/literals → str)."""
    result = store.query(PREFIXES + body)
    names = [v.value for v in result.variables]
    rows = []
    for row in result:
        rows.append({n: (None if row[n] is None else row[n].value) for n in names})
    return rows
