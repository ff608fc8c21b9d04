"""Streaming per-class top-K against a brute-force full sort, ties included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semisup_core.topk import TopKPerClass


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
    top = TopKPerClass(k, c)
    top._limit = 50  # force many compactions
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
