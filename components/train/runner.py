"""What the train component runs: one semisup_core.train run, its model as a KFP Model."""

from __future__ import annotations

import hashlib
import json

from semisup_core import config, storage
from semisup_core.errors import ConfigError
from semisup_core.teacher_student import FinetuneSpec
from semisup_core.train import TrainConfig, train

from components.artifacts import dataset_uri, integral, location

_FILES = ("model.safetensors", "state.json", "config.yaml", "metrics.json")


def _copy_model(src: str, dst: str) -> None:
    for name in _FILES:
        if storage.exists(storage.join(src, name)):
            storage.put_bytes(storage.join(dst, name), storage.get_bytes(storage.join(src, name)))


def _arch(model_dir: str) -> dict:
    spec = storage.read_json(storage.join(model_dir, "state.json"))["model"]
    return {"model": spec["name"], "model_kwargs": spec["kwargs"]}


def run(data, recipe: dict, model, seed: int = 0, init_from=None, inferred=None,
        checkpoints: str = "") -> dict:
    """Train on ``data`` with ``recipe`` (a TrainRecipe, or a FinetuneSpec with ``init_from``).

    Fine-tuning takes the architecture of ``init_from``; ``enabled: false`` passes that model
    through unchanged (the paper's no-fine-tuning ablation) and ``labels: inferred`` adds the
    selected set ``inferred`` to the training data.
    """
    out = location(model)
    data = [dataset_uri(data)]
    recipe = dict(recipe, model_kwargs=integral(recipe.get("model_kwargs", {})))
    init = location(init_from) if init_from is not None else None
    spec = FinetuneSpec(**recipe) if init else None
    if spec is not None and not spec.enabled:
        _copy_model(init, out)
        model.metadata.update(_arch(init), fine_tuned=False)
        return {"skipped": True}
    fields = dict(recipe, seed=seed)
    if spec is not None:
        fields = spec.model_dump(exclude={"enabled", "labels"}) | _arch(init) | {"seed": seed}
        if spec.labels == "inferred":
            if inferred is None:
                raise ConfigError("recipe.labels is 'inferred' but no selected set was given")
            data = [dataset_uri(inferred)] + data
    # one checkpoint directory per distinct run (tasks of a ParallelFor share a name, and the
    # trainer refuses to resume a different config): keyed by everything that defines the run
    key = hashlib.sha256(json.dumps([fields, list(data), init], sort_keys=True,
                                    default=str).encode()).hexdigest()[:16]
    run_dir = storage.join(checkpoints, f"train-{key}") if checkpoints else out
    summary = train(config.build(TrainConfig, dict(fields, out=run_dir, init_from=init,
                                                   data={"train": list(data)}), "train component"))
    if checkpoints:
        _copy_model(run_dir, out)
    model.metadata.update(model=fields["model"], model_kwargs=fields.get("model_kwargs", {}),
                          steps=summary.get("steps"), fine_tuned=init is not None)
    return summary
