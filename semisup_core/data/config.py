"""Typed configs of the ``import`` and ``split`` stages."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from semisup_core.config import StageConfig


class ImportConfig(StageConfig):
    """Import a raw dataset into WebDataset shards + dataset.json."""

    source: Literal["fashion-mnist", "mnist", "image-folder"] = Field(
        description="raw format: IDX files (fashion-mnist, mnist) or one folder per class")
    src: str = Field(description="raw data directory, e.g. /usr/share/datasets/fashion-mnist")
    out: str = Field(description="output dataset directory URI")
    split: Literal["train", "test"] = Field("train", description="IDX datasets: which split")
    samples_per_shard: int = Field(4096, ge=1, description="~4k small or ~1k 224px images per shard")


class SplitConfig(StageConfig):
    """Draw a labelled set and build the unlabelled pool (+ hidden oracle labels)."""

    dataset: str = Field(description="labelled source dataset directory URI (e.g. Fashion-MNIST train)")
    out: str = Field(description="output directory URI: labelled/, unlabelled/, oracle.parquet")
    labels_per_class: int = Field(500, ge=1, description="labelled images per class")
    seed: int = Field(0, description="seed of the draw")
    distractors: list[str] = Field(default_factory=list,
                                   description="extra dataset URIs mixed into the pool (e.g. MNIST)")
    samples_per_shard: int = Field(4096, ge=1)
