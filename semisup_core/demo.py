"""``semisup demo``: the main job on the embedded default (local files, no server).

Until the teacher/student pipeline lands this is the supervised baseline on
Fashion-MNIST: import train/test into shards, train the CPU-sized model on the
labelled split, evaluate on the test set, and print a table.
"""

from __future__ import annotations

import logging
import os

from pydantic import Field

from semisup_core import storage
from semisup_core.config import StageConfig
from semisup_core.data.config import ImportConfig, SplitConfig
from semisup_core.data.stages import run_import, run_split
from semisup_core.evaluate import EvaluateConfig, evaluate
from semisup_core.train import TrainConfig, train
from semisup_core.train.config import DataConfig

log = logging.getLogger(__name__)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


class DemoConfig(StageConfig):
    """The demo's knobs; every default is what the README's numbers come from."""

    out: str = Field("runs/demo", description="where data, models and the report go")
    fashion_mnist: str = Field(FASHION_MNIST_DIR, description="Fashion-MNIST IDX directory")
    labels_per_class: int = Field(500, ge=1, description="labelled images per class")
    model: str = Field("small_resnet8", description="baseline architecture")
    epochs: float = Field(15, gt=0, description="training epochs over the labelled set")
    batch_size: int = Field(128, ge=1)
    seed: int = 0


def _ensure_import(source: str, src: str, out: str, split: str) -> str:
    if not storage.exists(storage.join(out, "dataset.json")):
        run_import(ImportConfig(source=source, src=src, out=out, split=split))
    return out


def run_demo(cfg: DemoConfig) -> dict:
    """Run the demo end to end; returns the metrics of every model it trained."""
    data = storage.join(cfg.out, "data")
    train_ds = _ensure_import("fashion-mnist", cfg.fashion_mnist, storage.join(data, "fmnist-train"), "train")
    test_ds = _ensure_import("fashion-mnist", cfg.fashion_mnist, storage.join(data, "fmnist-test"), "test")
    split_out = storage.join(data, f"split-{cfg.labels_per_class}-s{cfg.seed}")
    if not storage.exists(storage.join(split_out, "labelled", "dataset.json")):
        run_split(SplitConfig(dataset=train_ds, out=split_out, labels_per_class=cfg.labels_per_class,
                              seed=cfg.seed))
    model_dir = storage.join(cfg.out, "models", "baseline")
    train(TrainConfig(out=model_dir, data=DataConfig(train=storage.join(split_out, "labelled")),
                      model=cfg.model, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed))
    metrics = evaluate(EvaluateConfig(model=model_dir, data=test_ds,
                                      out=storage.join(cfg.out, "eval", "baseline")))
    rows = [("supervised baseline", cfg.model, cfg.labels_per_class * 10, metrics["top1"], metrics["top5"])]
    _print_table(rows)
    report = storage.join(cfg.out, "report")
    storage.write_json(storage.join(report, "metrics.json"), {"baseline": metrics})
    print(f"\nEverything is under {os.path.abspath(cfg.out) if storage.is_local(cfg.out) else cfg.out}:"
          f"\n  data/    shards + dataset.json\n  models/  checkpoints (safetensors + state.json)"
          f"\n  eval/    metrics.json per model\n  report/  metrics.json")
    return {"baseline": metrics}


def _print_table(rows) -> None:
    print(f"\n{'model':<22}{'arch':<16}{'labels':>8}{'top-1':>9}{'top-5':>9}")
    for name, arch, labels, top1, top5 in rows:
        print(f"{name:<22}{arch:<16}{labels:>8}{100 * top1:>8.2f}%{100 * top5:>8.2f}%")
