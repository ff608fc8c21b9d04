"""In-process steps every method's end-to-end runner shares (``llp/run.py``,
``simclr/run.py``): train a recipe once into a directory (a rerun finds the model and skips
it, a killed one resumes from its checkpoints), evaluate a model once into a comparison-table
entry (``report.format_table``)."""

from __future__ import annotations

from semisup_core import config, storage
from semisup_core.evaluate import EvaluateConfig, evaluate
from semisup_core.train import TrainConfig, train
from semisup_core.train.config import TrainRecipe


def train_once(recipe: TrainRecipe, data: list[str], out: str, seed: int,
               init_from: str | None = None, **fields) -> str:
    """Train ``recipe`` on ``data`` into ``out`` unless its model is there; returns ``out``.
    ``fields``: more TrainConfig sections (e.g. ``distill={"teacher": ...}``), merged in."""
    spec = recipe.model_dump(mode="json", exclude_none=True)
    for key, value in fields.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    cfg = config.build(TrainConfig, dict(spec, out=out, seed=seed, data={"train": data},
                                         init_from=init_from))
    if not storage.exists(storage.join(out, "model.safetensors")):
        train(cfg)
    return out


def evaluate_once(model: str, test: str, out: str, name: str) -> dict:
    """The comparison-table entry of ``model`` on ``test`` (evaluated once into ``out``)."""
    uri = storage.join(out, "metrics.json")
    m = storage.read_json(uri) if storage.exists(uri) else evaluate(
        EvaluateConfig(model=model, data=test, out=out))
    return {"model": name, "arch": m["arch"], "top1": m["top1"], "top5": m["top5"],
            "per_class_recall": m["per_class_recall"], "selection": None}
