"""The kNN core against a numpy brute force on small data."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from semisup_core import knn
from semisup_core.errors import ConfigError


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(base: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = q.astype(np.float64) @ base.T.astype(np.float64)  # Q x N cosine similarities
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, 1), ids


@pytest.mark.parametrize("batch", [7, 1 << 14])
def test_exact_search_equals_numpy(batch):
    base, q = _unit(500, 16, 0), _unit(37, 16, 1)
    index = knn.build(base)
    assert index.ntotal == 500 and knn.IndexSpec.for_size(500, 16).kind == "flat"
    sims, ids = knn.search(index, q, 10, batch=batch)
    want_s, want_i = _brute(base, q, 10)
    np.testing.assert_array_equal(ids, want_i)  # no ties in continuous random data
    np.testing.assert_allclose(sims, want_s, atol=1e-5)


def test_fewer_vectors_than_k_pads_with_minus_one():
    sims, ids = knn.search(knn.build(_unit(3, 8, 0)), _unit(2, 8, 1), 5)
    assert (ids[:, 3:] == -1).all() and (ids[:, :3] >= 0).all()


def _clustered(n: int, d: int, seed: int, centres: int = 100) -> np.ndarray:
    """Embedding-like data: unit vectors around ``centres`` directions."""
    rng = np.random.default_rng(seed)
    c = _unit(centres, d, 99)[rng.integers(0, centres, n)]
    x = c + 0.15 * rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_ivf_recall_against_exact_and_spec_from_size():
    base, q = _clustered(20_000, 32, 2), _clustered(200, 32, 3)
    spec = knn.IndexSpec("ivf_flat", nlist=64, nprobe=16)
    _, ids = knn.search(knn.build(base, spec), q, 10)
    _, want = _brute(base, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, want)])
    assert recall >= 0.9, recall
    _, all_lists = knn.search(knn.build(base, spec), q, 10, nprobe=64)  # every list: exact
    np.testing.assert_array_equal(all_lists, want)
    big = knn.IndexSpec.for_size(10**9, 128)
    assert big.kind == "ivf_pq" and big.pq_m == 64 and big.nlist == 1 << 17
    assert knn.IndexSpec.for_size(10**6, 128).kind == "ivf_flat"


def test_sharded_build_merges_into_the_same_results():
    base, q = _unit(3000, 16, 4), _unit(50, 16, 5)
    spec = knn.IndexSpec("ivf_flat", nlist=16, nprobe=4)
    trained = knn.empty_index(spec, 16, base[::3])
    parts = []
    for lo in range(0, 3000, 1000):  # three workers, one shard each
        part = faiss.clone_index(trained)
        part.add(base[lo:lo + 1000])
        parts.append(part)
    merged = knn.merge(parts)
    whole = faiss.clone_index(trained)
    whole.add(base)
    a, b = knn.search(merged, q, 8, nprobe=4), knn.search(whole, q, 8, nprobe=4)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)


def test_save_and_load_through_the_store(tmp_path):
    base, q = _unit(400, 8, 6), _unit(5, 8, 7)
    index = knn.build(base)
    uri = str(tmp_path / "idx" / "index.faiss")
    knn.save(index, uri)
    with open(uri, "rb") as f:
        assert f.read(4) != b"\x80\x04\x95"[:4]  # faiss's format, not a pickle
    again = knn.load(uri)
    np.testing.assert_array_equal(knn.search(again, q, 4)[1], knn.search(index, q, 4)[1])


def test_bad_inputs_are_one_line():
    with pytest.raises(ConfigError, match="N x 8"):
        knn.search(knn.build(_unit(10, 8, 0)), _unit(3, 4, 0), 2)
    with pytest.raises(ConfigError, match="training vectors"):
        knn.empty_index(knn.IndexSpec("ivf_flat", nlist=64), 8, _unit(10, 8, 0))
    with pytest.raises(ConfigError, match="no shards"):
        knn.merge([])
