"""Batch-level augmentation, seeded per step so that a resumed run is identical.

Augmentation runs on whole batches on the training device (cheap for small images,
and on GPU it keeps the data loader light). Parameters are drawn for the *global*
batch from a generator seeded by ``(seed, step)``; each rank applies its slice, so
1 rank and N ranks augment the same image the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def step_generator(seed: int, step: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + step) % (2**63))
    return g


def normalize(images: torch.Tensor, mean: float, std: float,
              memory_format: torch.memory_format = torch.channels_last) -> torch.Tensor:
    """uint8 N x C x H x W -> float N x C x H x W, ``(x/255 - mean) / std``, in
    ``memory_format`` (inference runs channels-last; training picks its own, train/kernels.py)."""
    x = (images.float() / 255.0 - mean) / std
    return x.contiguous(memory_format=memory_format)


def to_layout(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """N x C x H x W ``x`` with exactly the strides of ``memory_format`` (copied if need be).

    ``x.contiguous(memory_format=...)`` is not enough: a grey-scale batch (C == 1) counts as
    contiguous in both layouts, and convolutions pick their layout from the strides, so a batch
    whose strides look channels-last (as the crop's permute leaves them) sends NCHW training
    into oneDNN's channels-last kernels (train/kernels.py).
    """
    n, c, h, w = x.shape
    want = (c * h * w, h * w, w, 1) if memory_format == torch.contiguous_format else (h * w * c, 1, w * c, c)
    if x.stride() == want:
        return x
    return torch.empty_strided(x.shape, want, dtype=x.dtype, device=x.device).copy_(x)


def random_crop_flip(x: torch.Tensor, padding: int, hflip: bool, gen: torch.Generator,
                     global_batch: int, offset: int) -> torch.Tensor:
    """Random crop after zero padding, and random horizontal flip.

    ``x``: local batch N x C x H x W (float). Parameters are drawn for the global batch
    of ``global_batch`` images; this rank's images start at ``offset`` within it.
    """
    n, _, h, w = x.shape
    dx = torch.randint(0, 2 * padding + 1, (global_batch,), generator=gen)[offset:offset + n]
    dy = torch.randint(0, 2 * padding + 1, (global_batch,), generator=gen)[offset:offset + n]
    flip = (torch.rand(global_batch, generator=gen) < 0.5)[offset:offset + n]
    if padding:
        padded = F.pad(x, (padding,) * 4)
        # gather crops with one advanced-indexing op: rows N x H, cols N x W
        rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).to(x.device)
        cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).to(x.device)
        idx_n = torch.arange(n, device=x.device).view(n, 1, 1)
        x = padded.permute(0, 2, 3, 1)[idx_n, rows.view(n, h, 1), cols.view(n, 1, w)]
        x = x.permute(0, 3, 1, 2)
    if hflip:
        x = torch.where(flip.view(n, 1, 1, 1).to(x.device), x.flip(3), x)
    return x.contiguous()
