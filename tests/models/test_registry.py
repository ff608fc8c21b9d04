"""Every registered model: output shape, features, backward, no NaN, determinism."""

from __future__ import annotations

import pytest
import torch

from semisup_core.errors import ConfigError
from semisup_core.models import create_model, list_models, model_info


def _input(name: str, n: int = 2) -> torch.Tensor:
    info = model_info(name)
    side = info.input_size if info.cpu_sized else 64  # cluster nets pool globally: 64px is enough
    return torch.randn(n, info.in_chans, side, side, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", list_models())
def test_shapes_backward_and_finite(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7)
    x = _input(name)
    logits = model(x)
    assert logits.shape == (2, 7)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.feature_dim)
    logits.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", list_models(cpu_sized=True))
def test_deterministic_under_a_seed(name):
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = create_model(name, num_classes=5).eval()
        outs.append(model(_input(name)))
    assert torch.equal(outs[0], outs[1])
    torch.manual_seed(124)
    assert not torch.equal(create_model(name, num_classes=5).eval()(_input(name)), outs[0])


def test_grayscale_stem_for_cluster_models():
    model = create_model("resnet18", num_classes=3, in_chans=1)
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 3)


def test_unknown_model_is_a_one_line_error():
    with pytest.raises(ConfigError, match="unknown model 'resnet9000'; known: .*small_resnet8"):
        create_model("resnet9000", 10)
