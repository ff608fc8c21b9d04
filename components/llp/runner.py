"""What the llp component runs: LLP through the train component's runner (launcher, checkpoints,
resume), on the labels and the (deduplicated) pool."""

from __future__ import annotations

from semisup_core.errors import ConfigError
from semisup_core.llp import stage  # noqa: F401  (fails at once without faiss, as the stage does)

from components.artifacts import location, pool_for_training
from components.train.runner import run as train

OUTPUTS = ("pseudo_labels.parquet", "pseudo_labels")


def run(labelled, pool, recipe: dict, model, seed: int = 0, checkpoints: str = "",
        launcher: dict | None = None, baseline=None, warm_start: str = "none") -> dict:
    if warm_start not in ("baseline", "none"):
        raise ConfigError(f"warm_start must be baseline or none, got {warm_start!r}")
    if warm_start == "baseline" and baseline is None:
        raise ConfigError("warm_start baseline needs the baseline model")
    init_from = baseline if warm_start == "baseline" else None
    pool_uri = pool_for_training(pool, checkpoints or location(model))
    return train(data=labelled, recipe=dict(recipe, objective="llp"), model=model, seed=seed,
                 checkpoints=checkpoints, launcher=launcher, init_from=init_from,
                 extra_data=(pool_uri,),
                 outputs=OUTPUTS)
