"""`semisup run teacher_student` end to end under kfp.local on tiny IDX data: every component
runs as a subprocess, exactly as the demo does (smoke tests: correctness is tested in tests/teacher_student and tests/dedup)."""

import json
import os

import pytest
import yaml

from semisup.cli import main
from semisup_core import storage

pytestmark = pytest.mark.slow

TINY = {"labels_per_class": 10,
        "teacher": {"model": "small_resnet8", "model_kwargs": {"width": 8}, "epochs": 3,
                    "batch_size": 16, "threads": 1},
        "student": {"model": "small_resnet8", "model_kwargs": {"width": 4}, "epochs": 1,
                    "batch_size": 8, "threads": 1},
        "baseline": {"model": "small_resnet8", "model_kwargs": {"width": 4}, "epochs": 2,
                     "batch_size": 16, "threads": 1},
        "finetune": {"epochs": 1, "batch_size": 16, "threads": 1},
        "selection": {"top_p": 2, "k": 12}}


def _run(tmp_path, raw, **extra) -> tuple[int, str]:
    cfg = dict(TINY, out=str(tmp_path / "out"), **raw, **extra)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return main(["run", "teacher_student", "--config", str(path)]), str(tmp_path / "out")


def _metrics(out: str) -> dict:
    return json.load(open(os.path.join(out, "seed-0", "report", "metrics.json")))


def test_full_variant_set(tmp_path, tiny_raw, capsys):
    """Self-training, two rounds, two scoring and two materialise workers (ParallelFor +
    Collected), a K sweep."""
    rc, out = _run(tmp_path, tiny_raw, rounds=2, k_sweep=[5],
                   selection=dict(TINY["selection"], workers=2, materialise_workers=2))
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| student, fine-tuned |" in printed and "Report:" in printed
    rows = [r["model"] for r in _metrics(out)["rows"]]
    assert rows == ["supervised baseline", "teacher", "student, pre-trained only",
                    "student, fine-tuned", "self-training, fine-tuned"]
    m = _metrics(out)
    assert sorted(k for k, _ in m["k_points"]) == [5, 12]
    student = next(r for r in m["rows"] if r["model"] == "student, fine-tuned")
    assert student["arch"] == "small_resnet8 width=4" and student["selection"]["k"] == 12
    assert 0 <= student["selection"]["distractor_share"] <= 1
    report = os.path.join(out, "seed-0", "report")
    # dedup ran before scoring (on by default): its count is in the report, its sheet beside it
    assert m["dedup"]["pool_images"] > 0 and m["dedup"]["embedder"] == "pixels"
    assert "Dedup: " in printed and "Dedup: " in open(os.path.join(report, "report.md")).read()
    for name in ("report.md", "report.html", "contact_sheet.png", "accuracy_vs_k.png",
                 "dedup_pairs.png"):
        assert os.path.getsize(os.path.join(report, name)) > 0
    assert "data:image/png;base64," in open(os.path.join(report, "report.html")).read()
    run_dir = os.path.join(out, "kfp", sorted(os.listdir(os.path.join(out, "kfp")))[-1])
    # two scoring workers wrote their own partials; round 2 and the sweep ran
    partials = [p for p in storage.list_uris(run_dir) if "/partials/" in p]
    assert any("worker-00000-of-00002" in p for p in partials)
    assert any("worker-00001-of-00002" in p for p in partials)
    assert len([d for d in os.listdir(run_dir) if d.startswith("for-loop")]) >= 4
    # two materialise tasks wrote each round's selected set into select's output; the K
    # sweep's student (inside a ParallelFor) had its set written by its select task
    sets = [os.path.dirname(p) for p in storage.list_uris(run_dir)
            if p.endswith("/selected/dataset.json")]
    parted = [d for d in sets if os.path.isdir(os.path.join(d, "_parts"))]
    assert len(parted) >= 3 and len(sets) > len(parted)  # rounds 1, 2, self-training; sweep
    for d in parted:  # (the tiny pool has one shard: worker 1's part holds nothing)
        assert sorted(os.listdir(os.path.join(d, "_parts"))) == ["0000-of-0002.json",
                                                                 "0001-of-0002.json"]
        assert any(n.startswith("part-0000-") for n in os.listdir(d))


def test_switched_off_variants(tmp_path, tiny_raw):
    """No self-training (the else branch), no distractors, fine-tuning off: the 'fine-tuned'
    student is the pre-trained one passed through. Every training task goes through the
    PyTorchJob launcher (its local torchrun backend, as kfp.local runs launcher.backend
    pytorchjob)."""
    rc, out = _run(tmp_path, tiny_raw, self_training=False, distractors=False, k_sweep=[4],
                   finetune=dict(TINY["finetune"], enabled=False), dedup={"enabled": False},
                   launcher={"backend": "torchrun"})
    assert rc == 0
    run_dir = os.path.join(out, "kfp", sorted(os.listdir(os.path.join(out, "kfp")))[-1])
    models = [json.load(open(p))["artifacts"]["model"]["artifacts"][0]["metadata"]
              for p in storage.list_uris(run_dir) if p.endswith("executor_output.json")
              and os.path.basename(os.path.dirname(p)).startswith("train")]
    trained = [m for m in models if "steps" in m]  # not a model passed through untrained
    # baseline, teacher, the student and the K-sweep student (fine-tuning is off)
    assert len(trained) == 4 and {m["backend"] for m in trained} == {"torchrun"}, models
    assert _metrics(out)["dedup"] == {"enabled": False}
    rows = {r["model"]: r for r in _metrics(out)["rows"]}
    assert "self-training, fine-tuned" not in rows
    assert rows["student, fine-tuned"]["top1"] == rows["student, pre-trained only"]["top1"]
    assert rows["student, fine-tuned"]["selection"]["distractor_share"] == 0
    assert os.path.isdir(os.path.join(out, "data", "split-n10-s0-nodistract"))


def test_a_failing_task_is_one_line_and_a_rerun_resumes(tmp_path, tiny_raw, capsys):
    """A bad recipe fails its task; the CLI says so in one line (exit 2). Fixing it and
    rerunning reuses the finished tasks from kfp.local's cache."""
    rc, out = _run(tmp_path, tiny_raw, self_training=False, k_sweep=[4],
                   student=dict(TINY["student"], model="no_such_model"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("semisup: error: Pipeline") and "FAILURE" in err[-1]
    assert len(os.listdir(os.path.join(out, "kfp-cache"))) >= 4  # imports, split, trainings
    rc, out = _run(tmp_path, tiny_raw, self_training=False, k_sweep=[4])
    assert rc == 0


def test_the_dedup_pipeline_calibrates_and_removes_the_injected_duplicates(tmp_path, tiny_raw, capsys):
    """`semisup run dedup`: import, embed both sets, calibrate, dedup; the fake pool holds no
    copy of the test set beyond what its generator repeats, so the count is checked against a
    brute force over the embeddings the run wrote."""
    import numpy as np
    from semisup_core.embed import read_embeddings
    cfg = {"out": str(tmp_path / "dd"), "fashion_mnist": tiny_raw["fashion_mnist"],
           "calibration_images": 50, "threshold": 0.999, "calibrate": True,
           "known_duplicates": [["fmnist-test-000003", "fmnist-test-000001"]]}
    path = tmp_path / "dd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", "dedup", "--config", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "Dedup: " in printed and "Calibration (50 test images copied)" in printed
    dest = os.path.join(cfg["out"], "seed-0", "dedup")
    summary = json.load(open(os.path.join(dest, "summary.json")))
    run_dir = os.path.join(cfg["out"], "kfp", sorted(os.listdir(os.path.join(cfg["out"], "kfp")))[-1])
    emb = sorted(os.path.join(run_dir, d, "embeddings") for d in os.listdir(run_dir) if d.startswith("embed"))
    (pk, pv), (tk, tv) = [read_embeddings(e) for e in emb]
    if len(pk) < len(tk):
        (pk, pv), (tk, tv) = (tk, tv), (pk, pv)
    assert summary["pool_images"] == len(pk) == 400
    assert summary["removed"] == int(((pv @ tv.T).max(1) >= 0.999).sum())
    assert os.path.getsize(os.path.join(dest, "contact_sheet.png")) > 0
    # the judged pair reaches the calibration through the pipeline and the component
    cal = json.load(open(os.path.join(dest, "calibration.json")))
    assert cal["known_duplicates"] == [["fmnist-test-000001", "fmnist-test-000003"]]


def test_the_copy_verifier_pipeline_trains_a_verifier_and_dedups_with_it(tmp_path, tiny_raw, capsys):
    """`semisup run copy_verifier`: pairs from the pool, a pair_verifier trained by the train
    component, dedup verifying each pool image's candidates with that model (wiring; the
    verifier's decisions are tested against per-pair scoring in tests/dedup/test_verifier.py)."""
    cfg = {"out": str(tmp_path / "cv"), "fashion_mnist": tiny_raw["fashion_mnist"],
           "pairs_images": 100, "pairs_per_image": 1, "neighbours": 3, "verify_candidates": 2,
           "calibration_images": 20, "known_duplicates": [["fmnist-test-000002", "fmnist-test-000000"]],
           "recipe": {"epochs": 1, "batch_size": 32, "threads": 1,
                      "model_kwargs": {"width": 4, "align": 1, "scales": [1.0]}}}
    path = tmp_path / "cv.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", "copy_verifier", "--config", str(path)]) == 0
    assert "Calibration (20 test images copied)" in capsys.readouterr().out
    seed = os.path.join(cfg["out"], "seed-0")
    summary = json.load(open(os.path.join(seed, "dedup", "summary.json")))
    cal = json.load(open(os.path.join(seed, "dedup", "calibration.json")))
    state = json.load(open(os.path.join(seed, "verifier", "state.json")))
    assert summary["score"] == "verifier logit margin" and summary["verify_candidates"] == 2
    assert summary["verifier"].endswith("model") and summary["threshold"] == cal["threshold"]
    assert cal["candidates"] == 2 and cal["images"] == 20
    assert cal["known_duplicates"] == [["fmnist-test-000000", "fmnist-test-000002"]]
    assert state["model"]["name"] == "pair_verifier" and state["classes"] == ["distinct", "copy"]
    run_dir = os.path.join(cfg["out"], "kfp", sorted(os.listdir(os.path.join(cfg["out"], "kfp")))[-1])
    pairs = [os.path.join(run_dir, d, "pairs") for d in os.listdir(run_dir) if d.startswith("verify-pairs")]
    assert json.load(open(os.path.join(pairs[0], "dataset.json")))["num_samples"] == 200
    import pyarrow.parquet as pq
    rows = pq.read_table(os.path.join(seed, "dedup", "pairs.parquet")).to_pylist()
    assert len(rows) == summary["removed"] and all(r["score"] >= summary["threshold"] for r in rows)
