"""What the distill component runs: the train component's runner (launcher, checkpoints,
resume) with objective distill and the teacher's model directory, on the labelled images and
the (deduplicated) pool."""

from __future__ import annotations

from semisup_core.simclr import stage  # noqa: F401  (the stage the pods run)

from components.artifacts import location, pool_for_training
from components.train.runner import run as train


def run(labelled, pool, teacher, recipe: dict, model, seed: int = 0, temperature: float = 1.0,
        checkpoints: str = "", launcher: dict | None = None) -> dict:
    pool_uri = pool_for_training(pool, checkpoints or location(model))
    distill = dict(recipe.get("distill") or {}, teacher=location(teacher), temperature=temperature)
    return train(data=labelled, recipe=dict(recipe, objective="distill", distill=distill),
                 model=model, seed=seed, checkpoints=checkpoints, launcher=launcher,
                 extra_data=(pool_uri,))
