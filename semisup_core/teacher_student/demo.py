"""``semisup demo``: the teacher/student pipeline on the embedded default.

Imports Fashion-MNIST (labelled task) and MNIST (out-of-distribution distractors),
splits (N labels per class; the rest of Fashion-MNIST train plus the MNIST digits is
the unlabelled pool), trains the supervised baseline, the teacher and the student,
runs the self-training variant, and writes a report directory. Local files only.
"""

from __future__ import annotations

import logging
import os

from pydantic import Field

from semisup_core import storage
from semisup_core.config import save
from semisup_core.data.demo_data import DemoData, prepare_data
from semisup_core.data.dataset import read_meta
from semisup_core.dedup.stage import DedupSpec
from semisup_core.report import format_table
from semisup_core.teacher_student.report import ROWS, entries_from_results, write_report
from semisup_core.teacher_student.run import (SelectionSpec, TeacherStudentConfig,
                                          run_teacher_student)
from semisup_core.train.config import FinetuneSpec, LauncherSpec, TrainRecipe

log = logging.getLogger(__name__)


def _recipe(**kw) -> TrainRecipe:
    return TrainRecipe(**kw)


class DemoConfig(DemoData):
    """The demo's knobs; the defaults are what the README's numbers come from.

    The regime (chosen by the probes in benchmarks/results/regime_probes.md): 50 labels per
    class, where the student architecture alone is data-starved (a converged baseline: 200
    epochs; 400 gives the same); a teacher (small_resnet14 width 16) stronger than the student
    (small_resnet8 width 4), as in the paper (ResNeXt teachers, ResNet-18/50 students); the
    top-1 class of each image (P=1: 10 classes, not 1000) and K=2000 of the ~6k pool images
    per class; the student pre-trained for 20 epochs on the 20k selected images, then
    fine-tuned on the labels (100 epochs of 500 images, lower learning rate).
    """

    teacher: TrainRecipe = Field(default_factory=lambda: _recipe(
        model="small_resnet14", model_kwargs={"width": 16}, epochs=200, batch_size=64,
        optim={"lr": 0.4}))
    student: TrainRecipe = Field(default_factory=lambda: _recipe(
        model="small_resnet8", model_kwargs={"width": 4}, epochs=20, batch_size=128,
        optim={"lr": 0.4}))
    baseline: TrainRecipe = Field(default_factory=lambda: _recipe(
        model="small_resnet8", model_kwargs={"width": 4}, epochs=200, batch_size=64,
        optim={"lr": 0.4}),
        description="the supervised baseline: the student architecture on the labels alone "
                    "(also the self-training teacher)")
    finetune: FinetuneSpec = Field(default_factory=lambda: FinetuneSpec(
        epochs=100, batch_size=64, optim={"lr": 0.1, "warmup_epochs": 0}))
    selection: SelectionSpec = Field(default_factory=lambda: SelectionSpec(top_p=1, k=2000))
    dedup: DedupSpec = Field(default_factory=DedupSpec, description="near-duplicates of the "
                             "test set removed from the pool before scoring")
    self_training: bool = Field(True, description="also run the self-training variant")
    teacher_init: str | None = Field(None, description="semi-weakly supervised: the teacher is "
                                     "fine-tuned from this weak-pre-trained model (semisup stage "
                                     "weak-train; docs/wsl.md) instead of trained from scratch")
    rounds: int = Field(1, ge=1, le=3, description="teacher/student rounds; the student of a round "
                                                   "teaches the next (the table shows round 1)")
    k_sweep: list[int] = Field(default_factory=lambda: [1000], min_length=1,
                               description="extra K values for the accuracy-vs-K plot (each "
                               "pre-trains and fine-tunes a student); at least one: kfp.local "
                               "2.17 cannot run an empty ParallelFor")
    launcher: LauncherSpec = Field(
        default_factory=lambda: LauncherSpec(backend="torchrun"),
        description="where the pipeline's training tasks train; the demo goes through the "
                    "PyTorchJob launcher's local backend (torchrun, one process: the same "
                    "training as in the task's pod), so a local run exercises the launcher path "
                    "a cluster run takes (--in-process trains in this process)")


def _pipeline(cfg: DemoConfig, data: dict, out: str, **kw) -> TeacherStudentConfig:
    fields = dict(out=out, teacher=cfg.teacher, student=cfg.student, finetune=cfg.finetune,
                  selection=cfg.selection, seed=cfg.seed, **data)
    fields.update(kw)
    return TeacherStudentConfig(**fields)


def run_demo(cfg: DemoConfig) -> dict:
    """Run the demo end to end; returns everything the report shows."""
    data = prepare_data(cfg)
    run = storage.join(cfg.out, f"seed-{cfg.seed}")
    save(cfg, run, "demo-config.yaml")
    main = run_teacher_student(_pipeline(cfg, data, storage.join(run, "teacher-student"),
                                         baseline=False, rounds=cfg.rounds,
                                         teacher_init=cfg.teacher_init))
    # self-training: the teacher is the student architecture trained on the labels, i.e.
    # the supervised baseline itself (rounds=0 trains and evaluates just that model)
    base = run_teacher_student(_pipeline(cfg, data, storage.join(run, "self-training"),
                                         teacher=cfg.baseline, baseline=False,
                                         rounds=1 if cfg.self_training else 0))
    sweep = {}
    for k in cfg.k_sweep:
        sweep[k] = run_teacher_student(_pipeline(
            cfg, data, storage.join(run, f"k-{k}"), baseline=False,
            teacher_model=storage.join(run, "teacher-student", "models", "teacher"),
            scores_from=storage.join(run, "teacher-student", "round-1", "scores"),
            selection=cfg.selection.model_copy(update={"k": k})))
    entries = entries_from_results(main, base)
    k_points = [(k, r["models"]["student-r1"]["top1"]) for k, r in [(cfg.selection.k, main),
                                                                     *sweep.items()]
                if "student-r1" in r["models"]]
    report = write_report(entries, storage.join(run, "report"), read_meta(data["test"]).classes,
                          k_points=k_points, pool=data["pool"], oracle=data["oracle"],
                          manifest=storage.join(run, "teacher-student", "round-1", "select",
                                                "manifest.parquet"))
    print("\n" + format_table(entries, ROWS))
    where = os.path.abspath(run) if storage.is_local(run) else run
    print(f"\nEverything is under {where}:\n  report/          report.md, metrics.json, *.png"
          f"\n  teacher-student/ models/, eval/, round-1/ (scores, manifest, selected set)"
          f"\n  self-training/   the same for the self-training variant"
          f"\n  data (shared):   {os.path.abspath(storage.join(cfg.out, 'data'))}"
          f"\nOpen {os.path.join(where, 'report', 'report.md')}")
    return report
