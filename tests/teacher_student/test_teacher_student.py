"""The teacher/student runner on tiny data: every variant runs and lands where expected."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semisup_core import storage
from semisup_core.teacher_student.run import TeacherStudentConfig, run_teacher_student
from tests.pools import write_pool
from tests.train.conftest import write_blocks_dataset

TINY = {"model": "small_resnet8", "model_kwargs": {"width": 8}, "batch_size": 16, "threads": 1,
        "optim": {"lr": 0.8, "warmup_epochs": 0.5}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ts")
    pool = write_pool(str(root / "pool"), 120, per_shard=30)
    oracle = pa.table({"key": [f"pool-{i:05d}" for i in range(120)], "source": ["t"] * 120,
                       "true_class": pa.array([0] * 120, pa.int32()), "true_class_name": ["x"] * 120,
                       "source_class_name": ["x"] * 120})
    buf = io.BytesIO()
    pq.write_table(oracle, buf)
    storage.put_bytes(str(root / "oracle.parquet"), buf.getvalue())
    return {"labelled": write_blocks_dataset(str(root / "lab"), 64), "pool": pool,
            "test": write_blocks_dataset(str(root / "test"), 32, seed=9),
            "oracle": str(root / "oracle.parquet")}


def _cfg(tmp_path, data, **kw) -> TeacherStudentConfig:
    base = dict(out=str(tmp_path / "run"), teacher=dict(TINY, epochs=2), student=dict(TINY, epochs=1),
                finetune=dict(TINY, epochs=1), selection={"top_p": 2, "k": 10}, **data)
    base.update(kw)
    return TeacherStudentConfig.model_validate(base)


def test_default_pipeline_trains_every_model(tmp_path, data):
    res = run_teacher_student(_cfg(tmp_path, data))
    assert set(res["models"]) == {"baseline", "teacher", "student-r1-pretrain", "student-r1"}
    assert res["rounds"][0]["selection"]["selected"] <= 40
    assert 0 <= res["rounds"][0]["analysis"]["precision"] <= 1
    assert storage.exists(str(tmp_path / "run" / "results.json"))
    again = run_teacher_student(_cfg(tmp_path, data))  # finished steps are skipped
    assert again["models"]["student-r1"]["top1"] == res["models"]["student-r1"]["top1"]


def test_variants(tmp_path, data):
    res = run_teacher_student(_cfg(tmp_path, data, self_training=True, rounds=2, baseline=False,
                                   finetune=dict(TINY, epochs=1, labels="inferred")))
    assert res["models"]["teacher"]["arch"] == "small_resnet8 width=8"
    assert [r["round"] for r in res["rounds"]] == [1, 2]
    assert res["rounds"][1]["teacher"].endswith("student-r1")
    cfg_yaml = storage.get_bytes(str(tmp_path / "run" / "models" / "student-r1" / "config.yaml")).decode()
    assert "selected" in cfg_yaml and "lab" in cfg_yaml  # inferred labels + the labelled set
    skip = run_teacher_student(_cfg(tmp_path / "b", data, baseline=False,
                                    finetune=dict(TINY, enabled=False)))
    assert "student-r1" not in skip["models"] and skip["final"].endswith("student-r1-pretrain")


def test_semi_weak_teacher_starts_from_a_pre_trained_model(tmp_path, data):
    """``teacher_init``: the teacher is fine-tuned from a (weak-)pre-trained network (here one
    trained on the labels for an epoch); it excludes ``teacher_model``."""
    import torch

    from semisup_core import checkpoint
    from semisup_core.errors import ConfigError
    from semisup_core.train import TrainConfig, train
    pre = str(tmp_path / "pre")
    train(TrainConfig.model_validate(dict(TINY, out=pre, epochs=1,
                                          data={"train": data["labelled"]})))
    res = run_teacher_student(_cfg(tmp_path, data, teacher=dict(TINY, epochs=0.25),
                                   teacher_init=pre, baseline=False, rounds=0))
    cfg_yaml = storage.get_bytes(str(tmp_path / "run" / "models" / "teacher" / "config.yaml")).decode()
    assert f"init_from: {pre}" in cfg_yaml
    start, _ = checkpoint.load_model(pre, "cpu")
    fresh = run_teacher_student(_cfg(tmp_path / "scratch", data, teacher=dict(TINY, epochs=0.25),
                                     baseline=False, rounds=0))
    t_init, _ = checkpoint.load_model(res["final"], "cpu")
    t_fresh, _ = checkpoint.load_model(fresh["final"], "cpu")
    d_init = sum((a - b).abs().sum() for a, b in zip(t_init.state_dict().values(),
                                                     start.state_dict().values())
                 if a.dtype == torch.float32)
    d_fresh = sum((a - b).abs().sum() for a, b in zip(t_fresh.state_dict().values(),
                                                      start.state_dict().values())
                  if a.dtype == torch.float32)
    assert d_init < d_fresh  # a few steps from the pre-trained weights stay near them
    with pytest.raises(ConfigError, match="teacher_model .* and teacher_init .* exclude each other"):
        run_teacher_student(_cfg(tmp_path / "both", data, teacher_model=pre, teacher_init=pre))


def test_materialise_workers_copy_the_same_samples(tmp_path, data):
    """selection.materialise_workers 2: the selected set is written as two parts (one after
    the other in this runner), the same (key, class) samples as one worker."""
    from semisup_core.data.dataset import iter_dataset
    one = _cfg(tmp_path / "one", data, baseline=False, finetune=dict(TINY, enabled=False))
    two = _cfg(tmp_path / "two", data, baseline=False, finetune=dict(TINY, enabled=False),
               selection={"top_p": 2, "k": 10, "materialise_workers": 2})
    for cfg in (one, two):
        run_teacher_student(cfg)
    sets = [str(tmp_path / d / "run" / "round-1" / "selected") for d in ("one", "two")]
    samples = [sorted((s.key, s.cls) for s in iter_dataset(u)) for u in sets]
    assert samples[0] == samples[1] and samples[0]
    assert storage.exists(storage.join(sets[1], "_parts", "0001-of-0002.json"))
