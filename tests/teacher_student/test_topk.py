"""Streaming per-class top-K against a brute-force full sort, ties included."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semisup_core.teacher_student import topk
from semisup_core.teacher_student.topk import TopKPerClass, order_bits


def _brute(classes, scores, keys, k):
    rows = sorted(zip(classes, scores, keys), key=lambda r: (r[0], -r[1], r[2]))
    out, seen = [], {}
    for c, s, key in rows:
        kc = k[c] if hasattr(k, "__len__") else k
        if seen.get(c, 0) < kc:
            out.append((c, seen.get(c, 0), s, key))
            seen[c] = seen.get(c, 0) + 1
    return out


def _as_rows(res):
    return list(zip(res["class_id"].tolist(), res["rank"].tolist(), res["score"].tolist(),
                    res["key"].tolist()))


def _data(seed, n, c, levels):
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, c, n)
    scores = (rng.integers(0, levels, n) / levels).astype(np.float32)  # few levels: many ties
    keys = np.array([f"k{rng.integers(0, 10 * n):06d}-{i}" for i in range(n)])
    return classes, scores, keys


@pytest.mark.parametrize("seed, n, c, k, block", [(0, 500, 5, 7, 33), (1, 3000, 10, 40, 1000),
                                                  (2, 100, 3, 1000, 10)])
def test_matches_full_sort_with_ties(seed, n, c, k, block):
    classes, scores, keys = _data(seed, n, c, levels=5)
    top = TopKPerClass(k, c, slack=3)  # a tiny buffer: many compactions
    for i in range(0, n, block):
        top.add(classes[i:i + block], scores[i:i + block], keys[i:i + block])
    assert _as_rows(top.result()) == _brute(classes.tolist(), scores.tolist(), keys.tolist(), k)


def test_per_class_k_and_payload():
    classes, scores, keys = _data(3, 400, 4, levels=3)
    k = [0, 5, 50, 2]
    top = TopKPerClass(k, 4, payload=("shard",))
    top.add(classes, scores, keys, shard=[f"s{i % 3}" for i in range(400)])
    res = top.result()
    assert _as_rows(res) == _brute(classes.tolist(), scores.tolist(), keys.tolist(), k)
    index = {key: i for i, key in enumerate(keys)}
    assert all(s == f"s{index[key] % 3}" for key, s in zip(res["key"], res["shard"]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 50)),
                min_size=0, max_size=120), st.integers(1, 6), st.integers(1, 4))
def test_any_split_gives_the_same_result(rows, k, parts):
    rows = list({(c, s, key) for c, s, key in rows})  # keys may repeat across classes only
    classes = np.array([r[0] for r in rows], np.int32)
    scores = np.array([r[1] / 4 for r in rows], np.float32)
    keys = np.array([f"{r[2]:03d}" for r in rows])
    single = TopKPerClass(k, 4)
    single.add(classes, scores, keys)
    merged = TopKPerClass(k, 4)
    for p in range(parts):  # each worker's partial top-K, then the reduce
        w = TopKPerClass(k, 4)
        w.add(classes[p::parts], scores[p::parts], keys[p::parts])
        r = w.result()
        merged.add(r["class_id"], r["score"], r["key"])
    assert _as_rows(merged.result()) == _as_rows(single.result())


def test_rejects_out_of_range_class():
    with pytest.raises(ValueError, match="out of range"):
        TopKPerClass(3, 2).add([0, 2], [0.1, 0.2], ["a", "b"])


def test_order_bits_sort_like_the_floats():
    x = np.array([-np.inf, -3.5, -1e-30, -0.0, 0.0, 1e-30, 0.25, 1.0, 7e30, np.inf], np.float32)
    b = order_bits(x)
    assert (np.diff(b.astype(np.int64)) >= 0).all()
    assert b[3] == b[4]  # -0.0 == 0.0
    rng = np.random.default_rng(0)
    y = (rng.standard_normal(10_000) * 10.0 ** rng.integers(-20, 20, 10_000)).astype(np.float32)
    assert (np.argsort(order_bits(y), kind="stable") == np.argsort(y, kind="stable")).all()
    with pytest.raises(ValueError, match="NaN"):
        order_bits(np.array([0.1, np.nan], np.float32))


def test_integer_keys_arrow_columns_and_many_ties():
    import pyarrow as pa
    rng = np.random.default_rng(5)
    n, c, k = 5000, 6, 300
    classes = rng.integers(0, c, n)
    scores = np.where(rng.random(n) < 0.7, 0.5, rng.random(n)).astype(np.float32)  # 70% tied
    keys = rng.permutation(10 * n)[:n]
    top = TopKPerClass(k, c, slack=50, payload=("shard",))
    for i in range(0, n, 700):
        sl = slice(i, i + 700)
        top.add(pa.array(classes[sl]), pa.array(scores[sl]), pa.array(keys[sl]),
                shard=pa.array([f"s{j % 4}" for j in range(i, min(n, i + 700))]))
    res = top.result()
    assert res["key"].dtype == np.int64
    assert _as_rows(res) == _brute(classes.tolist(), scores.tolist(), keys.tolist(), k)
    where = {key: i for i, key in enumerate(keys.tolist())}
    assert all(s == f"s{where[key] % 4}" for key, s in zip(res["key"].tolist(), res["shard"]))


def test_zero_k_and_nan_and_empty():
    top = TopKPerClass([0, 2], 2)
    top.add([0, 0, 1, 1, 1], [0.9, 0.8, 0.1, 0.3, 0.2], [1, 2, 3, 4, 5])
    assert _as_rows(top.result()) == [(1, 0, np.float32(0.3), 4), (1, 1, np.float32(0.2), 5)]
    with pytest.raises(ValueError, match="NaN"):
        TopKPerClass(3, 2).add([0], [float("nan")], ["a"])
    assert len(TopKPerClass(3, 2).result()["key"]) == 0
    with pytest.raises(ValueError, match="num_classes must be >= 1, got 0"):
        TopKPerClass(3, 0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.sampled_from([0.0, 0.25, 0.5, 1.0, -1.0, 3e-39]),
                          st.integers(0, 10**6)), max_size=200, unique_by=lambda r: r[2]),
       st.lists(st.integers(0, 9), min_size=5, max_size=5), st.integers(1, 5), st.integers(1, 40),
       st.integers(1, 30))
def test_property_equals_full_sort_for_any_blocks_workers_and_buffer(rows, k, workers, block, slack):
    """Per-class K, heavy ties (6 score levels, a subnormal), integer keys: any blocking, any
    number of workers, any buffer size gives the full sort's answer, byte for byte."""
    classes = np.array([r[0] for r in rows], np.int32)
    scores = np.array([r[1] for r in rows], np.float32)
    keys = np.array([r[2] for r in rows], np.int64)
    want = _brute(classes.tolist(), scores.tolist(), keys.tolist(), k)
    merged = TopKPerClass(k, 5, slack=slack)
    for w in range(workers):
        part = TopKPerClass(k, 5, slack=slack)
        c, s, key = classes[w::workers], scores[w::workers], keys[w::workers]
        for i in range(0, len(c), block):
            part.add(c[i:i + block], s[i:i + block], key[i:i + block])
        r = part.result()
        merged.add(r["class_id"], r["score"], r["key"])
    got = merged.result()
    assert _as_rows(got) == want
    single = TopKPerClass(k, 5)
    single.add(classes, scores, keys)
    ref = single.result()
    assert all(got[c].tobytes() == ref[c].tobytes() for c in ("class_id", "rank", "score", "key"))


def test_string_keys_of_growing_length_unicode_and_a_growing_arena(monkeypatch):
    """Keys get longer mid-stream (more key words), non-ASCII keys order by code point, and
    segments that start empty and grow (K too big to lay out at once) give the same answer."""
    monkeypatch.setattr(topk, "_PREALLOC", 0)
    rng = np.random.default_rng(11)
    n, c, k = 4000, 5, 150
    classes = rng.integers(0, c, n)
    scores = (rng.integers(0, 6, n) / 6).astype(np.float32)
    alphabet = np.array(list("abzé日"))
    keys = np.array(["".join(rng.choice(alphabet, 1 + i * 30 // n)) + f"{i}" for i in range(n)])
    top = TopKPerClass(k, c, payload=("shard",), slack=7)
    for i in range(0, n, 500):
        top.add(classes[i:i + 500], scores[i:i + 500], keys[i:i + 500],
                shard=[f"s{j % 3}" for j in range(i, i + 500)])
    res = top.result()
    assert _as_rows(res) == _brute(classes.tolist(), scores.tolist(), keys.tolist(), k)
    where = {key: i for i, key in enumerate(keys.tolist())}
    assert all(s == f"s{where[key] % 3}" for key, s in zip(res["key"].tolist(), res["shard"]))


def test_bad_keys_are_refused():
    top = TopKPerClass(3, 2)
    top.add([0], [0.5], ["a"])
    with pytest.raises(ValueError, match="integers or all strings"):
        top.add([1], [0.5], np.array([7]))
    with pytest.raises(ValueError, match="NUL"):
        TopKPerClass(3, 2).add([0], [0.5], ["a\x00b"])
    with pytest.raises(ValueError, match="class id 5 out of range"):
        TopKPerClass(3, 2).add(np.array([0, 5]), np.array([0.1, 0.2]), np.array([1, 2]))
    top = TopKPerClass(3, 2)
    top.add([1], [0.5], np.array([9]))
    with pytest.raises(ValueError, match=r"class id -1 out of range"):  # the whole block
        top.add(np.array([0, 1, -1]), np.array([0.9, 0.9, 0.2]), np.array([1, 2, 3]))
    assert _as_rows(top.result()) == [(1, 0, 0.5, 9)]  # nothing of the refused block


@pytest.mark.parametrize("wide", [2**32, 2**62, -1, -(2**40)])
def test_a_key_beyond_32_bits_moves_the_state_to_the_general_layout(wide):
    """Keys in [0, 2**32) are packed in one word with their score (``topk_packed``); the first
    key outside that range, anywhere in the stream (mid-block too), moves the selector's
    state -- kept rows and thresholds -- to the general layout without changing the answer:
    later candidates that tie a threshold's score are still settled by key. (Seeded random
    streams: hypothesis's small examples rarely compact a class before the switch.)"""
    rng = np.random.default_rng(abs(wide) % 1000)
    for _ in range(60):
        n = int(rng.integers(1, 150))
        at = int(rng.integers(0, n + 1))
        classes = np.insert(rng.integers(0, 3, n), at, 0).astype(np.int32)
        scores = np.insert(rng.choice([0.0, 0.5, 1.0, -2.0], n), at, 0.5).astype(np.float32)
        keys = np.insert(rng.permutation(600)[:n], at, wide).astype(np.int64)
        k, slack, block = (int(x) for x in rng.integers(1, [9, 7, 31]))
        top = TopKPerClass(k, 3, slack=slack)
        for i in range(0, n + 1, block):
            top.add(classes[i:i + block], scores[i:i + block], keys[i:i + block])
        assert top._arena is None  # the general layout took over
        want = _brute(classes.tolist(), scores.tolist(), keys.tolist(), k)
        assert _as_rows(top.result()) == want


@pytest.mark.parametrize("key_type", [np.int64, str])
def test_a_shard_added_twice_counts_twice_in_both_layouts(key_type):
    """The same (class, score, key) rows again (a rerun shard fed twice) are kept as the
    full sort keeps them: as many copies as fit in K."""
    classes, scores, keys = _data(7, 600, 3, levels=4)
    keys = np.arange(600).astype(key_type)
    top = TopKPerClass(150, 3, slack=20)
    for _ in range(2):
        for i in range(0, 600, 90):
            top.add(classes[i:i + 90], scores[i:i + 90], keys[i:i + 90])
    want = _brute(2 * classes.tolist(), 2 * scores.tolist(), 2 * keys.tolist(), 150)
    assert _as_rows(top.result()) == want
