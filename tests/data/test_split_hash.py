"""The hash-order split (data/split_hash.py): its brute-force twin, any worker split gives the
same bytes, phases resume and refuse to run out of order, bad inputs fail with one line."""

import math
import os
from collections import Counter, defaultdict

import numpy as np
import pytest

from semisup_core.data.dataset import iter_dataset
from semisup_core.data.shards import iter_shard
from semisup_core.data.split import read_oracle
from semisup_core.data.split_hash import key_hash, split_hashed
from semisup_core.errors import DataError


def _files(root):
    """Every file under ``root`` (relative path -> bytes)."""
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


def _tree(out):
    files = _files(out)
    return {k: v for k, v in files.items() if not k.endswith("split-config.yaml")}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 3-class labelled dataset of 90 images (16 a shard) and 40 distractors."""
    from tests.data.conftest import make_dataset
    root = tmp_path_factory.mktemp("hsplit")
    make_dataset(str(root / "ds"), 90, ["a", "b", "c"], prefix="img", seed=3)
    make_dataset(str(root / "dis"), 40, ["x", "y"], prefix="dis", seed=4, per_shard=7)
    return str(root / "ds"), str(root / "dis")


def _reference(ds, dis, n, seed, per_shard):
    """Brute force: everything in memory, straight from the module docstring's definition."""
    samples = [(s, 0) for s in iter_dataset(ds)] + [(s, 1) for s in iter_dataset(dis)]
    by_class = defaultdict(list)
    for s, d in samples:
        if d == 0:
            by_class[s.cls].append((key_hash(seed, s.key), s.key))
    labelled = {k for c in by_class for _, k in sorted(by_class[c])[:n]}
    pool = [(key_hash(seed, s.key), s.key) for s, _ in samples if s.key not in labelled]
    buckets = math.ceil(len(pool) / per_shard)
    shards = defaultdict(list)
    for h, k in sorted(pool):
        shards[h % buckets].append(k)
    return sorted(labelled), {b: shards[b] for b in sorted(shards)}


def test_matches_brute_force(small, tmp_path):
    ds, dis = small
    res = split_hashed(ds, str(tmp_path / "a"), 4, seed=5, pool_extra=[dis], samples_per_shard=20)
    labelled, shards = _reference(ds, dis, 4, 5, 20)
    assert [s.key for s in iter_dataset(res.labelled_uri)] == labelled  # sorted by key
    assert res.labelled.class_counts == [4, 4, 4]
    got = {int(e["uri"].split("-")[1][:6]): [s.key for s in iter_shard(os.path.join(
        res.unlabelled_uri, e["uri"]))] for e in res.unlabelled.shards}
    assert got == shards and res.unlabelled.num_samples == 90 - 12 + 40
    assert res.unlabelled.extra["sources"] == {"dis": 40, "img": 78}
    truth = {s.key: s.cls for s in iter_dataset(ds)}
    oracle = read_oracle(res.oracle_uri).to_pylist()
    assert [r["key"] for r in oracle] == [k for b in sorted(shards) for k in shards[b]]
    for r in oracle:
        assert r["true_class"] == (truth[r["key"]] if r["source"] == "img" else -1)
    for s in iter_dataset(res.unlabelled_uri):
        assert s.cls is None and set(s.meta) == {"source"}
    assert not os.path.exists(tmp_path / "a" / "_work")  # the runs (a copy of the pool) are gone


def test_any_worker_split_is_byte_identical(small, tmp_path):
    ds, dis = small
    kw = dict(pool_extra=[dis], samples_per_shard=20)
    one = split_hashed(ds, str(tmp_path / "one"), 4, 5, **kw)
    out = str(tmp_path / "three")
    split_hashed(ds, out, 4, 5, phase="choose", **kw)
    for w in (2, 0, 1):  # any order, as parallel tasks finish
        split_hashed(ds, out, 4, 5, phase="map", worker=w, num_workers=3, spill_mb=0.002, **kw)
    for w in (1, 2, 0):
        split_hashed(ds, out, 4, 5, phase="reduce", worker=w, num_workers=3, **kw)
    split_hashed(ds, out, 4, 5, phase="finish", num_workers=3, **kw)
    assert _tree(out) == _tree(one.labelled_uri.rsplit("/", 1)[0])
    # several spills per worker did happen, and in one process too:
    split_hashed(ds, str(tmp_path / "spilt"), 4, 5, spill_mb=0.001, num_workers=2, **kw)
    assert _tree(str(tmp_path / "spilt")) == _tree(out)


def test_phases_resume_and_refuse_out_of_order(small, tmp_path):
    ds, dis = small
    kw = dict(pool_extra=[dis], samples_per_shard=20)
    out = str(tmp_path / "p")
    with pytest.raises(DataError, match="has no plan; run phase=choose first"):
        split_hashed(ds, out, 4, 5, phase="map", **kw)
    split_hashed(ds, out, 4, 5, phase="choose", **kw)
    split_hashed(ds, out, 4, 5, phase="map", worker=0, num_workers=2, **kw)
    with pytest.raises(DataError, match="map worker 1 of 2 has not finished"):
        split_hashed(ds, out, 4, 5, phase="reduce", worker=0, num_workers=2, **kw)
    with pytest.raises(DataError, match="planned with seed 5, not 6"):
        split_hashed(ds, out, 4, 6, phase="map", worker=1, num_workers=2, **kw)
    split_hashed(ds, out, 4, 5, phase="map", worker=1, num_workers=2, **kw)
    split_hashed(ds, out, 4, 5, phase="map", worker=1, num_workers=2, **kw)  # a retry: no-op
    split_hashed(ds, out, 4, 5, phase="reduce", worker=0, num_workers=2, **kw)
    with pytest.raises(DataError, match=r"split bucket \d+ has not been reduced"):
        split_hashed(ds, out, 4, 5, phase="finish", num_workers=2, **kw)
    # a reduce task killed after writing a shard but before its marker reruns to the same bytes
    split_hashed(ds, out, 4, 5, phase="reduce", worker=1, num_workers=2, **kw)
    marker = os.path.join(out, "_work", "reduce", "000001.json")
    os.unlink(marker)
    split_hashed(ds, out, 4, 5, phase="reduce", worker=1, num_workers=2, **kw)
    res = split_hashed(ds, out, 4, 5, phase="finish", num_workers=2, **kw)
    ref = split_hashed(ds, str(tmp_path / "ref"), 4, 5, **kw)
    assert _tree(out) == _tree(str(tmp_path / "ref"))
    again = split_hashed(ds, out, 4, 5, **kw)  # finished: returned as it is
    assert again.unlabelled == res.unlabelled == ref.unlabelled
    with pytest.raises(DataError, match="holds another split"):
        split_hashed(ds, out, 4, 7, **kw)
    with pytest.raises(DataError, match="holds another split .* 4 labels per class"):
        split_hashed(ds, out, 5, 5, **kw)


def test_errors(small, tmp_path, make_dataset):
    ds, dis = small
    with pytest.raises(DataError, match=r"class 0 \('a'\) has 30 samples, fewer than"):
        split_hashed(ds, str(tmp_path / "x"), 31, seed=0)
    with pytest.raises(DataError, match=r"sample key 'dis-\d+' appears more than once"):
        split_hashed(dis, str(tmp_path / "y"), 2, seed=0, pool_extra=[dis], samples_per_shard=8)
    pool = str(tmp_path / "pool")
    make_dataset(pool, 8, ["a"], prefix="p", labelled=False)
    with pytest.raises(DataError, match="unlabelled; split needs labels"):
        split_hashed(pool, str(tmp_path / "z"), 1, seed=0)
    with pytest.raises(DataError, match="split phase must be one of"):
        split_hashed(ds, str(tmp_path / "w"), 1, seed=0, phase="shuffle")


def test_draw_is_uniform():
    """The labelled draw (n smallest hashes of a class) and the bucket of a key are uniform:
    chi-square at a fixed set of seeds."""
    keys = [f"img-{i:05d}" for i in range(20)]
    chosen = Counter()
    for seed in range(1000):
        chosen.update(sorted(keys, key=lambda k: key_hash(seed, k))[:5])
    counts = np.array([chosen[k] for k in keys])  # each key 250 times expected
    assert ((counts - 250) ** 2 / 250).sum() < 43.82  # chi2(19) at p = 0.001
    buckets = np.bincount([key_hash(11, f"k{i}") % 7 for i in range(7000)], minlength=7)
    assert ((buckets - 1000) ** 2 / 1000).sum() < 22.46  # chi2(6) at p = 0.001
    assert key_hash(1, "img-00001") != key_hash(2, "img-00001")
