"""Learning-rate schedules: linear warm-up, then cosine or step decay."""

from __future__ import annotations

import math

from semisup_core.train.config import OptimConfig


def scaled_lr(cfg: OptimConfig, global_batch: int) -> float:
    """Linear scaling rule (Goyal et al. 2017): ``lr`` is given per 256 images; or SimCLR's
    square-root rule, ``lr * sqrt(global_batch)``."""
    if cfg.lr_scaling == "sqrt":
        return cfg.lr * math.sqrt(global_batch)
    return cfg.lr * global_batch / 256


def lr_factor(cfg: OptimConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Multiplier of the peak LR at ``step`` (0-based) of ``total_steps``."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "cosine":
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    passed = sum(step >= m * total_steps for m in cfg.milestones)
    return cfg.gamma ** passed
