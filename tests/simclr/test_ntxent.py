"""NT-Xent (SimCLR's loss, Chen et al. 2020 eq. 1) against its formula written out, on one rank
and with the negatives of two ranks under torchrun (loss and gradients)."""

from __future__ import annotations

import pytest
import torch

from semisup_core.train.objectives import ContrastiveConfig, contrastive_loss
from tests.ranks import run_ranks


def nt_xent_brute(z1: torch.Tensor, z2: torch.Tensor, t: float,
                  anchors: list[int] | None = None) -> torch.Tensor:
    """The paper's loss term by term: 2N views z_1..z_2N (z1's then z2's), the positive of k is
    its other view, l(i, j) = -log exp(s_ij/t) / sum_{k != i} exp(s_ik/t), averaged over all
    2N ordered positive pairs (or over ``anchors``); s = cosine similarity. Loops, float64,
    differentiable."""
    z = torch.cat([z1, z2])
    n2 = len(z)
    terms = []
    for i in range(n2) if anchors is None else anchors:
        j = (i + n2 // 2) % n2
        sim = [torch.dot(z[i], z[k]) / (z[i].norm() * z[k].norm()) for k in range(n2)]
        denom = sum(torch.exp(sim[k] / t) for k in range(n2) if k != i)
        terms.append(-torch.log(torch.exp(sim[j] / t) / denom))
    return sum(terms) / len(terms)


def _views(n, d, seed=0):
    """Two views' raw head outputs (not unit norm: the cosine's normalisation is in the graph,
    as ``ProjectionHead`` puts it before the loss)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64),
            torch.randn(n, d, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_nt_xent_of_one_rank_is_the_formula(t):
    z1, z2 = _views(6, 5)
    z = torch.cat([z1, z2]).requires_grad_(True)
    loss, _ = contrastive_loss(torch.nn.functional.normalize(z, dim=1),
                               ContrastiveConfig(temperature=t, koleo_weight=0.0), rank=0)
    ref_z = torch.cat([z1, z2]).requires_grad_(True)
    ref = nt_xent_brute(ref_z[:6], ref_z[6:], t)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    loss.backward()
    ref.backward()
    assert torch.allclose(z.grad, ref_z.grad, rtol=1e-10, atol=1e-12)


def test_nt_xent_across_two_ranks_is_the_formula_with_gradients(tmp_path):
    """8 images, 4 per rank: each rank's loss is the mean over its anchors against all 16
    views; their mean is the formula's, and the gradients the views receive (through the
    gather's backward, summed over ranks, then averaged as DDP does) are the formula's."""
    n, d, t = 8, 6, 0.2
    run_ranks("tests/simclr/ntxent_ranks.py", 2, str(tmp_path), str(n), str(d), str(t))
    ranks = [torch.load(tmp_path / f"rank-{r}.pt") for r in range(2)]
    z1, z2 = _views(n, d)
    ref_z = torch.cat([z1, z2]).requires_grad_(True)
    ref = nt_xent_brute(ref_z[:n], ref_z[n:], t)
    ref.backward()
    mean_loss = sum(r["loss"] for r in ranks) / 2
    assert mean_loss.item() == pytest.approx(ref.item(), rel=1e-12)
    for r, out in enumerate(ranks):  # rank r holds images 4r..4r+3, views 1 then views 2
        mine = torch.cat([torch.arange(4 * r, 4 * r + 4), n + torch.arange(4 * r, 4 * r + 4)])
        assert torch.allclose(out["grad"] / 2, ref_z.grad[mine], rtol=1e-10, atol=1e-12)
    # the gather's backward matters: rank 0's own anchors alone (the other rank's views as
    # constants, what a plain all_gather gives) would send its views another gradient
    own_z = torch.cat([z1, z2]).requires_grad_(True)
    own = nt_xent_brute(own_z[:n], own_z[n:], t, anchors=[0, 1, 2, 3, 8, 9, 10, 11])
    own.backward()
    mine = torch.cat([torch.arange(4), n + torch.arange(4)])
    assert (ranks[0]["grad"] - own_z.grad[mine]).abs().max() > 1e-3
