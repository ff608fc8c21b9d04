"""WSL tests: WordNet 3.0 from Debian's wordnet-base (scripts/setup.sh installs it) and tiny
tagged datasets."""

from __future__ import annotations

import numpy as np
import pytest

from semisup_core.data.dataset import make_meta, write_meta
from semisup_core.data.decode import encode_png
from semisup_core.data.shards import ShardWriter
from semisup_core.wsl.wordnet import load_wordnet
from tests.train.conftest import _texture


@pytest.fixture(scope="session")
def wn():
    return load_wordnet()


def write_tagged(uri: str, tags: list[list[str]], classes=None, seed: int = 0, per_shard: int = 16,
                 prefix: str = "img") -> tuple[str, list[str]]:
    """An unlabelled dataset whose sample i carries ``tags[i]`` (blocks textures, class i % 4)."""
    rng = np.random.default_rng(seed)
    keys = []
    with ShardWriter(uri, per_shard) as w:
        for i, ts in enumerate(tags):
            key = f"{prefix}-{i:05d}"
            w.write(key, encode_png(_texture(i % 4, rng)), "png", None, {"tags": ts})
            keys.append(key)
    write_meta(uri, make_meta(uri, "tagged", list(classes or []), w.shards, None,
                              source="tagged", channels=1, hw=(28, 28)))
    return uri, keys
