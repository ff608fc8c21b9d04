"""LLP's tiny data."""

from __future__ import annotations

import pytest

from tests.train.conftest import write_blocks_dataset


@pytest.fixture(scope="module")
def llp_data(tmp_path_factory) -> list[str]:
    """32 labelled images (8 a class) and a pool of 224 unlabelled ones; class = index % 4."""
    root = tmp_path_factory.mktemp("llp")
    lab = write_blocks_dataset(str(root / "labelled"), 32, seed=11, prefix="lab")
    pool = write_blocks_dataset(str(root / "pool"), 224, seed=12, labelled=False, prefix="pool")
    return [lab, pool]
