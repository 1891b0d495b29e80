"""The query library: named SPARQL queries in ``queries/*.rq``, bound safely.

Each ``.rq`` file starts with a header comment::

    # name:    upstream
    # purpose: what the query answers (may continue on following ``#`` lines)
    # params:  ?node (iri) the entity or activity to start from
    #          ?k (integer, default 10) how many
    #          ?workflow (string, optional) ...

Types: ``iri``, ``string``, ``integer``, ``double``, ``boolean``, ``datetime``. Every
parameter is a variable of the query and appears in its ``SELECT`` projection (pyoxigraph
substitutes only projected variables; ``tests/test_queries.py`` checks each file).

Parameters are never spliced into the query text: :func:`bind` converts each value to
a typed RDF term (validated by pyoxigraph) and :func:`run` binds it as a variable — with
pyoxigraph ``substitutions`` on the embedded store, and with a ``VALUES`` row serialized
by pyoxigraph at the start of the query's ``WHERE`` block on a remote store. A parameter
marked ``optional`` that is not given stays unbound and matches anything; one with a
``default`` gets that value.

The files live in the repository's top-level ``queries/`` folder and are shipped in
the wheel as ``provgraph/query_library/*.rq`` (``pyproject.toml`` maps the folder);
:func:`library_dir` finds whichever is present.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import pyoxigraph as ox

from .errors import NotFoundError, QueryError
from .namespaces import XSD

__all__ = ["NamedQuery", "Param", "bind", "library_dir", "list_queries", "load_query", "run", "to_term",
           "with_values"]

_PARAM = re.compile(r"^\?([A-Za-z_][A-Za-z0-9_]*)\s*(?:\(([^)]*)\))?\s*(.*)$")
_TYPES = ("iri", "string", "integer", "double", "boolean", "datetime")
_NAME = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass(frozen=True)
class Param:
    """One declared parameter of a named query."""

    name: str
    type: str = "string"
    optional: bool = False
    description: str = ""
    default: str | None = None

    def describe(self) -> str:
        """``name (type, optional|default X) description`` for listings."""
        extra = f", default {self.default}" if self.default is not None else ", optional" if self.optional else ""
        return f"{self.name} ({self.type}{extra}) {self.description}".rstrip()


@dataclass(frozen=True)
class NamedQuery:
    """A parsed ``.rq`` file."""

    name: str
    purpose: str
    sparql: str
    params: tuple[Param, ...] = field(default_factory=tuple)
    path: Path | None = None

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.params) or "none"
        raise QueryError(f"query {self.name!r} has no parameter {name!r} (parameters: {known})")


def library_dir() -> Path:
    """The folder holding the ``.rq`` files (checkout or installed wheel)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "queries", here / "query_library"):
        if candidate.is_dir() and any(candidate.glob("*.rq")):
            return candidate
    raise NotFoundError(f"the query library is missing (looked in {here.parent / 'queries'} and "
                        f"{here / 'query_library'})")


def parse_header(text: str, default_name: str) -> tuple[str, str, tuple[Param, ...]]:
    name, purpose_lines, params = default_name, [], []
    section = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("#"):
            if stripped:
                break
            continue
        body = stripped[1:].strip()
        key, _, rest = body.partition(":")
        if key in ("name", "purpose", "params") and _:
            section = key
            body = rest.strip()
            if key == "name":
                name = body
                continue
        if section == "purpose" and body:
            purpose_lines.append(body)
        elif section == "params" and body:
            m = _PARAM.match(body)
            if m:
                raw = [o.strip() for o in (m.group(2) or "string").split(",")]
                opts = [o.lower() for o in raw]
                ptype = next((o for o in opts if o in _TYPES), "string")
                default = next((o.split(None, 1)[1] if " " in o else "" for o in raw
                                if o.lower().startswith("default")), None)
                params.append(Param(m.group(1), ptype, "optional" in opts or default is not None,
                                    m.group(3).strip(), default))
            elif params:  # continuation of the previous parameter's description
                last = params[-1]
                params[-1] = Param(last.name, last.type, last.optional, f"{last.description} {body}".strip(),
                                   last.default)
    return name, " ".join(purpose_lines), tuple(params)


@cache
def _load(path: Path, mtime: float) -> NamedQuery:
    text = path.read_text(encoding="utf-8")
    name, purpose, params = parse_header(text, path.stem)
    return NamedQuery(name=name, purpose=purpose, sparql=text, params=params, path=path)


def list_queries() -> list[NamedQuery]:
    """Every named query of the library, by name."""
    return sorted((_load(p, p.stat().st_mtime) for p in library_dir().glob("*.rq")), key=lambda q: q.name)


def load_query(name: str) -> NamedQuery:
    """The named query ``name``; :class:`NotFoundError` lists the known names."""
    if not _NAME.match(name):
        raise NotFoundError(f"no named query {name!r}")
    path = library_dir() / f"{name}.rq"
    if not path.is_file():
        known = ", ".join(q.name for q in list_queries())
        raise NotFoundError(f"no named query {name!r}; known: {known}")
    return _load(path, path.stat().st_mtime)


def to_term(value: Any, ptype: str = "string") -> ox.NamedNode | ox.Literal:
    """A typed RDF term for a parameter value. Strings from the command line are
    converted by ``ptype``; Python values keep their type."""
    if isinstance(value, (ox.NamedNode, ox.Literal)):
        return value
    try:
        if ptype == "iri":
            return ox.NamedNode(str(value))  # validated by pyoxigraph: no spaces, <, >, quotes...
        if ptype == "integer":
            if isinstance(value, bool):
                raise ValueError("a boolean is not an integer")
            return ox.Literal(str(int(value)), datatype=ox.NamedNode(XSD.integer))
        if ptype == "double":
            return ox.Literal(repr(float(value)), datatype=ox.NamedNode(XSD.double))
        if ptype == "boolean":
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(f"{value!r} is not a boolean")
                value = value.lower() in ("true", "1")
            return ox.Literal("true" if value else "false", datatype=ox.NamedNode(XSD.boolean))
        if ptype == "datetime":
            dt = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
            return ox.Literal(dt.isoformat(), datatype=ox.NamedNode(XSD.dateTime))
    except ValueError as exc:
        raise QueryError(f"invalid {ptype} value {value!r}: {exc}") from exc
    if isinstance(value, bool):
        return ox.Literal("true" if value else "false", datatype=ox.NamedNode(XSD.boolean))
    if isinstance(value, int):
        return ox.Literal(str(value), datatype=ox.NamedNode(XSD.integer))
    if isinstance(value, float):
        return ox.Literal(repr(value), datatype=ox.NamedNode(XSD.double))
    return ox.Literal(str(value))


def bind(query: NamedQuery, params: dict[str, Any]) -> dict[str, ox.NamedNode | ox.Literal]:
    """Typed substitutions for ``query``: unknown or missing required parameters raise
    :class:`QueryError`; values become RDF terms, never query text."""
    out: dict[str, ox.NamedNode | ox.Literal] = {}
    for key, value in params.items():
        p = query.param(key)
        if value is None:
            continue
        out[p.name] = to_term(value, p.type)
    for p in query.params:
        if p.name not in out and p.default is not None:
            out[p.name] = to_term(p.default, p.type)
    missing = [p.name for p in query.params if not p.optional and p.name not in out]
    if missing:
        raise QueryError(f"query {query.name!r} needs parameter(s): {', '.join(missing)}")
    return out


def run(store: Any, query: NamedQuery | str, params: dict[str, Any] | None = None) -> Any:
    """Run a named query (a :class:`NamedQuery` or its name) with ``params`` on any
    store; returns what ``store.query`` returns (pyoxigraph solutions, boolean or
    triples). The embedded store binds with pyoxigraph ``substitutions``; any other
    store gets the bindings as a ``VALUES`` row (:func:`with_values`)."""
    from .store import Store

    named = load_query(query) if isinstance(query, str) else query
    bindings = bind(named, params or {})
    if isinstance(store, Store):
        return store.query(named.sparql, substitutions=bindings or None)
    return store.query(with_values(named.sparql, bindings))


_SKIP_TOKEN = re.compile(r'#[^\n]*|<[^<>"{}|^`\\\s]*>|"""(?:[^\\]|\\.)*?"""|\'\'\'(?:[^\\]|\\.)*?\'\'\''
                         r'|"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'', re.S)


def with_values(sparql: str, bindings: dict[str, ox.NamedNode | ox.Literal]) -> str:
    """``sparql`` with ``VALUES (?a ?b) { (term term) }`` as the first element of its
    outermost ``WHERE`` block, so the bindings join before anything else (filters,
    optionals and aggregates see them, as with a substitution). The terms are written
    by pyoxigraph from validated RDF terms, never copied from user text."""
    if not bindings:
        return sparql
    for name in bindings:
        if not _NAME.match(name):
            raise QueryError(f"invalid variable name {name!r}")
    masked = _SKIP_TOKEN.sub(lambda m: " " * len(m.group(0)), sparql)  # comments, IRIs, strings
    where = re.search(r"\bWHERE\s*\{", masked, re.I)
    brace = where.end() - 1 if where else masked.find("{")
    if brace < 0:
        raise QueryError("cannot bind parameters: the query has no WHERE block")
    names = list(bindings)
    row = " ".join(str(bindings[n]) for n in names)
    values = f" VALUES ({' '.join('?' + n for n in names)}) {{ ({row}) }} "
    return sparql[:brace + 1] + values + sparql[brace + 1:]
