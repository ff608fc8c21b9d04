"""Knowledge distillation (Hinton et al. 2015) as SimCLRv2 uses it (Chen et al. 2020, §2.3,
Eq. 2): a fixed teacher's temperature-scaled softmax is the target of the student's,

    L_distill = - Σ_{x ∈ D} Σ_y P^T(y | x; τ) log P^S(y | x; τ),   P(y | x; τ) = softmax(f(x) / τ)

over the unlabelled pool (and the labelled images), plus optionally the labels' cross-entropy
weighted by ``label_weight`` (SimCLRv2's Eq. 3 with α; α = 0 is what it reports on ImageNet).
No τ² factor: the reference code has none (its τ = 1 makes the question moot).

The teacher's soft labels are computed **on the fly**: the teacher runs (eval mode, no
gradient) on exactly the augmented batch the student sees, as in the reference code. The
alternative, precomputed full distributions from the ``score`` stage, would store N x C
floats (10^9 images x 1,000 classes = 2 TB in float16) and fix one augmentation per image;
the on-the-fly teacher costs one forward pass per step instead (a third of a same-size
student's step), and nothing on disk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from semisup_core.config import StageConfig


class DistillConfig(StageConfig):
    teacher: str = Field("", description="the teacher's model directory (a training run's out: "
                                         "model.safetensors + state.json); required to train")
    temperature: float = Field(1.0, gt=0, description="τ of both softmaxes (SimCLRv2: 1.0 on "
                                                      "ImageNet; 0.1 in some of its ablations)")
    label_weight: float = Field(0.0, ge=0, description="α: weight of the labels' cross-entropy "
                                                       "on the labelled images (0: distillation "
                                                       "only)")


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                      cfg: DistillConfig) -> tuple[torch.Tensor, dict]:
    """Mean over the batch of -Σ_y P^T log P^S at τ, plus α · cross-entropy on the images with
    a label (``labels`` >= 0; -1 for the pool's). ``student``/``teacher``: N x C logits."""
    t = cfg.temperature
    target = F.softmax(teacher.float() / t, dim=1)
    soft = -(target * F.log_softmax(student.float() / t, dim=1)).sum(1).mean()
    loss, stats = soft, {"distill": float(soft.detach())}
    has = labels >= 0
    if cfg.label_weight and has.any():
        ce = F.cross_entropy(student.float()[has], labels[has])
        loss = loss + cfg.label_weight * ce
        stats["label_ce"] = float(ce.detach())
    return loss, stats
