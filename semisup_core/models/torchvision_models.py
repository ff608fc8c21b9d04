"""torchvision ResNet / ResNeXt for cluster-scale runs (224 px inputs).

Weights are never downloaded: models start from random init or from a checkpoint
in the store (``train.init_from``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torchvision.models as tvm

from semisup_core.models.registry import register_model


class TorchvisionClassifier(nn.Module):
    """Wraps a torchvision ResNet so it also exposes ``forward_features``."""

    def __init__(self, net: nn.Module, in_chans: int):
        super().__init__()
        if in_chans != 3:  # e.g. grayscale input: replace the stem conv
            old = net.conv1
            net.conv1 = nn.Conv2d(in_chans, old.out_channels, old.kernel_size, old.stride,
                                  old.padding, bias=False)
        self.feature_dim = net.fc.in_features
        self.fc = net.fc
        net.fc = nn.Identity()
        self.net = net

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # N x feature_dim (after global average pooling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def _register(name: str, builder) -> None:
    @register_model(name, input_size=224, in_chans=3)
    def factory(num_classes: int, in_chans: int = 3, **kw) -> TorchvisionClassifier:
        return TorchvisionClassifier(builder(weights=None, num_classes=num_classes, **kw), in_chans)
    factory.__name__ = name


for _name, _builder in {
    "resnet18": tvm.resnet18,
    "resnet50": tvm.resnet50,
    "resnext50_32x4d": tvm.resnext50_32x4d,
    "resnext101_32x8d": tvm.resnext101_32x8d,
}.items():
    _register(_name, _builder)
