"""Batch augmentation against a per-image reference; LR schedule shape."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from semisup_core.train import augment
from semisup_core.train.config import OptimConfig
from semisup_core.train.schedule import lr_factor, scaled_lr


def _reference(x, padding, gen, global_batch, offset):
    """Crop and flip one image at a time with explicit slicing."""
    n, _, h, w = x.shape
    dx = torch.randint(0, 2 * padding + 1, (global_batch,), generator=gen)[offset:offset + n]
    dy = torch.randint(0, 2 * padding + 1, (global_batch,), generator=gen)[offset:offset + n]
    flip = (torch.rand(global_batch, generator=gen) < 0.5)[offset:offset + n]
    out = []
    for i in range(n):
        img = F.pad(x[i], (padding,) * 4)[:, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out.append(img.flip(2) if flip[i] else img)
    return torch.stack(out)


@pytest.mark.parametrize("padding", [0, 2, 4])
def test_crop_flip_matches_per_image_reference(padding):
    x = torch.randn(6, 2, 9, 7)
    got = augment.random_crop_flip(x, padding, True, augment.step_generator(1, 5), 10, 3)
    want = _reference(x, padding, augment.step_generator(1, 5), 10, 3)
    assert torch.equal(got, want)


def test_rank_slices_reassemble_the_global_batch():
    x = torch.randn(8, 1, 12, 12)
    full = augment.random_crop_flip(x, 2, True, augment.step_generator(0, 7), 8, 0)
    halves = [augment.random_crop_flip(x[r * 4:(r + 1) * 4], 2, True,
                                       augment.step_generator(0, 7), 8, r * 4) for r in range(2)]
    assert torch.equal(torch.cat(halves), full)


def test_normalize():
    img = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    assert torch.allclose(augment.normalize(img, 0.5, 0.5), torch.tensor([[[[-1.0, 1.0]]]]))


def test_linear_scaling_rule():
    assert scaled_lr(OptimConfig(lr=0.1), 1024) == pytest.approx(0.4)


def test_cosine_schedule_warms_up_then_decays_to_zero():
    cfg = OptimConfig(warmup_epochs=1, schedule="cosine")
    f = [lr_factor(cfg, s, 100, 10) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[-1] < 0.01
    assert f[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))


def test_step_schedule_drops_at_milestones():
    cfg = OptimConfig(warmup_epochs=0, schedule="step", milestones=[0.5, 0.75], gamma=0.1)
    assert [lr_factor(cfg, s, 100, 10) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])
