"""`semisup run llp` end to end under kfp.local on tiny IDX data (every component a subprocess,
the deduplicated pool, the LLP report), and the in-process run on the same data giving the same
table layout (smoke tests: LLP's correctness is tested in tests/llp)."""

import json
import os

import pytest
import yaml

from semisup.cli import main

pytestmark = pytest.mark.slow

TINY = {"labels_per_class": 10,
        "baseline": {"model": "small_resnet8", "model_kwargs": {"width": 4}, "epochs": 2,
                     "batch_size": 16, "threads": 1},
        "llp": {"model": "small_resnet8", "model_kwargs": {"width": 4}, "objective": "llp",
                "epochs": 3, "batch_size": 32, "threads": 1,
                "llp": {"embed_dim": 16, "warm_epochs": 1, "k": 5, "density_k": 10,
                        "softmax_support": 200}},
        "finetune": {"epochs": 2, "batch_size": 16, "threads": 1}}
ROWS = ["supervised baseline", "LLP", "LLP, fine-tuned on the labels"]


def _cfg(tmp_path, raw, name) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(dict(TINY, out=str(tmp_path / name), **raw)))
    return str(path)


def test_llp_pipeline_runs_end_to_end_locally(tmp_path, tiny_raw, capsys):
    assert main(["run", "llp", "--config", _cfg(tmp_path, tiny_raw, "kfp")]) == 0
    printed = capsys.readouterr().out
    assert all(f"| {row} |" in printed for row in ROWS) and "Dedup: " in printed
    report = tmp_path / "kfp" / "seed-0" / "report"
    m = json.load(open(report / "metrics.json"))
    assert [e["model"] for e in m["entries"]] == ROWS
    sel = m["entries"][1]["selection"]
    # the pool: 400 - 100 labelled Fashion-MNIST-like images + 60 distractors, less dedup's removals
    assert sel["pool_images"] == 360 - m["dedup"]["removed"] and sel["coverage"] == 1.0
    assert 0 <= sel["precision"] <= 1 and 0 <= sel["distractor_share"] <= 1
    assert [r["epoch"] for r in m["rounds"]] == [1, 2, 3]
    assert m["rounds"][0]["coverage"] == 0.0  # the warm-start epoch labels nothing
    for name in ("report.md", "report.html", "rounds.png", "per_class_recall.png"):
        assert os.path.getsize(report / name) > 0


def test_llp_in_process_run_writes_the_same_report(tmp_path, tiny_raw, capsys):
    assert main(["stage", "llp-run", "--config", _cfg(tmp_path, tiny_raw, "inproc")]) == 0
    m = json.load(open(tmp_path / "inproc" / "seed-0" / "report" / "metrics.json"))
    assert [e["model"] for e in m["entries"]] == ROWS
    assert m["entries"][1]["selection"]["coverage"] == 1.0 and len(m["rounds"]) == 3
    # the fine-tuning starts from LLP's network (its architecture) and trains on the labels alone
    models = tmp_path / "inproc" / "seed-0" / "models"
    ft = yaml.safe_load(open(models / "llp-finetuned" / "config.yaml"))
    assert ft["init_from"] == str(models / "llp") and ft["objective"] == "supervised"
    assert [p.rsplit("/", 1)[-1] for p in ft["data"]["train"]] == ["labelled"]


def test_llp_run_refuses_an_inferred_fine_tuning(tmp_path, tiny_raw, capsys):
    raw = dict(tiny_raw, finetune={"labels": "inferred"})
    assert main(["stage", "llp-run", "--config", _cfg(tmp_path, raw, "bad")]) != 0
    assert "finetune.labels must be true" in capsys.readouterr().err
