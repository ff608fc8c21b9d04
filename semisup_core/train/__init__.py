"""Training: one loop for every training stage."""

from semisup_core.train.config import TrainConfig
from semisup_core.train.loop import train, train_objective

__all__ = ["TrainConfig", "train", "train_objective"]
