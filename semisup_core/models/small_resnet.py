"""CPU-sized ResNets for 28x28 inputs (Fashion-MNIST, MNIST).

A 3x3 stem without pooling keeps the full 28x28 resolution for the first stage
(torchvision's 7x7/stride-2 stem + max-pool would shrink 28x28 to 7x7 at once).
Three stages of basic blocks, widths ``w, 2w, 4w``, strides 1, 2, 2:
28x28 -> 28x28 -> 14x14 -> 7x7, then global average pooling.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from semisup_core.models.registry import register_model


def make_norm(kind: str, channels: int) -> nn.Module:
    """BatchNorm (default) or GroupNorm with 8 channels per group.

    GroupNorm does not depend on the batch, so N DDP replicas compute exactly what one
    process computes on the global batch (no SyncBatchNorm needed, which has no CPU kernel).
    """
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(max(1, channels // 8), channels)
    raise ValueError(f"norm must be 'batch' or 'group', got {kind!r}")


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str = "batch"):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = make_norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = make_norm(norm, cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          make_norm(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class GeM(nn.Module):
    """Generalised-mean pooling (Radenovic et al. 2018): ``mean(x^p)^(1/p)`` over H x W;
    p=1 is average pooling, p -> inf max pooling; SSCD uses a fixed p=3."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p, self.eps = p, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: N x C x H x W (after a ReLU, so >= 0) -> N x C
        return x.clamp_min(self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


class SmallResNet(nn.Module):
    """ResNet for small images; ``depth`` blocks per stage, base width ``width``,
    ``norm`` "batch" or "group"; ``pool`` "avg" or "gem", and ``embed_dim`` > 0 adds a linear
    layer after the pooling (the features are then ``embed_dim`` wide)."""

    def __init__(self, num_classes: int, in_chans: int = 1, width: int = 16, depth: int = 1,
                 dropout: float = 0.0, norm: str = "batch", pool: str = "avg",
                 embed_dim: int = 0):
        super().__init__()
        if pool not in ("avg", "gem"):
            raise ValueError(f"pool must be 'avg' or 'gem', got {pool!r}")
        self.stem = nn.Sequential(nn.Conv2d(in_chans, width, 3, 1, 1, bias=False),
                                  make_norm(norm, width), nn.ReLU(inplace=True))
        stages, cin = [], width
        for i, mult in enumerate((1, 2, 4)):
            cout = width * mult
            blocks = [BasicBlock(cin, cout, 1 if i == 0 else 2, norm)]
            blocks += [BasicBlock(cout, cout, 1, norm) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.pool = GeM() if pool == "gem" else None
        self.embed = nn.Linear(cin, embed_dim) if embed_dim else None
        self.feature_dim = embed_dim or cin
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.feature_dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for block in self.modules():  # zero-init the last BN of each block (Goyal et al. 2017)
            if isinstance(block, BasicBlock):
                nn.init.zeros_(block.bn2.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # x: N x C x H x W -> N x feature_dim
        f = self.stages(self.stem(x))  # N x 4w x H/4 x W/4
        f = self.pool(f) if self.pool is not None else f.mean(dim=(2, 3))
        return self.embed(f) if self.embed is not None else f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.forward_features(x)))  # N x num_classes


@register_model("small_resnet8", input_size=28, in_chans=1, cpu_sized=True)
def small_resnet8(num_classes: int, in_chans: int = 1, **kw) -> SmallResNet:
    """~0.08M params at width 16: the fast student/baseline for the demo."""
    return SmallResNet(num_classes, in_chans, width=kw.pop("width", 16), depth=1, **kw)


@register_model("small_resnet14", input_size=28, in_chans=1, cpu_sized=True)
def small_resnet14(num_classes: int, in_chans: int = 1, **kw) -> SmallResNet:
    """Two blocks per stage at width 32 (~0.7M params): a stronger CPU teacher."""
    return SmallResNet(num_classes, in_chans, width=kw.pop("width", 32), depth=2, **kw)
