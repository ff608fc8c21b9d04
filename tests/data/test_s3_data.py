"""The data stages against a real MinIO server (tests/conftest.py: s3_env)."""

import os

import numpy as np
import pytest

from semisup_core import storage
from semisup_core.data.dataset import iter_dataset, read_meta
from semisup_core.data.decode import encode_png
from semisup_core.data.importers import import_image_folder
from semisup_core.data.split import read_oracle, split_labelled


def test_shards_split_and_import_on_s3(s3_env, make_dataset):
    ds = storage.join(s3_env, "ds")
    meta = make_dataset(ds, 30, ["a", "b", "c"], prefix="s", per_shard=8)
    assert read_meta(ds) == meta and meta.shards[0]["uri"] == "shard-000000.tar"
    assert storage.exists(storage.join(ds, "shard-000000.idx"))
    assert [s.key for s in iter_dataset(ds)] == [f"s-{i:05d}" for i in range(30)]

    res = split_labelled(ds, storage.join(s3_env, "split"), 2, seed=0, samples_per_shard=10)
    assert res.labelled.class_counts == [2, 2, 2] and res.unlabelled.num_samples == 24
    assert read_oracle(res.oracle_uri).num_rows == 24

    src = storage.join(s3_env, "folder")
    for cls in ("x", "y"):
        for i in range(2):
            storage.put_bytes(storage.join(src, cls, f"{i}.png"),
                              encode_png(np.full((4, 4), i * 50, np.uint8)))
    storage.put_bytes(storage.join(src, "y", "bad.png"), b"corrupt")
    folder = import_image_folder(src, storage.join(s3_env, "imported"))
    assert folder.classes == ["x", "y"] and folder.class_counts == [2, 2]


def test_dali_stages_remote_shards(s3_env, make_dataset, tmp_path):
    from semisup_core.data.dali_reader import iter_dali, reference_batch
    ds = storage.join(s3_env, "ds")
    make_dataset(ds, 20, ["a", "b"], prefix="r", per_shard=8)
    cache = str(tmp_path / "cache")
    batches = list(iter_dali(ds, batch_size=16, device="cpu", cache_dir=cache))
    keys = [k for b in batches for k in b.keys]
    samples = list(iter_dataset(ds))
    assert keys == [s.key for s in samples]
    np.testing.assert_allclose(np.concatenate([b.images for b in batches]),
                               reference_batch(samples), atol=1e-5, rtol=0)
    staged = sorted(n.split("-", 1)[1] for n in os.listdir(cache))
    assert staged == sorted(f"shard-00000{i}.{e}" for i in range(3) for e in ("tar", "idx"))
