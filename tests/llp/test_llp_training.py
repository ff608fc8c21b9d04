"""LLP through the one training loop (``objective: llp``) on tiny texture data: it learns and
propagates, resumes exactly with its memory bank and label store, two ranks equal one, and a
bad input is one line."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from semisup_core import checkpoint
from semisup_core.errors import ConfigError
from semisup_core.tables import read_table
from semisup_core.train import train
from semisup_core.train.loop import InjectedFailure
from tests.train.test_train import _cfg, _max_rel_diff, _torchrun, _weights


def _llp(out, data, **kw):
    base = dict(objective="llp", model_kwargs={"width": 8}, epochs=8,
                llp={"embed_dim": 16, "warm_epochs": 1, "k": 5, "density_k": 10},
                optim={"lr": 0.2, "warmup_epochs": 0.5})
    return _cfg(out, data, **{**base, **kw})


def _pseudo(out) -> dict:
    t = read_table(os.path.join(out, "pseudo_labels.parquet")).to_pydict()
    return {k: (y, c, lab) for k, y, c, lab in zip(t["key"], t["label"], t["confidence"],
                                                    t["labelled"])}


def test_llp_propagates_labels_to_the_pool(tmp_path, llp_data):
    train(_llp(tmp_path / "run", llp_data))
    table = _pseudo(tmp_path / "run")
    pool = {k: v for k, v in table.items() if k.startswith("pool-")}
    assert len(table) == 256 and len(pool) == 224
    assert all(lab for k, (_, c, lab) in table.items() if k.startswith("lab-"))
    assert not any(lab for _, _, lab in pool.values())
    labels = np.array([y for y, _, _ in pool.values()])
    truth = np.array([int(k.split("-")[1]) % 4 for k in pool])
    assert (labels >= 0).all()  # every pool image was visited after the warm start
    conf = np.array([c for _, c, _ in pool.values()])
    assert ((conf > 0) & (conf <= 1)).all()
    # measured 0.85 and 0.88 (seeds 0, 1); chance is 0.25
    assert (labels == truth).mean() > 0.6, (labels == truth).mean()
    history = checkpoint.storage.read_json(str(tmp_path / "run" / "metrics.json"))["history"]
    assert history[-1]["coverage"] == 1.0 and history[0]["coverage"] == 0.0
    model, state = checkpoint.load_model(str(tmp_path / "run"))  # what evaluate loads
    assert model.fc.out_features == 4 and state["classes"][0] == "horizontal"


def test_llp_resumes_exactly_with_its_bank_and_labels(tmp_path, llp_data):
    """A crash at step 13 (epoch 2, propagation on) resumes from the checkpoint of step 12;
    L_A over a sampled support (64 of the 256 entries, drawn per step) resumes exactly too."""
    straight = _llp(tmp_path / "straight", llp_data, llp={
        "embed_dim": 16, "warm_epochs": 1, "k": 5, "density_k": 10, "softmax_support": 64})
    train(straight)
    crashed = straight.model_copy(update={"out": str(tmp_path / "crashed"), "fail_at_step": 13})
    with pytest.raises(InjectedFailure):
        train(crashed)
    assert {"llp.bank", "llp.labels", "llp.conf"} <= set(
        checkpoint.load_extra(checkpoint.latest(crashed.out)[1]))
    train(crashed.model_copy(update={"fail_at_step": None}))
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "crashed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _pseudo(tmp_path / "straight") == _pseudo(tmp_path / "crashed")
    # killed right after the checkpoint that ends epoch 1 (step 8): the resumed run starts at
    # epoch 2 and still has epoch 1's round of pseudo-labels, written before that checkpoint
    edge = straight.model_copy(update={"out": str(tmp_path / "edge"), "fail_at_step": 8})
    with pytest.raises(InjectedFailure):
        train(edge)
    assert checkpoint.latest(edge.out)[0] == 8
    train(edge.model_copy(update={"fail_at_step": None}))
    rounds = sorted(os.listdir(tmp_path / "straight" / "pseudo_labels"))
    assert rounds == sorted(os.listdir(tmp_path / "edge" / "pseudo_labels")) and len(rounds) == 8
    for name in rounds:
        assert (read_table(str(tmp_path / "straight" / "pseudo_labels" / name)).to_pydict()
                == read_table(str(tmp_path / "edge" / "pseudo_labels" / name)).to_pydict()), name
    # without its state in the checkpoint the resumed run differs: the test can fail
    lost = straight.model_copy(update={"out": str(tmp_path / "lost"), "fail_at_step": 13})
    with pytest.raises(InjectedFailure):
        train(lost)
    ckpt = checkpoint.latest(lost.out)[1]
    os.remove(os.path.join(ckpt, "extra.safetensors"))
    with pytest.raises(ValueError, match="no LLP state"):
        train(lost.model_copy(update={"fail_at_step": None}))


@pytest.mark.parametrize("bank,init", [("replica", "random"), ("sharded", "random"),
                                       ("sharded", "forward")])
def test_llp_two_processes_match_one(tmp_path, llp_data, bank, init):
    """Every rank holds the bank (replica) or half of it (sharded: L_A's sums per block,
    all-reduced); the batch's rows, embeddings and labels are gathered in rank order, so 2
    ranks x 16 apply what 1 rank x 32 applies (GroupNorm: no per-rank statistics).
    At lr 0.05 the weights agree to 1.6e-5 after 16 steps; at 0.2 float noise is amplified to
    3e-4 (already in the warm-start epoch, before any propagation), with the same pseudo-labels.
    ``bank_init: forward``: each rank embeds half the images, the halves are gathered."""
    cfg = _llp(tmp_path / "ddp", llp_data, epochs=2, optim={"lr": 0.05, "warmup_epochs": 0.5},
               model_kwargs={"width": 8, "norm": "group"}, checkpoint={"every_steps": 100},
               llp={"embed_dim": 16, "warm_epochs": 1, "k": 5, "density_k": 10, "bank": bank,
                    "bank_init": init})
    proc = _torchrun(2, cfg, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train(cfg.model_copy(update={"out": str(tmp_path / "single")}))
    assert _max_rel_diff(_weights(tmp_path / "ddp"), _weights(tmp_path / "single")) < 1e-4
    a, b = _pseudo(tmp_path / "ddp"), _pseudo(tmp_path / "single")
    assert a.keys() == b.keys()
    assert np.mean([a[k][0] == b[k][0] for k in a]) == 1.0


def test_llp_refuses_a_pool_without_labels_and_duplicate_keys(tmp_path, llp_data):
    with pytest.raises(ConfigError, match="objective llp needs a labelled dataset"):
        train(_llp(tmp_path / "a", [llp_data[1]]))
    with pytest.raises(ConfigError, match="occurs twice in the training data"):
        train(_llp(tmp_path / "b", [llp_data[0], llp_data[0]]))


def test_a_warm_start_from_a_supervised_model_propagates_from_the_first_epoch(tmp_path, llp_data):
    """bank_init forward + init_from: the bank holds the starting network's embedding of every
    image before the first step, so the first epoch's pseudo-labels are already informative
    (from random weights and a random bank they are not: the control can fail)."""
    sup = _cfg(tmp_path / "sup", llp_data[0], epochs=40, optim={"lr": 0.4, "warmup_epochs": 0.5},
               batch_size=16)
    train(sup)
    llp = {"embed_dim": 16, "k": 5, "density_k": 10, "bank_init": "forward"}
    train(_llp(tmp_path / "warm", llp_data, epochs=1, init_from=sup.out, llp=llp))
    train(_llp(tmp_path / "cold", llp_data, epochs=1, llp=dict(llp, bank_init="random")))

    def accuracy(run):
        pool = {k: v for k, v in _pseudo(run).items() if k.startswith("pool-")}
        return np.mean([y == int(k.split("-")[1]) % 4 for k, (y, _, _) in pool.items()])
    warm, cold = accuracy(tmp_path / "warm"), accuracy(tmp_path / "cold")
    # measured: 0.92 warm; 0.0 cold (no labelled entry has a density yet: nothing propagates)
    assert warm > 0.8 and warm > cold + 0.2, (warm, cold)
