"""LLP's mathematics against the paper's formulas written out element by element (numpy,
float64, loops): local density (Eq. 7), the density-weighted vote (Eq. 8 + 6), the aggregation
loss (Eq. 2-3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from semisup_core.llp.propagation import aggregation_loss, log_density, propagate

TAU = 0.07


def _unit(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute_rho(bank: np.ndarray, i: int, t: int, mode: str) -> float:
    s = np.array([bank[j] @ bank[i] for j in range(len(bank))])
    top = np.sort(s)[::-1][:t]
    if mode == "off":
        return 1.0
    mass = sum(math.exp(x / TAU) for x in top)
    if mode == "kernel":
        return mass
    return mass / sum(math.exp(x / TAU) for x in s)  # P(j|v_i) normalised over all N


@pytest.mark.parametrize("mode", ["paper", "kernel", "off"])
def test_log_density_is_eq7(mode):
    bank = _unit(300, 16, 0)
    rows = np.array([3, 17, 42, 299, 150])
    got = log_density(torch.from_numpy(bank).float(), torch.from_numpy(rows), TAU, 25, mode)
    want = [math.log(_brute_rho(bank.astype(np.float32).astype(np.float64), i, 25, mode))
            for i in rows]
    assert np.allclose(got.numpy(), want, rtol=1e-5, atol=1e-4)
    # the partition in pieces of at most `block` similarities (one query row of 300 at a time
    # here) gives the same densities: its memory is bounded, not M x N
    small = log_density(torch.from_numpy(bank).float(), torch.from_numpy(rows), TAU, 25, mode,
                        block=10)
    assert torch.allclose(small, got, rtol=0, atol=1e-12)


def _brute_vote(v, keys, labels, rho, k, classes):
    """Eq. 8: the K labelled points with the largest P(i|v)/rho_i vote with that weight."""
    z = sum(math.exp(keys[i] @ v / TAU) for i in range(len(keys)))  # Z(v) over the keys
    score = [math.exp(keys[i] @ v / TAU) / z / rho[i] for i in range(len(keys))]
    best = sorted(range(len(keys)), key=lambda i: -score[i])[:k]
    w = [0.0] * classes
    for i in best:
        w[labels[i]] += score[i]
    p = [x / sum(w) for x in w]
    y = max(range(classes), key=lambda j: p[j])
    return y, p[y]


@pytest.mark.parametrize("density", [True, False])
def test_propagate_is_the_density_weighted_vote_of_eq8(density):
    keys, queries = _unit(60, 8, 1), _unit(25, 8, 2)
    labels = np.random.default_rng(3).integers(0, 4, 60)
    rho = np.random.default_rng(4).uniform(0.05, 1.0, 60) if density else np.ones(60)
    y, c = propagate(torch.from_numpy(queries).float(), torch.from_numpy(keys).float(),
                     torch.from_numpy(labels), torch.from_numpy(np.log(rho)), TAU, 10, 4)
    k32 = keys.astype(np.float32).astype(np.float64)
    q32 = queries.astype(np.float32).astype(np.float64)
    for b in range(len(queries)):
        want_y, want_c = _brute_vote(q32[b], k32, labels, rho, 10, 4)
        assert int(y[b]) == want_y
        assert float(c[b]) == pytest.approx(want_c, rel=1e-4)


def test_density_changes_the_neighbours_not_only_their_weights():
    """A labelled point in a dense region loses its vote to a farther one in a sparse region:
    the plain vote and the density-weighted vote disagree (the test can fail)."""
    keys = np.array([[1.0, 0.0], [0.0, 1.0]])
    v = np.array([[0.8, 0.6]])  # nearer to key 0
    labels = torch.tensor([0, 1])
    args = (torch.tensor(v).float(), torch.tensor(keys).float(), labels)
    y_plain, _ = propagate(*args, torch.zeros(2, dtype=torch.float64), TAU, 1, 2)
    y_dens, _ = propagate(*args, torch.tensor([math.log(1.0), math.log(1e-3)]), TAU, 1, 2)
    assert (int(y_plain[0]), int(y_dens[0])) == (0, 1)


def test_aggregation_loss_is_eq3():
    bank, v = _unit(50, 8, 5), _unit(6, 8, 6)
    bank_labels = np.random.default_rng(7).integers(-1, 3, 50)
    labels = np.array([0, 1, 2, -1, 0, -1])
    own = np.array([4, 9, 11, 20, 30, 49])
    got = aggregation_loss(torch.from_numpy(v).float(), torch.from_numpy(bank).float(),
                           torch.from_numpy(bank_labels), torch.from_numpy(labels),
                           torch.from_numpy(own), TAU)
    b32, v32 = (x.astype(np.float32).astype(np.float64) for x in (bank, v))
    for n in range(len(v)):
        p = [math.exp(b32[i] @ v32[n] / TAU) for i in range(50)]
        a = [i for i in range(50) if (labels[n] >= 0 and bank_labels[i] == labels[n]) or i == own[n]]
        want = -math.log(sum(p[i] for i in a) / sum(p))
        assert float(got[n]) == pytest.approx(want, rel=1e-4, abs=1e-4)


def test_aggregation_loss_has_the_gradient_of_the_formula():
    bank = torch.from_numpy(_unit(20, 4, 8)).double()
    v = torch.from_numpy(_unit(3, 4, 9)).double().requires_grad_(True)
    labels, bank_labels = torch.tensor([0, -1, 1]), torch.randint(-1, 2, (20,))
    own = torch.tensor([1, 2, 3])

    def f(x):
        return aggregation_loss(x, bank, bank_labels, labels, own, TAU).sum()
    assert torch.autograd.gradcheck(lambda x: f(x).double(), (v,), eps=1e-6, atol=1e-4)


def test_aggregation_loss_over_a_sampled_support_is_the_ratio_estimate():
    """With a subset S of the bank, each sum over the other entries is (N-1)/|S minus own|
    times its sum over S; the image's own entry counts exactly once (whether in S or not)."""
    bank, v = _unit(40, 8, 10), _unit(4, 8, 11)
    bank_labels = np.random.default_rng(12).integers(-1, 3, 40)
    labels, own = np.array([0, 2, -1, 1]), np.array([5, 7, 9, 30])
    support = np.array([1, 5, 8, 9, 13, 21, 22, 30, 33, 39])  # holds rows 5, 9, 30 but not 7
    got = aggregation_loss(torch.from_numpy(v).float(), torch.from_numpy(bank).float(),
                           torch.from_numpy(bank_labels), torch.from_numpy(labels),
                           torch.from_numpy(own), TAU, torch.from_numpy(support))
    b32, v32 = (x.astype(np.float32).astype(np.float64) for x in (bank, v))
    for n in range(len(v)):
        others = [j for j in support if j != own[n]]
        s = 39 / len(others)
        e = {j: math.exp(b32[j] @ v32[n] / TAU) for j in range(40)}
        den = s * sum(e[j] for j in others) + e[own[n]]
        num = s * sum(e[j] for j in others if labels[n] >= 0 and bank_labels[j] == labels[n]) + e[own[n]]
        assert float(got[n]) == pytest.approx(math.log(den / num), rel=1e-4, abs=1e-4)


def test_the_keys_llpstate_keeps_current_equal_a_fresh_build():
    """LLPState moves only the rows a step changes in its propagation keys; after several steps
    (labelled rows among them) they equal [bank rows, -τ log ρ] built anew, and so do the
    pseudo-labels they give."""
    from semisup_core.llp.objective import LLPConfig, LLPState
    from semisup_core.llp.propagation import score_keys
    cfg = LLPConfig(embed_dim=8, k=3, density="kernel", density_k=5)
    state = LLPState(cfg, 60, 4, 0, torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    lab_rows = torch.arange(0, 60, 5)
    state.labels[lab_rows] = lab_rows % 4
    state.labelled[lab_rows] = True
    state.refresh_density()
    for step in range(6):
        rows = torch.randperm(60, generator=g)[:16]
        v = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=1)
        labels = torch.where(state.labelled[rows], state.labels[rows], -1)
        state.update(rows, v, torch.zeros(16, 4), labels, propagate=True)
    fresh = score_keys(state.bank[state.rho_rows], state.log_rho, cfg.temperature)
    assert torch.equal(state.scored, fresh)
    q = torch.nn.functional.normalize(torch.randn(7, 8, generator=g), dim=1)
    kept = propagate(q, state.bank[state.rho_rows], state.labels[state.rho_rows], state.log_rho,
                     cfg.temperature, cfg.k, 4)
    from semisup_core.llp.propagation import propagate_scored
    assert all(torch.equal(a, b) for a, b in zip(
        kept, propagate_scored(q, state.scored, state.key_labels, cfg.temperature, cfg.k)))


@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.0, 1.0), (1.0, 0.0), (0.5, 2.0)])
def test_the_loss_is_the_weighted_sum_of_la_and_lc(weights):
    """Eq. 4 with the ablation weights: aggregation_weight · mean(c·L_A) + category_weight ·
    mean(c·L_C), L_A as aggregation_loss gives it and L_C the cross-entropy on the stored
    (pseudo-)labels; with aggregation_weight 0 the embedding head's gradient is zero."""
    from semisup_core.llp.objective import LLPConfig, LLPState
    from semisup_core.llp.propagation import aggregation_loss
    agg, cat = weights
    cfg = LLPConfig(embed_dim=8, aggregation_weight=agg, category_weight=cat)
    state = LLPState(cfg, 40, 4, 0, torch.device("cpu"))
    g = torch.Generator().manual_seed(3)
    state.labels[:] = torch.randint(0, 4, (40,), generator=g)
    state.conf[:] = torch.rand(40, generator=g)
    rows = torch.arange(10, 22)
    labels = torch.where(rows < 14, state.labels[rows], -1)  # four labelled, eight pseudo
    v = torch.nn.functional.normalize(torch.randn(12, 8, generator=g), dim=1).requires_grad_()
    logits = torch.randn(12, 4, generator=g)
    got, _ = state.loss(v, logits, rows, labels, warm=False)
    y = state.labels[rows]
    c = torch.where(labels >= 0, 1.0, state.conf[rows])
    l_a = aggregation_loss(v, state.bank, state.labels, y, rows, cfg.temperature)
    l_c = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    want = agg * (c * l_a).mean() + cat * (c * l_c).mean()
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    got.backward()
    assert (v.grad.abs().sum() == 0) == (agg == 0)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"aggregation_weight": 0, "warm_epochs": 1}, "need aggregation_weight > 0"),
    ({"aggregation_weight": 0, "category_weight": 0}, "nothing to train"),
])
def test_ablation_weights_that_train_nothing_are_refused(kwargs, fragment):
    from semisup_core.llp.objective import LLPConfig
    with pytest.raises(ValueError, match=fragment):
        LLPConfig(**kwargs)
