"""The ``evaluate`` stage: top-1, top-5, per-class recall and the confusion matrix."""

from __future__ import annotations

import logging

import numpy as np
import torch
from pydantic import Field
from torch.utils.data import DataLoader
from tqdm import tqdm

from semisup_core import checkpoint, config, storage
from semisup_core.config import StageConfig
from semisup_core.data.dataset import read_meta, shard_uris
from semisup_core.data.stream import ShardStream
from semisup_core.errors import DataError
from semisup_core.train.augment import normalize

log = logging.getLogger(__name__)


class EvaluateConfig(StageConfig):
    """Evaluate a trained model on a labelled dataset."""

    model: str = Field(description="model directory URI (a train run's out, or a checkpoint)")
    data: str = Field(description="labelled dataset directory URI (e.g. the test split)")
    out: str = Field(description="output directory URI for metrics.json")
    batch_size: int = Field(512, ge=1, description="inference batch; 512 is fine on CPU")
    num_workers: int = Field(1, ge=0)


def classification_metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Metrics from ``logits`` N x C and integer ``labels`` N.

    Returns top-1/top-5 accuracy, per-class recall (NaN-free: classes absent from
    ``labels`` get recall null) and the confusion matrix (rows = true, cols = predicted).
    """
    if logits.shape[0] != labels.shape[0] or logits.shape[0] == 0:
        raise DataError(f"cannot evaluate {logits.shape[0]} predictions against {labels.shape[0]} labels")
    if labels.max() >= num_classes or labels.min() < 0:
        raise DataError(f"label {labels.max()} out of range for a {num_classes}-class model")
    k = min(5, num_classes)
    topk = np.argsort(-logits, axis=1, kind="stable")[:, :k]  # N x k
    pred = topk[:, 0]
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    support = confusion.sum(1)
    recall = [None if s == 0 else float(confusion[c, c] / s) for c, s in enumerate(support)]
    return {"top1": float((pred == labels).mean()),
            "top5": float((topk == labels[:, None]).any(1).mean()),
            "num_samples": int(labels.shape[0]), "per_class_recall": recall,
            "confusion_matrix": confusion.tolist()}


@torch.inference_mode()
def predict(model: torch.nn.Module, shards: list[str], mean: float, std: float, channels: int,
            batch_size: int = 512, num_workers: int = 1, device: str = "cpu",
            desc: str = "predict", num_classes: int | None = None
            ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Logits N x C, labels N and keys of every sample in ``shards`` (file order); a label at
    or above ``num_classes`` (when given) is a DataError."""
    stream = ShardStream(shards, local_batch=batch_size, shuffle=False, split="shards",
                         channels=channels, num_classes=num_classes)
    loader = DataLoader(stream, batch_size=batch_size, num_workers=min(num_workers, len(shards)))
    logits, labels, keys = [], [], []
    for images, y, k in tqdm(loader, desc=desc, unit="batch", mininterval=2.0):
        logits.append(model(normalize(images.to(device), mean, std)).float().cpu().numpy())
        labels.append(y.numpy())
        keys += list(k)
    return np.concatenate(logits), np.concatenate(labels), keys


def evaluate(cfg: EvaluateConfig) -> dict:
    """Evaluate ``cfg.model`` on ``cfg.data``; writes ``out/metrics.json``; returns it."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, state = checkpoint.load_model(cfg.model, device)
    meta = read_meta(cfg.data)
    if not meta.labelled:
        raise DataError(f"{cfg.data} is unlabelled; evaluate needs a labelled set")
    if meta.classes != state["classes"]:
        raise DataError(f"class mismatch: model {cfg.model} knows {len(state['classes'])} classes "
                        f"({', '.join(state['classes'][:3])}, ...), dataset {cfg.data} has "
                        f"{len(meta.classes)} ({', '.join(meta.classes[:3])}, ...)")
    logits, labels, _ = predict(model, shard_uris(cfg.data, meta), state["mean"], state["std"],
                                state["model"]["in_chans"], cfg.batch_size, cfg.num_workers,
                                device, desc="evaluate", num_classes=len(meta.classes))
    metrics = classification_metrics(logits, labels, len(meta.classes))
    spec = state["model"]
    arch = spec["name"] + "".join(f" {k}={v}" for k, v in sorted(spec["kwargs"].items()))
    metrics.update(model=cfg.model, arch=arch, data=cfg.data, classes=meta.classes)
    config.save(cfg, cfg.out)
    storage.write_json(storage.join(cfg.out, "metrics.json"), metrics)
    log.info("top-1 %.4f  top-5 %.4f on %d images", metrics["top1"], metrics["top5"],
             metrics["num_samples"])
    return metrics
