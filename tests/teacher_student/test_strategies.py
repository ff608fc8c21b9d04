"""Every select strategy checked for real (issue 21): per-class counts, the random draw's
uniformity and true scores, the unbalanced law, any worker split giving the same bytes, the
vectorised hash against a scalar reference, and old score outputs refused."""

from __future__ import annotations

import numpy as np
import pytest

from semisup_core import storage
from semisup_core.errors import DataError
from semisup_core.teacher_student.select import (SelectConfig, _random_scores, per_class_k,
                                                 read_manifest, select)
from tests.teacher_student.scores import write_scores

M64 = 2 ** 64 - 1


def _splitmix_reference(i: int, c: int, seed: int) -> int:
    """select._random_scores for one pair, in Python integers: the uint32 bit pattern."""
    x = (i * 0x9E3779B97F4A7C15) & M64
    x ^= (c * 0xC2B2AE3D27D4EB4F) & M64
    x ^= (seed * 0xBF58476D1CE4E5B9 + 0x9E3779B97F4A7C15) & M64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & M64
    x ^= x >> 31
    return (x >> 34) + 0x00800000


def test_random_hash_equals_a_scalar_reference():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 2 ** 40, 500)
    cls = rng.integers(0, 1000, 500)
    for seed in (0, 7, 2 ** 40 + 3):
        got = _random_scores(ids, cls, seed).view(np.uint32)
        want = [_splitmix_reference(int(i), int(c), seed) for i, c in zip(ids, cls)]
        assert got.tolist() == want
    floats = _random_scores(ids, cls, 1)
    assert np.isfinite(floats).all() and (floats > 0).all()
    # positive float patterns order like their floats: ranking by either is the same
    assert (np.argsort(floats, kind="stable") == np.argsort(floats.view(np.uint32), kind="stable")).all()


def _select(scores, out, **kw):
    summary = select(SelectConfig(scores=scores, out=str(out), **kw))
    return summary, read_manifest(str(out / "manifest.parquet")), \
        storage.get_bytes(str(out / "manifest.parquet"))


def test_random_counts_scores_and_uniformity(tmp_path):
    """N images, each scored for its top 2 of 4 classes: per class the draw takes exactly K
    of the class's candidates (all of them when fewer), reports their true scores, and is
    uniform: neither the ids (10 bins) nor the scores (above/below the class median) of the
    drawn images differ from the candidates' beyond a chi-square at p = 0.001 (fixed seed)."""
    n, c, k = 3000, 4, 400
    rng = np.random.default_rng(5)
    probs = rng.dirichlet(np.ones(c) * 0.7, n).astype(np.float32)
    probs[:, 3] *= 0.002  # class 3 is rarely in the top 2: fewer candidates than K
    scores = write_scores(str(tmp_path / "s"), probs, top_p=2, per_shard=128, workers=2)
    top2 = np.argsort(-probs, axis=1, kind="stable")[:, :2]
    summary, m, _ = _select(scores, tmp_path / "m", strategy="random", k=k, seed=11)
    cls, ids, sc = m["class_id"].to_numpy(), m["id"].to_numpy(), m["score"].to_numpy()
    for j in range(c):
        cand = np.flatnonzero((top2 == j).any(axis=1))
        got = ids[cls == j]
        assert len(got) == min(k, len(cand)) == summary["per_class"][j]
        assert set(got.tolist()) <= set(cand.tolist()) and len(set(got.tolist())) == len(got)
        assert (m["rank"].to_numpy()[cls == j] == np.arange(len(got))).all()
        assert np.array_equal(sc[cls == j], probs[got, j])  # the teacher's scores, not the draw's
        assert m["key"].to_pylist()[0].startswith("img-")
        if len(cand) <= k:
            continue
        # ids: 10 bins of the candidates' order; expected k/10 each; chi2(9) at p=0.001: 27.88
        pos = np.searchsorted(cand, got)
        obs = np.bincount(pos * 10 // len(cand), minlength=10)
        assert ((obs - k / 10) ** 2 / (k / 10)).sum() < 27.88, obs
        # scores: half the candidates lie above the class median; chi2(1) at p=0.001: 10.83
        above = int((probs[got, j] > np.median(probs[cand, j])).sum())
        assert ((above - k / 2) ** 2 / (k / 2) + (k - above - k / 2) ** 2 / (k / 2)) < 10.83
    assert 0 < summary["per_class"][3] < k  # the short class was exercised
    keys = m["key"].to_pylist()
    assert keys == [f"img-{i:04d}" for i in ids.tolist()]
    assert m["shard"].to_pylist() == [f"shard-{i // 128:06d}" for i in ids.tolist()]


def test_random_draws_differ_by_seed_and_not_by_order_of_ids(tmp_path):
    probs = np.random.default_rng(1).random((200, 2)).astype(np.float32)
    scores = write_scores(str(tmp_path / "s"), probs, per_shard=16)
    a = _select(scores, tmp_path / "a", strategy="random", k=20, seed=1)[1]["id"].to_pylist()
    b = _select(scores, tmp_path / "b", strategy="random", k=20, seed=2)[1]["id"].to_pylist()
    top = _select(scores, tmp_path / "t", k=20)[1]["id"].to_pylist()
    assert a != b and a != top and len(set(a) & set(b)) < 20


@pytest.mark.parametrize("law", ["frequency", "zipf"])
def test_unbalanced_k_sums_to_k_times_c_and_follows_the_law(tmp_path, law):
    top1 = np.array([500, 300, 120, 50, 20, 7, 3, 0])
    cfg = SelectConfig(scores="x", out="x", strategy="unbalanced", k=25, k_law=law,
                       zipf_exponent=1.2)
    kc = per_class_k(cfg, top1)
    total = 25 * len(top1)
    assert kc.sum() == total and (kc >= 1).all()
    if law == "frequency":
        w = top1 / top1.sum()
    else:
        w = 1.0 / np.arange(1, len(top1) + 1) ** 1.2  # top1 is already in descending order
        w /= w.sum()
    lifted = np.flatnonzero(np.floor(w * total) == 0) if law == "frequency" else []
    free = [j for j in range(len(top1)) if j not in lifted and j != int(np.argmax(kc))]
    assert (np.abs(kc[free] - w[free] * total) < 1).all()  # largest remainder: within 1
    assert kc[lifted].tolist() == [1] * len(lifted)


def test_unbalanced_selects_each_classes_top_k_c(tmp_path):
    rng = np.random.default_rng(2)
    probs = rng.random((300, 4)).astype(np.float32) ** np.array([1, 2, 4, 8], np.float32)
    scores = write_scores(str(tmp_path / "s"), probs, per_shard=32, workers=3)
    summary, m, _ = _select(scores, tmp_path / "m", strategy="unbalanced", k=30)
    kc = per_class_k(SelectConfig(scores="x", out="x", strategy="unbalanced", k=30),
                     np.bincount(probs.argmax(1), minlength=4))
    assert summary["per_class"] == kc.tolist() and sum(summary["per_class"]) == 120
    for j in range(4):
        want = sorted(range(300), key=lambda i: (-probs[i, j], i))[:kc[j]]
        assert m["id"].to_numpy()[m["class_id"].to_numpy() == j].tolist() == want


@pytest.mark.parametrize("strategy,kw", [("balanced", {"k": 9}), ("unbalanced", {"k": 9}),
                                         ("random", {"k": 9, "seed": 4}),
                                         ("threshold", {"threshold": 0.4})])
def test_any_worker_split_gives_identical_bytes(tmp_path, strategy, kw):
    probs = (np.random.default_rng(3).integers(0, 10, (150, 5)) / 10).astype(np.float32)  # ties
    one = write_scores(str(tmp_path / "w1"), probs, per_shard=11, partial_k=9)
    four = write_scores(str(tmp_path / "w4"), probs, per_shard=11, workers=4, partial_k=9)
    apart = write_scores(str(tmp_path / "wd"), probs, per_shard=11, workers=3, own_dirs=True,
                         partial_k=9)
    sa, _, a = _select(one, tmp_path / "a", strategy=strategy, **kw)
    sb, _, b = _select(four, tmp_path / "b", strategy=strategy, **kw)
    sc, _, c = _select(apart[::-1], tmp_path / "c", strategy=strategy, **kw)
    assert a == b == c
    if strategy == "balanced":  # the partials (under half the score rows) were read; the
        assert sa["read"] == sb["read"] == sc["read"] == "partials"  # shards give the same
        sd, _, d = _select(one, tmp_path / "d", strategy=strategy, top_p=5, **kw)
        assert sd["read"] == "shards" and d == a


def test_score_workers_without_shards_write_empty_partials(tmp_path):
    """More score workers than shards (a ParallelFor wider than the pool): the idle ones
    write empty partial tables and select gives the one-worker bytes."""
    probs = np.random.default_rng(6).random((30, 3)).astype(np.float32)
    one = write_scores(str(tmp_path / "one"), probs, per_shard=10, partial_k=4)
    wide = write_scores(str(tmp_path / "wide"), probs, per_shard=10, workers=5, partial_k=4)
    assert len(list((tmp_path / "wide" / "partials").glob("*.parquet"))) == 5
    for strategy in ("balanced", "random"):
        a = _select(one, tmp_path / f"a-{strategy}", strategy=strategy, k=4)
        b = _select(wide, tmp_path / f"b-{strategy}", strategy=strategy, k=4)
        assert a[2] == b[2] and a[0]["selected"] == 12


def test_threshold_equals_a_brute_force_ranking(tmp_path):
    probs = (np.random.default_rng(4).integers(0, 20, (120, 3)) / 20).astype(np.float32)
    scores = write_scores(str(tmp_path / "s"), probs, per_shard=13, top_p=2)
    _, m, _ = _select(scores, tmp_path / "m", strategy="threshold", threshold=0.5)
    top2 = np.argsort(-probs, axis=1, kind="stable")[:, :2]
    want = []
    for j in range(3):
        rows = sorted((-probs[i, j], i) for i in range(120) if j in top2[i] and probs[i, j] >= 0.5)
        want += [(j, r, i, -s) for r, (s, i) in enumerate(rows)]
    got = list(zip(m["class_id"].to_pylist(), m["rank"].to_pylist(), m["id"].to_pylist(),
                   m["score"].to_pylist()))
    assert got == [(j, r, i, float(np.float32(s))) for j, r, i, s in want]


def test_score_outputs_without_ids_are_refused(tmp_path):
    probs = np.random.default_rng(0).random((20, 2)).astype(np.float32)
    scores = write_scores(str(tmp_path / "s"), probs, per_shard=8)
    marker = str(tmp_path / "s" / "shards" / "shard-000001.done.json")
    old = storage.read_json(marker)
    del old["first_id"]  # what the score stage wrote before image ids
    storage.write_json(marker, old)
    with pytest.raises(DataError, match=r"^[^\n]*shard-000001 was scored without image ids.*"
                                        r"score the pool again into a new out"):
        _select(scores, tmp_path / "m", k=3)
    assert not (tmp_path / "m" / "manifest.parquet").exists()


def test_group_by_range_equals_searchsorted_and_a_stable_argsort():
    """select's shard lookup (a bucket table + counting sort) against numpy, on random ranges
    of uneven widths, ids below, inside and past them, and the empty cases."""
    from semisup_core.teacher_student import topk_kernels as kern
    rng = np.random.default_rng(0)
    for _ in range(300):
        m = int(rng.integers(0, 7))
        starts = np.sort(rng.choice(np.arange(-5, 60), m, replace=False)).astype(np.int64)
        ids = rng.integers(-10, 80, int(rng.integers(0, 40))).astype(np.int64)
        where, order, bounds = kern.group_by_range(ids, starts)
        want = np.searchsorted(starts, ids, side="right") - 1
        assert where.tolist() == want.tolist()
        assert order.tolist() == np.argsort(want, kind="stable").tolist()
        assert bounds.tolist() == [0] + np.cumsum(np.bincount(want + 1, minlength=m + 1)).tolist()
