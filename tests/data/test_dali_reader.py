"""DALI (device="cpu", no GPU needed) against the PIL/numpy reference path."""

import os

import numpy as np
import pytest

from semisup_core.data.dali_reader import (DaliReader, iter_dali, reference_batch,
                                           resolve_device, shard_size, stage_shards)
from semisup_core.data.dataset import iter_dataset
from semisup_core.data.split import split_labelled
from semisup_core.errors import ConfigError

MEAN, STD = [0.2860], [0.3530]  # Fashion-MNIST pixel statistics


@pytest.fixture(scope="module")
def split(fashion_test, distractors, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("dali") / "split")
    return split_labelled(fashion_test[0], out, labels_per_class=7, seed=3,
                          pool_extra=[distractors[0]], samples_per_shard=250)


def _collect(batches):
    images, labels, keys = [], [], []
    for b in batches:
        images.append(b.images)
        keys += b.keys
        if b.labels is not None:
            labels.append(b.labels)
    return np.concatenate(images), (np.concatenate(labels) if labels else None), keys


def test_cpu_matches_reference_labelled(split):
    images, labels, keys = _collect(iter_dali(split.labelled_uri, mean=MEAN, std=STD,
                                              batch_size=32, device="cpu"))
    samples = list(iter_dataset(split.labelled_uri))
    assert keys == [s.key for s in samples] and len(keys) == 70
    assert labels.dtype == np.int64 and labels.tolist() == [s.cls for s in samples]
    ref = reference_batch(samples, MEAN, STD)
    assert images.dtype == np.float32 and images.shape == ref.shape == (70, 1, 28, 28)
    np.testing.assert_allclose(images, ref, atol=1e-5, rtol=0)


def test_pool_is_image_only_and_workers_partition(split):
    samples = {s.key: s for s in iter_dataset(split.unlabelled_uri)}
    n, seen = len(samples), []
    for sid in range(3):
        reader = DaliReader(split.unlabelled_uri, mean=0.5, std=0.5, batch_size=64,
                            device="cpu", shard_id=sid, num_shards=3)
        images, labels, keys = _collect(reader)
        assert labels is None and len(keys) == len(reader) == shard_size(n, sid, 3)
        ref = reference_batch([samples[k] for k in keys], 0.5, 0.5)
        np.testing.assert_allclose(images, ref, atol=1e-5, rtol=0)
        seen += keys
    assert sorted(seen) == sorted(samples)  # every pool image exactly once


def test_rgb_shuffle_epochs_and_torch(tmp_path, make_dataset):
    uri = str(tmp_path / "rgb")
    make_dataset(uri, 23, ["a", "b"], prefix="c", channels=3, hw=(5, 7), per_shard=10)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    reader = DaliReader(uri, mean=mean, std=std, batch_size=8, device="cpu", shuffle=True,
                        seed=5, as_torch=True)
    samples = {s.key: s for s in iter_dataset(uri)}
    orders = []
    for _ in range(2):  # two epochs from one pipeline: each covers the shard exactly once
        batches = list(reader)
        keys = [k for b in batches for k in b.keys]
        assert sorted(keys) == sorted(samples)
        images = np.concatenate([b.images.numpy() for b in batches])
        np.testing.assert_allclose(images, reference_batch([samples[k] for k in keys], mean, std),
                                   atol=1e-5, rtol=0)
        orders.append(keys)
    assert orders[0] != sorted(samples) and orders[0] != orders[1]


def test_without_index_files(tmp_path, make_dataset):
    uri = str(tmp_path / "noidx")
    make_dataset(uri, 20, ["a", "b"], prefix="n", per_shard=8)
    with_idx = _collect(iter_dali(uri, batch_size=6, device="cpu"))
    for name in os.listdir(uri):
        if name.endswith(".idx"):
            os.unlink(os.path.join(uri, name))
    without = _collect(iter_dali(uri, batch_size=6, device="cpu"))
    assert with_idx[2] == without[2] == [f"n-{i:05d}" for i in range(20)]
    np.testing.assert_array_equal(with_idx[0], without[0])
    np.testing.assert_array_equal(with_idx[1], without[1])


def test_device_and_staging(tmp_path):
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "mixed")
    with pytest.raises(ConfigError, match="device must be one of"):
        resolve_device("gpu")
    assert stage_shards([str(tmp_path / "a.tar")], str(tmp_path / "cache")) == [
        str(tmp_path / "a.tar")]


def test_dali_and_torch_iterable_dataset_yield_the_same_images(split):
    """The two readers of the project: DALI (cpu) and the torch ShardStream."""
    import torch

    from semisup_core.data.dataset import shard_uris
    from semisup_core.data.stream import ShardStream
    from semisup_core.train.augment import normalize

    images, labels, keys = _collect(iter_dali(split.labelled_uri, mean=0.5, std=0.5,
                                              batch_size=16, device="cpu"))
    stream = ShardStream(shard_uris(split.labelled_uri), local_batch=16, shuffle=False,
                         split="shards", channels=1)
    t_keys, t_images, t_labels = [], [], []
    for image, label, key in stream:
        t_keys.append(key)
        t_images.append(normalize(image[None], 0.5, 0.5)[0])
        t_labels.append(label)
    assert t_keys == keys and t_labels == labels.tolist()
    np.testing.assert_allclose(images, torch.stack(t_images).numpy(), atol=1e-5, rtol=0)
