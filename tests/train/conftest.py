"""A tiny learnable dataset for training tests (generated, no downloads)."""

from __future__ import annotations

import numpy as np
import pytest

from semisup_core.data.dataset import make_meta, write_meta
from semisup_core.data.decode import encode_png
from semisup_core.data.shards import ShardWriter

CLASSES = ["horizontal", "vertical", "checker", "flat"]


def _texture(c: int, rng: np.random.Generator) -> np.ndarray:
    """28x28x1 uint8: stripes / checkerboard (period 4, random phase) or flat, plus noise."""
    r, q = np.meshgrid(np.arange(28), np.arange(28), indexing="ij")
    phase = rng.integers(0, 4, 2)
    pattern = [((r + phase[0]) // 2) % 2, ((q + phase[1]) // 2) % 2,
               (((r + phase[0]) // 2) + ((q + phase[1]) // 2)) % 2, np.full((28, 28), 0.5)][c]
    img = 60 + 120 * pattern + rng.normal(0, 25, (28, 28))
    return np.clip(img, 0, 255).astype(np.uint8)[:, :, None]


def write_blocks_dataset(uri: str, n: int, seed: int = 0, per_shard: int = 32,
                         labelled: bool = True, prefix: str = "blocks"):
    """Four texture classes; sample i has class i % 4 (translation-invariant, like GAP nets);
    ``labelled=False``: the same images as an unlabelled pool; keys ``<prefix>-<i>``."""
    rng = np.random.default_rng(seed)
    with ShardWriter(uri, per_shard) as w:
        for i in range(n):
            c = i % len(CLASSES)
            img = _texture(c, rng)
            w.write(f"{prefix}-{i:05d}", encode_png(img), "png", c if labelled else None,
                    {"source": "blocks"})
    write_meta(uri, make_meta(uri, "blocks", CLASSES, w.shards,
                              w.class_counts if labelled else None,
                              source="generated", channels=1, hw=(28, 28)))
    return uri


@pytest.fixture(scope="session")
def blocks_dataset(tmp_path_factory) -> str:
    """256 labelled images in 8 shards of 32."""
    return write_blocks_dataset(str(tmp_path_factory.mktemp("blocks") / "train"), 256)


@pytest.fixture(scope="session")
def blocks_test_dataset(tmp_path_factory) -> str:
    return write_blocks_dataset(str(tmp_path_factory.mktemp("blocks") / "test"), 64, seed=1)


@pytest.fixture(scope="session")
def unlabelled_blocks(tmp_path_factory) -> str:
    """The 256 images of ``blocks_dataset`` as an unlabelled pool."""
    return write_blocks_dataset(str(tmp_path_factory.mktemp("blocks") / "pool"), 256,
                                labelled=False)
