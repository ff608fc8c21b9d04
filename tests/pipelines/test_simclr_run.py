"""`semisup stage simclr-run` (and `semisup run simclr` under kfp.local) end to end on tiny IDX
data: every step, the report's table, the linear probe per epoch and the teacher's labels
(smoke tests: the pieces' correctness is tested in tests/simclr)."""

import json
import os

import pytest
import yaml

from semisup.cli import main

pytestmark = pytest.mark.slow

W = {"width": 4}
TINY = {"labels_per_class": 10,
        "baseline": {"model": "small_resnet8", "model_kwargs": W, "epochs": 2, "batch_size": 16,
                     "threads": 1},
        "pretrain": {"model": "small_resnet8", "model_kwargs": W, "objective": "contrastive",
                     "contrastive": {"views": "simclr", "proj_layers": 3, "proj_dim": 16,
                                     "koleo_weight": 0.0, "temperature": 0.2},
                     "epochs": 2, "batch_size": 64, "threads": 1, "snapshot_every_epochs": 1,
                     "optim": {"optimizer": "lars", "lr": 0.075, "lr_scaling": "sqrt"}},
        "finetune": {"model": "small_resnet8", "model_kwargs": {**W, "head_mlp": 1},
                     "zero_init_head": True, "epochs": 3, "batch_size": 16, "threads": 1},
        "distill": {"model": "small_resnet8", "model_kwargs": W, "objective": "distill",
                    "epochs": 1, "batch_size": 64, "threads": 1}}
ROWS = ["supervised baseline", "SimCLR pre-trained + fine-tuned",
        "SimCLR fine-tuned from the encoder", "SimCLR distilled"]


def _cfg(tmp_path, raw, name) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(dict(TINY, out=str(tmp_path / name), **raw)))
    return str(path)


def _check(report, printed):
    for row in ROWS:
        assert f"| {row} |" in printed
    m = json.load(open(report / "metrics.json"))
    assert [e["model"] for e in m["entries"]] == ROWS
    assert [r["epoch"] for r in m["probe"]] == [1, 2]
    assert all(0 <= r["linear_probe_top1"] <= 1 for r in m["probe"])
    sel = m["entries"][-1]["selection"]
    assert sel["pool_images"] == 360 - m["dedup"]["removed"] and sel["coverage"] == 1.0
    assert 0 < sel["distractor_share"] < 1  # every pool image is distilled, digits included
    for name in ("report.md", "report.html", "probe.png", "per_class_recall.png"):
        assert os.path.getsize(report / name) > 0
    return m


def test_simclr_in_process_run(tmp_path, tiny_raw, capsys):
    assert main(["stage", "simclr-run", "--config", _cfg(tmp_path, tiny_raw, "inproc")]) == 0
    run = tmp_path / "inproc" / "seed-0"
    _check(run / "report", capsys.readouterr().out)
    # fine-tuned from the head's first layer: its layer is the pre-trained one, then trained
    state = json.load(open(run / "models" / "finetune" / "state.json"))
    assert state["model"]["kwargs"] == {**W, "head_mlp": 1}
    pre = json.load(open(run / "models" / "pretrain" / "state.json"))
    assert pre["model"]["kwargs"] == {**W, "head_mlp": 2}


def test_simclr_pipeline_runs_end_to_end_locally(tmp_path, tiny_raw, capsys):
    """Under kfp.local every component is a subprocess: the contrastive, train (fine-tuning
    from the head's first layer and from the encoder), distill and report components."""
    assert main(["run", "simclr", "--config", _cfg(tmp_path, tiny_raw, "kfp")]) == 0
    m = _check(tmp_path / "kfp" / "seed-0" / "report", capsys.readouterr().out)
    assert "Dedup: " in open(tmp_path / "kfp" / "seed-0" / "report" / "report.md").read()
    assert m["entries"][1]["arch"] == "small_resnet8 head_mlp=1 width=4"
    assert m["entries"][2]["arch"] == "small_resnet8 head_mlp=0 width=4"
