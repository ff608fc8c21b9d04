"""Augmented views of a batch for contrastive objectives, seeded per step like ``augment``.

The ``copy`` recipe teaches a descriptor what a *copy* of an image is (SSCD, Pizzi et al.
2022, §3.2: the augmentation distribution is the definition of a copy). It covers the edits
``dedup``'s calibration injects (``semisup_core/dedup/calibration.py``), each a little wider than
the calibration's range so that the range's edges stay inside training:

=========== ================================================ ===================================
edit        training range (calibration's range)             how
=========== ================================================ ===================================
crop        0-15% cut from each side, resized back (1-10%)   affine sampling, bilinear
translate   0-14% of the side in x and y, black fill (1-10%) affine sampling, whole pixels
resize      down to 50-90% of the side and back (60-85%)     antialiased down, bilinear up
photometric contrast x0.6-1.4, brightness +-40 (x0.7-1.3, 30) then clipped to [0, 255], rounded
noise/blur  Gaussian noise sigma <= 4 grey levels, 3x3 blur  stands in for JPEG re-encoding
=========== ================================================ ===================================

No flips, rotations or SimCLR-strength crops: a 30% crop of one shirt is as much like another
shirt as like itself, so invariance to it would erase what tells look-alikes apart.

Each image gets at most one geometric edit, then the photometric one and the noise with their
own probabilities; the first view is left as the image itself with probability ``p_clean``
(the reference side of a real copy pair is the original). Parameters are drawn for the global
batch from the step's generator, and each rank applies its slice, so any rank count augments
the same image the same way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field

from semisup_core.config import StageConfig


class CopyViews(StageConfig):
    """The ``copy`` recipe's probabilities and ranges (fractions of the image side)."""

    p_clean: float = Field(0.3, ge=0, le=1, description="first view left as the image itself")
    p_crop: float = Field(0.3, ge=0, le=1)
    p_translate: float = Field(0.3, ge=0, le=1)
    p_resize: float = Field(0.25, ge=0, le=1, description="of the images neither cropped "
                                                         "nor translated")
    crop_max: float = Field(0.15, ge=0, lt=0.5, description="cut from each side, at most")
    translate_max: float = Field(0.14, ge=0, lt=1, description="shift in x and y, at most")
    resize_min: float = Field(0.5, gt=0, le=1, description="smallest downscale factor")
    resize_max: float = Field(0.9, gt=0, le=1)
    p_photometric: float = Field(0.5, ge=0, le=1)
    contrast: float = Field(0.4, ge=0, lt=1, description="contrast x [1-c, 1+c]")
    brightness: float = Field(40, ge=0, description="+- grey levels")
    p_noise: float = Field(0.3, ge=0, le=1, description="Gaussian noise and a light blur")
    noise_max: float = Field(4.0, ge=0, description="noise sigma in grey levels, at most")


def _affine(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Sample ``x`` (N x C x H x W) on a grid ``scale * out + shift`` in [-1, 1] coordinates
    (N x 2 each, x then y); outside the image is black (0)."""
    n = x.shape[0]
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0], theta[:, 1, 1] = scale[:, 0], scale[:, 1]
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _resize_back(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Each image down to ``round(side * factor)`` (antialiased) and back up (bilinear)."""
    h, w = x.shape[-2:]
    out = x.clone()
    sides = torch.clamp((factor * h).round().long(), min=2)
    for side in sides.unique().tolist():  # one interpolate pair per distinct size
        idx = (sides == side).nonzero().flatten()
        small = F.interpolate(x[idx], size=(side, round(side * w / h)), mode="bilinear",
                              align_corners=False, antialias=True)
        out[idx] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return out


def copy_view(x: torch.Tensor, cfg: CopyViews, gen: torch.Generator, global_batch: int,
              offset: int, clean_p: float = 0.0) -> torch.Tensor:
    """One edited view of ``x`` (local batch N x C x H x W, float in [0, 255]), pixel values
    rounded to whole grey levels and clipped like a saved image. ``clean_p``: probability that
    an image is returned unchanged."""
    n, _, h, w = x.shape
    g = global_batch

    def draw(*shape):  # uniform [0, 1) for the global batch, this rank's slice
        return torch.rand(g, *shape, generator=gen)[offset:offset + n].to(x.device, x.dtype)

    u_family, u_clean = draw(), draw()
    crop, trans, rs = draw(4), draw(2), draw()
    sign = torch.where(draw(2) < 0.5, -1.0, 1.0).to(x.device, x.dtype)
    u_photo, contrast, bright = draw(), draw(), draw()
    u_noise, noise_sigma, noise = draw(), draw(), torch.randn(
        g, *x.shape[1:], generator=gen)[offset:offset + n].to(x.device, x.dtype)

    is_crop = u_family < cfg.p_crop
    is_trans = (u_family >= cfg.p_crop) & (u_family < cfg.p_crop + cfg.p_translate)
    rest = 1.0 - cfg.p_crop - cfg.p_translate
    is_resize = (u_family >= cfg.p_crop + cfg.p_translate) & (
        u_family < cfg.p_crop + cfg.p_translate + cfg.p_resize * max(rest, 0.0))
    # crop: keep [l, 1-r] x [t, 1-b] of the image, stretched to the full frame
    cut = crop * cfg.crop_max  # l, t, r, b as fractions of the side
    scale = torch.stack([1 - cut[:, 0] - cut[:, 2], 1 - cut[:, 1] - cut[:, 3]], 1)
    shift = torch.stack([cut[:, 0] - cut[:, 2], cut[:, 1] - cut[:, 3]], 1)
    # translate: whole pixels, content moves by +d (the grid samples at -d)
    pix = torch.round(trans * cfg.translate_max * torch.tensor([w, h], dtype=x.dtype,
                                                               device=x.device)) * sign
    step = torch.tensor([2.0 / w, 2.0 / h], dtype=x.dtype, device=x.device)
    scale = torch.where(is_crop[:, None], scale, torch.ones_like(scale))
    shift = torch.where(is_crop[:, None], shift, torch.where(is_trans[:, None], -pix * step,
                                                             torch.zeros_like(shift)))
    out = torch.where((is_crop | is_trans).view(n, 1, 1, 1), _affine(x, scale, shift), x)
    if is_resize.any():
        factor = cfg.resize_min + rs * (cfg.resize_max - cfg.resize_min)
        idx = is_resize.nonzero().flatten()
        out[idx] = _resize_back(out[idx], factor[idx])
    a = 1 + cfg.contrast * (2 * contrast - 1)
    b = cfg.brightness * (2 * bright - 1)
    photo = (u_photo < cfg.p_photometric).view(n, 1, 1, 1)
    out = torch.where(photo, out * a.view(n, 1, 1, 1) + b.view(n, 1, 1, 1), out)
    noisy = (u_noise < cfg.p_noise).view(n, 1, 1, 1)
    blurred = F.avg_pool2d(F.pad(out, (1, 1, 1, 1), mode="replicate"), 3, 1) * 0.25 + out * 0.75
    out = torch.where(noisy, blurred + noise * (noise_sigma * cfg.noise_max).view(n, 1, 1, 1), out)
    out = out.clamp(0, 255).round()
    return torch.where((u_clean < clean_p).view(n, 1, 1, 1), x, out)


class SimCLRViews(StageConfig):
    """SimCLR's augmentation (Chen et al. 2020, v1 App. A; the reference code's order): random
    resized crop, horizontal flip, colour jitter in random order, grey-scale, Gaussian blur.

    The defaults are the 28x28 grey-scale recipe of the demo (docs/simclr.md): crops of 20-100%
    of the area (MoCo v2's floor; the paper's 8% of 28x28 is a 8x8 patch, too little to tell a
    shirt from a pullover), brightness and contrast at the CIFAR strength 0.5 (hue, saturation
    and grey-scale do nothing to one channel), no blur (at 28 px it erases the texture, as the
    paper turns it off for CIFAR). ImageNet: ``crop_scale_min: 0.08``, ``strength: 1.0``,
    ``p_blur: 0.5``. Not built: the hue jitter (0.2 s) of colour data; saturation, grey-scale
    and the jitter's random order are (brightness/contrast order only: saturation comes last)."""

    crop_scale_min: float = Field(0.2, gt=0, le=1, description="smallest crop area fraction "
                                                             "(the paper: 0.08)")
    crop_ratio: float = Field(4 / 3, ge=1, description="aspect ratios in [1/r, r]")
    p_flip: float = Field(0.5, ge=0, le=1)
    p_jitter: float = Field(0.8, ge=0, le=1, description="colour jitter probability")
    strength: float = Field(0.5, ge=0, description="jitter strength s: brightness and contrast "
                                                   "0.8 s, saturation 0.8 s (no hue jitter)")
    p_gray: float = Field(0.2, ge=0, le=1, description="grey-scale (colour images only)")
    p_blur: float = Field(0.0, ge=0, le=1, description="Gaussian blur, sigma U[0.1, 2] (px at "
                                                       "224; scaled with the side), kernel side/10")


def _grey(x: torch.Tensor) -> torch.Tensor:
    """Luminance (ITU-R 601), broadcast back to x's channels."""
    if x.shape[1] != 3:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True).expand_as(x)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur, one sigma per image (px), kernel side = side//10 made odd (>= 3)."""
    n, c, h, w = x.shape
    k = max(3, (h // 10) | 1)
    t = torch.arange(k, dtype=x.dtype, device=x.device) - k // 2
    ker = torch.exp(-t[None, :] ** 2 / (2 * sigma[:, None] ** 2))
    ker = (ker / ker.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (N*C) x k
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (k // 2, k // 2, 0, 0), mode="reflect"), ker.view(n * c, 1, 1, k),
                 groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, k // 2, k // 2), mode="reflect"), ker.view(n * c, 1, k, 1),
                 groups=n * c)
    return y.view(n, c, h, w)


def simclr_view(x: torch.Tensor, cfg: SimCLRViews, gen: torch.Generator, global_batch: int,
                offset: int) -> torch.Tensor:
    """One SimCLR view of ``x`` (local batch N x C x H x W, float in [0, 255]); the parameters
    are drawn for the global batch, this rank takes its slice."""
    n, c, h, w = x.shape

    def draw(*shape):
        return torch.rand(global_batch, *shape, generator=gen)[offset:offset + n].to(x.device, x.dtype)

    area, ratio, centre, u_flip = draw(), draw(), draw(2), draw()
    u_jit, bright, contrast, order, u_gray, u_blur, sigma = (draw() for _ in range(7))
    # random resized crop: area fraction s, log-uniform aspect r; sides sqrt(s r), sqrt(s / r)
    # (clipped to the image: torchvision redraws instead, a slightly different law at s near 1)
    s = cfg.crop_scale_min + area * (1 - cfg.crop_scale_min)
    r = torch.exp((2 * ratio - 1) * math.log(cfg.crop_ratio))
    side = torch.stack([torch.sqrt(s * r), torch.sqrt(s / r)], 1).clamp(max=1.0)  # x, y
    shift = (2 * centre - 1) * (1 - side)  # the crop's centre, inside the image
    flip = torch.where(u_flip < cfg.p_flip, -1.0, 1.0).to(x.dtype)
    out = _affine(x, side * torch.stack([flip, torch.ones_like(flip)], 1), shift)
    out = out.clamp(0, 255)
    # colour jitter (p_jitter): brightness x U[1-0.8s, 1+0.8s] and contrast around the image's
    # mean, in random order; saturation towards the grey image for colour data
    b = 1 + 0.8 * cfg.strength * (2 * bright - 1)
    k = 1 + 0.8 * cfg.strength * (2 * contrast - 1)

    def brightness(y):
        return (y * b.view(n, 1, 1, 1)).clamp(0, 255)

    def contrast_(y):
        mean = _grey(y).mean(dim=(1, 2, 3), keepdim=True)
        return (mean + k.view(n, 1, 1, 1) * (y - mean)).clamp(0, 255)

    bc = torch.where((order < 0.5).view(n, 1, 1, 1), contrast_(brightness(out)),
                     brightness(contrast_(out)))
    if c == 3:
        sat = 1 + 0.8 * cfg.strength * (2 * draw() - 1)
        bc = (_grey(bc) + sat.view(n, 1, 1, 1) * (bc - _grey(bc))).clamp(0, 255)
    out = torch.where((u_jit < cfg.p_jitter).view(n, 1, 1, 1), bc, out)
    if c == 3:
        out = torch.where((u_gray < cfg.p_gray).view(n, 1, 1, 1), _grey(out), out)
    if cfg.p_blur:
        sig = (0.1 + 1.9 * sigma) * h / 224
        out = torch.where((u_blur < cfg.p_blur).view(n, 1, 1, 1), _blur(out, sig.clamp_min(0.05)),
                          out)
    return out


def two_views(x: torch.Tensor, recipe: str, cfg: CopyViews, gen: torch.Generator,
              global_batch: int, offset: int, simclr: SimCLRViews | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Two views of every image of ``x`` (N x C x H x W float in [0, 255])."""
    if recipe == "simclr":  # two independent draws from one distribution (symmetric views)
        simclr = simclr or SimCLRViews()
        return (simclr_view(x, simclr, gen, global_batch, offset),
                simclr_view(x, simclr, gen, global_batch, offset))
    if recipe != "copy":
        raise ValueError(f"unknown views recipe {recipe!r}")
    first = copy_view(x, cfg, gen, global_batch, offset, clean_p=cfg.p_clean)
    return first, copy_view(x, cfg, gen, global_batch, offset)
