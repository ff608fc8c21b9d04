"""``semisup stage weak-train``: the train stage with ``objective: weak`` (multi-node like
``train``: under torchrun or in a PyTorchJob), refusing a config of another objective with one
line. ``semisup stage synsets`` is ``synsets.run_synsets``."""

from __future__ import annotations

from semisup_core.train import TrainConfig, train_objective


def train_weak(cfg: TrainConfig) -> dict:
    return train_objective(cfg, "weak", "weak-train")
