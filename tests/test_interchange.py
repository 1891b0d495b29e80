"""PROV interchange against the real ``prov`` library and its shipped documents: every
PROV-JSON example round-trips through the store, every malformed document is refused
with a clear error and leaves the store unchanged, and exports of a captured campaign
are read back by ``prov`` and by RDF parsers."""

from __future__ import annotations

import datetime
import decimal
import io
import json
import re
import warnings
from pathlib import Path
from typing import Any

import prov
import pyoxigraph as ox
import pytest
from prov.identifier import Identifier, QualifiedName
from prov.model import Literal as ProvLiteral
from prov.model import ProvActivity, ProvDocument, ProvEntity, ProvGeneration, ProvUsage

import provgraph
from provgraph import interchange
from provgraph.errors import NotFoundError, ParseError, ProvgraphError
from tests.support import provdag

PROV_TESTS = Path(prov.__file__).parent / "tests"
JSON_DOCS = sorted((PROV_TESTS / "json").glob("*.json"))
# prov >= 3.2 ships prov/tests/malformed/ (the figures below are for prov 3.2.3)
MALFORMED = sorted(p for p in (PROV_TESTS / "malformed").glob("*") if p.suffix != ".md")
PROV_VERSION = tuple(int(x) for x in prov.__version__.split(".")[:3] if x.isdigit())
XSD = "http://www.w3.org/2001/XMLSchema#"
# Integer types Oxigraph stores as xsd:integer (it keeps literal values, not lexical forms)
INTEGERS = {"int", "long", "short", "byte", "integer", "unsignedInt", "unsignedLong", "unsignedShort",
            "unsignedByte", "nonNegativeInteger", "positiveInteger", "nonPositiveInteger", "negativeInteger"}
_DURATION = re.compile(r"^(-)?P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")


def read_prov(data: bytes | str, fmt: str = "json") -> ProvDocument:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # prov warns about documents it accepts leniently
        return ProvDocument.deserialize(content=data if isinstance(data, str) else data.decode(), format=fmt)


def value(v: Any) -> tuple[Any, ...]:
    """An attribute value by its value, as the store keeps it (see docs/interchange.md):
    numbers, booleans, dateTimes and durations by value; other literals by lexical form."""
    if isinstance(v, bool):
        return ("boolean", v)
    if isinstance(v, int):
        return ("integer", v)
    if isinstance(v, float):
        return ("double", v)
    if isinstance(v, datetime.datetime):
        return ("dateTime", v)
    if isinstance(v, (QualifiedName, Identifier)):
        return ("iri", v.uri)
    if isinstance(v, ProvLiteral):
        dt = v.datatype.uri if v.datatype is not None else None
        local = dt[len(XSD):] if dt and dt.startswith(XSD) else None
        text = str(v.value)
        try:
            if local in INTEGERS:
                return ("integer", int(text))
            if local in ("float", "double"):
                return (local, float(text))
            if local == "decimal":
                return ("decimal", decimal.Decimal(text))
            if local == "boolean":
                return ("boolean", text.strip() in ("true", "1"))
            if local in ("duration", "dayTimeDuration", "yearMonthDuration") and _DURATION.match(text):
                m = _DURATION.match(text)
                assert m is not None
                sign = -1 if m.group(1) else 1
                y, mo, d, h, mi = (int(g or 0) for g in m.groups()[1:6])
                secs = decimal.Decimal(m.group(7) or 0) + ((d * 24 + h) * 60 + mi) * 60
                return ("duration", sign * (y * 12 + mo), sign * secs)
        except (ValueError, decimal.InvalidOperation):
            pass
        return ("literal", text, dt, v.langtag)
    return ("string", str(v))


def records(doc: ProvDocument) -> set[tuple[Any, ...]]:
    """Every record of ``doc`` (and its bundles) with attribute values compared by value."""
    out = set()
    for bundle in [doc, *doc.bundles]:
        bid = bundle.identifier.uri if bundle.identifier is not None else None
        for r in bundle.get_records():
            out.add((bid, r.get_type().uri, r.identifier.uri if r.identifier else None,
                     frozenset((k.uri, value(v)) for k, v in r.formal_attributes if v is not None),
                     frozenset((k.uri, value(v)) for k, v in r.extra_attributes)))
    return out


def isomorphic(a: list[ox.Triple], b: list[ox.Triple]) -> bool:
    """RDF graph isomorphism (blank nodes may be relabelled), checked by rdflib."""
    from rdflib import Graph
    from rdflib.compare import isomorphic as iso

    ga, gb = Graph(), Graph()
    ga.parse(data=ox.serialize(a, format=ox.RdfFormat.N_TRIPLES) or b"", format="nt")
    gb.parse(data=ox.serialize(b, format=ox.RdfFormat.N_TRIPLES) or b"", format="nt")
    return bool(iso(ga, gb))


def snapshot(store: provgraph.Store) -> tuple[int, list[str], bytes]:
    return len(store), store.named_graphs(), store.dump("nquads")


# -- the prov corpus ---------------------------------------------------------------------


def test_corpus_is_there() -> None:
    assert PROV_VERSION >= (3, 2), f"prov {prov.__version__}: these tests need prov >= 3.2 (its test corpus)"
    assert len(JSON_DOCS) > 300 and len(MALFORMED) >= 15


def test_every_prov_json_document_round_trips() -> None:
    """Import → export as PROV-JSON → ``prov`` reads a document equal to the original.

    Exactly equal (``ProvDocument.__eq__``) unless the document has literals Oxigraph
    stores by value (xsd:int → xsd:integer, "P0Y0M0DT0H0M12.225S" → "PT12.225S"...):
    then every record must still be there with equal attribute values. The "scruffy"
    documents (two records with one identifier and different formal attributes) cannot
    be written back as PROV (a documented PROV-O limitation): they are imported intact
    and export explains the limitation."""
    exact, by_value, scruffy = [], [], []
    for path in JSON_DOCS:
        data = path.read_bytes()
        original = read_prov(data)
        store = provgraph.Store()
        graph = interchange.import_document(store, data, "prov-json")
        assert graph == "urn:provgraph:import/sha256-" + __import__("hashlib").sha256(data).hexdigest()
        if path.name.startswith("scruffy-"):
            with pytest.raises(ProvgraphError, match="cannot be written as a PROV document"):
                interchange.export(store, "prov-json", graph=graph)
            trig = interchange.export(store, "trig", graph=graph)
            assert len(list(ox.parse(trig, format=ox.RdfFormat.TRIG))) == len(store)
            scruffy.append(path.name)
            continue
        back = read_prov(interchange.export(store, "prov-json", graph=graph))
        if back == original:
            exact.append(path.name)
            continue
        assert records(back.unified()) == records(original.unified()), path.name
        by_value.append(path.name)
    assert len(exact) + len(by_value) + len(scruffy) == len(JSON_DOCS)
    # the figures docs/interchange.md reports; a change here needs a look at why
    if prov.__version__ == "3.2.3":
        assert (len(exact), len(by_value), len(scruffy)) == (290, 80, 28)
    assert len(exact) > len(by_value) + len(scruffy)
    assert all(name.startswith("scruffy-") for name in scruffy)


def test_value_normalization_is_the_only_difference() -> None:
    """The documents compared by value differ only by datatype/lexical form: Oxigraph
    stores "10"^^xsd:byte as "10"^^xsd:integer; plain integers come back as they were."""
    source = PROV_TESTS / "json" / "attr_entity_one_attr11.json"
    doc = read_prov(source.read_text())
    store = provgraph.Store()
    graph = interchange.import_document(store, source.read_bytes(), "prov-json")
    back = read_prov(interchange.export(store, "prov-json", graph=graph))
    assert back != doc and records(back) == records(doc)
    assert '"10"^^<http://www.w3.org/2001/XMLSchema#integer>' in store.dump("nquads").decode()
    plain = PROV_TESTS / "json" / "attr_entity_one_attr3.json"  # prov:type=1, a JSON number
    store = provgraph.Store()
    graph = interchange.import_document(store, plain.read_bytes(), "prov-json")
    assert read_prov(interchange.export(store, "prov-json", graph=graph)) == read_prov(plain.read_text())


def test_importing_twice_is_harmless() -> None:
    store = provgraph.Store()
    data = (PROV_TESTS / "json" / "bundle1.json").read_bytes()
    g1 = interchange.import_document(store, data, "prov-json")
    before = snapshot(store)
    g2 = interchange.import_document(store, data, "prov-json")
    assert g1 == g2 and snapshot(store) == before
    # bundles keep their own graph, declared as prov:Bundle in the document's graph
    assert len(store.named_graphs()) > 1
    assert any(q.object == ox.NamedNode("http://www.w3.org/ns/prov#Bundle") for q in store.quads(g1))


@pytest.mark.parametrize("path", MALFORMED, ids=lambda p: p.name)
def test_malformed_document_is_refused_and_changes_nothing(path: Path) -> None:
    store = provgraph.Store()
    interchange.import_document(store, (PROV_TESTS / "json" / "activity1.json").read_bytes(), "prov-json")
    before = snapshot(store)
    with pytest.raises(ParseError) as info:
        interchange.import_file(store, path)
    message = str(info.value)
    assert interchange.guess_format(path) in message  # says which format it tried
    assert message.startswith(f"{path}: ") and "Traceback" not in message
    assert snapshot(store) == before


def test_unknown_format_and_missing_file() -> None:
    store = provgraph.Store()
    with pytest.raises(ParseError, match="cannot tell the format"):
        interchange.import_file(store, PROV_TESTS / "provn" / "README.md")
    with pytest.raises(NotFoundError):
        interchange.import_file(store, "/no/such/file.json")
    with pytest.raises(ParseError, match="unknown import format"):
        interchange.import_document(store, b"{}", "yaml")
    with pytest.raises(ParseError, match="absolute IRI"):
        interchange.import_document(store, (PROV_TESTS / "json" / "activity1.json").read_bytes(), "prov-json",
                                    graph="not an iri")
    assert len(store) == 0


def test_prov_n_and_prov_xml_import() -> None:
    """PROV-N (read by prov >= 3) and PROV-XML documents import to the same records as
    PROV-JSON; an invalid PROV-N document is refused with the parser's message."""
    for name in ("activity1", "entity1", "bundle1", "generation1"):
        doc = read_prov((PROV_TESTS / "json" / f"{name}.json").read_text())
        for fmt, prov_fmt in (("provn", "provn"), ("provxml", "xml")):
            text = doc.serialize(format=prov_fmt)
            store = provgraph.Store()
            graph = interchange.import_document(store, text.encode(), fmt)
            back = read_prov(interchange.export(store, "prov-json", graph=graph))
            assert records(back.unified()) == records(doc.unified()), (name, fmt)
    store = provgraph.Store()
    with pytest.raises(ParseError, match="invalid provn document"):
        interchange.import_document(store, b"document\n  entity(ex:e1\nendDocument\n", "provn")
    assert len(store) == 0


def test_provtoolbox_provn_corpus_sample() -> None:
    files = sorted((PROV_TESTS / "provn" / "provtoolbox-corpus").glob("*.provn"))[:60]
    assert files
    store = provgraph.Store()
    for path in files:
        original = read_prov(path.read_text(), "provn")
        graph = interchange.import_file(store, path)
        if path.name.startswith("scruffy-"):
            continue
        back = read_prov(interchange.export(store, "prov-json", graph=graph))
        assert records(back.unified()) == records(original.unified()), path.name


def test_prov_o_turtle_corpus_sample() -> None:
    """PROV-O documents (prov's own Turtle test files) import as RDF, and export as
    PROV-JSON to what ``prov`` itself reads from the Turtle."""
    files = sorted((PROV_TESTS / "rdf").glob("*.ttl"))[::8]
    assert len(files) > 40
    for path in files:
        store = provgraph.Store()
        graph = interchange.import_file(store, path)
        ref = ox.Store()  # what Oxigraph keeps of the file (literals by value)
        ref.load(path.read_bytes(), format=ox.RdfFormat.TURTLE)
        assert isomorphic([ox.Triple(q.subject, q.predicate, q.object) for q in store.quads(graph)],
                          [ox.Triple(q.subject, q.predicate, q.object) for q in ref]), path.name
        if "scruffy" in path.name:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            original = ProvDocument.deserialize(source=str(path), format="rdf", rdf_format="turtle")
        back = read_prov(interchange.export(store, "prov-json", graph=graph))
        assert records(back.unified()) == records(original.unified()), path.name


# -- exports of a captured campaign ---------------------------------------------------------


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    recorded = provdag.record_campaign(tmp_path_factory.mktemp("campaign"))
    store = provgraph.Store()
    store.add_nquads(str(recorded["nquads"]))
    recorded["store"] = store
    return recorded


def prov_sets(doc: ProvDocument) -> dict[str, set[Any]]:
    flat = doc.flattened()

    def uri(q: Any) -> str:
        return str(q.uri)

    return {
        "activities": {uri(r.identifier) for r in flat.get_records(ProvActivity)},
        "entities": {uri(r.identifier) for r in flat.get_records(ProvEntity)},
        "used": {(uri(r.formal_attributes[0][1]), uri(r.formal_attributes[1][1])) for r in flat.get_records(ProvUsage)},
        "generated": {(uri(r.formal_attributes[0][1]), uri(r.formal_attributes[1][1]))
                      for r in flat.get_records(ProvGeneration)},
    }


def store_sets(store: provgraph.Store, quads: list[ox.Quad] | None = None) -> dict[str, set[Any]]:
    sub = provgraph.Store()
    if quads is not None:
        sub.oxigraph.extend(quads)
    else:
        sub = store

    def rows(q: str) -> list[Any]:
        return list(sub.query("PREFIX prov: <http://www.w3.org/ns/prov#> " + q))

    return {
        "activities": {r["a"].value for r in rows("SELECT DISTINCT ?a WHERE { ?a a prov:Activity }")},
        "entities": {r["e"].value for r in rows("SELECT DISTINCT ?e WHERE { ?e a prov:Entity }")},
        "used": {(r["a"].value, r["e"].value) for r in rows("SELECT DISTINCT ?a ?e WHERE { ?a prov:used ?e }")},
        "generated": {(r["e"].value, r["a"].value)
                      for r in rows("SELECT DISTINCT ?e ?a WHERE { ?e prov:wasGeneratedBy ?a }")},
    }


@pytest.mark.parametrize("fmt", ["prov-json", "provn", "provxml"])
def test_prov_exports_hold_what_the_store_holds(campaign: dict[str, Any], fmt: str) -> None:
    store = campaign["store"]
    data = interchange.export(store, fmt)
    doc = read_prov(data, {"prov-json": "json", "provn": "provn", "provxml": "xml"}[fmt])
    assert prov_sets(doc) == store_sets(store)
    if fmt == "prov-json":
        assert '"sha256:' in data.decode() or "ni:///sha-256;" in data.decode()
        json.loads(data)


@pytest.mark.parametrize("fmt", ["turtle", "ntriples", "jsonld", "trig", "nquads"])
def test_rdf_exports_parse_and_hold_every_statement(campaign: dict[str, Any], fmt: str) -> None:
    store = campaign["store"]
    data = interchange.export(store, fmt)
    ox_fmt = {"turtle": ox.RdfFormat.TURTLE, "ntriples": ox.RdfFormat.N_TRIPLES, "jsonld": ox.RdfFormat.JSON_LD,
              "trig": ox.RdfFormat.TRIG, "nquads": ox.RdfFormat.N_QUADS}[fmt]
    parsed = list(ox.parse(data, format=ox_fmt))
    if fmt in ("trig", "nquads"):
        assert set(parsed) == set(store.quads())
        # and it imports into another store as the same dataset
        other = provgraph.Store()
        interchange.import_document(other, data, fmt)
        assert set(other.quads()) == set(store.quads())
    else:
        assert {(t.subject, t.predicate, t.object) for t in parsed} == \
            {(q.subject, q.predicate, q.object) for q in store.quads()}


def test_export_scopes(campaign: dict[str, Any]) -> None:
    store = campaign["store"]
    runs = campaign["runs"]
    hp = interchange.select_quads(store, run=runs["hpsearch"])
    assert {q.graph_name.value for q in hp} == {f"urn:provgraph:local/graph/{runs['hpsearch']}"}
    assert store_sets(store, hp)["activities"] >= {f"urn:provgraph:local/run/{runs['hpsearch']}"}
    by_iri = interchange.select_quads(store, run=f"urn:provgraph:local/run/{runs['hpsearch']}")
    assert set(by_iri) == set(hp)
    camp = interchange.select_quads(store, campaign=provdag.CAMPAIGN)
    assert {q.graph_name.value for q in camp} == {f"urn:provgraph:local/graph/{runs['acquire']}",
                                                  f"urn:provgraph:local/graph/{runs['hpsearch']}"}
    assert set(interchange.select_quads(store, campaign=f"urn:provgraph:campaign/{provdag.CAMPAIGN}")) == set(camp)
    from provgraph.hashing import FileHasher
    from provgraph.lineage import lineage

    report = FileHasher().hash_path(str(campaign["report"]))
    assert report is not None
    sub = interchange.select_quads(store, lineage=report[0])
    nodes = {n["id"] for n in lineage(store, report[0])["nodes"]}
    qualified = {q.object.value for q in sub if q.predicate.value in (
        "http://www.w3.org/ns/prov#qualifiedUsage", "http://www.w3.org/ns/prov#qualifiedGeneration")}
    assert {q.subject.value for q in sub} == nodes | qualified  # the nodes and their qualified relations
    assert set(sub) == {q for q in store.quads() if q.subject.value in nodes | qualified}
    doc = read_prov(interchange.export(store, "prov-json", lineage=report[0]))
    sets = prov_sets(doc)
    raw = FileHasher().hash_path(str(campaign["raw"]))
    assert raw is not None and raw[0] in sets["entities"]  # the chain reaches acquire's raw.bin
    shallow = read_prov(interchange.export(store, "prov-json", lineage=report[0], depth=1))
    assert raw[0] not in prov_sets(shallow)["entities"]
    with pytest.raises(NotFoundError):
        interchange.select_quads(store, run="no-such-run")
    with pytest.raises(NotFoundError):
        interchange.select_quads(store, campaign="no-such-campaign")
    with pytest.raises(NotFoundError):
        interchange.select_quads(store, graph="urn:nothing-here")
    with pytest.raises(ParseError, match="unknown export format"):
        interchange.export(store, "yaml")


def test_export_import_round_trip_keeps_lineage(campaign: dict[str, Any]) -> None:
    """A PROV-JSON export imported into an empty store answers lineage the same way."""
    from provgraph.hashing import FileHasher
    from provgraph.lineage import lineage

    store = campaign["store"]
    other = provgraph.Store()
    interchange.import_document(other, interchange.export(store, "prov-json"), "prov-json")
    report = FileHasher().hash_path(str(campaign["report"]))
    assert report is not None
    a, b = lineage(store, report[0]), lineage(other, report[0])
    assert a["edges"] == b["edges"] and a["nodes"] == b["nodes"]
    assert io.BytesIO(interchange.export(other, "provn")).read().startswith(b"document")


def test_exports_from_a_remote_store_equal_the_embedded_ones(campaign: dict[str, Any], tmp_path: Path) -> None:
    from provgraph.hashing import FileHasher
    from provgraph.remote import RemoteStore
    from tests.support.servers import oxigraph_server

    store = campaign["store"]
    report = FileHasher().hash_path(str(campaign["report"]))
    assert report is not None
    scopes: list[dict[str, Any]] = [{}, {"run": campaign["runs"]["hpsearch"]}, {"campaign": provdag.CAMPAIGN},
                                    {"lineage": report[0]}, {"lineage": report[0], "depth": 3}]
    with oxigraph_server(tmp_path / "oxi") as url:
        remote = RemoteStore(url)
        remote.load(str(campaign["nquads"]), "nquads")
        for scope in scopes:
            assert set(interchange.select_quads(remote, **scope)) == set(interchange.select_quads(store, **scope))
            assert read_prov(interchange.export(remote, "prov-json", **scope)) == \
                read_prov(interchange.export(store, "prov-json", **scope)), scope
        before = len(remote)
        with pytest.raises(ParseError):
            interchange.import_file(remote, MALFORMED[0])
        graph = interchange.import_file(remote, PROV_TESTS / "json" / "activity1.json")
        assert len(remote) > before and graph in remote.named_graphs()
