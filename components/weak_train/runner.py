"""What the weak-train component runs: the train component's runner (launcher, checkpoints,
resume) with objective weak, on the synsets step's resampled training set."""

from __future__ import annotations

from semisup_core.wsl.stage import train_weak

from components.train.runner import run as train

#: what the PyTorchJob pods of a weak recipe run (`semisup stage weak-train`), named here so
#: that this image's import check covers it (tests/images/test_entrypoints.py)
POD_STAGE = train_weak


def run(data, recipe: dict, model, seed: int = 0, checkpoints: str = "",
        launcher: dict | None = None) -> dict:
    return train(data=data, recipe=dict(recipe, objective="weak"), model=model, seed=seed,
                 checkpoints=checkpoints, launcher=launcher)
