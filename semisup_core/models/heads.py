"""Heads on top of a registry model's pooled features, shared by the methods.

``head_mlp=k`` (a ``model_kwargs`` entry of any registry model) puts ``k`` hidden layers
(Linear without bias, BatchNorm, ReLU; width = the features') between the pooled features and
the classifier: SimCLRv2's fine-tuning "from the middle of the projection head" (Chen et al.
2020, §2.2: f_task(x) = W_task σ(W_MLP1 f(x))). A SimCLR pre-training run holds its projection
head's hidden layers there (``ProjectionHead`` adds the output layer), so a fine-tuning run
picks its starting layer by its own ``head_mlp`` (0: the encoder; 1: the head's first layer)
from the same pre-trained weights (``train.loop._init_from`` maps the names).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def hidden_layer(width: int) -> nn.Sequential:
    """One hidden layer of SimCLRv2's projection head: Linear (no bias), BN, ReLU."""
    layer = nn.Sequential(nn.Linear(width, width, bias=False), nn.BatchNorm1d(width),
                          nn.ReLU(inplace=True))
    nn.init.normal_(layer[0].weight, std=0.01)  # the reference code's dense init
    return layer


class WithHeadLayers(nn.Module):
    """A registry model whose features pass ``layers`` hidden head layers before its
    classifier. ``net`` keeps everything but the classifier, which moves to ``fc``."""

    def __init__(self, net: nn.Module, layers: int):
        super().__init__()
        self.feature_dim = net.feature_dim
        self.fc = net.fc
        net.fc = nn.Identity()
        self.net = net
        self.mlp = nn.Sequential(*[hidden_layer(self.feature_dim) for _ in range(layers)])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.net.forward_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


class ProjectionHead(nn.Module):
    """SimCLRv2's projection head over a ``WithHeadLayers`` model: its hidden layers are the
    model's ``mlp``; this adds the output layer (Linear without bias to ``dim``, BN with a
    scale and no shift, no ReLU) and L2-normalises. ``net`` is what the final model holds."""

    def __init__(self, net: nn.Module, dim: int = 128):
        super().__init__()
        self.net = net
        self.out = nn.Linear(net.feature_dim, dim, bias=False)
        nn.init.normal_(self.out.weight, std=0.01)
        self.bn = nn.BatchNorm1d(dim, affine=False)
        self.scale = nn.Parameter(torch.ones(dim))  # BN's gamma (the reference code: center=False)
        self.feature_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.bn(self.out(self.net.forward_features(x))) * self.scale
        return F.normalize(z.float(), dim=1)


def strip_wrapper(weights: dict[str, torch.Tensor], own: dict[str, torch.Tensor]
                  ) -> dict[str, torch.Tensor]:
    """Weights of a ``WithHeadLayers`` model renamed for the bare model when ``own`` (the model
    to load into) has no head layers: ``net.X`` -> ``X``, the classifier ``fc`` kept (its shape
    decides whether it loads), the head's layers left out."""
    if not any(k.startswith("mlp.") for k in weights) or any(k.startswith("mlp.") for k in own):
        return weights
    return {k[len("net."):] if k.startswith("net.") else k: v for k, v in weights.items()
            if not k.startswith("mlp.")}
