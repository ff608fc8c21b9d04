"""What a training step minimises. One loop (``loop.py``), several objectives:

- ``supervised``: cross-entropy on labelled images after a random crop and flip.
- ``llp``: Local Label Propagation (Zhuang et al. 2019): a memory bank, density-weighted kNN
  pseudo-labels, aggregation + confidence-weighted cross-entropy (``semisup_core/llp/``).
- ``contrastive``: instance discrimination between two augmented views of every image,
  InfoNCE (SimCLR's NT-Xent for two views; Chen et al. 2020, eq. 1) with the partition over
  *non-matching* views only, as SSCD writes it (Pizzi et al. 2022, §3.1), plus SSCD's
  differential-entropy (KoLeo) regulariser on each view's nearest non-match (§3.3), which
  spreads the descriptors so that distinct look-alikes stay apart. Negatives are the views of
  the whole global batch, gathered across DDP ranks with their gradients, and optionally a
  memory of the descriptors of recent batches (``memory``; no gradient), Wang et al. 2020's
  cross-batch memory (XBM): the nearest look-alikes of an image are rarely in its own batch
  of a few hundred, and a memory of thousands finds them at no extra forward pass. The memory
  starts after ``memory_after_epochs``, once the descriptors drift slowly enough that a few
  hundred steps old ones are still valid negatives; it is part of every checkpoint.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from semisup_core.config import StageConfig
from semisup_core.train.distributed import all_gather_with_grad
from semisup_core.train.views import CopyViews, SimCLRViews

Objective = Literal["supervised", "contrastive", "llp", "distill", "weak"]


class ContrastiveConfig(StageConfig):
    temperature: float = Field(0.05, gt=0, description="InfoNCE temperature; SSCD 0.05, "
                                                        "SimCLR 0.1-0.5")
    koleo_weight: float = Field(10.0, ge=0, description="KoLeo regulariser weight (SSCD's "
                                                         "lambda: 30 in the paper, ~10 advised "
                                                         "for new setups; 0 = off)")
    views: Literal["copy", "simclr"] = Field(
        "copy", description="augmentation recipe of the two views (train/views.py): copy "
                            "(SSCD's copy edits) | simclr (SimCLR's crops and colour)")
    copy_views: CopyViews = Field(default_factory=CopyViews)
    simclr_views: SimCLRViews = Field(default_factory=SimCLRViews)
    proj_layers: int = Field(0, ge=0, le=4, description="projection head layers on the pooled "
                             "features (0: none, the descriptor is the features, SSCD; SimCLRv2: "
                             "3, SimCLR v1: 2); the hidden ones stay in the final model as "
                             "model_kwargs.head_mlp, for fine-tuning from the head's middle")
    proj_dim: int = Field(128, ge=2, description="the projection head's output width")
    align_weight: float = Field(0.0, ge=0, description="weight of an alignment term, the mean "
                                "squared distance of matching views (Wang & Isola 2020): "
                                "InfoNCE only ranks a match above the negatives, this also "
                                "pulls its similarity towards 1, which a global threshold needs")
    memory: int = Field(0, ge=0, description="descriptors of past batches kept as extra "
                                             "negatives (cross-batch memory; 0 = off; e.g. "
                                             "16-32 batches' worth)")
    memory_after_epochs: float = Field(1.0, ge=0, description="when the memory starts being used")
    memory_momentum: float = Field(0.0, ge=0, lt=1, description="who fills the memory: 0 = the "
                                   "encoder itself (cross-batch memory); m > 0 = a momentum "
                                   "encoder, the encoder's exponential moving average "
                                   "θ_k ← m θ_k + (1-m) θ (MoCo, SimCLRv2 App. D: 0.999)")


class NegativeMemory:
    """A FIFO of the last ``size`` descriptors (first views of past global batches), identical
    on every rank (it holds gathered descriptors)."""

    def __init__(self, size: int, dim: int, device: torch.device):
        self.queue = torch.zeros(size, dim, device=device)
        self.filled = 0  # rows of ``queue`` holding descriptors (the newest last)

    def negatives(self) -> torch.Tensor:
        return self.queue[len(self.queue) - self.filled:]  # filled x dim

    def push(self, z: torch.Tensor) -> None:
        z = z.detach()[-len(self.queue):]
        self.queue = torch.cat([self.queue[len(z):], z.to(self.queue.dtype)])
        self.filled = min(len(self.queue), self.filled + len(z))

    def state(self) -> dict[str, torch.Tensor]:
        return {"memory.queue": self.queue, "memory.filled": torch.tensor(self.filled)}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        if "memory.queue" in tensors:
            self.queue = tensors["memory.queue"].to(self.queue.device, self.queue.dtype)
            self.filled = int(tensors["memory.filled"])


class Features(nn.Module):
    """``module.forward_features`` as a module's forward, so that DDP wraps it (and syncs the
    gradients of what it reaches); ``module`` is what checkpoints hold."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.module.forward_features(x).float(), dim=1)  # N x d, unit norm


def freeze_unreached(model: nn.Module, sample: torch.Tensor, forward=None) -> list[str]:
    """Freeze the parameters ``forward`` (default ``model.forward_features``) does not reach
    (the classifier): a contrastive objective does not train them, and DDP refuses parameters
    without gradients. Returns their names."""
    params = dict(model.named_parameters())
    was_training = model.training
    model.eval()  # the dry run must not move BatchNorm's running statistics
    out = (forward or model.forward_features)(sample).float().sum()
    model.train(was_training)
    grads = torch.autograd.grad(out, list(params.values()), allow_unused=True)
    frozen = [n for (n, p), g in zip(params.items(), grads) if g is None]
    for name in frozen:
        params[name].requires_grad_(False)
    return frozen


def info_nce_koleo(rows: torch.Tensor, row_ids: torch.Tensor, row_pos: torch.Tensor,
                   cols: torch.Tensor, col_ids: torch.Tensor, temperature: float,
                   koleo_weight: float, align_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """The contrastive loss of ``rows`` (R x d, unit norm) against ``cols`` (M x d, unit
    norm; ``rows`` are among them at ``row_pos``): views with the same id match.

    For each match (i, j): ``-log(e^{s_ij/t} / (e^{s_ij/t} + sum_{k not matching i} e^{s_ik/t}))``,
    averaged over matches; KoLeo: ``-mean_i log ||z_i - z_nn(i)||`` over the nearest non-match,
    ``||.|| = sqrt(2 - 2 s)`` on the unit sphere; alignment: ``mean ||z_i - z_j||^2 = 2 - 2 s_ij``
    over the matches.
    """
    sim = rows @ cols.T  # R x M
    match = row_ids[:, None] == col_ids[None, :]  # R x M, includes each row itself
    self_col = torch.zeros_like(match)
    self_col[torch.arange(len(rows)), row_pos] = True
    pos = match & ~self_col
    neg = sim.masked_fill(match, float("-inf"))  # R x M, non-matches only
    neg_lse = torch.logsumexp(neg / temperature, dim=1)  # R
    r, c = pos.nonzero(as_tuple=True)
    s = sim[r, c] / temperature
    nce = -(s - torch.logaddexp(s, neg_lse[r])).mean()
    nearest = neg.max(dim=1).values  # R: nearest non-matching view
    koleo = -torch.log(torch.sqrt((2 - 2 * nearest).clamp_min(1e-8))).mean()
    loss = nce + koleo_weight * koleo if koleo_weight else nce
    if align_weight:
        loss = loss + align_weight * (2 - 2 * sim[r, c]).mean()
    stats = {"pos_sim": sim[r, c].mean().item(), "nearest_neg_sim": nearest.mean().item()}
    return loss, stats


def contrastive_loss(z: torch.Tensor, cfg: ContrastiveConfig, rank: int,
                     memory: NegativeMemory | None = None, use_memory: bool = False,
                     push: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """``z``: this rank's 2L x d descriptors, views 1 then views 2 of its L images (its slice
    of the global batch, rank-major). Negatives come from every rank, and from ``memory`` when
    ``use_memory``; the batch's first views are then pushed into ``memory`` (``push``: this
    rank's L descriptors to push instead, a momentum encoder's of the same views)."""
    z1, z2 = z.chunk(2)
    local = len(z1)
    g1, g2 = all_gather_with_grad(z1), all_gather_with_grad(z2)  # G x d each, G = world * L
    total = len(g1)
    cols = [g1, g2]
    col_ids = torch.arange(total, device=z.device).repeat(2)
    if memory is not None and use_memory and memory.filled:
        past = memory.negatives().to(z.dtype)  # Q x d, no gradient; ids that match no view
        cols.append(past)
        col_ids = torch.cat([col_ids, -1 - torch.arange(len(past), device=z.device)])
    mine = torch.arange(local, device=z.device) + rank * local  # global ids of this rank's images
    row_ids = mine.repeat(2)
    row_pos = torch.cat([mine, mine + total])
    loss, stats = info_nce_koleo(z, row_ids, row_pos, torch.cat(cols), col_ids,
                                 cfg.temperature, cfg.koleo_weight, cfg.align_weight)
    if memory is not None:
        memory.push(g1 if push is None else all_gather_with_grad(push.detach()))
    return loss, stats


class MomentumEncoder:
    """A copy of the network whose weights follow the network's by an exponential moving
    average after every step, θ_k ← m θ_k + (1-m) θ (MoCo; SimCLRv2 App. D fills its memory
    with it); buffers (BatchNorm's running statistics) are its own, moved by its forward
    passes in training mode, as MoCo's key encoder. Its descriptors carry no gradient. Every
    rank applies the same update to the same (DDP-synchronised) weights: the copies agree."""

    def __init__(self, module: nn.Module, momentum: float):
        import copy
        self.module, self.m = copy.deepcopy(module), momentum
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.module.train()
        return self.module(x)

    @torch.no_grad()
    def update(self, online: nn.Module) -> None:
        for k, q in zip(self.module.parameters(), online.parameters()):
            k.mul_(self.m).add_(q.detach(), alpha=1 - self.m)

    def state(self) -> dict[str, torch.Tensor]:
        return {f"momentum.{k}": v for k, v in self.module.state_dict().items()}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        own = {k[len("momentum."):]: v for k, v in tensors.items() if k.startswith("momentum.")}
        if not own:
            raise ValueError("the checkpoint holds no momentum encoder (momentum.*)")
        self.module.load_state_dict(own)
