"""What the llp component runs: LLP through the train component's runner (launcher, checkpoints,
resume), on the labels and the (deduplicated) pool."""

from __future__ import annotations

import hashlib

from semisup_core import storage
from semisup_core.data.manifest import without_keys
from semisup_core.errors import ConfigError
from semisup_core.llp import stage  # noqa: F401  (fails at once without faiss, as the stage does)

from components.artifacts import dataset_exclude, dataset_uri, location
from components.train.runner import run as train

OUTPUTS = ("pseudo_labels.parquet", "pseudo_labels")


def _pool(pool, where: str) -> str:
    """The pool's URI; a deduplicated pool (a reference with ``exclude``) is copied once without
    its removed images, since LLP trains on every pool image (score skips them instead)."""
    uri, exclude = dataset_uri(pool), dataset_exclude(pool)
    if not exclude:
        return uri
    # here, not at the top: dedup's module loads embed, whose efficientnet path imports timm
    from semisup_core.dedup.stage import removed_keys
    key = hashlib.sha256(f"{uri}|{exclude}".encode()).hexdigest()[:12]
    return without_keys(uri, removed_keys(exclude), storage.join(where, f"pool-deduped-{key}"))


def run(labelled, pool, recipe: dict, model, seed: int = 0, checkpoints: str = "",
        launcher: dict | None = None, baseline=None, warm_start: str = "none") -> dict:
    if warm_start not in ("baseline", "none"):
        raise ConfigError(f"warm_start must be baseline or none, got {warm_start!r}")
    if warm_start == "baseline" and baseline is None:
        raise ConfigError("warm_start baseline needs the baseline model")
    init_from = baseline if warm_start == "baseline" else None
    pool_uri = _pool(pool, checkpoints or location(model))
    return train(data=labelled, recipe=dict(recipe, objective="llp"), model=model, seed=seed,
                 checkpoints=checkpoints, launcher=launcher, init_from=init_from,
                 extra_data=(pool_uri,),
                 outputs=OUTPUTS)
