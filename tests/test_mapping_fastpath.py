"""The template fast path for scalar calls yields exactly the triples of the general path."""

from __future__ import annotations

from typing import Any

import pyoxigraph as ox
import pytest

import provgraph
from provgraph.mapping import Mapper
from provgraph.settings import load_settings


def _calls() -> list[Any]:
    """Run a mix of decorated calls and return the raw call records still queued."""
    provgraph.configure(transport="none", flush_interval=3600, batch_size=50_000, queue_size=100_000)

    @provgraph.task
    def add(a: int, b: int) -> int:
        return a + b

    @provgraph.task
    def defaults(x: float, scale: float = 2.5, label: str = "k%s", on: bool = True) -> float:
        return x * scale

    @provgraph.task(name="named 100%")
    def strings(s: str, t: str = "é ünïcode \"quoted\" \\ back") -> str:
        return s + "!"

    @provgraph.task
    def nothing(flag: bool) -> None:
        return None

    @provgraph.task
    def pathish(s: str) -> str:
        return s  # "." or "/" in a string: may name a file, so the general path decides

    class Model:
        @provgraph.task
        def fit(self, lr: float, epochs: int = 3) -> float:
            return lr * epochs

        @classmethod
        @provgraph.task
        def make(cls, n: int) -> int:
            return n

    @provgraph.task
    def outer(n: int) -> int:
        return add(n, 1) + 1

    with provgraph.workflow("fast-path", campaign="c"):
        add(1, 2)
        add(-7, 10**30)
        defaults(1.5)
        defaults(2.0, 3.0)
        defaults(float("nan"), float("inf"), "x", False)
        strings("he said \"hi\"\n\ttab %d %%")
        strings("x", "y")
        nothing(True)
        pathish("a/b")
        pathish("report.txt")
        Model().fit(0.1)
        Model().fit(0.2, 5)
        Model.make(4)
        outer(3)
        add(1, b=2)  # keyword: general path
        try:
            add("x", None)  # type: ignore[arg-type]
        except TypeError:
            pass
        items = list(provgraph.get_emitter()._queue)
    return items


def _triples(mapper: Mapper, items: list[Any]) -> set[str]:
    out: set[str] = set()
    for item in items:
        graph, lines = mapper.map(item)
        doc = f"{mapper.trig_header}{graph} {{\n{''.join(lines)}}}\n" if graph else "".join(lines)
        out |= {str(q) for q in ox.parse(doc.encode(), format=ox.RdfFormat.TRIG)}
    return out


def test_fast_path_equals_general_path() -> None:
    items = _calls()
    calls = [i for i in items if isinstance(i, tuple)]
    assert len(calls) >= 16
    settings = load_settings(transport="none")
    fast, slow = Mapper(settings), Mapper(settings)
    slow._fast_ok = False
    used_fast = sum(1 for i in calls if Mapper(settings)._fast_call(i) is not None)
    assert used_fast >= 10, "the fast path should serve the scalar calls"
    a, b = _triples(fast, items), _triples(slow, items)
    assert a == b, (sorted(a - b)[:10], sorted(b - a)[:10])
    provgraph.shutdown()


@pytest.mark.parametrize("telemetry", ["sampler"])
def test_fast_path_off_when_sampler_attaches_telemetry(telemetry: str) -> None:
    assert Mapper(load_settings(telemetry=telemetry))._fast_ok is False
    assert Mapper(load_settings())._fast_ok is True


def test_batches_fit_the_transport_and_count_their_triples() -> None:
    """Compact statements hold several triples a line: each batch's count is still exact,
    and the emitter cuts batches to the transport's ``max_batch_bytes``."""
    from provgraph.transports.memory import MemoryTransport

    transport = MemoryTransport()
    transport.max_batch_bytes = 16_384
    provgraph.configure(transport=transport, flush_interval=3600, batch_size=50_000, queue_size=100_000)

    @provgraph.task
    def add(a: int, b: int) -> int:
        return a + b

    @provgraph.task
    def note(text: str, n: int = 2) -> str:
        return text * n

    with provgraph.workflow("sized", campaign="c"):
        for i in range(600):
            add(i, 1)
            note("x" * (i % 7))
            if i % 50 == 0:
                add(i, b=2)  # general path, one triple per line
        assert provgraph.flush(30)
    em = provgraph.get_emitter()
    stats = em.stats()
    batches = list(transport.batches)
    provgraph.shutdown()
    assert len(batches) > 10, "600 calls of ~800 bytes must need several 16 KiB batches"
    total = 0
    for batch in batches:
        assert len(batch.data) <= 16_384
        parsed = sum(1 for _ in ox.parse(batch.data, format=ox.RdfFormat.TRIG))
        assert parsed == batch.triples, batch.data[:300]
        total += parsed
    assert stats["triples"] == total
    assert stats["records"] >= 1_212 and stats["dropped"] == 0


def test_call_records_are_untracked_by_the_collector_and_registries_stay_small() -> None:
    """A queued call record holds only atomic values (the collector drops it from its lists,
    so a deep queue costs no full collections); re-decorating a function or a lambda in a
    loop reuses one registry entry, while closures with their own defaults keep them."""
    import gc

    from provgraph import records

    provgraph.configure(transport="none", flush_interval=3600, batch_size=50_000, queue_size=100_000)
    before = len(records.FUNCTIONS)

    def scaled(k: int) -> Any:
        def f(x: int, k: int = k) -> int:
            return x * k
        return provgraph.task(f)

    with provgraph.workflow("registry"):
        for i in range(50):
            provgraph.task(lambda x: x + 1)(i)  # a new function object every time
        scaled(2)(1)
        scaled(3)(1)
        items = [i for i in provgraph.get_emitter()._queue if isinstance(i, tuple)]
    assert len(records.FUNCTIONS) - before == 3  # the lambda once, each closure with defaults once
    record = items[0]
    assert all(type(v) in (int, str, tuple, type(None)) for v in record), record
    gc.collect()
    assert not gc.is_tracked(record), "a record of scalars must leave the collector's lists"
    settings = load_settings(transport="none")
    triples = _triples(Mapper(settings), items)
    k_values = {t for t in triples if "/in/k>" in t and "#value>" in t}
    assert any('"2"' in t for t in k_values) and any('"3"' in t for t in k_values), k_values
    provgraph.shutdown()


def test_wrapped_functions_keep_their_own_signatures() -> None:
    """Two functions with the same name behind one generic ``functools.wraps`` decorator
    (a notebook cell run twice with a changed signature) share the wrapper's code but not
    their parameter names."""
    import functools

    provgraph.configure(transport="none", flush_interval=3600, batch_size=50_000, queue_size=100_000)

    def logged(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)
        return wrapper

    def define(version: int) -> Any:
        if version == 1:
            def step(a: int, b: int) -> int:
                return a + b
        else:
            def step(x: int, y: int) -> int:  # type: ignore[misc]
                return x * y
        return provgraph.task(logged(step))

    with provgraph.workflow("redefined"):
        define(1)(1, 2)
        define(2)(3, 4)
        items = [i for i in provgraph.get_emitter()._queue if isinstance(i, tuple)]
    triples = _triples(Mapper(load_settings(transport="none")), items)
    names = {t.split('"')[1] for t in triples if "#parameterName>" in t}
    assert {"a", "b", "x", "y"} <= names, names
    provgraph.shutdown()
