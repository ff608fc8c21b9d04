"""Tiny IDX datasets shaped like Fashion-MNIST and MNIST, for kfp.local pipeline runs."""

import numpy as np
import pytest

from semisup_core.data.idx import write_idx


def _images(labels: np.ndarray, rng: np.random.Generator, offset: int) -> np.ndarray:
    """28x28 uint8 images whose bright 7x7 block position encodes the class (easy to learn)."""
    n = len(labels)
    x = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
    for i, c in enumerate(labels):
        r, col = divmod((int(c) + offset) % 16, 4)
        x[i, 7 * r:7 * r + 7, 7 * col:7 * col + 7] = 230
    return x


def write_fake_idx(root, stems: dict[str, int], offset: int, seed: int) -> str:
    """``stems``: IDX stem (train, t10k) -> sample count; 10 balanced classes."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for stem, n in stems.items():
        labels = np.arange(n, dtype=np.uint8) % 10
        write_idx(str(root / f"{stem}-images-idx3-ubyte.gz"), _images(labels, rng, offset))
        write_idx(str(root / f"{stem}-labels-idx1-ubyte.gz"), labels)
    return str(root)


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory) -> dict[str, str]:
    """A Fashion-MNIST-like dir (train 400, test 100) and an MNIST-like dir (train 60)."""
    base = tmp_path_factory.mktemp("raw")
    return {"fashion_mnist": write_fake_idx(base / "fmnist", {"train": 400, "t10k": 100}, 0, 1),
            "mnist": write_fake_idx(base / "mnist", {"train": 60}, 6, 2)}
