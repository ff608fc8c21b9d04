"""Checkpoints: safetensors + JSON round trip, newest complete one wins, pruning."""

from __future__ import annotations

import json
import os

import pytest
import torch

from semisup_core import checkpoint
from semisup_core.errors import DataError, StorageError
from semisup_core.models import create_model


def _model_and_optim(seed=0):
    torch.manual_seed(seed)
    model = create_model("small_resnet8", 3)
    optim = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    loss = model(torch.randn(4, 1, 28, 28)).sum()
    loss.backward()
    optim.step()  # creates momentum buffers
    return model, optim


def test_round_trip_restores_weights_and_optimizer(tmp_path):
    model, optim = _model_and_optim()
    ckpt = checkpoint.save_checkpoint(str(tmp_path), 10, model, optim, {"history": [1]})
    model2, optim2 = _model_and_optim(seed=1)
    state = checkpoint.restore(ckpt, model2, optim2)
    assert state["step"] == 10 and state["history"] == [1]
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    bufs = [optim.state[p]["momentum_buffer"] for p in model.parameters()]
    bufs2 = [optim2.state[p]["momentum_buffer"] for p in model2.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(bufs, bufs2))


def test_latest_ignores_incomplete_and_prunes_old(tmp_path):
    model, optim = _model_and_optim()
    for step in (5, 10, 15):
        checkpoint.save_checkpoint(str(tmp_path), step, model, optim, {}, keep=2)
    assert [s for s, _ in checkpoint.list_checkpoints(str(tmp_path))] == [10, 15]
    assert not os.path.exists(tmp_path / "checkpoints" / "step-00000005")
    # a crash while writing step 20: weights there, no state.json -> ignored
    partial = tmp_path / "checkpoints" / "step-00000020"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    assert checkpoint.latest(str(tmp_path))[0] == 15
    # the next checkpoint prunes what nothing reads again: a killed one older than the newest
    # complete (its weights and a rank's file) goes; the newer killed one (step 20, which a
    # rerun writes again) stays
    older = tmp_path / "checkpoints" / "step-00000012"
    older.mkdir()
    for name in ("model.safetensors", "extra-rank-00001-of-00002.safetensors"):
        (older / name).write_bytes(b"half")
    checkpoint.save_checkpoint(str(tmp_path), 16, model, optim, {}, keep=2)
    assert [s for s, _ in checkpoint.list_checkpoints(str(tmp_path))] == [15, 16]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [
        "step-00000015", "step-00000016", "step-00000020"]
    assert os.listdir(partial) == ["model.safetensors"]


def test_no_pickle_anywhere(tmp_path):
    model, optim = _model_and_optim()
    ckpt = checkpoint.save_checkpoint(str(tmp_path), 1, model, optim, {})
    json.loads((tmp_path / "checkpoints" / "step-00000001" / "state.json").read_text())
    for name in ("model.safetensors", "optim.safetensors"):
        assert not (open(os.path.join(ckpt, name), "rb").read(2) == b"\x80\x04")  # pickle magic


def test_corrupt_weights_and_missing_model_are_one_line_errors(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="not a valid safetensors file"):
        checkpoint.load_weights(str(tmp_path / "bad.safetensors"))
    with pytest.raises(StorageError, match="no model at"):
        checkpoint.load_model(str(tmp_path / "nothing"))
