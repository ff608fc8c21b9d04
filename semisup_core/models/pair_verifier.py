"""``pair_verifier``: is one image a copy of the other? (dedup's verifier, docs/dedup.md).

The input is a pair side by side: N x C x H x 2W, the first image on the left. The right image
is first moved onto the left one (``align``: a magnification from ``scales`` and an integer
shift within ``align`` pixels, whichever matches best), then both are stacked as 2C channels
for a small CNN; ``num_classes`` 2 gives the logits of the pair dataset's classes (distinct,
copy). Trained by the ordinary supervised objective on the pairs ``dedup.verifier`` writes.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from semisup_core.models.registry import register_model


def rescale(b: torch.Tensor, scale: float) -> torch.Tensor:
    """``b`` (N x C x H x W) magnified by ``scale`` about its centre (bilinear, 0 outside)."""
    if scale == 1.0:
        return b
    n, c, h, w = b.shape
    theta = torch.tensor([[1 / scale, 0, 0], [0, 1 / scale, 0]], dtype=b.dtype,
                         device=b.device).expand(n, 2, 3)
    grid = F.affine_grid(theta, (n, c, h, w), align_corners=False)
    return F.grid_sample(b, grid, align_corners=False)


def align(a: torch.Tensor, b: torch.Tensor, radius: int,
          scales: tuple[float, ...] = (1.0,)) -> torch.Tensor:
    """``b`` (N x C x H x W) rescaled by one of ``scales`` and shifted by the integer (dy, dx),
    |dy|, |dx| <= ``radius``, that best matches ``a``: the largest <a, moved b> / |moved b|,
    both taken relative to their image's darkest value (the filled border's value), so the
    match does not depend on how the pixels were normalised. Ties keep the first candidate in
    the order scales, dy, dx (no move wins over an equal move)."""
    n, c, h, w = a.shape
    lo_a = a.amin((1, 2, 3), keepdim=True)
    lo_b = b.amin((1, 2, 3), keepdim=True)
    a0, b0 = a - lo_a, b - lo_b
    best = torch.full((n,), -1.0, dtype=a.dtype, device=a.device)
    out = b0.clone()
    order = sorted(scales, key=lambda s: s != 1.0)  # the unmoved candidate first
    moves = sorted(((dy, dx) for dy in range(-radius, radius + 1)
                    for dx in range(-radius, radius + 1)), key=lambda m: abs(m[0]) + abs(m[1]))
    for scale in order:
        bp = F.pad(rescale(b0, scale), (radius,) * 4)
        for dy, dx in moves:
            s = bp[:, :, radius - dy:radius - dy + h, radius - dx:radius - dx + w]
            score = (a0 * s).sum((1, 2, 3)) / s.pow(2).sum((1, 2, 3)).sqrt().clamp_min(1e-6)
            better = score > best + 1e-6
            best = torch.where(better, score, best)
            out = torch.where(better[:, None, None, None], s, out)
    return out + lo_b


class PairVerifier(nn.Module):
    def __init__(self, num_classes: int = 2, in_chans: int = 1, width: int = 16, align: int = 3,
                 scales: tuple[float, ...] | list[float] = (1.0,)):
        super().__init__()
        w, self.radius, self.scales = width, int(align), tuple(float(s) for s in scales)

        def block(i, o, s):
            return nn.Sequential(nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())
        self.body = nn.Sequential(block(2 * in_chans, w, 1), block(w, w, 1), block(w, 2 * w, 2),
                                  block(2 * w, 2 * w, 1), block(2 * w, 4 * w, 2),
                                  block(4 * w, 4 * w, 1))
        self.feature_dim = 4 * w
        self.fc = nn.Linear(4 * w, num_classes)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(left image, right image moved onto it) of a side-by-side batch."""
        if x.shape[-1] % 2:
            raise ValueError(f"pair_verifier: a pair image is two images side by side; its "
                             f"width {x.shape[-1]} is odd")
        half = x.shape[-1] // 2
        a, b = x[..., :half], x[..., half:]
        if self.radius or self.scales != (1.0,):
            with torch.no_grad():
                b = align(a.detach(), b.detach(), self.radius, self.scales)
        return a, b

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.split(x)
        return self.body(torch.cat([a, b], 1)).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


@register_model("pair_verifier", input_size=28, in_chans=1, cpu_sized=True)
def pair_verifier(num_classes: int = 2, in_chans: int = 1, **kwargs) -> nn.Module:
    return PairVerifier(num_classes, in_chans, **kwargs)
