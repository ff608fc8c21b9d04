"""What the evaluate component runs: semisup_core.evaluate, as KFP Metrics and a confusion matrix."""

from __future__ import annotations

from semisup_core import config, storage
from semisup_core.evaluate import EvaluateConfig, evaluate

from components.artifacts import dataset_uri, location


def run(model, data, metrics, confusion, name: str = "", selection=None) -> float:
    """Evaluate ``model`` on ``data``; full metrics go to ``<metrics>/metrics.json``.

    ``selection`` (the select step's metrics) is recorded beside the accuracy so a report can
    say which K, strategy and precision produced this model. Returns top-1.
    """
    out = location(metrics)
    result = evaluate(config.build(EvaluateConfig, {"model": location(model), "out": out,
                                                    "data": dataset_uri(data)}, "evaluate component"))
    doc = dict(result, name=name)
    if selection is not None:
        doc["selection"] = storage.read_json(storage.join(location(selection), "selection.json"))
    storage.write_json(storage.join(out, "metrics.json"), doc)
    metrics.log_metric("top1", round(result["top1"], 6))
    metrics.log_metric("top5", round(result["top5"], 6))
    if selection is not None:
        sel = doc["selection"]
        metrics.log_metric("selection_k", sel["k"])
        if "precision" in sel:
            metrics.log_metric("selection_precision", round(sel["precision"], 6))
    confusion.log_confusion_matrix(result["classes"], result["confusion_matrix"])
    return float(result["top1"])


def read(metrics) -> dict:
    """The full metrics an evaluate step wrote (for the report)."""
    return storage.read_json(storage.join(location(metrics), "metrics.json"))


def gather(items: list, gathered) -> None:
    storage.write_json(storage.join(location(gathered), "metrics.json"),
                       {"items": [read(m) for m in items]})
