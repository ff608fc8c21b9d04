"""A memory bank sharded over ranks (``llp.bank: sharded``): the mathematics of each block
against the whole bank in one process, and training on 2 ranks with half the bank each: the
same run as one process, a killed run resumed exactly, its checkpoint read by another number of
ranks."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from semisup_core import checkpoint
from semisup_core.llp.propagation import aggregation_loss, log_density
from semisup_core.train import train
from tests.llp.sharded_ranks import problem
from tests.llp.test_llp_training import _llp, _pseudo
from tests.ranks import run_ranks
from tests.train.test_train import _max_rel_diff, _torchrun, _weights


@pytest.mark.parametrize("world", [2, 3])
def test_each_block_sums_to_the_whole_bank_with_gradients(tmp_path, world):
    """97 entries over 2 or 3 ranks (uneven blocks; with a sampled support the last block holds
    none of it): L_A of every query, its gradient, and log ρ equal the whole bank's."""
    run_ranks("tests/llp/sharded_ranks.py", world, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank-{r}.pt") for r in range(world)]
    bank, bank_labels, v, own, labels, support, labelled = problem()
    for name, sup in (("full", None), ("support", support)):
        q = v.clone().requires_grad_(True)
        want = aggregation_loss(q, bank, bank_labels, labels, own, 0.07, sup)
        want.sum().backward()
        got = torch.cat([r[name][0] for r in ranks])
        assert torch.allclose(got, want.detach(), rtol=1e-12, atol=1e-12), name
        # each rank's queries get the gradient of the sum of all ranks' losses (DDP then
        # averages what the ranks' parameters receive)
        grad = torch.cat([r[name][1] for r in ranks])
        assert torch.allclose(grad, q.grad, rtol=1e-10, atol=1e-12), name
    for mode in ("paper", "kernel"):
        want = log_density(bank.float(), labelled, 0.07, 25, mode)
        for r in ranks:
            assert torch.allclose(r[mode], want, rtol=1e-6, atol=1e-6), mode


def _sharded(out, data, **kw):
    return _llp(out, data, epochs=2, optim={"lr": 0.05, "warmup_epochs": 0.5},
                model_kwargs={"width": 8, "norm": "group"}, **kw)


def test_two_ranks_hold_half_the_bank_and_resume_exactly(tmp_path, llp_data):
    """Killed after step 11 (epoch 2: propagation on, a checkpoint at step 8) and rerun on 2
    ranks: the same weights and pseudo-labels as an uninterrupted 2-rank run; each rank's file
    holds its half of the bank; the same checkpoint resumed by one process (the blocks
    reassembled) ends as the 2-rank run within float noise."""
    straight = _sharded(tmp_path / "straight", llp_data)
    assert _torchrun(2, straight, tmp_path).returncode == 0
    crashed = straight.model_copy(update={"out": str(tmp_path / "crashed"), "fail_at_step": 11})
    assert _torchrun(2, crashed, tmp_path).returncode != 0
    step, ckpt = checkpoint.latest(crashed.out)
    assert step == 8
    blocks = [read() for read in checkpoint.rank_extras(ckpt)]
    assert [int(b["llp.bank_lo"][0]) for b in blocks] == [0, 128]
    assert [len(b["llp.bank_block"]) for b in blocks] == [128, 128]  # 256 images, half each
    assert "llp.bank" not in checkpoint.load_extra(ckpt)  # no rank writes the whole bank
    single = straight.model_copy(update={"out": str(tmp_path / "single")})
    os.makedirs(single.out)
    shutil.copytree(os.path.join(crashed.out, "checkpoints"), os.path.join(single.out, "checkpoints"))
    proc = _torchrun(2, crashed.model_copy(update={"fail_at_step": None}), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "crashed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _pseudo(tmp_path / "straight") == _pseudo(tmp_path / "crashed")
    train(single)  # one process from the 2-rank checkpoint
    assert _max_rel_diff(_weights(tmp_path / "single"), a) < 1e-4
    p, s = _pseudo(tmp_path / "single"), _pseudo(tmp_path / "straight")
    assert p.keys() == s.keys() and all(p[k][0] == s[k][0] for k in p)


def test_a_checkpoint_without_its_rank_files_is_refused(tmp_path, llp_data):
    cfg = _sharded(tmp_path / "run", llp_data, fail_at_step=9)
    assert _torchrun(2, cfg, tmp_path).returncode != 0
    ckpt = checkpoint.latest(cfg.out)[1]
    os.remove(os.path.join(ckpt, "extra-rank-00001-of-00002.safetensors"))
    with pytest.raises(ValueError, match=r"no LLP state \(llp.bank: 128 of rows 0-256"):
        train(cfg.model_copy(update={"fail_at_step": None}))  # one process: needs all rows
