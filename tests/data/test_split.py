import os
import tarfile
from collections import Counter

import pytest

from semisup_core.data.dataset import iter_dataset, read_meta
from semisup_core.data.shards import iter_shard
from semisup_core.data.split import read_oracle, split_labelled
from semisup_core.errors import DataError


@pytest.fixture(scope="module")
def split_a(fashion_test, distractors, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("split") / "a")
    return out, split_labelled(fashion_test[0], out, labels_per_class=10, seed=1,
                               pool_extra=[distractors[0]], samples_per_shard=1000)


def _shard_bytes(uri):
    return [open(os.path.join(uri, s["uri"]), "rb").read() for s in read_meta(uri).shards]


def test_exact_per_class_and_counts(split_a, fashion_test):
    out, res = split_a
    lab = list(iter_dataset(res.labelled_uri))
    assert len(lab) == 100 and Counter(s.cls for s in lab) == {c: 10 for c in range(10)}
    assert res.labelled.class_counts == [10] * 10
    assert res.labelled.classes == fashion_test[1].classes
    assert res.unlabelled.num_samples == 10000 - 100 + 60 and not res.unlabelled.labelled
    assert res.unlabelled.extra["sources"] == {"dis": 60, "fashion-mnist-test": 9900}
    pool_keys = {s.key for s in iter_dataset(res.unlabelled_uri)}
    assert len(pool_keys) == 9960 and not pool_keys & {s.key for s in lab}


def test_pool_carries_no_labels(split_a):
    _, res = split_a
    for entry in res.unlabelled.shards:
        with tarfile.open(os.path.join(res.unlabelled_uri, entry["uri"])) as tar:
            assert not [n for n in tar.getnames() if n.endswith(".cls")]
    for s in iter_dataset(res.unlabelled_uri):
        assert s.cls is None and set(s.meta) == {"source"}


def test_oracle(split_a, fashion_test):
    out, res = split_a
    assert res.oracle_uri == os.path.join(out, "oracle.parquet")
    rows = read_oracle(res.oracle_uri).to_pylist()
    truth = {s.key: s.cls for s in iter_dataset(fashion_test[0])}
    assert len(rows) == 9960 and {r["key"] for r in rows} == {
        s.key for s in iter_dataset(res.unlabelled_uri)}
    names = fashion_test[1].classes
    for r in rows:
        if r["source"] == "dis":
            assert r["true_class"] == -1 and r["true_class_name"] is None
            assert r["source_class_name"] in ("x", "y", "z")
        else:
            assert r["true_class"] == truth[r["key"]]
            assert r["true_class_name"] == names[r["true_class"]] == r["source_class_name"]


def test_distractors_mixed_across_shards(split_a):
    _, res = split_a
    per_shard = []
    for entry in res.unlabelled.shards:
        shard = os.path.join(res.unlabelled_uri, entry["uri"])
        srcs = [s.meta["source"] for s in iter_shard(shard)]
        per_shard.append(srcs.count("dis"))
    assert len(per_shard) == 10 and sum(per_shard) == 60
    assert sum(n > 0 for n in per_shard) >= 6  # 60 among 10 shards: not bunched at the end


def test_deterministic(split_a, fashion_test, distractors, tmp_path):
    out_a, res_a = split_a
    res_b = split_labelled(fashion_test[0], str(tmp_path / "b"), 10, seed=1,
                           pool_extra=[distractors[0]], samples_per_shard=1000)
    assert _shard_bytes(res_a.labelled_uri) == _shard_bytes(res_b.labelled_uri)
    assert _shard_bytes(res_a.unlabelled_uri) == _shard_bytes(res_b.unlabelled_uri)
    res_c = split_labelled(fashion_test[0], str(tmp_path / "c"), 10, seed=2,
                           pool_extra=[distractors[0]], samples_per_shard=1000)
    keys_a = [s.key for s in iter_dataset(res_a.labelled_uri)]
    keys_c = [s.key for s in iter_dataset(res_c.labelled_uri)]
    assert keys_a != keys_c and len(keys_c) == 100


def test_errors(fashion_test, distractors, tmp_path, make_dataset):
    with pytest.raises(DataError, match=r"class 0 \('T-shirt/top'\) has 1000 samples, fewer than"):
        split_labelled(fashion_test[0], str(tmp_path / "x"), 1001, seed=0)
    with pytest.raises(DataError, match="labels_per_class must be >= 1"):
        split_labelled(distractors[0], str(tmp_path / "x"), 0, seed=0)
    with pytest.raises(DataError, match="more than one pool dataset"):
        split_labelled(distractors[0], str(tmp_path / "y"), 2, seed=0, pool_extra=[distractors[0]])
    pool = str(tmp_path / "pool")
    make_dataset(pool, 8, ["a"], prefix="p", labelled=False)
    with pytest.raises(DataError, match="unlabelled; split needs labels"):
        split_labelled(pool, str(tmp_path / "z"), 1, seed=0)
