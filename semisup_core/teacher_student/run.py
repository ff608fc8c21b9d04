"""The teacher/student pipeline of Yalniz et al. 2019, run in-process.

teacher on labels -> score the pool -> top-P classes per image -> top-K images per
class -> pre-train the student on them -> fine-tune it on the labels. Variants are
configuration: ``self_training`` (teacher architecture = student's), ``rounds`` (the
fine-tuned student becomes the next teacher), ``finetune.labels=inferred`` (fine-tune
on the selected set plus the labels), ``finetune.enabled=false`` (skip it).

Every step writes under ``out`` and is skipped when its output is already complete,
so a rerun after a crash continues where it stopped (training resumes from its newest
checkpoint, scoring skips finished shards).
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field, field_validator

from semisup_core import config, storage
from semisup_core.analysis import selection_analysis
from semisup_core.config import StageConfig
from semisup_core.data.config import MaterialiseConfig
from semisup_core.data.dataset import read_meta
from semisup_core.data.manifest import manifest_dataset
from semisup_core.errors import ConfigError
from semisup_core.evaluate import EvaluateConfig, evaluate
from semisup_core.teacher_student.score import ScoreConfig, score
from semisup_core.teacher_student.restrict import (CANDIDATES_HELP, RESTRICT_HELP, Restrict,
                                                   needs_candidates)
from semisup_core.teacher_student.select import SelectConfig, read_manifest, select
from semisup_core.train import TrainConfig, train
from semisup_core.train.config import DataConfig, FinetuneSpec, TrainRecipe

log = logging.getLogger(__name__)


class SelectionSpec(StageConfig):
    """Scoring and selection knobs (paper defaults: softmax, P=10, K=16k, balanced)."""

    top_p: int = Field(10, ge=1, description="classes kept per image")
    k: int = Field(16000, ge=1, description="images per class")
    strategy: Literal["balanced", "unbalanced", "random", "threshold"] = "balanced"
    k_law: Literal["frequency", "zipf"] = "frequency"
    threshold: float = 0.5
    use_logits: bool = Field(False, description="rank by logits (ablation) instead of softmax")
    workers: int = Field(1, ge=1, description="scoring workers (shards i::N each)")
    materialise_workers: int = Field(
        MaterialiseConfig.model_fields["num_workers"].default, ge=1,
        description="tasks that copy the selected images into the student's training set "
        "(selected pool shards i::N each; the pipeline runs them in parallel, this runner one "
        "after another: the same samples, packed into shards per worker)")
    restrict: Restrict = Field("none", description=RESTRICT_HELP + " (with tags: set top_p to "
                               "the class count)")
    candidates: str | None = Field(None, validate_default=True, description=CANDIDATES_HELP)

    _candidates = field_validator("candidates")(classmethod(needs_candidates))


class TeacherStudentConfig(StageConfig):
    """The whole pipeline; every model is evaluated on ``test``."""

    out: str = Field(description="output directory URI")
    labelled: str = Field(description="labelled dataset URI (split/labelled)")
    pool: str = Field(description="unlabelled pool URI (split/unlabelled)")
    test: str = Field(description="labelled test set URI")
    oracle: str | None = Field(None, description="oracle.parquet (analysis only, never training)")
    teacher: TrainRecipe = Field(default_factory=TrainRecipe)
    student: TrainRecipe = Field(default_factory=TrainRecipe)
    finetune: FinetuneSpec = Field(default_factory=FinetuneSpec)
    selection: SelectionSpec = Field(default_factory=SelectionSpec)
    self_training: bool = Field(False, description="teacher uses the student's recipe")
    teacher_model: str | None = Field(None, description="use this trained model as the first "
                                                        "teacher instead of training one")
    teacher_init: str | None = Field(None, description="semi-weakly supervised (Yalniz et al. "
                                     "§3.3): the teacher starts from this (weak-)pre-trained model "
                                     "and is fine-tuned on the labels with the teacher recipe "
                                     "(its head starts fresh when the shapes differ)")
    scores_from: str | None = Field(None, description="round 1 reuses this finished score output "
                                                      "of the same teacher (e.g. for a K sweep)")
    rounds: int = Field(1, ge=0, description="student of round r is the teacher of round r+1; "
                                             "0 only trains (and evaluates) the teacher")
    baseline: bool = Field(True, description="also train the student architecture on the labels")
    seed: int = Field(0, description="seed of every model in the run")


class Runner:
    """Runs the steps of one TeacherStudentConfig; collects results as it goes."""

    def __init__(self, cfg: TeacherStudentConfig):
        self.cfg = cfg
        self.results: dict = {"models": {}, "rounds": []}

    def _path(self, *parts: str) -> str:
        return storage.join(self.cfg.out, *parts)

    def train_eval(self, name: str, recipe: TrainRecipe, data, init_from: str | None = None) -> str:
        """Train ``name`` (skipped if finished) and evaluate it on the test set."""
        out = self._path("models", name)
        fields = recipe.model_dump(exclude={"enabled", "labels"})
        fields["seed"] = self.cfg.seed
        # a finished run returns at once; a changed config is refused, not silently reused
        train(TrainConfig(out=out, data=DataConfig(train=data), init_from=init_from, **fields))
        metrics = evaluate(EvaluateConfig(model=out, data=self.cfg.test, out=self._path("eval", name)))
        arch = recipe.model + "".join(f" {k}={v}" for k, v in sorted(recipe.model_kwargs.items()))
        self.results["models"][name] = {"arch": arch, "top1": metrics["top1"],
                                        "top5": metrics["top5"],
                                        "per_class_recall": metrics["per_class_recall"]}
        return out

    def score_select(self, teacher: str, r: int) -> tuple[str, dict]:
        s = self.cfg.selection
        reuse = self.cfg.scores_from if r == 1 else None
        scores = reuse or self._path(f"round-{r}", "scores")
        for w in range(0 if reuse else s.workers):
            score(ScoreConfig(model=teacher, pool=self.cfg.pool, out=scores, top_p=s.top_p,
                              partial_k=s.k, use_logits=s.use_logits, worker=w, num_workers=s.workers))
        sel = self._path(f"round-{r}", "select")
        summary = select(SelectConfig(scores=scores, out=sel, strategy=s.strategy, k=s.k,
                                      k_law=s.k_law, threshold=s.threshold, seed=self.cfg.seed,
                                      restrict=s.restrict, candidates=s.candidates))
        selected = self._path(f"round-{r}", "selected")
        if not storage.exists(storage.join(selected, "dataset.json")):
            manifest = read_manifest(storage.join(sel, "manifest.parquet"))
            for w in range(s.materialise_workers):
                manifest_dataset(manifest, self.cfg.pool, selected, worker=w,
                                 num_workers=s.materialise_workers)
        return selected, summary

    def round(self, teacher: str, r: int) -> str:
        selected, summary = self.score_select(teacher, r)
        info = {"round": r, "teacher": teacher, "selection": summary}
        if self.cfg.oracle:
            info["analysis"] = selection_analysis(
                read_manifest(self._path(f"round-{r}", "select", "manifest.parquet")), self.cfg.oracle,
                candidates=self.cfg.selection.candidates)
        pre = self.train_eval(f"student-r{r}-pretrain", self.cfg.student, selected)
        student = pre
        ft = self.cfg.finetune
        if ft.enabled:
            data = self.cfg.labelled if ft.labels == "true" else [selected, self.cfg.labelled]
            student = self.train_eval(f"student-r{r}", ft.model_copy(update={"model": self.cfg.student.model,
                                      "model_kwargs": self.cfg.student.model_kwargs}), data, init_from=pre)
        self.results["rounds"].append(info)
        return student

    def check(self) -> None:
        """Refuse before any training what select would refuse after scoring."""
        if self.cfg.teacher_model and self.cfg.teacher_init:
            raise ConfigError("teacher_model (a finished teacher) and teacher_init (a teacher to "
                              "fine-tune from it) exclude each other: set one")
        s = self.cfg.selection
        num_classes = read_meta(self.cfg.labelled).num_classes if s.restrict == "tags" else 0
        if s.top_p < num_classes:
            raise ConfigError(f"selection.top_p={s.top_p} keeps {s.top_p} of {num_classes} classes "
                              "per image, but restrict=tags needs all (a candidate class outside "
                              f"an image's top-P would be lost): set selection.top_p={num_classes}")

    def run(self) -> dict:
        cfg = self.cfg
        self.check()
        config.save(cfg, cfg.out)
        if cfg.baseline:
            self.train_eval("baseline", cfg.student, cfg.labelled)
        if cfg.teacher_model:
            teacher = cfg.teacher_model
        else:
            teacher = self.train_eval("teacher", cfg.student if cfg.self_training else cfg.teacher,
                                      cfg.labelled, init_from=cfg.teacher_init)
        for r in range(1, cfg.rounds + 1):
            teacher = self.round(teacher, r)
        self.results["final"] = teacher
        storage.write_json(self._path("results.json"), self.results)
        return self.results


def run_teacher_student(cfg: TeacherStudentConfig) -> dict:
    """Run the pipeline; returns ``results.json`` content."""
    return Runner(cfg).run()
