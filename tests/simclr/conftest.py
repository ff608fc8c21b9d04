"""The training tests' tiny texture datasets (tests/train/conftest.py)."""

from tests.train.conftest import blocks_dataset, blocks_test_dataset, unlabelled_blocks  # noqa: F401
