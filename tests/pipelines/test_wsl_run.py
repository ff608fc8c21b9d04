"""`semisup stage wsl-run` (and `semisup run wsl` under kfp.local) end to end on tiny IDX data:
SIMULATED tags, synsets, weak pre-training, fine-tuning, the teacher/student variants and the
report's rows and banner (smoke tests: the pieces' correctness is tested in tests/wsl and
tests/teacher_student)."""

import json
import os

import pytest
import yaml

from semisup.cli import main

pytestmark = pytest.mark.slow

W = {"width": 4}
TINY = {"labels_per_class": 10,
        "synsets": {"vocabulary": "top", "top_n": 50, "draws": 2},
        "baseline": {"model": "small_resnet8", "model_kwargs": W, "epochs": 2, "batch_size": 16,
                     "threads": 1},
        "pretrain": {"model": "small_resnet8", "model_kwargs": W, "objective": "weak",
                     "epochs": 1, "batch_size": 64, "threads": 1},
        "finetune": {"model": "small_resnet8", "model_kwargs": W, "zero_init_head": True,
                     "epochs": 2, "batch_size": 16, "threads": 1},
        "student": {"model": "small_resnet8", "model_kwargs": W, "epochs": 1, "batch_size": 32,
                    "threads": 1},
        "student_finetune": {"epochs": 1, "batch_size": 16, "threads": 1},
        "selection": {"top_p": 10, "k": 10}}
BASE_ROWS = ["supervised baseline", "WSL pre-trained + fine-tuned"]
TS_ROWS = ["teacher/student (supervised teacher)", "semi-weak teacher/student",
           "semi-weak, tag candidates ranked", "semi-weak, balanced-with-tags (random)"]


def _cfg(tmp_path, raw, name, **extra) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(dict(TINY, out=str(tmp_path / name), **raw, **extra)))
    return str(path)


def _check(report, printed, rows):
    for row in rows:
        assert f"| {row} |" in printed
    m = json.load(open(report / "metrics.json"))
    assert [e["model"] for e in m["entries"]] == rows
    assert all(0 <= e["top1"] <= 1 for e in m["entries"])
    md = open(report / "report.md").read()
    assert "The pool's tags are SIMULATED from the hidden labels" in md
    assert md.index("SIMULATED") < md.index("| model |")  # the banner above everything
    sim = m["tags_simulated"]
    assert sim["seed"] == 0 and sim["noise_rate"] == 0.3 and 0 < sim["noise_measured"] < 1
    syn = m["synsets"]
    assert syn["images"] == 360 - m["dedup"]["removed"]  # the deduplicated pool, tagged
    assert syn["train"]["samples"] == 2 * syn["images_with_labels"]  # draws: 2
    assert syn["candidates"]["rows"] > 0
    assert 0 <= m["probe"] <= 1
    for e in m["entries"][len(BASE_ROWS):]:  # every student's selection, through the oracle
        assert e["selection"]["precision"] is not None
    for e in m["entries"][-2:]:  # the tag-restricted ones: the candidates' own precision too
        assert e["selection"]["candidates"]["precision"] is not None
    for name in ("report.md", "report.html", "per_class_recall.png"):
        assert os.path.getsize(report / name) > 0
    return m


def test_wsl_in_process_run(tmp_path, tiny_raw, capsys):
    assert main(["stage", "wsl-run", "--config", _cfg(tmp_path, tiny_raw, "inproc")]) == 0
    run = tmp_path / "inproc" / "seed-0"
    _check(run / "report", capsys.readouterr().out, BASE_ROWS + TS_ROWS)
    pre = json.load(open(run / "models" / "pretrain" / "state.json"))
    ft = json.load(open(run / "models" / "finetune" / "state.json"))
    assert pre["model"]["num_classes"] > 10 == ft["model"]["num_classes"]  # synsets -> classes


def test_wsl_pipeline_runs_end_to_end_locally(tmp_path, tiny_raw, capsys):
    """Under kfp.local every component is a subprocess: synsets (simulated tags), weak-train,
    train (baseline, fine-tuning from the weak model, the students), score, select (with the
    tag restriction), evaluate and wsl-report."""
    assert main(["run", "wsl", "--config", _cfg(tmp_path, tiny_raw, "kfp")]) == 0
    printed = capsys.readouterr().out
    m = _check(tmp_path / "kfp" / "seed-0" / "report", printed, BASE_ROWS + TS_ROWS)
    assert "SIMULATED" in printed  # the banner under the printed table
    assert "Dedup: " in open(tmp_path / "kfp" / "seed-0" / "report" / "report.md").read()
    random = m["entries"][-1]["selection"]
    assert random["strategy"] == "random" and random["restrict"] == "tags"
