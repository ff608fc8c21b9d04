"""``semisup stage llp``: the train stage with ``objective: llp`` (its own name and image, since
it needs faiss for the kNN core; multi-node like ``train``, under torchrun or a PyTorchJob)."""

from __future__ import annotations

from semisup_core.errors import ConfigError
# the objective imports its kNN mathematics lazily (so that the train image, without faiss, can
# import the loop); the llp stage needs it, and a missing faiss fails here, at start
from semisup_core.llp import propagation  # noqa: F401
from semisup_core.train import TrainConfig, train


def train_llp(cfg: TrainConfig) -> dict:
    if cfg.objective != "llp":
        raise ConfigError(f"semisup stage llp trains objective llp; the config says "
                          f"{cfg.objective!r} (use semisup stage train for it)")
    return train(cfg)
