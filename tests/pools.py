"""A tiny teacher and an unlabelled pool (score, select, embed, dedup tests), as a pytest plugin:
tests/conftest.py registers it once, so the session-scoped teacher is trained once."""

from __future__ import annotations

import numpy as np
import pytest

from semisup_core import config
from semisup_core.data.dataset import make_meta, read_meta, write_meta
from semisup_core.data.decode import encode_png
from semisup_core.data.shards import ShardWriter
from semisup_core.train import TrainConfig, train
from tests.train.conftest import CLASSES, _texture, write_blocks_dataset


@pytest.fixture(scope="session")
def teacher(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("teacher")
    data = write_blocks_dataset(str(root / "train"), 128)
    out = str(root / "model")
    train(config.build(TrainConfig, {
        "out": out, "data": {"train": data, "num_workers": 0}, "model": "small_resnet8",
        "model_kwargs": {"width": 8}, "epochs": 2, "batch_size": 32, "threads": 1,
        "optim": {"lr": 1.6, "warmup_epochs": 0.5}}))
    return out


def write_pool(uri: str, n: int, per_shard: int = 20, corrupt: tuple[int, ...] = (), seed: int = 5):
    """Unlabelled texture images (no .cls); indices in ``corrupt`` get broken PNG bytes."""
    rng = np.random.default_rng(seed)
    with ShardWriter(uri, per_shard) as w:
        for i in range(n):
            data = encode_png(_texture(int(rng.integers(0, 4)), rng))
            if i in corrupt:
                data = data[:20] + b"garbage"
            w.write(f"pool-{i:05d}", data, "png", None, {"source": "textures"})
    write_meta(uri, make_meta(uri, "pool", CLASSES, w.shards, None, source="generated",
                              channels=1, hw=(28, 28)))
    return uri


@pytest.fixture(scope="session")
def pool(tmp_path_factory) -> str:
    """150 images in 8 shards; two are corrupt."""
    uri = write_pool(str(tmp_path_factory.mktemp("pool") / "pool"), 150, corrupt=(3, 77))
    assert len(read_meta(uri).shards) == 8
    return uri
