"""Issue 22, kill anywhere: each stage's process is SIGKILLed at three or more points chosen
here (``semisup_core.faults``: just before an output of a given kind becomes visible, a
checkpoint write included), then rerun as a KFP retry would: the visible outputs are byte for
byte those of an uninterrupted run. Two workers scoring the same shards at once (a retry that
overlaps the original) do not corrupt them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from semisup_core.faults import ENV

ENV_1T = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run(args: list[str], kill_at: str | None = None, check: bool = True,
         wait: bool = True):
    env = {k: v for k, v in os.environ.items() if k != ENV}
    env.update(ENV_1T)
    if kill_at:
        env[ENV] = kill_at
    proc = subprocess.Popen([sys.executable, "-m", "semisup", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=600)
    if check and kill_at:
        assert proc.returncode == -9, f"{kill_at}: not killed (exit {proc.returncode}): {err[-800:]}"
    elif check:
        assert proc.returncode == 0, err[-2000:]
    return proc


def _visible(root) -> dict[str, bytes]:
    """What a reader of the store sees: every file but the unpublished temp files (the output
    directory's own path, which configs and dataset.json name, replaced)."""
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            if not n.startswith(".tmp-"):
                p = os.path.join(d, n)
                out[os.path.relpath(p, root)] = open(p, "rb").read().replace(
                    str(root).encode(), b"<out>")
    for name in [k for k in out if os.path.basename(k) == "metrics.json"]:
        metrics = json.loads(out[name])  # a training's wall time is the field that must differ
        if isinstance(metrics, dict) and "seconds" in metrics:
            metrics.pop("seconds")
            out[name] = json.dumps(metrics, sort_keys=True).encode()
    return out


def _differing(got: dict, ref: dict) -> list[str]:
    return sorted(k for k in set(got) | set(ref) if got.get(k) != ref.get(k))


def _killed_then_rerun(args_for, tmp_path, points: list[str], reference: str):
    """For each point: a fresh out, killed there (``_run`` checks it died of SIGKILL), rerun.
    Returns ``(cut, rerun)``: per point, the visible files that differ from the reference's
    after the kill (must be some) and after the rerun (must be none)."""
    ref = _visible(reference)
    assert ref
    cut, rerun = {}, {}
    for i, point in enumerate(points):
        out = str(tmp_path / f"k{i}")
        _run(args_for(out), kill_at=point)
        cut[point] = _differing(_visible(out), ref)
        _run(args_for(out))
        rerun[point] = _differing(_visible(out), ref)
    return cut, rerun


def _score_args(teacher, pool):
    return lambda out: ["stage", "score", "--set", f"model={teacher}", "--set", f"pool={pool}",
                        "--set", f"out={out}", "--set", "top_p=2", "--set", "partial_k=30",
                        "--set", "batch_size=16", "--set", "decoder=pil"]


def test_score_killed_anywhere(teacher, pool, tmp_path):
    args = _score_args(teacher, pool)
    _run(args(str(tmp_path / "ref")))
    cut, rerun = _killed_then_rerun(args, tmp_path, [
        "shards/shard-000002.parquet:1",  # a shard's table written, its marker not
        ".done.json:4",                   # the 4th shard's marker
        "partials/:1",                    # every shard done, the partial top-K not
    ], str(tmp_path / "ref"))
    assert all(cut.values()), cut  # each kill left the output incomplete
    assert rerun == dict.fromkeys(cut, []), rerun  # each rerun: the reference, byte for byte


def test_two_workers_scoring_the_same_shards_at_once(teacher, pool, tmp_path):
    args = _score_args(teacher, pool)
    _run(args(str(tmp_path / "ref")))
    out = str(tmp_path / "both")
    procs = [_run(args(out), wait=False) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    assert _visible(out) == _visible(str(tmp_path / "ref"))


def test_select_killed_anywhere(teacher, pool, tmp_path):
    scores = str(tmp_path / "scores")
    _run(_score_args(teacher, pool)(scores))
    args = lambda out: ["stage", "select", "--set", f"scores={scores}", "--set", f"out={out}",  # noqa: E731
                        "--set", "k=10", "--set", f"pool={pool}"]
    _run(args(str(tmp_path / "ref")))
    cut, rerun = _killed_then_rerun(args, tmp_path, [
        "manifest.parquet:1", "summary.json:1",
        "selected/shard-000000.tar:1",  # the student's training set half written
        "selected/dataset.json:1"], str(tmp_path / "ref"))
    assert all(cut.values()), cut  # each kill left the output incomplete
    assert rerun == dict.fromkeys(cut, []), rerun  # each rerun: the reference, byte for byte


def test_train_killed_anywhere(tmp_path):
    from tests.train.conftest import write_blocks_dataset
    data = write_blocks_dataset(str(tmp_path / "data"), 96)
    args = lambda out: ["stage", "train", "--set", f"out={out}", "--set", f"data.train={data}",  # noqa: E731
                        "--set", "data.num_workers=0", "--set", "model=small_resnet8",
                        "--set", "model_kwargs.width=8", "--set", "epochs=3",
                        "--set", "batch_size=16", "--set", "threads=1",
                        "--set", "checkpoint.every_steps=4"]
    _run(args(str(tmp_path / "ref")))
    cut, rerun = _killed_then_rerun(args, tmp_path, [
        "step-00000004/optim.safetensors:1",  # mid checkpoint: its weights written, not the rest
        "step-00000008/state.json:1",         # the 2nd checkpoint complete but for its state
        "k2/model.safetensors:1",             # the final weights (k2: this point's out)
    ], str(tmp_path / "ref"))
    assert all(cut.values()), cut  # each kill left the output incomplete
    assert rerun == dict.fromkeys(cut, []), rerun  # each rerun: the reference, byte for byte


@pytest.mark.parametrize("order,points", [
    ("permutation", ["labelled/dataset.json:1", "unlabelled/shard-:3", "oracle.parquet:1"]),
    ("hash", ["_work/runs/:7", "unlabelled/shard-:3", "oracle.parquet:1", "split.json:1"])])
def test_split_killed_anywhere(tmp_path, order, points):
    """Both orders of the split (the hash order's map spills and reduce shards included)."""
    from tests.data.conftest import make_dataset
    ds, dis = str(tmp_path / "ds"), str(tmp_path / "dis")
    make_dataset(ds, 90, ["a", "b", "c"], prefix="img", seed=3)
    make_dataset(dis, 40, ["x", "y"], prefix="dis", seed=4, per_shard=7)
    hashed = ["--set", "spill_mb=0.002"] if order == "hash" else []
    args = lambda out: ["data", "split", "--set", f"dataset={ds}", "--set", f"out={out}",  # noqa: E731
                        "--set", "labels_per_class=4", "--set", f"distractors=[{dis}]",
                        "--set", f"order={order}", "--set", "samples_per_shard=20", *hashed]
    _run(args(str(tmp_path / "ref")))
    cut, rerun = _killed_then_rerun(args, tmp_path, points, str(tmp_path / "ref"))
    assert all(cut.values()), cut  # each kill left the output incomplete
    assert rerun == dict.fromkeys(cut, []), rerun  # each rerun: the reference, byte for byte


def test_synsets_killed_anywhere(tmp_path):
    """Tags -> synsets with the resampled set: its audit table, a spill of the streamed copy,
    an output shard of the copy, the summary."""
    from tests.wsl.conftest import write_tagged
    from tests.wsl.test_weak import TAGS
    data, _ = write_tagged(str(tmp_path / "tagged"), TAGS)
    args = lambda out: ["stage", "synsets", "--set", f"data={data}", "--set", f"out={out}",  # noqa: E731
                        "--set", "draws=3", "--set", "samples_per_shard=20",
                        "--set", "spill_mb=0.0005"]
    _run(args(str(tmp_path / "ref")))
    cut, rerun = _killed_then_rerun(args, tmp_path, [
        "mapping.parquet:1", "train/_work/:4", "train/shard-:2", "summary.json:1"],
        str(tmp_path / "ref"))
    assert all(cut.values()), cut  # each kill left the output incomplete
    assert rerun == dict.fromkeys(cut, []), rerun  # each rerun: the reference, byte for byte


def test_import_killed_anywhere(tmp_path):
    """An image folder (two classes, one undecodable file) into shards."""
    import numpy as np

    from semisup_core.data.decode import encode_png
    src = tmp_path / "folder"
    for c, cls in enumerate(("x", "y")):
        (src / cls).mkdir(parents=True)
        for i in range(30):
            (src / cls / f"{i:02d}.png").write_bytes(
                encode_png(np.full((6, 6), (i * 7 + c * 90) % 256, np.uint8)))
    (src / "y" / "bad.png").write_bytes(b"corrupt")
    args = lambda out: ["data", "import", "--set", "source=image-folder", "--set", f"src={src}",  # noqa: E731
                        "--set", f"out={out}", "--set", "samples_per_shard=8"]
    _run(args(str(tmp_path / "ref")))
    cut, rerun = _killed_then_rerun(args, tmp_path, [
        "shard-000001.tar:1", "shard-000005.idx:1", "dataset.json:1"], str(tmp_path / "ref"))
    assert all(cut.values()), cut  # each kill left the output incomplete
    assert rerun == dict.fromkeys(cut, []), rerun  # each rerun: the reference, byte for byte


def test_materialise_killed_anywhere(teacher, pool, tmp_path):
    scores, sel = str(tmp_path / "scores"), str(tmp_path / "sel")
    _run(_score_args(teacher, pool)(scores))
    _run(["stage", "select", "--set", f"scores={scores}", "--set", f"out={sel}", "--set", "k=10"])

    def both_workers(out):  # one process per worker, as parallel tasks; the kill hits either
        return ["data", "materialise", "--set", f"manifest={sel}", "--set", f"pool={pool}",
                "--set", f"out={out}", "--set", "samples_per_shard=8", "--set", "num_workers=2"]

    ref = str(tmp_path / "ref")
    for w in (0, 1):
        _run(both_workers(ref) + ["--set", f"worker={w}"])
    for i, point in enumerate(["part-0000-000001.tar:1", "_parts/0001-of-0002.json:1",
                               "dataset.json:1"]):
        out = str(tmp_path / f"k{i}")
        for w in (0, 1):  # the killed worker dies; the other finishes
            args = both_workers(out) + ["--set", f"worker={w}"]
            proc = _run(args, kill_at=point, check=False)
            assert proc.returncode in (0, -9)
        assert _visible(out) != _visible(ref)
        for w in (0, 1):  # the retries
            _run(both_workers(out) + ["--set", f"worker={w}"])
        assert _visible(out) == _visible(ref), point


def _train_config(tmp_path, cfg) -> str:
    """``cfg`` (a TrainConfig) as a YAML file for ``semisup stage <objective> -c``."""
    from semisup_core import config
    path = tmp_path / "train.yaml"
    path.write_text(config.dump(cfg))
    return str(path)


def test_llp_killed_anywhere(tmp_path):
    """LLP's memory bank and label store (extra.safetensors, pseudo_labels.parquet) are part of
    what a kill may cut."""
    from tests.llp.test_llp_training import _llp
    from tests.train.conftest import write_blocks_dataset
    data = [write_blocks_dataset(str(tmp_path / "lab"), 32, seed=11, prefix="lab"),
            write_blocks_dataset(str(tmp_path / "pool"), 96, seed=12, labelled=False,
                                 prefix="pool")]
    cfg = _train_config(tmp_path, _llp(str(tmp_path / "unused"), data, epochs=4, batch_size=32,
                                       threads=1, checkpoint={"every_steps": 3}))
    args = lambda out: ["stage", "llp", "-c", cfg, "--set", f"out={out}"]  # noqa: E731
    _run(args(str(tmp_path / "ref")))
    cut, rerun = _killed_then_rerun(args, tmp_path, [
        "extra.safetensors:1",       # a checkpoint with weights and optimiser, not the bank
        "pseudo_labels/epoch-002:1",  # a propagation round's labels
        "state.json:3"], str(tmp_path / "ref"))
    assert all(cut.values()), cut  # each kill left the output incomplete
    assert rerun == dict.fromkeys(cut, []), rerun  # each rerun: the reference, byte for byte


def _torchrun(args: list[str], kill_at: str | None = None) -> None:
    """``semisup args`` on 2 ranks; with ``kill_at``, the rank that reaches it dies of SIGKILL
    (torchrun then stops the other and fails)."""
    env = {k: v for k, v in os.environ.items() if k != ENV}
    env.update(ENV_1T)
    if kill_at:
        env[ENV] = kill_at
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", "-m", "semisup", *args], env=env,
                          capture_output=True, text=True, timeout=600)
    if kill_at:
        assert proc.returncode != 0 and "Signal 9" in proc.stderr, (kill_at, proc.stderr[-1500:])
    else:
        assert proc.returncode == 0, proc.stderr[-2000:]


def test_llp_sharded_bank_killed_anywhere(tmp_path):
    """Two ranks, each publishing its block of the memory bank into every checkpoint before
    the main rank's state.json: rank 1 killed at its block, rank 0 at its block, the main rank
    at state.json; each rerun on 2 ranks gives the uninterrupted run's files byte for byte."""
    from tests.llp.test_llp_training import _llp
    from tests.train.conftest import write_blocks_dataset
    data = [write_blocks_dataset(str(tmp_path / "lab"), 32, seed=11, prefix="lab"),
            write_blocks_dataset(str(tmp_path / "pool"), 96, seed=12, labelled=False,
                                 prefix="pool")]
    cfg = _train_config(tmp_path, _llp(str(tmp_path / "unused"), data, epochs=3, batch_size=32,
                                       model_kwargs={"width": 8, "norm": "group"},
                                       checkpoint={"every_steps": 2}))
    args = lambda out: ["stage", "llp", "-c", cfg, "--set", f"out={out}"]  # noqa: E731
    _torchrun(args(str(tmp_path / "ref")))
    ref = _visible(tmp_path / "ref")
    assert any("extra-rank-00001-of-00002" in k for k in ref)
    for i, point in enumerate(["extra-rank-00001:2", "extra-rank-00000:3", "state.json:3"]):
        out = str(tmp_path / f"k{i}")
        _torchrun(args(out), kill_at=point)
        assert _differing(_visible(out), ref), point  # the kill left the output incomplete
        _torchrun(args(out))
        assert _differing(_visible(out), ref) == [], point


def test_contrastive_killed_anywhere(tmp_path):
    from tests.simclr.test_simclr_training import _simclr
    from tests.train.conftest import write_blocks_dataset
    data = write_blocks_dataset(str(tmp_path / "pool"), 96, seed=12, labelled=False, prefix="p")
    cfg = _train_config(tmp_path, _simclr(str(tmp_path / "unused"), data, batch_size=32,
                                          threads=1, snapshot_every_epochs=1,
                                          checkpoint={"every_steps": 2}))
    args = lambda out: ["stage", "contrastive", "-c", cfg, "--set", f"out={out}"]  # noqa: E731
    _run(args(str(tmp_path / "ref")))
    cut, rerun = _killed_then_rerun(args, tmp_path, [
        "optim.safetensors:2", "snapshots/epoch-002/model.safetensors:1", "state.json:4"],
        str(tmp_path / "ref"))
    assert all(cut.values()), cut  # each kill left the output incomplete
    assert rerun == dict.fromkeys(cut, []), rerun  # each rerun: the reference, byte for byte


def test_embed_killed_anywhere(teacher, pool, tmp_path):
    args = lambda out: ["stage", "embed", "--set", f"model={teacher}", "--set",  # noqa: E731
                        f"dataset={pool}", "--set", f"out={out}", "--set", "batch_size=16",
                        "--set", "decoder=pil"]
    _run(args(str(tmp_path / "ref")))
    cut, rerun = _killed_then_rerun(args, tmp_path, ["shard-000001.parquet:1", ".done.json:5",
                                        "embedding.json:1"], str(tmp_path / "ref"))
    assert all(cut.values()), cut  # each kill left the output incomplete
    assert rerun == dict.fromkeys(cut, []), rerun  # each rerun: the reference, byte for byte


def test_dedup_killed_anywhere(teacher, pool, tmp_path):
    """The dedup stage over two embeddings of the pool (half of it as the "test set", so there
    are pairs): killed as it writes the pairs, the sheet and the summary, rerun."""
    from tests.pools import write_pool
    evalset = write_pool(str(tmp_path / "eval"), 40, seed=5)  # the pool's first 40 images
    emb = {}
    for name, ds in (("pool", pool), ("eval", evalset)):
        emb[name] = str(tmp_path / f"emb-{name}")
        _run(["stage", "embed", "--set", f"model={teacher}", "--set", f"dataset={ds}",
              "--set", f"out={emb[name]}", "--set", "decoder=pil"])
    args = lambda out: ["stage", "dedup", "--set", f"pool={emb['pool']}", "--set",  # noqa: E731
                        f"eval_sets=[{emb['eval']}]", "--set", f"out={out}"]
    _run(args(str(tmp_path / "ref")))
    files = sorted(_visible(str(tmp_path / "ref")))
    assert any(f.endswith(".parquet") for f in files) and any(f.endswith(".png") for f in files)
    points = [f"{f}:1" for f in files if f.endswith((".parquet", ".png", ".json"))][:4]
    assert len(points) >= 3, files
    cut, rerun = _killed_then_rerun(args, tmp_path, points, str(tmp_path / "ref"))
    assert all(cut.values()), cut  # each kill left the output incomplete
    assert rerun == dict.fromkeys(cut, []), rerun  # each rerun: the reference, byte for byte


def test_distill_killed_anywhere(teacher, tmp_path):
    """A student distilled from the session's teacher on an unlabelled pool (the teacher's soft
    labels on the fly)."""
    from tests.train.conftest import write_blocks_dataset
    from tests.train.test_train import _cfg
    data = write_blocks_dataset(str(tmp_path / "pool"), 96, seed=12, labelled=False, prefix="p")
    cfg = _train_config(tmp_path, _cfg(tmp_path / "unused", data, objective="distill", epochs=3,
                                       batch_size=16, threads=1, model_kwargs={"width": 4},
                                       distill={"teacher": teacher},
                                       checkpoint={"every_steps": 4}))
    args = lambda out: ["stage", "distill", "-c", cfg, "--set", f"out={out}"]  # noqa: E731
    _run(args(str(tmp_path / "ref")))
    cut, rerun = _killed_then_rerun(args, tmp_path, [
        "step-00000004/optim.safetensors:1", "step-00000008/state.json:1",
        "k2/model.safetensors:1"], str(tmp_path / "ref"))
    assert all(cut.values()), cut  # each kill left the output incomplete
    assert rerun == dict.fromkeys(cut, []), rerun  # each rerun: the reference, byte for byte


def test_weak_train_killed_anywhere(tmp_path):
    """Weak pre-training on tags merged into synsets (the synsets stage's resampled set)."""
    from semisup_core.wsl.synsets import SynsetsConfig, run_synsets
    from tests.wsl.conftest import write_tagged
    from tests.wsl.test_weak import TAGS
    data, _ = write_tagged(str(tmp_path / "tagged"), TAGS)
    train_uri = run_synsets(SynsetsConfig(data=data, out=str(tmp_path / "syn"), draws=4,
                                          seed=1))["train"]["uri"]
    args = lambda out: ["stage", "weak-train", "--set", f"out={out}", "--set",  # noqa: E731
                        f"data.train={train_uri}", "--set", "data.num_workers=0", "--set",
                        "model=small_resnet8", "--set", "model_kwargs.width=4", "--set",
                        "epochs=3", "--set", "batch_size=32", "--set", "threads=1",
                        "--set", "checkpoint.every_steps=2", "--set", "objective=weak"]
    _run(args(str(tmp_path / "ref")))
    cut, rerun = _killed_then_rerun(args, tmp_path, [
        "step-00000002/optim.safetensors:1", "step-00000004/state.json:1",
        "k2/model.safetensors:1"], str(tmp_path / "ref"))
    assert all(cut.values()), cut  # each kill left the output incomplete
    assert rerun == dict.fromkeys(cut, []), rerun  # each rerun: the reference, byte for byte


def _runner_args(module, tmp_path, name: str):
    """``semisup stage <name>`` on the runner test's tiny IDX data and config."""
    import yaml

    from tests.pipelines.conftest import write_fake_idx
    raw = {"fashion_mnist": write_fake_idx(tmp_path / "raw-f", {"train": 400, "t10k": 100}, 0, 1),
           "mnist": write_fake_idx(tmp_path / "raw-m", {"train": 60}, 6, 2)}

    def args(out):
        path = f"{out}.yaml"
        with open(path, "w") as f:
            yaml.safe_dump(dict(module.TINY, out=out, **raw), f)
        return ["stage", name, "--config", path]
    return args


def _teacher_student_args(tmp_path):
    """``semisup stage teacher-student`` on the runner test's tiny data and recipes (2 training
    steps between checkpoints, so a kill can land in one)."""
    import yaml

    from tests.pools import write_pool
    from tests.teacher_student.test_teacher_student import TINY
    from tests.train.conftest import write_blocks_dataset
    data = {"labelled": write_blocks_dataset(str(tmp_path / "lab"), 64),
            "pool": write_pool(str(tmp_path / "pool"), 120, per_shard=30),
            "test": write_blocks_dataset(str(tmp_path / "test"), 32, seed=9)}
    tiny = dict(TINY, checkpoint={"every_steps": 2})

    def args(out):
        path = f"{out}.yaml"
        with open(path, "w") as f:
            yaml.safe_dump(dict(out=out, teacher=dict(tiny, epochs=2),
                                student=dict(tiny, epochs=1), finetune=dict(tiny, epochs=1),
                                selection={"top_p": 2, "k": 10}, **data), f)
        return ["stage", "teacher-student", "--config", path]
    return args


@pytest.mark.parametrize("runner,points", [
    ("teacher-student", ["teacher/checkpoints/step-00000004/model.safetensors:1",
                         "round-1/scores/shards/shard-000002.parquet:1",
                         "round-1/select/manifest.parquet:1", "round-1/selected/dataset.json:1",
                         "student-r1/model.safetensors:1"]),
    ("llp-run", ["split-n10-s0/unlabelled/dataset.json:1", "pseudo_labels/epoch-002:1",
                 "report/report.md:1"]),
    ("wsl-run", ["synsets/train/shard-:1", "pretrain/model.safetensors:1",
                 "report/report.md:1"]),
    ("simclr-run", ["pretrain/snapshots/epoch-002/model.safetensors:1",
                    "distill/model.safetensors:1", "analysis/probe.json:1"])])
def test_end_to_end_runners_killed_anywhere(tmp_path, runner, points):
    """A runner chains the stages in one process, each skipped or resumed when its output
    exists: killed in a teacher's checkpoint, its scoring, selection or materialised set, a
    student's final weights, its data split, a propagation round, its synsets' copy, a
    pre-training's snapshot or final weights, a distillation, the probe or its report, the rerun's whole tree (data, models, pseudo
    -labels, report) equals an uninterrupted run's, byte for byte."""
    from tests.pipelines import test_llp_run, test_simclr_run, test_wsl_run
    if runner == "teacher-student":
        args = _teacher_student_args(tmp_path)
    else:
        module = {"llp-run": test_llp_run, "wsl-run": test_wsl_run,
                  "simclr-run": test_simclr_run}[runner]
        args = _runner_args(module, tmp_path, runner)
    _run(args(str(tmp_path / "ref")))
    cut, rerun = _killed_then_rerun(args, tmp_path, points, str(tmp_path / "ref"))
    assert all(cut.values()), cut  # each kill left the output incomplete
    assert rerun == dict.fromkeys(cut, []), rerun  # each rerun: the reference, byte for byte
