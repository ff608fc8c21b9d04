"""What the contrastive component runs: the train component's runner (launcher, checkpoints,
resume) with objective contrastive, on the labelled images and the (deduplicated) pool."""

from __future__ import annotations

from semisup_core.simclr import stage  # noqa: F401  (the stage the pods run)

from components.artifacts import location, pool_for_training
from components.train.runner import run as train

OUTPUTS = ("snapshots",)


def run(labelled, pool, recipe: dict, model, seed: int = 0, checkpoints: str = "",
        launcher: dict | None = None) -> dict:
    pool_uri = pool_for_training(pool, checkpoints or location(model))
    return train(data=labelled, recipe=dict(recipe, objective="contrastive"), model=model,
                 seed=seed, checkpoints=checkpoints, launcher=launcher, extra_data=(pool_uri,),
                 outputs=OUTPUTS)
