"""``semisup stage contrastive`` and ``semisup stage distill``: the train stage with that
objective (multi-node like ``train``: under torchrun or in a PyTorchJob), refusing a config of
another objective with one line."""

from __future__ import annotations

from semisup_core.errors import ConfigError
from semisup_core.train import TrainConfig, train


def _only(cfg: TrainConfig, objective: str) -> None:
    if cfg.objective != objective:
        raise ConfigError(f"semisup stage {objective} trains objective {objective}; the config "
                          f"says {cfg.objective!r} (use semisup stage train for it)")


def train_contrastive(cfg: TrainConfig) -> dict:
    _only(cfg, "contrastive")
    return train(cfg)


def train_distill(cfg: TrainConfig) -> dict:
    _only(cfg, "distill")
    return train(cfg)
