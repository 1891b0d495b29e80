"""``Client.tasks(...)``: a Mongo-like task query API compiled to SPARQL.

The API follows FlowCept's query API (MIDA, Listing 1)::

    client.tasks(filter={"workflow": "search", "generated.loss": {"$lt": 0.1}},
                 projection=["name", "used.lr", "generated.loss"],
                 sort=[("generated.loss", 1)], limit=10)
    client.tasks(filter={"status": "finished"}, group_by=["used.layers"],
                 aggregation=[("max", "generated.accuracy"), ("count", "id")])

Fields of a task (see :data:`SCALAR_FIELDS`): ``id`` (its IRI), ``name``, ``function``,
``status``, ``started_at``, ``ended_at``, ``workflow``, ``run``, ``campaign``, ``host``,
``user``, ``parent``, ``error``, ``error_type``, ``attempt``; and ``used.<name>`` /
``generated.<name>``: the value the task used as its argument ``<name>`` or generated as
its output ``<name>`` (a ``prov:value`` of a per-task value entity, or the IRI of a data
artifact recorded on the qualified usage / generation, see ``docs/identifiers.md``).

Filter operators: ``$eq $ne $gt $gte $lt $lte $in $nin $regex`` (with ``$options``,
flags ``i s m x``) ``$exists``, combined with ``$and $or $nor``; a bare value means
``$eq``. As in MongoDB, ``$ne``/``$nin`` match tasks without the field, and a comparison
between different types (a string and a number) is false, never an error.

Safety: field names must match :data:`FIELD` and only choose among fixed SPARQL patterns
and generated variable names (``?f0``, ``?f1``, ...). Every user value becomes an RDF
term written by :func:`term`, from its Python type: numbers, booleans and datetimes
through their canonical lexical forms, strings as quoted literals in which every
character that could end the literal or start an escape is escaped, IRIs only after
pyoxigraph has validated them. No user text reaches the query any other way.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import pyoxigraph as ox

from .errors import QueryError
from .namespaces import PG_NS, PROV_NS, RDFS_NS, XSD

__all__ = ["AGGREGATES", "FIELD", "SCALAR_FIELDS", "CompiledAggregation", "aggregate_query",
           "documents_query", "literal", "select_query", "term"]

PREFIXES = f"PREFIX prov: <{PROV_NS}>\nPREFIX pg: <{PG_NS}>\nPREFIX rdfs: <{RDFS_NS}>\n"

#: task field → SPARQL path from the task ``?t`` to the value ``?v``
SCALAR_FIELDS: dict[str, str] = {
    "name": "rdfs:label",
    "function": "pg:function",
    "status": "pg:status",
    "started_at": "prov:startedAtTime",
    "ended_at": "prov:endedAtTime",
    "workflow": "pg:inWorkflowRun/rdfs:label",
    "run": "pg:inWorkflowRun",
    "campaign": "pg:inWorkflowRun/pg:inCampaign/rdfs:label",
    "host": "prov:atLocation/pg:hostname",
    "user": "prov:wasAssociatedWith/rdfs:label",
    "parent": "pg:parentTask",
    "error": "pg:errorMessage",
    "error_type": "pg:errorType",
    "attempt": "pg:attempt",
}
IRI_FIELDS = frozenset({"id", "run", "parent"})
#: ``used.<name>`` / ``generated.<name>`` or a scalar field name
FIELD = re.compile(r"(?:(used|generated)\.(\w[\w.:\[\]\-]{0,199})|([a-z_]{1,32}))")
AGGREGATES = {"count": "COUNT", "sum": "SUM", "avg": "AVG", "min": "MIN", "max": "MAX"}
_OPS = frozenset({"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$regex", "$options", "$exists"})
_CMP = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


# -- terms ------------------------------------------------------------------------------
def _string(text: str) -> str:
    out = ['"']
    prev = ""
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch in "uU" and prev == "\\":
            out.append("\\u0075" if ch == "u" else "\\u0055")  # never let "\\u" read as an escape
        elif ord(ch) < 0x20 or 0xD800 <= ord(ch) <= 0xDFFF:
            if 0xD800 <= ord(ch) <= 0xDFFF:
                raise QueryError("strings with lone surrogates cannot be queried")
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
        prev = ch
    out.append('"')
    return "".join(out)


def literal(value: Any) -> str:
    """The SPARQL literal of a Python value (str, int, float, bool, datetime, date)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if math.isnan(value):
            text = "NaN"
        elif math.isinf(value):
            text = "INF" if value > 0 else "-INF"
        else:
            text = repr(float(value))
        return f'"{text}"^^<{XSD.double}>'
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=UTC)
        return f'"{dt.isoformat()}"^^<{XSD.dateTime}>'
    if isinstance(value, date):
        return f'"{value.isoformat()}"^^<http://www.w3.org/2001/XMLSchema#date>'
    if isinstance(value, str):
        return _string(value)
    raise QueryError(f"cannot compare with a {type(value).__name__} value ({value!r}): "
                     "use str, int, float, bool or datetime")


def iri(value: str) -> str:
    """``<value>`` after pyoxigraph has validated ``value`` as an IRI."""
    try:
        return str(ox.NamedNode(str(value)))
    except ValueError as exc:
        raise QueryError(f"not an IRI: {value!r}: {exc}") from exc


def term(value: Any, field_name: str) -> str:
    """The RDF term of a filter value for ``field_name`` (IRIs for id/run/parent)."""
    if field_name in IRI_FIELDS and isinstance(value, str):
        return iri(value)
    return literal(value)


# -- fields -----------------------------------------------------------------------------
def check_field(name: Any) -> tuple[str, str | None]:
    """``(kind, parameter)``: kind is a scalar field name, ``used``, ``generated`` or ``id``."""
    if not isinstance(name, str):
        raise QueryError(f"a field name must be a string, not {name!r}")
    m = FIELD.fullmatch(name)
    if m is None:
        raise QueryError(f"invalid field {name!r}: use id, {', '.join(SCALAR_FIELDS)}, "
                         "used.<argument> or generated.<output>")
    if m.group(1):
        return m.group(1), m.group(2)
    scalar = m.group(3)
    if scalar != "id" and scalar not in SCALAR_FIELDS:
        raise QueryError(f"unknown field {scalar!r}: use id, {', '.join(SCALAR_FIELDS)}, "
                         "used.<argument> or generated.<output>")
    return scalar, None


def _pattern(kind: str, param: str | None, var: str) -> str:
    if kind == "used":
        p = literal(param)
        return (f"{{ ?t prov:used ?e_{var} . ?e_{var} pg:parameterName {p} ; prov:value ?{var} }} UNION "
                f"{{ ?t prov:qualifiedUsage ?q_{var} . ?q_{var} pg:parameterName {p} ; prov:entity ?{var} }}")
    if kind == "generated":
        p = literal(param)
        return (f"{{ ?e_{var} prov:wasGeneratedBy ?t ; pg:parameterName {p} ; prov:value ?{var} }} UNION "
                f"{{ ?{var} prov:qualifiedGeneration ?q_{var} . ?q_{var} prov:activity ?t ; "
                f"pg:parameterName {p} }}")
    return f"?t {SCALAR_FIELDS[kind]} ?{var}"


@dataclass
class _Compiler:
    vars: dict[str, str] = field(default_factory=dict)
    patterns: list[str] = field(default_factory=list)

    def var(self, name: str) -> str:
        """The variable holding field ``name`` (added as an OPTIONAL pattern once)."""
        kind, param = check_field(name)
        if kind == "id":
            return "?t"
        if name not in self.vars:
            v = f"f{len(self.vars)}"
            self.vars[name] = f"?{v}"
            self.patterns.append(f"OPTIONAL {{ {_pattern(kind, param, v)} }}")
        return self.vars[name]

    # -- filter ------------------------------------------------------------------------
    def condition(self, flt: Any) -> str:
        if flt is None:
            return "true"
        if not isinstance(flt, Mapping):
            raise QueryError(f"a filter must be a dict, not {type(flt).__name__}")
        parts = []
        for key, value in flt.items():
            if key in ("$and", "$or", "$nor"):
                if not isinstance(value, (list, tuple)) or not value:
                    raise QueryError(f"{key} needs a non-empty list of filters")
                subs = [f"({self.condition(v)})" for v in value]
                if key == "$and":
                    parts.append(" && ".join(subs))
                elif key == "$or":
                    parts.append(" || ".join(subs))
                else:
                    parts.append("!(" + " || ".join(f"COALESCE({s}, false)" for s in subs) + ")")
            elif isinstance(key, str) and key.startswith("$"):
                raise QueryError(f"unknown filter operator {key!r} at the top level ($and, $or, $nor)")
            else:
                parts.append(self.field_condition(key, value))
        return " && ".join(f"({p})" for p in parts) if parts else "true"

    def _eq(self, v: str, name: str, value: Any) -> str:
        if value is None:
            return f"!BOUND({v})"
        if name not in IRI_FIELDS and isinstance(value, str):
            lit = literal(value)  # a string matches a string value or an artifact IRI spelled that way
            return f"({v} = {lit} || (isIRI({v}) && STR({v}) = {lit}))"
        return f"{v} = {term(value, name)}"

    def field_condition(self, name: str, spec: Any) -> str:
        v = self.var(name)
        if not isinstance(spec, Mapping) or not any(isinstance(k, str) and k.startswith("$") for k in spec):
            return f"COALESCE({self._eq(v, name, spec)}, false)"
        unknown = [k for k in spec if k not in _OPS]
        if unknown:
            raise QueryError(f"unknown operator(s) {unknown} on {name!r}; known: {', '.join(sorted(_OPS))}")
        parts = []
        for op, operand in spec.items():
            if op == "$eq":
                parts.append(f"COALESCE({self._eq(v, name, operand)}, false)")
            elif op == "$ne":
                parts.append(f"!COALESCE({self._eq(v, name, operand)}, false)")
            elif op in _CMP:
                if operand is None or isinstance(operand, (list, dict)):
                    raise QueryError(f"{op} on {name!r} needs a value, not {operand!r}")
                parts.append(f"COALESCE({v} {_CMP[op]} {term(operand, name)}, false)")
            elif op in ("$in", "$nin"):
                if not isinstance(operand, (list, tuple, set, frozenset)):
                    raise QueryError(f"{op} on {name!r} needs a list")
                alts = [f"COALESCE({self._eq(v, name, x)}, false)" for x in operand] or ["false"]
                expr = "(" + " || ".join(alts) + ")"
                parts.append(expr if op == "$in" else f"!{expr}")
            elif op == "$regex":
                flags = spec.get("$options", "")
                if not isinstance(operand, str) or not isinstance(flags, str) or not re.fullmatch(r"[imsx]*", flags):
                    raise QueryError(f"$regex on {name!r} needs a string pattern and $options of i, m, s, x")
                try:
                    re.compile(operand)
                except re.error as exc:
                    raise QueryError(f"invalid $regex on {name!r}: {exc}") from None
                parts.append(f"COALESCE(REGEX(STR({v}), {literal(operand)}, {literal(flags)}), false)")
            elif op == "$exists":
                parts.append(f"BOUND({v})" if operand else f"!BOUND({v})")
        return " && ".join(parts) if parts else "true"

    def body(self, cond: str, indent: str = "  ") -> str:
        """The WHERE body: every task, the fields used (OPTIONAL), then the filter."""
        return f"\n{indent}".join(["?t a pg:Task .", *self.patterns, f"FILTER({cond})"])


def _direction(value: Any) -> str:
    if value in (1, "asc", "ASC", "ascending", True):
        return "ASC"
    if value in (-1, "desc", "DESC", "descending", False):
        return "DESC"
    raise QueryError(f"sort direction must be 1 / -1 (or 'asc' / 'desc'), not {value!r}")


def _sort_pairs(sort: Any) -> list[tuple[str, str]]:
    if sort is None:
        return []
    if isinstance(sort, str):
        return [(sort, "ASC")]
    pairs = []
    for item in sort:
        if isinstance(item, str):
            pairs.append((item, "ASC"))
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            pairs.append((item[0], _direction(item[1])))
        else:
            raise QueryError(f"sort items are (field, 1 | -1), not {item!r}")
    return pairs


def _limit(limit: Any) -> str:
    if limit is None or limit == 0:
        return ""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise QueryError(f"limit must be a non-negative integer, not {limit!r}")
    return f"\nLIMIT {int(limit)}"


def select_query(flt: Any = None, sort: Any = None, limit: Any = None) -> str:
    """SELECT the IRIs ``?t`` of matching tasks, in order (by ``sort``, else by start time)."""
    c = _Compiler()
    cond = c.condition(flt)
    keys = []
    for i, (name, direction) in enumerate(_sort_pairs(sort) or [("started_at", "ASC")]):
        v = c.var(name)
        keys.append((f"?k{i}", f"{'MIN' if direction == 'ASC' else 'MAX'}({v})", direction))
    agg = " ".join(f"({expr} AS {k})" for k, expr, _ in keys)
    order = " ".join(f"{d}({k})" for k, _, d in keys) + " ?t"
    return (f"{PREFIXES}SELECT ?t {agg} WHERE {{\n  {c.body(cond)}\n}}\nGROUP BY ?t\n"
            f"ORDER BY {order}{_limit(limit)}\n")


@dataclass(frozen=True)
class CompiledAggregation:
    """An aggregation query and how to name its columns."""

    sparql: str
    columns: dict[str, str]  # SPARQL variable → output key


def aggregate_query(flt: Any, aggregation: Sequence[Any], group_by: Sequence[str] | str | None = None,
                    sort: Any = None, limit: Any = None) -> CompiledAggregation:
    """Group matching tasks by ``group_by`` fields and aggregate: each item of
    ``aggregation`` is ``(op, field)`` with op in :data:`AGGREGATES`; its output key is
    ``f"{op}_{field}"`` with dots as underscores (``max_generated_accuracy``)."""
    c = _Compiler()
    cond = c.condition(flt)
    groups = [group_by] if isinstance(group_by, str) else list(group_by or [])
    columns: dict[str, str] = {}
    select: list[str] = []
    group_vars = []
    names: dict[str, str] = {}
    for i, g in enumerate(groups):
        gv = c.var(g)
        out = f"?g{i}"
        select.append(f"({gv} AS {out})")
        group_vars.append(gv)
        columns[out[1:]] = g
        names[g] = out
    if not aggregation:
        raise QueryError("aggregation needs at least one (op, field) pair")
    for i, item in enumerate(aggregation):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise QueryError(f"aggregation items are (op, field), not {item!r}")
        op, fname = item
        if op not in AGGREGATES:
            raise QueryError(f"unknown aggregation {op!r}; known: {', '.join(AGGREGATES)}")
        fv = c.var(fname)
        expr = f"COUNT(DISTINCT {fv})" if op == "count" and fv == "?t" else f"{AGGREGATES[op]}({fv})"
        out = f"?a{i}"
        select.append(f"({expr} AS {out})")
        key = f"{op}_{fname.replace('.', '_')}"
        columns[out[1:]] = key
        names[key] = out
    order = []
    for name, direction in _sort_pairs(sort):
        if name not in names:
            raise QueryError(f"cannot sort an aggregation by {name!r}: sort by one of {', '.join(names)}")
        order.append(f"{direction}({names[name]})")
    order = order or [f"ASC({names[g]})" for g in groups]
    inner_vars = " ".join(["?t", *c.vars.values()])
    sparql = (f"{PREFIXES}SELECT {' '.join(select)} WHERE {{\n  {{ SELECT DISTINCT {inner_vars} WHERE {{\n    "
              f"{c.body(cond, '    ')}\n  }} }}\n}}"
              + (f"\nGROUP BY {' '.join(group_vars)}" if group_vars else "")
              + (f"\nORDER BY {' '.join(order)}" if order else "") + _limit(limit) + "\n")
    return CompiledAggregation(sparql, columns)


def documents_query(tasks: Iterable[str]) -> str:
    """Every field of the given tasks as rows ``(?t ?field ?v)``."""
    values = " ".join(iri(t) for t in tasks)
    scalars = " UNION ".join(f'{{ ?t {path} ?v BIND("{name}" AS ?field) }}' for name, path in SCALAR_FIELDS.items())
    io = (
        '{ ?t prov:used ?e . ?e pg:parameterName ?n ; prov:value ?v BIND(CONCAT("used.", STR(?n)) AS ?field) }'
        ' UNION { ?t prov:qualifiedUsage ?q . ?q pg:parameterName ?n ; prov:entity ?v '
        'BIND(CONCAT("used.", STR(?n)) AS ?field) }'
        ' UNION { ?e prov:wasGeneratedBy ?t ; pg:parameterName ?n ; prov:value ?v '
        'BIND(CONCAT("generated.", STR(?n)) AS ?field) }'
        ' UNION { ?v prov:qualifiedGeneration ?q . ?q prov:activity ?t ; pg:parameterName ?n '
        'BIND(CONCAT("generated.", STR(?n)) AS ?field) }'
    )
    return (f"{PREFIXES}SELECT DISTINCT ?t ?field ?v WHERE {{\n  VALUES ?t {{ {values} }}\n  "
            f"{{ {scalars} UNION {io} }}\n}}\n")


def project(doc: dict[str, Any], projection: Sequence[str] | None) -> dict[str, Any]:
    """``doc`` restricted to ``projection`` (``id`` always kept); nested like the doc."""
    if projection is None:
        return doc
    if isinstance(projection, str):
        projection = [projection]
    out: dict[str, Any] = {"id": doc["id"]}
    for name in projection:
        if name in ("used", "generated"):
            out[name] = dict(doc.get(name, {}))
            continue
        kind, param = check_field(name)
        if kind in ("used", "generated"):
            assert param is not None
            if param in doc.get(kind, {}):
                out.setdefault(kind, {})[param] = doc[kind][param]
        elif kind in doc:
            out[kind] = doc[kind]
    return out
