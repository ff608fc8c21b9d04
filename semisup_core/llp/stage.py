"""``semisup stage llp``: the train stage with ``objective: llp`` (its own name and image, since
it needs faiss for the kNN core; multi-node like ``train``, under torchrun or a PyTorchJob)."""

from __future__ import annotations

# the objective imports its kNN mathematics lazily (so that the train image, without faiss, can
# import the loop); the llp stage needs it, and a missing faiss fails here, at start
from semisup_core.llp import propagation  # noqa: F401
from semisup_core.train import TrainConfig, train_objective


def train_llp(cfg: TrainConfig) -> dict:
    return train_objective(cfg, "llp")
