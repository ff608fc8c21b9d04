"""LLP as an objective of the one training loop (``train/loop.py``, ``objective: llp``).

Per step (the reference code's order, ``docs/plans/llp.md`` §8):
1. the network gives each image of the batch an embedding ``v`` (``embed_dim``, L2-normalised,
   a linear head beside the classifier on the pooled features) and class logits;
2. the loss reads each image's *stored* label and confidence (the ones its previous visit
   wrote; a labelled image always has its true label and c = 1):
   ``aggregation_weight · mean(c · L_A) + category_weight · mean(c · L_C)``, L_A the aggregation
   loss over the whole
   memory bank (``propagation.aggregation_loss``), L_C the cross-entropy of the logits on the
   label (zero for an image without one);
3. after the optimiser step, the bank rows of the batch move towards ``v`` with momentum ``m``
   (``v̄ ← normalise(m v̄ + (1-m) v)``) and each unlabelled image gets a new pseudo-label and
   confidence from its K nearest labelled entries, density-weighted (``propagation.propagate``);
4. at the start of every epoch, ``log ρ`` of the labelled entries is recomputed (Eq. 7).

Warm start: the paper starts LLP from 10 epochs of instance recognition (IR, Wu et al. 2018)
with the same memory bank. ``warm_epochs`` runs those epochs first in the same run: no labels
are used (every image's A is itself, no L_C), then propagation starts.

Under DDP (``bank``):
- ``sharded`` (the default): rank r holds rows ``[r N/W, (r+1) N/W)`` of the bank (N x d / W
  float32). L_A: the ranks' embeddings are all-gathered (with their gradient), each rank sums
  exp(v̄ᵀv/τ) over its block for every query, the partial sums are all-reduced (with their
  gradient; the shift by an all-reduced max). The momentum update is applied by the rank that
  holds the row. The propagation's keys (the M labelled entries, [v̄_i, -τ log ρ_i]) are
  gathered once per epoch and then kept current on every rank from the gathered batch;
  the densities' T nearest are searched per block and merged (``propagation.density_of``).
- ``replica``: every rank holds the whole bank and applies the gathered batch's updates.
Either way the label store (12 bytes a row: label, confidence, labelled) is on every rank and
each step all-gathers the batch's rows, embeddings and labels, so every rank applies the same
updates in the same order. The bank, labels, confidences and densities are in every checkpoint
(``extra.safetensors``; a sharded bank as one file per rank, ``extra-rank-R-of-W``, which a run
on another number of ranks reassembles): a killed run resumes exactly.
"""

from __future__ import annotations

import importlib.util
import logging
import math
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
    aggregation_weight: float = Field(1.0, ge=0, description="weight of L_A (0: cross-entropy on "
                                      "the labels and pseudo-labels only, the embedding head then "
                                      "moves only with the backbone; an ablation, not the paper)")
    warm_epochs: float = Field(0.0, ge=0, description="epochs of instance recognition (no labels) "
                                                      "before propagation (the paper: 10)")
    bank_init: Literal["random", "forward"] = Field(
        "random", description="the memory bank before the first step: random unit vectors (the "
                              "paper's IR) | forward (every image's embedding by the starting "
                              "network: with init_from, propagation is meaningful from step 0)")
    bank: Literal["sharded", "replica"] = Field(
        "sharded", description="under DDP: each rank holds 1/W of the memory bank (sharded) or "
                               "all of it (replica); one process holds all of it either way")
    softmax_support: int = Field(0, ge=0, description="L_A's sums over 0 = every bank entry (the "
                                 "paper and its code) or m = a random m of them per step (the "
                                 "same on every rank), a ratio estimate that costs m/N of it")

    def model_post_init(self, _ctx) -> None:
        if self.aggregation_weight == 0 and self.warm_epochs > 0:
            raise ValueError("warm_epochs train L_A alone (instance recognition): they need "
                             "aggregation_weight > 0")
        if self.aggregation_weight == 0 and self.category_weight == 0:
            raise ValueError("aggregation_weight and category_weight are both 0: nothing to train")


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


def _distributed() -> bool:
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def _gather(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Every rank's ``x`` (the same shape on every rank), concatenated in rank order."""
    if not _distributed():
        return x
    out = [torch.empty_like(x) for _ in range(tdist.get_world_size())]
    tdist.all_gather(out, x.contiguous())
    return torch.cat(out, dim)


def _sum_with_grad(x: torch.Tensor) -> torch.Tensor:
    from torch.distributed.nn.functional import all_reduce
    return all_reduce(x)


def _max(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    tdist.all_reduce(x, op=tdist.ReduceOp.MAX)
    return x


def _random_rows(n: int, d: int, lo: int, hi: int, seed: int, chunk: int = 1 << 18
                 ) -> torch.Tensor:
    """Rows [lo, hi) of ``normalise(randn(n, d))`` drawn by one seeded generator, without
    holding the other rows: every rank's block of the same random bank."""
    gen, out, start = torch.Generator().manual_seed(seed), [], 0
    while start < hi:
        size = min(chunk, n - start)
        # the stream of randn(n, d) in row-major order, drawn chunk by chunk
        rows = torch.randn(size, d, generator=gen)
        a, b = max(lo, start), min(hi, start + size)
        if a < b:
            out.append(rows[a - start:b - start])
        start += size
    return F.normalize(torch.cat(out) if out else torch.zeros(0, d), dim=1)


class LLPState:
    """The memory bank and the label store of N images, addressed by bank row."""

    def __init__(self, cfg: LLPConfig, n: int, num_classes: int, seed: int, device: torch.device,
                 rank: int = 0, world_size: int = 1):
        if importlib.util.find_spec("faiss") is None:
            raise ConfigError("objective llp needs faiss (its kNN runs on semisup_core.knn): run "
                              "it with `semisup stage llp` in the llp image, or pip install "
                              "faiss-cpu")
        self.cfg, self.num_classes, self.device, self.seed = cfg, num_classes, device, seed
        self.n, self.rank, self.world = n, rank, world_size
        self.sharded = cfg.bank == "sharded" and world_size > 1
        # this rank's rows of the bank: all of them, or its block
        self.lo, self.hi = ((rank * n // world_size, (rank + 1) * n // world_size)
                            if self.sharded else (0, n))
        self.bank = _random_rows(n, cfg.embed_dim, self.lo, self.hi, seed).to(device)
        self.labels = torch.full((n,), -1, dtype=torch.long, device=device)  # -1: none yet
        self.conf = torch.ones(n, device=device)
        self.labelled = torch.zeros(n, dtype=torch.bool, device=device)  # a true label is known
        self.rho_rows = torch.zeros(0, dtype=torch.long)  # labelled rows at the last density pass
        self.log_rho = torch.zeros(0, dtype=torch.float64)
        self._keys()
        self.index = None  # sample key -> bank row (index_rows: a KeyRows, no dict of N keys)

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
        m, n = self.cfg.softmax_support, self.n
        if not m or m >= n:
            return None
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return torch.randperm(n, generator=gen)[:m].sort().values.to(self.device)

    def loss(self, v: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor,
             labels: torch.Tensor, warm: bool, step: int = 0) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        y, c = self.targets(rows, labels, warm)
        bank_labels = self.labels if not warm else torch.full_like(self.labels, -1)
        if not cfg.aggregation_weight:  # the ablation without L_A: no bank sums at all
            l_a = v.sum(1) * 0  # zero, in the graph: DDP then sees the head's (zero) gradient
        elif self.sharded:  # every rank's queries against this rank's block, summed over ranks
            from semisup_core.train.distributed import all_gather_with_grad
            mine = slice(self.rank * len(v), (self.rank + 1) * len(v))
            l_a = self._math().aggregation_loss(
                all_gather_with_grad(v), self.bank, bank_labels, _gather(y), _gather(rows),
                cfg.temperature, self.support(step), self.lo, _sum_with_grad, _max)[mine]
        else:
            l_a = self._math().aggregation_loss(v, self.bank, bank_labels, y, rows,
                                                cfg.temperature, self.support(step))
        has = y >= 0
        l_c = F.cross_entropy(logits.float(), y.clamp_min(0), reduction="none") * has
        loss = cfg.aggregation_weight * (c * l_a).mean() + cfg.category_weight * (c * l_c).mean()
        return loss, {"l_a": float(l_a.detach().mean()), "l_c": float(l_c.detach().mean())}

    @torch.no_grad()
    def update(self, rows: torch.Tensor, v: torch.Tensor, logits: torch.Tensor,
               labels: torch.Tensor, propagate: bool) -> None:
        """After the step: every rank's batch, in rank order, into the bank and the store."""
        rows, v, logits, labels = (_gather(t) for t in (rows, v.detach().float(),
                                                        logits.detach().float(), labels))
        m = self.cfg.bank_momentum
        held = (rows >= self.lo) & (rows < self.hi)  # the rows this rank's bank holds
        at = rows[held] - self.lo
        self.bank[at] = F.normalize(m * self.bank[at] + (1 - m) * v[held], dim=1)
        pos = self.key_pos[rows.cpu()]  # the moved entries among the propagation's keys
        hit = pos >= 0
        if hit.any():
            if self.sharded:  # every rank moves its copy of the keys as the holder its row
                old = self.scored[pos[hit], :-1]
                self.scored[pos[hit], :-1] = F.normalize(
                    m * old + (1 - m) * v[hit.to(v.device)].cpu(), dim=1)
            else:
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
        """Every training sample's row: its position in the shards (from the decoded ``cache``
        when there is one, else the shards' indexes), looked up by key through
        ``data.keyrows.KeyRows`` (12 B a sample, not a Python dict of N keys)."""
        from semisup_core.data.keyrows import KeyRows
        index = KeyRows(shards, cache, beat)
        if len(index) != self.n:
            raise ConfigError(f"the shards hold {len(index)} samples, their dataset.json files "
                              f"{self.n}")
        self.index = index

    def rows_of(self, keys: list[str]) -> torch.Tensor:
        return self.index.rows_of(keys, self.device)

    @torch.no_grad()
    def fill(self, embed, shards: list[str], channels: int, cache: dict | None,
             beat=lambda msg: None) -> None:
        """``bank_init: forward``: every image's embedding by ``embed`` (the starting network,
        eval mode, no augmentation); labelled rows get their label. Under DDP each rank embeds
        1/W of the images (the same number of batches on every rank: the last ones wrap around)
        and the batches are all-gathered, each rank keeping the rows its bank holds."""
        from torch.utils.data import DataLoader

        from semisup_core.data.stream import ShardStream
        t0, batch = time.time(), 1024
        steps = max(1, math.ceil(self.n / (batch * self.world)))
        stream = ShardStream(shards, local_batch=batch, steps=steps, rank=self.rank,
                             world_size=self.world, shuffle=False, split="samples",
                             channels=channels, cache=cache)
        for images, labels, keys in DataLoader(stream, batch_size=batch):
            beat("filling the memory bank")
            rows, labels = self.rows_of(keys), labels.to(self.device)
            vecs = embed(images).float()
            rows, vecs, labels = _gather(rows), _gather(vecs), _gather(labels)
            held = (rows >= self.lo) & (rows < self.hi)
            self.bank[rows[held] - self.lo] = vecs[held]
            lab = labels >= 0
            self.labels[rows[lab]], self.labelled[rows[lab]] = labels[lab], True
        log.info("memory bank filled by a forward pass (%d images, %.1f s)", self.n,
                 time.time() - t0)

    @torch.no_grad()
    def refresh_density(self) -> None:
        """log ρ of every labelled entry (Eq. 7), once per epoch."""
        t0 = time.time()
        self.rho_rows = self.labelled.nonzero().flatten().cpu()
        self._keys(density=True)
        log.info("local densities (%s) of %d labelled bank entries among %d: %.1f s",
                 self.cfg.density, len(self.rho_rows), self.n, time.time() - t0)

    def _labelled_vectors(self, rows: torch.Tensor) -> torch.Tensor:
        """The bank entries ``rows`` (global ids, the same on every rank) on every rank: a
        sharded bank's holders contribute their rows to an all-reduced sum (exact: one term is
        not zero)."""
        if not self.sharded:
            return self.bank[rows.to(self.device)].float().cpu()
        held = (rows >= self.lo) & (rows < self.hi)
        out = torch.zeros(len(rows), self.cfg.embed_dim, device=self.device)
        out[held.to(self.device)] = self.bank[(rows[held] - self.lo).to(self.device)].float()
        tdist.all_reduce(out)
        return out.cpu()

    @torch.no_grad()
    def _keys(self, density: bool = False) -> None:
        """The propagation's keys in ``propagation.score_keys`` form, kept current: rebuilt
        here (per epoch, with the densities; after a resume), then only the rows a step moves
        (``update``)."""
        from semisup_core.llp.propagation import density_of, score_keys
        rows = self.rho_rows
        vecs = self._labelled_vectors(rows)
        if density:
            c = self.cfg
            self.log_rho = density_of(vecs, self.bank, c.temperature, c.density_k, c.density,
                                      gather=(lambda x: _gather(x, 1)) if self.sharded else None)
        self.scored = score_keys(vecs, self.log_rho, self.cfg.temperature).contiguous()
        self.key_labels = self.labels[rows.to(self.device)].cpu()
        self.key_pos = torch.full((self.n,), -1, dtype=torch.long)
        self.key_pos[rows] = torch.arange(len(rows))

    def stats(self) -> dict:
        unl = ~self.labelled
        has = (self.labels >= 0) & unl
        return {"coverage": float(has.sum() / max(1, int(unl.sum()))),
                "mean_conf": float(self.conf[has].mean()) if has.any() else 0.0}

    def state(self) -> dict[str, torch.Tensor]:
        """What every rank holds alike (the main rank writes it); a replica's bank too."""
        out = {"llp.labels": self.labels.cpu(), "llp.conf": self.conf.cpu(),
               "llp.labelled": self.labelled.cpu(), "llp.rho_rows": self.rho_rows.cpu(),
               "llp.log_rho": self.log_rho.cpu()}
        if not self.sharded:
            out["llp.bank"] = self.bank.cpu()
        return out

    def rank_state(self) -> dict[str, torch.Tensor]:
        """A sharded bank's block (each rank writes its own)."""
        if not self.sharded:
            return {}
        return {"llp.bank_block": self.bank.cpu(), "llp.bank_lo": torch.tensor([self.lo]),
                "llp.bank_n": torch.tensor([self.n])}

    def load(self, tensors: dict[str, torch.Tensor], blocks=()) -> None:
        """``tensors``: the checkpoint's ``extra``; ``blocks``: its rank files (loaders of a
        sharded bank's blocks, written by any number of ranks): this rank's rows from them."""
        if "llp.labels" not in tensors:
            raise ValueError("the checkpoint holds no LLP state (llp.labels)")
        if "llp.bank" in tensors:
            self.bank = tensors["llp.bank"][self.lo:self.hi].to(self.device)
        else:
            self.bank = self._assemble(blocks).to(self.device)
        self.labels = tensors["llp.labels"].to(self.device)
        self.conf = tensors["llp.conf"].to(self.device)
        self.labelled = tensors["llp.labelled"].to(self.device)
        self.rho_rows, self.log_rho = tensors["llp.rho_rows"], tensors["llp.log_rho"]
        self._keys()

    def _assemble(self, blocks) -> torch.Tensor:
        """Rows [lo, hi) from the blocks of a sharded bank's checkpoint, reading one at a time."""
        out = torch.empty(self.hi - self.lo, self.cfg.embed_dim)
        covered = 0
        for read in blocks:
            part = read()
            lo, n = int(part["llp.bank_lo"][0]), int(part["llp.bank_n"][0])
            if n != self.n:
                raise ValueError(f"the checkpoint's memory bank has {n} rows, the data {self.n}")
            block = part["llp.bank_block"]
            a, b = max(lo, self.lo), min(lo + len(block), self.hi)
            if a < b:
                out[a - self.lo:b - self.lo] = block[a - lo:b - lo]
                covered += b - a
        if covered != self.hi - self.lo:
            raise ValueError(f"the checkpoint holds no LLP state (llp.bank: {covered} of rows "
                             f"{self.lo}-{self.hi} in its rank files)")
        return out

    def write_labels(self, uri: str) -> None:
        """The label store as a table: key, label (-1: none), confidence, labelled (a true
        label) -- what the oracle analysis reads. Written shard by shard (one row group each),
        the keys listed again from the shards: no column of N keys in memory."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from semisup_core import storage
        labels, conf, known = (t.cpu().numpy() for t in (self.labels, self.conf, self.labelled))
        schema = pa.schema([("key", pa.string()), ("label", pa.int64()),
                            ("confidence", pa.float32()), ("labelled", pa.bool_())])
        with storage.open_write(uri) as f, pq.ParquetWriter(f, schema) as writer:
            start = 0
            for keys in self.index.keys():
                part = slice(start, start + len(keys))
                writer.write_table(pa.table({"key": keys, "label": labels[part],
                                             "confidence": conf[part], "labelled": known[part]},
                                            schema=schema))
                start += len(keys)
