"""What a run keeps on disk instead of in memory (issue #9): the sort keys of journals and drawn
collections order exactly as Python orders the tuples they encode, and a drawn collection reads
back the records a draw sees, in order."""

from __future__ import annotations

import random
import tracemalloc

import pytest
from codeclm.programs.artifacts.spill import OrderedSpill, sort_key
from codeclm.programs.engine.drawn import DrawnCollection, chained
from codeclm.programs.engine.nodes import NodeRunner
from codeclm.programs.engine.progress import Progress
from codeclm.programs.engine.records import Record
from codeclm.programs.engine.run import RunOptions
from codeclm.programs.lang.spec import load_spec
from conftest import REPO


def test_sort_keys_order_as_python_orders_the_tuples() -> None:
    """Orders of every depth, prefixes, large and negative ints, strings with NULs and non-ASCII text,
    and the failures journal's (order, node) keys."""
    rng = random.Random(7)
    texts = ["", "a", "a\x00", "a\x00b", "ab", "b", "é", "\U0001f600", "z" * 20]

    def order() -> tuple:
        return tuple(rng.choice([0, 1, 2, 9, 10, 255, 256, 2**40, -1, -(2**40)]) for _ in range(rng.randint(0, 4)))

    orders = [order() for _ in range(400)]
    assert sorted(orders, key=sort_key) == sorted(orders)
    keyed = [(order(), rng.choice(texts)) for _ in range(400)]
    assert sorted(keyed, key=sort_key) == sorted(keyed)
    assert sorted(texts, key=sort_key) == sorted(texts)


def test_a_sort_key_refuses_what_it_cannot_order() -> None:
    with pytest.raises(TypeError, match="no sort key for float"):
        sort_key((1, 2.5))


def test_a_spill_reads_back_in_key_order_equal_keys_as_added() -> None:
    spill = OrderedSpill()
    for key, value in [((2,), "c"), ((0, 5), "b"), ((0,), "a"), ((2,), "d"), ((10,), 7), ((1,), b"\x00raw")]:
        spill.add(key, value)
    assert len(spill) == 6
    assert list(spill.in_order()) == ["a", "b", b"\x00raw", "c", "d", 7]
    rows = spill.rows_in_order()
    assert [spill.value(row) for row in rows] == ["a", "b", b"\x00raw", "c", "d", 7]
    spill.close()


def test_a_drawn_collection_keeps_what_draws_read_in_order() -> None:
    """The wanted fields (the nearest on the lineage), id, order, sources, slot and status; by position
    and in order, whatever order the records were added in."""
    collection = DrawnCollection({"use_case", "instruction"})
    for i in (3, 0, 2, 1):
        seed = Record(f"s{i}", "seeds", {"instruction": f"do {i}"}, order=(i,), sources=(f"s{i}",))
        collection.append(seed.child("encode", {"use_case": f"case {i}", "skills": ["x"]}, slot=i % 2))
    drawn = collection.in_order()
    assert len(drawn) == 4
    assert [r.id for r in drawn] == ["s0", "s1", "s2", "s3"]
    third = drawn[2]
    assert (third.node, third.values, third.order, third.sources, third.slot, third.status) == \
        ("encode", {"use_case": "case 2", "instruction": "do 2"}, (2,), ("s2",), 0, "ok")
    assert third.parent is None and third.calls == []
    collection.close()


def test_chained_collections_read_as_one_in_order() -> None:
    parts = [[Record(f"a{i}", "a", {}) for i in range(3)], [], [Record(f"b{i}", "b", {}) for i in range(2)]]
    joined = chained(parts)
    assert len(joined) == 5 and [joined[i].id for i in range(5)] == ["a0", "a1", "a2", "b0", "b1"]
    assert [r.id for r in joined] == ["a0", "a1", "a2", "b0", "b1"]
    with pytest.raises(IndexError):
        joined[5]
    assert chained(parts[:1]) is parts[0] and len(chained([])) == 0


def test_a_mix_draws_from_a_collection_on_disk_as_from_a_list_without_loading_it() -> None:
    """The paper's pool (a use case by choice, skills by unique sample) over 20,000 encodings: the same
    records as drawn from a list of the same records, and the collection never comes back whole."""
    spec = load_spec(REPO / "specs" / "codeclm.yaml")
    runner = NodeRunner(spec, None, {}, Progress(stream=None), RunOptions(), None, None)  # type: ignore[arg-type]
    collection = DrawnCollection({"use_case", "skills"})
    for i in range(20_000):
        values = {"use_case": f"use case {i % 500}", "skills": [f"skill {i % 40}", f"skill {i % 70}"]}
        collection.append(Record(f"s{i:05d}", "encode", values, order=(i,), sources=(f"s{i:05d}",)))
    listed = list(collection.in_order())
    expected = [(r.id, r.values, r.sources, r.slot) for r in runner.mix(spec.graph.nodes["augment"],
                                                                         {"encode": listed}, lambda _: None)]
    del listed
    tracemalloc.start()
    try:
        drawn = [(r.id, r.values, r.sources, r.slot) for r in runner.mix(spec.graph.nodes["augment"],
                                                                          {"encode": collection.in_order()},
                                                                          lambda _: None)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert drawn == expected and len(drawn) == 200
    assert peak < 2 * 2**20, f"the mix held {peak / 2**20:.1f} MiB: the collection came back into memory"
    collection.close()
