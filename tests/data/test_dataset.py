import json
import os

import pytest

from semisup_core.data.dataset import (DATASET_FILE, iter_dataset, read_meta,
                                       require_same_classes, shard_uris)
from semisup_core.errors import DataError


def test_round_trip(tmp_path, make_dataset):
    uri = str(tmp_path / "ds")
    meta = make_dataset(uri, 40, ["a", "b", "c"], prefix="t", per_shard=16)
    back = read_meta(uri)
    assert back == meta
    assert back.num_classes == 3 and back.num_samples == 40 and back.class_counts == [14, 13, 13]
    assert [s["uri"] for s in back.shards] == ["shard-000000.tar", "shard-000001.tar",
                                               "shard-000002.tar"]
    assert (back.height, back.width, back.channels) == (6, 5, 1)
    assert all(os.path.isfile(u) for u in shard_uris(uri, back))
    assert [s.key for s in iter_dataset(uri)] == [f"t-{i:05d}" for i in range(40)]
    assert len(list(iter_dataset(uri, shard_id=1, num_shards=2))) == 16


def _edit(uri, **changes):
    path = os.path.join(uri, DATASET_FILE)
    raw = json.load(open(path))
    for k, v in changes.items():
        if v is None:
            raw.pop(k)
        else:
            raw[k] = v
    json.dump(raw, open(path, "w"))


@pytest.mark.parametrize("changes, match", [
    ({"num_classes": 4}, "'num_classes' is 4 but 3 classes"),
    ({"colour": 1}, "unknown field.*colour"),
    ({"classes": None}, "classes"),
    ({"shards": [{"uri": "/abs.tar", "count": 40}]}, "'shards'"),
    ({"class_counts": [1, 2, 3]}, "'class_counts'"),
    ({"num_samples": 41}, "'num_samples' is 41"),
])
def test_validation(tmp_path, make_dataset, changes, match):
    uri = str(tmp_path / "ds")
    make_dataset(uri, 40, ["a", "b", "c"], prefix="t")
    _edit(uri, **changes)
    with pytest.raises(DataError, match=match):
        read_meta(uri)


def test_missing_and_count_mismatch(tmp_path, make_dataset):
    with pytest.raises(DataError, match="is not a dataset"):
        read_meta(str(tmp_path / "nothing"))
    uri = str(tmp_path / "ds")
    meta = make_dataset(uri, 20, ["a", "b"], prefix="t", per_shard=100)
    meta.shards[0]["count"] = 21
    with pytest.raises(DataError, match="holds 20 samples but dataset.json says 21"):
        list(iter_dataset(uri, meta))


def test_class_mismatch(tmp_path, make_dataset):
    a = make_dataset(str(tmp_path / "a"), 4, ["cat", "dog"], prefix="a")
    b = make_dataset(str(tmp_path / "b"), 4, ["cat", "cow"], prefix="b")
    c = make_dataset(str(tmp_path / "c"), 4, ["dog", "cat"], prefix="c")
    require_same_classes(a, make_dataset(str(tmp_path / "d"), 4, ["cat", "dog"], prefix="d"))
    with pytest.raises(DataError, match="class mismatch .*'a'.*'b'.*\\['dog'\\].*\\['cow'\\]"):
        require_same_classes(a, b)
    with pytest.raises(DataError, match="different order"):
        require_same_classes(a, c)
