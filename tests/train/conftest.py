"""A tiny learnable dataset for training tests (generated, no downloads)."""

from __future__ import annotations

import numpy as np
import pytest

from semisup_core.data.dataset import make_meta, write_meta
from semisup_core.data.decode import encode_png
from semisup_core.data.shards import ShardWriter

CLASSES = ["top-left", "top-right", "bottom-left", "bottom-right"]


def write_blocks_dataset(uri: str, n: int, seed: int = 0, per_shard: int = 32):
    """28x28 grey images: noise plus a bright 10x10 block in the class's quadrant."""
    rng = np.random.default_rng(seed)
    with ShardWriter(uri, per_shard) as w:
        for i in range(n):
            c = i % len(CLASSES)
            img = rng.integers(0, 90, (28, 28, 1), dtype=np.uint8)
            r0, c0 = 2 + 14 * (c // 2) + rng.integers(0, 3), 2 + 14 * (c % 2) + rng.integers(0, 3)
            img[r0:r0 + 10, c0:c0 + 10] = 230
            w.write(f"blocks-{i:05d}", encode_png(img), "png", c, {"source": "blocks"})
    write_meta(uri, make_meta(uri, "blocks", CLASSES, w.shards, w.class_counts,
                              source="generated", channels=1, hw=(28, 28)))
    return uri


@pytest.fixture(scope="session")
def blocks_dataset(tmp_path_factory) -> str:
    """256 labelled images in 8 shards of 32."""
    return write_blocks_dataset(str(tmp_path_factory.mktemp("blocks") / "train"), 256)


@pytest.fixture(scope="session")
def blocks_test_dataset(tmp_path_factory) -> str:
    return write_blocks_dataset(str(tmp_path_factory.mktemp("blocks") / "test"), 64, seed=1)
