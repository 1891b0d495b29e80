"""Content negotiation for the SPARQL endpoint: ``Accept`` (with q-values) and the
``format`` / ``output`` parameter that overrides it.

SELECT and ASK answers use the SPARQL results formats (JSON, XML, CSV, TSV);
CONSTRUCT / DESCRIBE answers and graphs use RDF formats (Turtle, N-Triples, JSON-LD,
RDF/XML, N-Quads, TriG).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyoxigraph as ox

__all__ = ["RDF_FORMATS", "RESULT_FORMATS", "Format", "NotAcceptableError", "negotiate"]


class NotAcceptableError(Exception):
    """Nothing the client accepts can be produced (HTTP 406); ``offered`` lists what can."""

    def __init__(self, offered: list[str]) -> None:
        super().__init__("none of the accepted media types can be produced; available: " + ", ".join(offered))
        self.offered = offered


@dataclass(frozen=True)
class Format:
    """One serialization: its media type, short names and pyoxigraph format."""

    media_type: str
    names: tuple[str, ...]
    results: ox.QueryResultsFormat | None = None
    rdf: ox.RdfFormat | None = None
    aliases: tuple[str, ...] = ()

    @property
    def content_type(self) -> str:
        """The ``Content-Type`` header value (with ``charset=utf-8`` for text formats)."""
        text = self.media_type.startswith("text/") or self.media_type.endswith(("+json", "+xml", "/json"))
        return f"{self.media_type}; charset=utf-8" if text else self.media_type


RESULT_FORMATS: list[Format] = [
    Format("application/sparql-results+json", ("json", "srj"), results=ox.QueryResultsFormat.JSON,
           aliases=("application/json",)),
    Format("application/sparql-results+xml", ("xml", "srx"), results=ox.QueryResultsFormat.XML,
           aliases=("application/xml", "text/xml")),
    Format("text/csv", ("csv",), results=ox.QueryResultsFormat.CSV),
    Format("text/tab-separated-values", ("tsv",), results=ox.QueryResultsFormat.TSV),
]

RDF_FORMATS: list[Format] = [
    Format("text/turtle", ("turtle", "ttl", "n3"), rdf=ox.RdfFormat.TURTLE,
           aliases=("application/x-turtle", "text/n3", "application/turtle")),
    Format("application/n-triples", ("ntriples", "nt", "n-triples"), rdf=ox.RdfFormat.N_TRIPLES,
           aliases=("text/plain",)),
    Format("application/ld+json", ("jsonld", "json-ld", "json"), rdf=ox.RdfFormat.JSON_LD,
           aliases=("application/json",)),
    Format("application/rdf+xml", ("rdfxml", "rdf", "xml", "rdf+xml"), rdf=ox.RdfFormat.RDF_XML,
           aliases=("application/xml", "text/xml")),
    Format("application/n-quads", ("nquads", "nq"), rdf=ox.RdfFormat.N_QUADS),
    Format("application/trig", ("trig",), rdf=ox.RdfFormat.TRIG),
]


def _parse_accept(header: str) -> list[tuple[str, float, int]]:
    """``(media range, q, position)`` of an Accept header; malformed q counts as 0."""
    out = []
    for pos, part in enumerate(header.split(",")):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        if not media:
            continue
        q = 1.0
        for f in fields[1:]:
            key, _, value = f.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = max(0.0, min(1.0, float(value)))
                except ValueError:
                    q = 0.0
        out.append((media, q, pos))
    return out


def _match(range_: str, fmt: Format) -> int:
    """Specificity of ``range_`` matching ``fmt`` (3 exact, 2 ``type/*``, 1 ``*/*``, 0 none)."""
    if range_ in (fmt.media_type, *fmt.aliases):
        return 3
    if range_.endswith("/*") and fmt.media_type.startswith(range_[:-1]):
        return 2
    if range_ == "*/*" or range_ == "*":
        return 1
    return 0


def negotiate(offered: list[Format], accept: str | None, override: str | None = None) -> Format:
    """The format to answer with. ``override`` (``format=`` / ``output=``) is a short
    name or media type and wins over ``Accept``; without ``Accept`` the first offered
    format is used. Raises :class:`NotAcceptableError`."""
    if override:
        key = override.strip().lower()
        for fmt in offered:
            if key in fmt.names or key == fmt.media_type or key in fmt.aliases:
                return fmt
        raise NotAcceptableError([f.media_type for f in offered])
    if not accept or not accept.strip():
        return offered[0]
    ranges = _parse_accept(accept)
    best: tuple[float, int, int, int] | None = None
    chosen: Format | None = None
    for idx, fmt in enumerate(offered):
        # the q of the most specific range matching this format
        spec, q = 0, 0.0
        for range_, rq, _pos in ranges:
            s = _match(range_, fmt)
            if s > spec:
                spec, q = s, rq
        if spec == 0 or q <= 0:
            continue
        rank = (q, spec, -idx, 0)
        if best is None or rank > best:
            best, chosen = rank, fmt
    if chosen is None:
        raise NotAcceptableError([f.media_type for f in offered])
    return chosen
