"""``semisup stage contrastive`` and ``semisup stage distill``: the train stage with that
objective (multi-node like ``train``: under torchrun or in a PyTorchJob), refusing a config of
another objective with one line."""

from __future__ import annotations

from semisup_core.train import TrainConfig, train_objective


def train_contrastive(cfg: TrainConfig) -> dict:
    return train_objective(cfg, "contrastive")


def train_distill(cfg: TrainConfig) -> dict:
    return train_objective(cfg, "distill")
