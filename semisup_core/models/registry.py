"""The registry itself (timm-style): a decorator and a factory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from semisup_core.errors import ConfigError


@dataclass(frozen=True)
class ModelInfo:
    name: str
    factory: Callable[..., nn.Module]
    input_size: int  # recommended square input side in pixels
    in_chans: int  # recommended input channels
    cpu_sized: bool  # small enough to train on two CPU cores


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(name: str, *, input_size: int, in_chans: int = 3, cpu_sized: bool = False):
    """Register ``fn(num_classes, in_chans, **kw) -> nn.Module`` under ``name``."""
    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelInfo(name, fn, input_size, in_chans, cpu_sized)
        return fn
    return deco


def list_models(cpu_sized: bool | None = None) -> list[str]:
    """Registered names, sorted; filter on ``cpu_sized`` when given."""
    return sorted(n for n, i in _REGISTRY.items() if cpu_sized is None or i.cpu_sized == cpu_sized)


def model_info(name: str) -> ModelInfo:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, num_classes: int, in_chans: int | None = None, **kwargs) -> nn.Module:
    """Build a registered model with a fresh ``num_classes``-way head; ``head_mlp=k`` adds k
    hidden layers before the classifier (``heads.WithHeadLayers``, any model)."""
    info = model_info(name)
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    layers = kwargs.pop("head_mlp", 0)
    if not isinstance(layers, int) or layers < 0:
        raise ConfigError(f"head_mlp must be a whole number >= 0, got {layers!r}")
    model = info.factory(num_classes=num_classes, in_chans=in_chans or info.in_chans, **kwargs)
    if layers:
        from semisup_core.models.heads import WithHeadLayers
        model = WithHeadLayers(model, layers)
    return model
