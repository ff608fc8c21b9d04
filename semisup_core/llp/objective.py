"""LLP as an objective of the one training loop (``train/loop.py``, ``objective: llp``).

Per step (the reference code's order, ``docs/plans/llp.md`` §8):
1. the network gives each image of the batch an embedding ``v`` (``embed_dim``, L2-normalised,
   a linear head beside the classifier on the pooled features) and class logits;
2. the loss reads each image's *stored* label and confidence (the ones its previous visit
   wrote; a labelled image always has its true label and c = 1):
   ``mean(c · L_A) + category_weight · mean(c · L_C)``, L_A the aggregation loss over the whole
   memory bank (``propagation.aggregation_loss``), L_C the cross-entropy of the logits on the
   label (zero for an image without one);
3. after the optimiser step, the bank rows of the batch move towards ``v`` with momentum ``m``
   (``v̄ ← normalise(m v̄ + (1-m) v)``) and each unlabelled image gets a new pseudo-label and
   confidence from its K nearest labelled entries, density-weighted (``propagation.propagate``);
4. at the start of every epoch, ``log ρ`` of the labelled entries is recomputed (Eq. 7).

Warm start: the paper starts LLP from 10 epochs of instance recognition (IR, Wu et al. 2018)
with the same memory bank. ``warm_epochs`` runs those epochs first in the same run: no labels
are used (every image's A is itself, no L_C), then propagation starts.

Under DDP every rank holds the whole bank and the label store (a replica, N x d float32 + 12
bytes a row); each step all-gathers the batch's rows, embeddings and labels, so every replica
applies the same updates in the same order and stays identical. The bank, labels, confidences
and densities are in every checkpoint (``extra.safetensors``): a killed run resumes exactly.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from typing import Literal

import torch
import torch.distributed as tdist
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from semisup_core.config import StageConfig
from semisup_core.errors import ConfigError

log = logging.getLogger(__name__)


class LLPConfig(StageConfig):
    """The paper's settings (§4) as defaults; where the paper and its code differ, the paper."""

    embed_dim: int = Field(128, ge=2, description="embedding head width (the paper's 128)")
    temperature: float = Field(0.07, gt=0, description="τ of the non-parametric softmax (0.07)")
    bank_momentum: float = Field(0.5, ge=0, lt=1, description="m of the memory-bank update "
                                 "v̄ ← normalise(m v̄ + (1-m) v) (the reference code's 0.5)")
    k: int = Field(10, ge=1, description="K: labelled neighbours that vote (the paper's 10)")
    density_k: int = Field(25, ge=1, description="T: neighbours of a labelled point that give its "
                                                 "local density (the paper's 25; its code: 50)")
    density: Literal["paper", "kernel", "off"] = Field(
        "paper", description="ρ as Eq. 7 (softmax mass of the T nearest) | kernel (the code's "
                             "unnormalised sum) | off (plain weighted kNN, Eq. 5)")
    pseudo_labels: Literal["knn", "classifier"] = Field(
        "knn", description="knn (density-weighted propagation, the paper) | classifier (argmax "
                           "of the classifier head, what the released code runs)")
    confidence: bool = Field(True, description="weight each image's losses by its confidence c")
    category_weight: float = Field(1.0, ge=0, description="weight of L_C (0: embedding loss only)")
    warm_epochs: float = Field(0.0, ge=0, description="epochs of instance recognition (no labels) "
                                                      "before propagation (the paper: 10)")
    bank_init: Literal["random", "forward"] = Field(
        "random", description="the memory bank before the first step: random unit vectors (the "
                              "paper's IR) | forward (every image's embedding by the starting "
                              "network: with init_from, propagation is meaningful from step 0)")
    softmax_support: int = Field(0, ge=0, description="L_A's sums over 0 = every bank entry (the "
                                 "paper and its code) or m = a random m of them per step (the "
                                 "same on every rank), a ratio estimate that costs m/N of it")


class LLPNet(nn.Module):
    """A registry model's pooled features with two heads side by side: its own classifier and
    an embedding head (linear, L2-normalised). ``net`` is what the final model holds."""

    def __init__(self, net: nn.Module, embed_dim: int):
        super().__init__()
        self.net = net
        self.embed = nn.Linear(net.feature_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.net.forward_features(x)
        return F.normalize(self.embed(f).float(), dim=1), self.net.fc(f)


def _gather(x: torch.Tensor) -> torch.Tensor:
    if not (tdist.is_available() and tdist.is_initialized()) or tdist.get_world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(tdist.get_world_size())]
    tdist.all_gather(out, x.contiguous())
    return torch.cat(out)


class LLPState:
    """The memory bank and the label store of N images, addressed by bank row."""

    def __init__(self, cfg: LLPConfig, n: int, num_classes: int, seed: int, device: torch.device):
        if importlib.util.find_spec("faiss") is None:
            raise ConfigError("objective llp needs faiss (its kNN runs on semisup_core.knn): run "
                              "it with `semisup stage llp` in the llp image, or pip install "
                              "faiss-cpu")
        self.cfg, self.num_classes, self.device, self.seed = cfg, num_classes, device, seed
        gen = torch.Generator().manual_seed(seed)
        self.bank = F.normalize(torch.randn(n, cfg.embed_dim, generator=gen), dim=1).to(device)
        self.labels = torch.full((n,), -1, dtype=torch.long, device=device)  # -1: none yet
        self.conf = torch.ones(n, device=device)
        self.labelled = torch.zeros(n, dtype=torch.bool, device=device)  # a true label is known
        self.rho_rows = torch.zeros(0, dtype=torch.long)  # labelled rows at the last density pass
        self.log_rho = torch.zeros(0, dtype=torch.float64)
        self._keys()
        self.row_keys: list[str] = []  # bank row -> sample key (index_rows)
        self.rows: dict[str, int] = {}

    def targets(self, rows: torch.Tensor, labels: torch.Tensor, warm: bool
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's label and confidence for this step's loss: the stored ones (its previous
        visit's), the true label with c = 1 for a labelled image, none during the warm start."""
        if warm:
            return torch.full_like(labels, -1), torch.ones(len(rows), device=self.device)
        y = torch.where(labels >= 0, labels, self.labels[rows])
        c = torch.where(labels >= 0, torch.ones_like(self.conf[rows]), self.conf[rows])
        return y, (c if self.cfg.confidence else torch.ones_like(c))

    @staticmethod
    def _math():
        # imported here, so that the train image (no faiss) can import the loop
        from semisup_core.llp import propagation
        return propagation

    def support(self, step: int) -> torch.Tensor | None:
        """The bank rows L_A sums over at ``step`` (None: all); seeded by the step, so every
        rank and a resumed run draw the same."""
        m, n = self.cfg.softmax_support, len(self.bank)
        if not m or m >= n:
            return None
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return torch.randperm(n, generator=gen)[:m].sort().values.to(self.device)

    def loss(self, v: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor,
             labels: torch.Tensor, warm: bool, step: int = 0) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        y, c = self.targets(rows, labels, warm)
        bank_labels = self.labels if not warm else torch.full_like(self.labels, -1)
        l_a = self._math().aggregation_loss(v, self.bank, bank_labels, y, rows, cfg.temperature,
                                            self.support(step))
        has = y >= 0
        l_c = F.cross_entropy(logits.float(), y.clamp_min(0), reduction="none") * has
        loss = (c * l_a).mean() + cfg.category_weight * (c * l_c).mean()
        return loss, {"l_a": float(l_a.detach().mean()), "l_c": float(l_c.detach().mean())}

    @torch.no_grad()
    def update(self, rows: torch.Tensor, v: torch.Tensor, logits: torch.Tensor,
               labels: torch.Tensor, propagate: bool) -> None:
        """After the step: every rank's batch, in rank order, into the bank and the store."""
        rows, v, logits, labels = (_gather(t) for t in (rows, v.detach().float(),
                                                        logits.detach().float(), labels))
        m = self.cfg.bank_momentum
        self.bank[rows] = F.normalize(m * self.bank[rows] + (1 - m) * v, dim=1)
        pos = self.key_pos[rows.cpu()]  # the moved entries among the propagation's keys
        hit = pos >= 0
        if hit.any():
            self.scored[pos[hit], :-1] = self.bank[rows[hit.to(rows.device)]].float().cpu()
        lab = labels >= 0
        self.labels[rows[lab]] = labels[lab]
        self.conf[rows[lab]] = 1.0
        self.labelled[rows[lab]] = True
        unl = ~lab
        if not propagate or not unl.any():
            return
        if self.cfg.pseudo_labels == "classifier":
            conf, y = logits[unl].softmax(1).max(1)
        else:
            y, conf = self._math().propagate_scored(v[unl], self.scored, self.key_labels,
                                                   self.cfg.temperature, self.cfg.k)
        y, conf = y.to(self.device), conf.to(self.device)
        known = y >= 0
        self.labels[rows[unl][known]] = y[known]
        self.conf[rows[unl][known]] = conf[known]

    def index_rows(self, shards: list[str], cache: dict | None, beat=lambda msg: None) -> None:
        """Every training sample's key, shard by shard: the bank's rows (from the decoded
        ``cache`` when there is one, else the shards' indexes)."""
        from semisup_core.data.shards import shard_keys
        keys: list[str] = []
        for i, uri in enumerate(shards):
            keys += [r.key for r in cache[uri]] if cache else shard_keys(uri)
            beat(f"listing the keys of shard {i + 1} of {len(shards)}")
        if len(keys) != len(self.bank):
            raise ConfigError(f"the shards hold {len(keys)} samples, their dataset.json files "
                              f"{len(self.bank)}")
        self.row_keys, self.rows = keys, {k: i for i, k in enumerate(keys)}
        if len(self.rows) != len(keys):
            raise ConfigError("objective llp: a sample key occurs twice in data.train (its "
                              "memory bank is addressed by key)")

    def rows_of(self, keys: list[str]) -> torch.Tensor:
        return torch.tensor([self.rows[k] for k in keys], device=self.device)

    @torch.no_grad()
    def fill(self, embed, shards: list[str], channels: int, cache: dict | None,
             beat=lambda msg: None) -> None:
        """``bank_init: forward``: every image's embedding by ``embed`` (the starting network,
        eval mode, no augmentation); labelled rows get their label."""
        from torch.utils.data import DataLoader

        from semisup_core.data.stream import ShardStream
        t0 = time.time()
        stream = ShardStream(shards, local_batch=1024, shuffle=False, channels=channels,
                             cache=cache)
        for images, labels, keys in DataLoader(stream, batch_size=1024):
            beat("filling the memory bank")
            rows, labels = self.rows_of(keys), labels.to(self.device)
            self.bank[rows] = embed(images).float()
            lab = labels >= 0
            self.labels[rows[lab]], self.labelled[rows[lab]] = labels[lab], True
        log.info("memory bank filled by a forward pass (%d images, %.1f s)", len(self.rows),
                 time.time() - t0)

    @torch.no_grad()
    def refresh_density(self) -> None:
        """log ρ of every labelled entry (Eq. 7), once per epoch."""
        self.rho_rows = self.labelled.nonzero().flatten().cpu()
        self.log_rho = self._math().log_density(self.bank, self.rho_rows, self.cfg.temperature,
                                               self.cfg.density_k, self.cfg.density)
        self._keys()

    def _keys(self) -> None:
        """The propagation's keys in ``propagation.score_keys`` form, kept current: rebuilt
        here (per epoch, after a resume), then only the rows a step moves (``update``)."""
        from semisup_core.llp.propagation import score_keys
        rows = self.rho_rows
        self.scored = score_keys(self.bank[rows.to(self.device)], self.log_rho,
                                 self.cfg.temperature).contiguous()
        self.key_labels = self.labels[rows.to(self.device)].cpu()
        self.key_pos = torch.full((len(self.bank),), -1, dtype=torch.long)
        self.key_pos[rows] = torch.arange(len(rows))

    def stats(self) -> dict:
        unl = ~self.labelled
        has = (self.labels >= 0) & unl
        return {"coverage": float(has.sum() / max(1, int(unl.sum()))),
                "mean_conf": float(self.conf[has].mean()) if has.any() else 0.0}

    def state(self) -> dict[str, torch.Tensor]:
        return {"llp.bank": self.bank.cpu(), "llp.labels": self.labels.cpu(),
                "llp.conf": self.conf.cpu(), "llp.labelled": self.labelled.cpu(),
                "llp.rho_rows": self.rho_rows.cpu(), "llp.log_rho": self.log_rho.cpu()}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        if "llp.bank" not in tensors:
            raise ValueError("the checkpoint holds no LLP state (llp.bank)")
        self.bank = tensors["llp.bank"].to(self.device)
        self.labels = tensors["llp.labels"].to(self.device)
        self.conf = tensors["llp.conf"].to(self.device)
        self.labelled = tensors["llp.labelled"].to(self.device)
        self.rho_rows, self.log_rho = tensors["llp.rho_rows"], tensors["llp.log_rho"]
        self._keys()

    def write_labels(self, uri: str) -> None:
        """The label store as a table: key, label (-1: none), confidence, labelled (a true
        label) -- what the oracle analysis reads."""
        import pyarrow as pa

        from semisup_core.tables import write_table
        write_table(uri, pa.table({"key": self.row_keys, "label": self.labels.cpu().numpy(),
                                   "confidence": self.conf.cpu().numpy(),
                                   "labelled": self.labelled.cpu().numpy()}))
