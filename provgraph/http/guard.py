"""What a SPARQL request may reach outside the store: the SERVICE / LOAD allowlist.

pyoxigraph (and an Oxigraph server behind :class:`~provgraph.remote.RemoteStore`)
evaluate ``SERVICE <iri> { ... }`` and ``LOAD <iri>`` by making HTTP requests, so an
open endpoint would let anyone make the server fetch any URL (server-side request
forgery). Before a query or update is run, :func:`check_outbound` finds every
``SERVICE`` and ``LOAD`` target and refuses any that is not exactly an IRI of
``Settings.service_allowlist`` (default empty: all refused); ``SERVICE ?var`` is always
refused because its target is only known while evaluating.

Two independent detectors must agree that nothing else is reached:

* a SPARQL tokenizer (comments, the four string forms, IRIs, prefixed names with local
  escapes, variables) that resolves ``SERVICE``/``LOAD`` targets through the ``PREFIX``
  declarations and ``\\uXXXX`` escapes in IRIs; anything it cannot resolve to an absolute
  IRI is refused;
* rdflib's SPARQL parser, whose parse tree is searched for ``ServiceGraphPattern``.

The text the store runs is the text that was checked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import ProvgraphError

__all__ = ["OutboundRefusedError", "Target", "check_outbound", "has_dataset_clause", "outbound_targets", "query_form"]


class OutboundRefusedError(ProvgraphError):
    """A query or update names a SERVICE / LOAD target that is not allowlisted."""


@dataclass(frozen=True)
class Target:
    """One outbound reference: ``keyword`` (SERVICE or LOAD) and its IRI, or ``None``
    when it is a variable or cannot be resolved (``text`` is what the query wrote)."""

    keyword: str
    iri: str | None
    text: str


_PN_CHARS_BASE = (
    "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u02ff\u0370-\u037d\u037f-\u1fff\u200c-\u200d"
    "\u2070-\u218f\u2c00-\u2fef\u3001-\ud7ff\uf900-\ufdcf\ufdf0-\ufffd\U00010000-\U000effff"
)
_PN_CHARS_U = _PN_CHARS_BASE + "_"
_PN_CHARS = _PN_CHARS_U + "\\-0-9\u00b7\u0300-\u036f\u203f-\u2040"
_PN_PREFIX = f"[{_PN_CHARS_BASE}](?:[{_PN_CHARS}.]*[{_PN_CHARS}])?"
_PLX = r"(?:%[0-9A-Fa-f]{2}|\\[_~.\-!$&'()*+,;=/?#@%])"
_PN_LOCAL = (f"(?:[{_PN_CHARS_U}:0-9]|{_PLX})"
             f"(?:(?:[{_PN_CHARS}.:]|{_PLX})*(?:[{_PN_CHARS}:]|{_PLX}))?")

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n\r]*)
  | (?P<string>'''(?:[^'\\]|\\.|'(?!''))*'''|\"\"\"(?:[^"\\]|\\.|"(?!""))*\"\"\"
              |'(?:[^'\\\n\r]|\\.)*'|"(?:[^"\\\n\r]|\\.)*")
  | (?P<iri><(?:[^<>"{}|^`\\\x00-\x20]|\\u[0-9A-Fa-f]{4}|\\U[0-9A-Fa-f]{8})*>)
  | (?P<var>[?$][A-Za-z0-9_\u00b7\u00c0-\U000effff]+)
  | (?P<pname>(?:""" + _PN_PREFIX + r""")?:(?:""" + _PN_LOCAL + r""")?)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_UCHAR = re.compile(r"\\u([0-9A-Fa-f]{4})|\\U([0-9A-Fa-f]{8})")
_LOCAL_ESC = re.compile(r"\\([_~.\-!$&'()*+,;=/?#@%])")
_ABSOLUTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


def _tokens(text: str) -> list[tuple[str, str]]:
    out = []
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup or "other"
        if kind not in ("ws", "comment"):
            out.append((kind, m.group()))
    return out


def _iri_text(token: str) -> str:
    body = token[1:-1]
    return _UCHAR.sub(lambda m: chr(int(m.group(1) or m.group(2), 16)), body)


def query_form(text: str) -> str | None:
    """``SELECT``, ``ASK``, ``CONSTRUCT`` or ``DESCRIBE`` (the first query keyword
    outside strings, IRIs and comments), or ``None``."""
    for kind, tok in _tokens(text):
        if kind == "word" and tok.upper() in ("SELECT", "ASK", "CONSTRUCT", "DESCRIBE"):
            return tok.upper()
    return None


def has_dataset_clause(text: str) -> bool:
    """Whether the query names its dataset (``FROM`` / ``FROM NAMED``): then the store's
    union default graph must not replace it."""
    if not re.search("from", text, re.IGNORECASE):
        return False
    return any(kind == "word" and tok.upper() == "FROM" for kind, tok in _tokens(text))


def _scan(text: str) -> list[Target]:
    toks = _tokens(text)
    prefixes: dict[str, str | None] = {}
    found: list[Target] = []
    i = 0
    while i < len(toks):
        kind, tok = toks[i]
        upper = tok.upper() if kind == "word" else ""
        if upper == "PREFIX" and i + 2 < len(toks) and toks[i + 1][0] == "pname" and toks[i + 2][0] == "iri":
            iri = _iri_text(toks[i + 2][1])
            prefixes[toks[i + 1][1].split(":", 1)[0]] = iri if _ABSOLUTE.match(iri) else None
            i += 3
            continue
        if upper in ("SERVICE", "LOAD"):
            j = i + 1
            if j < len(toks) and toks[j][0] == "word" and toks[j][1].upper() == "SILENT":
                j += 1
            if j >= len(toks):
                found.append(Target(upper, None, ""))
                break
            tkind, ttok = toks[j]
            target: str | None = None
            if tkind == "iri":
                target = _iri_text(ttok)
            elif tkind == "pname":
                prefix, local = ttok.split(":", 1)
                base = prefixes.get(prefix)
                if base is not None:
                    target = base + _LOCAL_ESC.sub(r"\1", local)
            if target is not None and not _ABSOLUTE.match(target):
                target = None
            found.append(Target(upper, target, ttok))
            i = j + 1
            continue
        i += 1
    return found


def _rdflib_services(text: str) -> list[Target] | None:
    """SERVICE targets in rdflib's parse tree; ``None`` when rdflib cannot parse it."""
    try:
        from rdflib.plugins.sparql.parser import parseQuery, parseUpdate
        from rdflib.term import URIRef
    except ImportError:  # pragma: no cover - rdflib is a core dependency
        return None
    try:
        tree: object = parseQuery(text)
    except Exception:  # noqa: BLE001 - any rdflib failure: rely on the tokenizer
        try:
            tree = parseUpdate(text)
        except Exception:  # noqa: BLE001
            return None
    prefixes: dict[str, str] = {}
    out: list[Target] = []

    def walk(node: object, depth: int = 0) -> None:
        if depth > 200:
            out.append(Target("SERVICE", None, "(too deeply nested)"))
            return
        name = getattr(node, "name", None)
        if name == "PrefixDecl":
            prefixes[str(_field(node, "prefix") or "")] = str(_field(node, "iri"))
        if name == "ServiceGraphPattern":
            term = _field(node, "term")
            if isinstance(term, URIRef):
                out.append(Target("SERVICE", str(term), str(term)))
            elif getattr(term, "name", None) == "pname":
                base = prefixes.get(str(_field(term, "prefix") or ""))
                local = _LOCAL_ESC.sub(r"\1", str(_field(term, "localname") or ""))
                out.append(Target("SERVICE", None if base is None else base + local, f"{term}"))
            else:
                out.append(Target("SERVICE", None, str(term)))
        if isinstance(node, dict):
            children: Iterable[object] = node.values()
        elif isinstance(node, (list, tuple)) or type(node).__name__ == "ParseResults":
            children = list(node)  # type: ignore[call-overload]
        else:
            return
        for child in children:
            if not isinstance(child, (str, bytes)):
                walk(child, depth + 1)

    walk(tree)
    return out


def _field(node: object, key: str) -> object:
    """A key of an rdflib parse-tree node (its ``get`` answers missing keys oddly)."""
    return dict.get(node, key) if isinstance(node, dict) else None


def outbound_targets(text: str) -> list[Target]:
    """Every SERVICE / LOAD target of a query or update, by both detectors."""
    if not re.search(r"service|load", text, re.IGNORECASE):
        return []  # a keyword must be spelled out: no escapes outside strings and IRIs
    found = _scan(text)
    if re.search(r"service", text, re.IGNORECASE):
        more = _rdflib_services(text)
        if more:
            found.extend(more)
    return found


def check_outbound(text: str, allowlist: Sequence[str]) -> None:
    """Raise :class:`OutboundRefusedError` unless every SERVICE / LOAD target is allowlisted."""
    allowed = set(allowlist)
    for t in outbound_targets(text):
        if t.iri is None:
            raise OutboundRefusedError(
                f"{t.keyword} {t.text or '(missing target)'} refused: the endpoint only calls "
                "absolute IRIs listed in service_allowlist (a variable or unresolved name is never called)")
        if t.iri not in allowed:
            listed = ", ".join(sorted(allowed)) or "none"
            raise OutboundRefusedError(
                f"{t.keyword} <{t.iri}> refused: not in this endpoint's service_allowlist (allowed: {listed})")

