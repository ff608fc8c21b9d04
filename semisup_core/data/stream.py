"""A torch IterableDataset over WebDataset shards, split across DDP ranks and workers.

Two ways to split the work, chosen by ``split``:

- ``"shards"`` (scale): consumer ``c = rank * W + worker`` of ``n = world * W`` reads
  shards ``c::n``. Each consumer draws exactly its quota of batches per epoch, looping
  over its shards if needed, so every rank takes the same number of steps (DDP hangs
  on uneven inputs).
- ``"samples"`` (small data, exact): every consumer reads the same globally shuffled
  stream and keeps only its slice of each *global* batch: rank ``r`` takes items
  ``[r*L, (r+1)*L)`` of global batch ``j`` and worker ``j % W`` produces local batch
  ``j``. A run on 2 ranks then sees exactly the global batches of a run on 1 rank.
- ``"auto"``: shards when there are at least as many shards as consumers.

Everything is seeded by ``(seed, epoch)``: rerunning an epoch gives the same order,
which is what makes a resumed run identical to an uninterrupted one.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from semisup_core.data.decode import decode_image
from semisup_core.data.shards import iter_shard
from semisup_core.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """One decoded training example (a tuple-friendly dataclass)."""

    image: torch.Tensor  # C x H x W, uint8
    label: int  # -1 when the shard carries no class
    key: str


def to_chw(arr: np.ndarray, channels: int | None) -> torch.Tensor:
    t = torch.from_numpy(np.require(arr, requirements=["C", "W"])).permute(2, 0, 1)  # HWC -> CHW
    if channels == 1 and t.shape[0] == 3:
        t = _rgb_to_gray(t)
    elif channels == 3 and t.shape[0] == 1:
        t = t.expand(3, -1, -1).contiguous()
    return t


def _rgb_to_gray(t: torch.Tensor) -> torch.Tensor:
    w = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    return (t.float() * w).sum(0, keepdim=True).round().clamp(0, 255).to(torch.uint8)


class ShardStream(IterableDataset):
    """Yields ``(image uint8 CxHxW, label, key)`` for one epoch of one rank.

    Args:
        shards: shard URIs (any storage scheme).
        local_batch: per-rank batch size L (the stream yields whole batches' worth).
        steps: batches per epoch per rank; ``None`` = one pass over the data.
        rank, world_size: DDP coordinates.
        seed: base seed; the epoch order depends on ``(seed, epoch)`` only.
        shuffle: shuffle shard order and samples (buffer of ``shuffle_buffer``).
        split: ``"shards" | "samples" | "auto"`` (see module docstring).
        channels: force 1 or 3 channels; ``None`` keeps what the file has.
        cache: decoded records of some or all shards (``decode_shards``), read instead of the
            shards themselves; the order of samples is the same either way.
        num_classes: the dataset's class count: a ``.cls`` at or above it is a DataError.
    """

    def __init__(self, shards: list[str], *, local_batch: int, steps: int | None = None,
                 rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True,
                 shuffle_buffer: int = 2048, split: str = "auto", channels: int | None = None,
                 cache: Mapping[str, list[Record]] | None = None, num_classes: int | None = None):
        super().__init__()
        if not shards:
            raise ConfigError("no shards to read: the dataset is empty")
        if split not in ("auto", "shards", "samples"):
            raise ConfigError(f"data.split must be auto, shards or samples, got {split!r}")
        self.shards, self.local_batch, self.steps = list(shards), local_batch, steps
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shuffle, self.shuffle_buffer, self.split = shuffle, shuffle_buffer, split
        self.channels = channels
        self.cache = cache or {}
        self.num_classes = num_classes  # labels must lie in [0, num_classes) when given
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _mode(self, n_consumers: int) -> str:
        if self.split != "auto":
            return self.split
        return "shards" if len(self.shards) >= n_consumers else "samples"

    def _rng(self, *salt: int) -> random.Random:
        # seeding with a string is stable across processes (unlike hash())
        return random.Random("-".join(map(str, (self.seed, self.epoch) + salt)))

    def _records(self, shards: list[str], rng: random.Random) -> Iterator[tuple[str, object]]:
        """Raw samples of ``shards`` in (shuffled) order; decoding happens later so that
        samples another consumer owns are never decoded."""
        order = list(shards)
        if self.shuffle:
            rng.shuffle(order)
        buf: list = []
        for uri in order:
            for sample in self.cache.get(uri) or iter_shard(uri):
                if not self.shuffle:
                    yield sample
                    continue
                buf.append(sample)
                if len(buf) >= self.shuffle_buffer:
                    i = rng.randrange(len(buf))
                    buf[i], buf[-1] = buf[-1], buf[i]
                    yield buf.pop()
        rng.shuffle(buf)
        yield from buf

    def _decode(self, sample) -> Record:
        if isinstance(sample, Record):  # from the cache: decoded already
            return sample
        image = to_chw(decode_image(sample.image), self.channels)
        label = -1 if sample.cls is None else int(sample.cls)
        if self.num_classes is not None and label >= self.num_classes:
            raise DataError(f"sample {sample.key!r} has class {label}, outside the dataset's "
                            f"{self.num_classes} classes (dataset.json)")
        return Record(image, label, sample.key)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int, str]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        mode = self._mode(self.world_size * nw)
        gen = self._iter_samples(wid, nw) if mode == "samples" else self._iter_shards(wid, nw)
        for rec in gen:
            yield rec.image, rec.label, rec.key

    def _iter_samples(self, wid: int, nw: int) -> Iterator[Record]:
        L, W, R = self.local_batch, nw, self.world_size
        G = L * R  # global batch
        count = 0
        for pass_idx in range(1 << 30):
            for i, sample in enumerate(self._records(self.shards, self._rng(pass_idx))):
                j, within = divmod(count, G)  # global batch j, position within it
                count += 1
                if self.steps is not None and j >= self.steps:
                    return
                if j % W == wid and within // L == self.rank:
                    yield self._decode(sample)
            if count == 0:
                raise ConfigError("the shards hold no samples")
            if self.steps is None:
                return

    def _iter_shards(self, wid: int, nw: int) -> Iterator[Record]:
        n, c = self.world_size * nw, self.rank * nw + wid
        mine = self.shards[c::n]
        if self.steps is None:  # one pass over my shards
            for sample in self._records(mine, self._rng(c, 0)):
                yield self._decode(sample)
            return
        # local batches j with j % nw == wid are mine; produce exactly that many
        quota = len(range(wid, self.steps, nw)) * self.local_batch
        produced = 0
        for pass_idx in range(1 << 30):
            got = 0
            for sample in self._records(mine, self._rng(c, pass_idx)):
                if produced >= quota:
                    return
                got += 1
                produced += 1
                yield self._decode(sample)
            if produced >= quota:
                return
            if got == 0:
                raise ConfigError(f"shards {mine[:3]}... hold no samples")


def decode_shards(shards: list[str], channels: int | None,
                  progress: Callable[[int], None] | None = None,
                  num_classes: int | None = None) -> dict[str, list[Record]]:
    """Every sample of ``shards`` decoded, per shard in stored order: a ``ShardStream`` cache.

    A small training set is then read and decoded once per run instead of once per epoch
    (the demo's label-only trainings run 100-200 epochs over 500 images, its student 20 over
    20k): Python's tarfile and PNG decoding cost more than a small model's step on 2 cores.
    """
    stream = ShardStream(shards, local_batch=1, shuffle=False, channels=channels,
                         num_classes=num_classes)
    out: dict[str, list[Record]] = {}
    for i, uri in enumerate(shards):
        out[uri] = [stream._decode(s) for s in iter_shard(uri)]
        if progress is not None:
            progress(i + 1)
    return out
