"""Settings, hashing, mapping determinism, store atomicity, journal framing, ontology, public API."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import rdflib

import provgraph
from provgraph.hashing import FileHasher, hash_bytes, ni_iri
from provgraph.mapping import Mapper
from provgraph.namespaces import PG, PG_NS
from provgraph.records import RunInfo, TaskRecord
from provgraph.transports import Batch
from provgraph.transports.journal import JournalTransport, read_journal

ROOT = Path(__file__).resolve().parent.parent


# -- settings --------------------------------------------------------------------------

def test_settings_errors_name_field_and_allowed_values() -> None:
    with pytest.raises(provgraph.ConfigError) as info:
        provgraph.load_settings(transport="kafka")
    assert "transport" in str(info.value) and "'nats'" in str(info.value)
    with pytest.raises(provgraph.ConfigError, match="batch_size must be less than or equal to queue_size"):
        provgraph.load_settings(queue_size=100, batch_size=1000)
    with pytest.raises(provgraph.ConfigError, match="facility"):
        provgraph.load_settings(facility="bad facility!")
    with pytest.raises(provgraph.ConfigError, match="base_iri"):
        provgraph.load_settings(base_iri="not an iri")


def test_settings_from_env_and_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "pg.toml"
    cfg.write_text('[provgraph]\nfacility = "hpc"\nbatch_size = 100\n')
    monkeypatch.setenv("PROVGRAPH_CONFIG", str(cfg))
    monkeypatch.setenv("PROVGRAPH_BATCH_SIZE", "50")
    s = provgraph.load_settings()
    assert (s.facility, s.batch_size, s.iri_base) == ("hpc", 50, "urn:provgraph:hpc/")
    cfg.write_text("[provgraph\n")
    with pytest.raises(provgraph.ConfigError, match="not valid TOML"):
        provgraph.load_settings()


# -- hashing ---------------------------------------------------------------------------

def test_ni_iri_matches_rfc6920_example() -> None:
    # RFC 6920 section 3: sha-256 of "Hello World!"
    assert hash_bytes(b"Hello World!") == "ni:///sha-256;f4OxZX_x_FO5LcGBSKHWXfwtSx-j1ncoSt3SABJtkGk"
    assert ni_iri(bytes(32)).startswith("ni:///sha-256;AAAA")


def test_file_hash_cache_skips_unchanged_files_and_sees_changes(tmp_path: Path) -> None:
    f = tmp_path / "x.bin"
    f.write_bytes(b"a" * 5000)
    hasher = FileHasher()
    first = hasher.hash_path(str(f))
    assert first is not None and first[0] == hash_bytes(b"a" * 5000) and first[1] == 5000
    assert hasher.hash_path(str(f)) == first
    assert hasher.hashed == 1  # unchanged: not read again
    f.write_bytes(b"b" * 5000)
    assert hasher.hash_path(str(f))[0] == hash_bytes(b"b" * 5000)  # type: ignore[index]
    assert hasher.hashed == 2
    assert hasher.hash_path(str(tmp_path / "missing")) is None


def test_directory_identity_is_content_not_location(tmp_path: Path) -> None:
    for name in ("a", "b"):
        d = tmp_path / name / "ds"
        (d / "sub").mkdir(parents=True)
        (d / "x.txt").write_text("x")
        (d / "sub" / "y.txt").write_text("y")
    hasher = FileHasher()
    one, two = hasher.hash_path(str(tmp_path / "a" / "ds")), hasher.hash_path(str(tmp_path / "b" / "ds"))
    assert one is not None and one == two and one[2] is True
    (tmp_path / "b" / "ds" / "sub" / "y.txt").write_text("changed")
    assert hasher.hash_path(str(tmp_path / "b" / "ds")) != one


# -- mapping ---------------------------------------------------------------------------

def test_mapping_is_deterministic() -> None:
    settings = provgraph.load_settings()
    run = RunInfo("r1", "wf", campaign="c", user="u", host="h", started_ns=1_700_000_000_000_000_000)
    rec = TaskRecord("t-1", run, "f", started_ns=1_700_000_000_000_000_000, ended_ns=1_700_000_001_000_000_000,
                     inputs={"a": 1, "blob": b"z" * 64, "s": 'quote " and \\ newline \n'}, outputs={"return": 2.5})
    one = Mapper(settings).to_trig(run) + Mapper(settings).to_trig(rec)
    two = Mapper(settings).to_trig(run) + Mapper(settings).to_trig(rec)
    assert one == two
    g = rdflib.Dataset()
    g.parse(data=one, format="trig")  # a second, independent parser accepts the escaping
    assert len(g) > 20
    assert 'quote " and \\ newline \n' in {str(q[2]) for q in g.quads()}


# -- store -----------------------------------------------------------------------------

def test_store_batches_are_atomic(tmp_path: Path) -> None:
    store = provgraph.Store(tmp_path / "s")
    store.add_nquads('<urn:a> <urn:p> "1" <urn:g> .\n')
    bad = '<urn:b> <urn:p> "2" <urn:g> .\n<urn:c> <urn:p> "unterminated <urn:g> .\n'
    with pytest.raises(provgraph.ParseError):
        store.add_nquads(bad)
    assert len(store) == 1  # nothing of the bad batch was written
    # the transport's fast path: parsed whole first, then bulk-written
    assert store.load_batch('<urn:g> { <urn:d> <urn:p> "4" . }\n', "trig") == 1
    with pytest.raises(provgraph.ParseError):
        store.load_batch('<urn:g> { <urn:e> <urn:p> "5" .\n<urn:f> <urn:p> "6" \n', "trig")
    assert len(store) == 2
    with pytest.raises(provgraph.QueryError, match="SPARQL"):
        store.query("SELEC nonsense")


def test_locked_store_spools_to_inbox_and_next_writer_ingests(tmp_path: Path) -> None:
    path = tmp_path / "store"
    holder = provgraph.Store(path)
    script = textwrap.dedent(f"""
        import provgraph
        provgraph.configure(store_path={str(path)!r}, data_dir={str(tmp_path / 'd')!r})
        @provgraph.task
        def f(x): return x
        with provgraph.workflow("other-process"):
            f(1)
        assert provgraph.shutdown(10)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert any((path / "inbox").iterdir())
    with pytest.raises(provgraph.StoreLockedError):
        provgraph.Store(path)
    holder.close()
    reopened = provgraph.Store(path)
    assert reopened.stats()["tasks"] == 1
    assert not any((path / "inbox").glob("*.nq"))


def test_journal_frames_survive_a_torn_tail(tmp_path: Path) -> None:
    j = JournalTransport(tmp_path, fsync=False)
    for i in range(3):
        j.publish(Batch(f'<urn:s{i}> <urn:p> "{i}" <urn:g> .\n'.encode(), 1))
    j.close(1)
    assert j.path is not None
    with open(j.path, "ab") as fh:
        fh.write(b"#pgbatch deadbeef 999 1\n<urn:torn> <urn:p")
    batches = list(read_journal(j.path))
    assert [b.data.decode().split()[0] for b in batches] == ["<urn:s0>", "<urn:s1>", "<urn:s2>"]


def test_journal_keeps_what_a_batch_says_of_itself(tmp_path: Path) -> None:
    """Counts, media type and the flush mark come back as written (a spilled batch
    replayed later still tells the integrator not to wait for more)."""
    j = JournalTransport(tmp_path, fsync=False)
    sent = [Batch(b"<urn:a> <urn:p> <urn:o> <urn:g> .\n", 1, batch_id="one"),
            Batch(b"<urn:g> { <urn:b> <urn:p> <urn:o>, <urn:o2> . }\n", 2, ("urn:g",), batch_id="two",
                  content_type="application/trig", flushed=True)]
    for b in sent:
        j.publish(b)
    j.close(1)
    assert j.path is not None
    back = [jb.to_batch() for jb in read_journal(j.path)]
    assert [(b.batch_id, b.triples, b.content_type, b.flushed, b.data) for b in back] == [
        (b.batch_id, b.triples, b.content_type, b.flushed, b.data) for b in sent]


# -- ontology, API, packaging ------------------------------------------------------------

def test_ontology_parses_and_defines_every_emitted_term() -> None:
    g = rdflib.Graph().parse(ROOT / "ontologies" / "provgraph.ttl")
    label, comment = rdflib.RDFS.label, rdflib.RDFS.comment
    for term, iri in PG.iris().items():
        node = rdflib.URIRef(iri)
        assert (node, label, None) in g, f"pg:{term} has no rdfs:label in ontologies/provgraph.ttl"
        assert (node, comment, None) in g, f"pg:{term} has no rdfs:comment"
    defined = {str(s) for s in g.subjects(rdflib.RDF.type, None) if str(s).startswith(PG_NS)}
    assert defined == set(PG.iris().values()), "ontology and namespaces.PG disagree"


def test_emitted_pg_terms_are_all_known(memory: provgraph.MemoryTransport) -> None:
    @provgraph.task
    def f(x: int, blob: bytes) -> int:
        raise ValueError("x")

    with pytest.raises(ValueError), provgraph.workflow("terms", campaign="c"):
        f(1, b"q" * 100)
    assert provgraph.flush(10)
    used = set(re.findall(r"<(" + re.escape(PG_NS) + r"[A-Za-z]+)>", memory.nquads()))
    assert used and used <= set(PG.iris().values())


def test_public_api_is_explicit_sorted_and_documented() -> None:
    names = provgraph.__all__
    assert list(names) == sorted(names)
    for name in names:
        obj = getattr(provgraph, name)
        if callable(obj):
            assert obj.__doc__, f"provgraph.{name} has no docstring"
    public = {n for n in dir(provgraph) if not n.startswith("_") and n != "annotations"
              and not isinstance(getattr(provgraph, n), type(re))}
    assert public <= set(names), f"public but not in __all__: {public - set(names)}"


def test_packages_list_matches_tree() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    dirs = cfg["package-dir"]
    # every Python package in the tree is listed ...
    found = {".".join(p.relative_to(ROOT).parent.parts) for p in (ROOT / "provgraph").rglob("__init__.py")}
    found |= {"provgraph.adapters." + ".".join(p.relative_to(ROOT / "adapters").parent.parts)
              for p in (ROOT / "adapters").rglob("__init__.py") if p.parent != ROOT / "adapters"}
    found.add("provgraph.adapters")
    assert found <= listed, f"not listed in pyproject.toml: {found - listed}"
    # ... and everything listed beyond them is a mapped data folder that exists and ships files
    for extra in listed - found:
        assert extra in dirs, f"{extra} is listed but has no source folder"
        folder = ROOT / dirs[extra]
        patterns = cfg["package-data"][extra]
        assert any(list(folder.glob(pat)) for pat in patterns), f"{folder} ships nothing"


def test_core_import_does_not_pull_optional_frameworks() -> None:
    code = ("import sys, provgraph, provgraph.cli; provgraph.cli.build_parser(); "
            "bad = [m for m in ('dask', 'distributed', 'mlflow', 'nats', 'psutil', 'pynvml', 'pandas', 'starlette') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
