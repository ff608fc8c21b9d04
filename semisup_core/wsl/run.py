"""Weakly supervised pre-training (Mahajan et al. 2018) and the semi-weakly supervised
teacher/student (Yalniz et al. 2019 §3.3) end to end, in-process, on the demo's split.

data (the demo's split) -> dedup -> SIMULATED pool tags (``simulate.py``; from the hidden
labels, marked in every output) -> synsets (tags -> WordNet synsets: the pre-training
vocabulary, each image's soft targets, the resampled weak training set, the target classes'
tag candidates) -> the supervised baseline on the labels -> weak pre-training on the pool's
tags (``objective: weak``) -> fine-tuning on the labels (and a linear probe of the frozen
features) -> teacher/student with the supervised baseline as teacher (plain) and with the
weak-pre-trained, fine-tuned teacher (semi-weak), the latter also with the selection
restricted to tag candidates (ranked: our extension; random per class: the paper's
balanced-with-tags) -> evaluate all -> report (the comparison table every method shows).
Every step is skipped or resumed when its output exists.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field

from semisup_core import config, storage
from semisup_core.data.dataset import read_meta
from semisup_core.data.demo_data import DemoData, prepare_data
from semisup_core.dedup.stage import DedupSpec, dedup_pool
from semisup_core.report import format_table
from semisup_core.simclr.probe import linear_probe
from semisup_core.steps import evaluate_once, train_once
from semisup_core.teacher_student.report import entries_from_results
from semisup_core.teacher_student.run import (SelectionSpec, TeacherStudentConfig,
                                              run_teacher_student)
from semisup_core.train.config import FinetuneSpec, LauncherSpec, TrainRecipe
from semisup_core.wsl.report import (BASELINE, EXTERNAL, FINETUNED, ROWS, TS_ROWS, banner,
                                     write_report)
from semisup_core.wsl.simulate import CLASS_SYNSETS, SimulatedTags, simulate_tags
from semisup_core.wsl.synsets import SynsetsConfig, run_synsets

log = logging.getLogger(__name__)

WIDTH = 16  # small_resnet8 at width 16: SimCLR's encoder, so the two methods' rows compare


def _pretrain() -> TrainRecipe:
    return TrainRecipe(model="small_resnet8", model_kwargs={"width": WIDTH}, objective="weak",
                       epochs=1, batch_size=256, optim={"lr": 0.1, "warmup_epochs": 0.05})


def _finetune() -> TrainRecipe:
    return TrainRecipe(model="small_resnet8", model_kwargs={"width": WIDTH}, zero_init_head=True,
                       epochs=100, batch_size=32, optim={"lr": 0.1, "warmup_epochs": 0,
                                                         "weight_decay": 0.0})


class SynsetsSpec(SynsetsConfig):
    """The synsets stage's knobs in a run (its data and out are the run's)."""

    data: str = ""
    out: str = ""
    vocabulary: Literal["target", "nouns", "top"] = Field(
        "target", description="pre-training labels: the target classes' synsets (Mahajan et al.'s "
                              "1.5k ImageNet set; the demo's), all noun synsets, or the top_n "
                              "most frequent")
    draws: float = Field(2.0, ge=0, description="resampled samples per image: the weak "
                                                "pre-training's passes (it runs one epoch)")
    target_synsets: dict[str, list[str]] = Field(
        default_factory=lambda: dict(CLASS_SYNSETS), description="the target classes' synsets "
        "(tag candidates for the semi-weak selection; the vocabulary when vocabulary=target)")


class WSLRunConfig(DemoData):
    """``semisup run wsl`` / ``semisup stage wsl-run`` (configs/wsl_demo.yaml)."""

    out: str = Field("runs/wsl", description="where data, models and the report go")
    labels_per_class: int = Field(10, ge=1, description="labelled images per class (SimCLR's "
                                                        "split, so the rows compare)")
    dedup: DedupSpec = Field(default_factory=DedupSpec, description="near-duplicates of the "
                             "test set removed from the pool before anything trains on it")
    tags: SimulatedTags = Field(default_factory=SimulatedTags, description="the pool's "
                                "SIMULATED tags (from the hidden labels; docs/wsl.md)")
    synsets: SynsetsSpec = Field(default_factory=SynsetsSpec, description="tags -> synsets: "
                                 "vocabulary, resampling, target synsets")
    baseline: TrainRecipe = Field(default_factory=lambda: TrainRecipe(
        model="small_resnet8", model_kwargs={"width": WIDTH}, epochs=200, batch_size=64,
        optim={"lr": 0.4}), description="the supervised baseline on the labels alone (the "
                                        "plain teacher/student's teacher)")
    pretrain: TrainRecipe = Field(default_factory=_pretrain, description="weak pre-training on "
                                  "the resampled set (objective weak; one epoch = synsets.draws "
                                  "passes)")
    finetune: TrainRecipe = Field(default_factory=_finetune, description="transfer: fine-tuning "
                                  "the weak-pre-trained network on the labels")
    student: TrainRecipe = Field(default_factory=lambda: TrainRecipe(
        model="small_resnet8", model_kwargs={"width": 4}, epochs=10, batch_size=128,
        optim={"lr": 0.4}), description="teacher/student: the student pre-trained on the "
                                        "selected set (the teacher/student demo's, 10 epochs "
                                        "instead of 20: four students per seed)")
    student_finetune: FinetuneSpec = Field(default_factory=lambda: FinetuneSpec(
        epochs=100, batch_size=64, optim={"lr": 0.1, "warmup_epochs": 0}))
    selection: SelectionSpec = Field(default_factory=lambda: SelectionSpec(top_p=10, k=2000),
                                     description="teacher/student selection (top_p = all 10 "
                                                 "classes: the tag restriction needs them)")
    semi_weak: bool = Field(True, description="also run the teacher/student variants")
    external: str | None = Field(None, description="also pre-train on this tagged dataset's "
                                 "own tags (real ones, e.g. the OpenClipart import at 28 px grey; "
                                 "vocabulary top, synsets.top_n) and fine-tune on the labels: "
                                 "transfer from another collection")
    external_draws: float = Field(20.0, gt=0, description="external: resampled samples per "
                                                          "image (a small collection needs more)")
    launcher: LauncherSpec = Field(default_factory=LauncherSpec, description="where the "
                                   "pipeline's training tasks train (`semisup run wsl`)")

    def model_post_init(self, _ctx) -> None:
        if self.pretrain.objective != "weak":
            raise ValueError(f"pretrain.objective must be weak, got {self.pretrain.objective!r}")
        if self.finetune.objective != "supervised":
            raise ValueError(f"finetune.objective must be supervised, got {self.finetune.objective!r}")


def _ts(cfg: WSLRunConfig, data: dict, pool: str, out: str, teacher: str,
        scores_from: str | None = None, **selection) -> dict:
    return run_teacher_student(TeacherStudentConfig(
        out=out, labelled=data["labelled"], pool=pool, test=data["test"], oracle=data["oracle"],
        student=cfg.student, finetune=cfg.student_finetune, teacher_model=teacher,
        selection=cfg.selection.model_copy(update=selection), baseline=False, rounds=1,
        seed=cfg.seed, scores_from=scores_from))


def _synsets_once(spec: SynsetsSpec, **fields) -> dict:
    """The synsets stage of ``spec`` with ``fields`` into ``fields["out"]`` unless its summary is
    there; returns the summary."""
    done = storage.join(fields["out"], "summary.json")
    if storage.exists(done):
        return storage.read_json(done)
    return run_synsets(spec.model_copy(update=fields))


def run_wsl(cfg: WSLRunConfig) -> dict:
    """Run the weak pre-training, its transfer and the teacher/student variants end to end;
    returns what the report's metrics.json holds."""
    data = prepare_data(cfg)
    run = storage.join(cfg.out, f"seed-{cfg.seed}")
    config.save(cfg, run, "wsl-config.yaml")
    pool, dd = dedup_pool(cfg.dedup, data["pool"], data["test"], storage.join(run, "dedup"))
    tagged = storage.join(run, "pool-tagged")
    simulated = simulate_tags(pool, data["oracle"], tagged, cfg.tags, cfg.seed, cfg.synsets.wordnet)
    syn_out = storage.join(run, "synsets")
    syn = _synsets_once(cfg.synsets, data=tagged, out=syn_out, seed=cfg.seed)
    models, evals = storage.join(run, "models"), storage.join(run, "eval")
    labelled = data["labelled"]
    base = train_once(cfg.baseline, [labelled], storage.join(models, "baseline"), cfg.seed)
    pre = train_once(cfg.pretrain, [storage.join(syn_out, "train")],
                     storage.join(models, "pretrain"), cfg.seed)
    ft = train_once(cfg.finetune, [labelled], storage.join(models, "finetune"), cfg.seed,
                    init_from=pre)
    entries = [evaluate_once(base, data["test"], storage.join(evals, "baseline"), BASELINE),
               evaluate_once(ft, data["test"], storage.join(evals, "finetune"), FINETUNED)]
    if cfg.external:
        ext = storage.join(run, "external-synsets")
        _synsets_once(cfg.synsets, data=cfg.external, out=ext, seed=cfg.seed,  # its own labels
                      draws=cfg.external_draws, target_synsets={}, vocabulary="top")
        ext_pre = train_once(cfg.pretrain, [storage.join(ext, "train")],
                             storage.join(models, "external-pretrain"), cfg.seed)
        ext_ft = train_once(cfg.finetune, [labelled], storage.join(models, "external-finetune"),
                            cfg.seed, init_from=ext_pre)
        entries.append(evaluate_once(ext_ft, data["test"], storage.join(evals, "external-finetune"),
                                     EXTERNAL))
    probe_uri = storage.join(run, "analysis", "probe.json")
    if not storage.exists(probe_uri):
        storage.write_json(probe_uri, {"linear_probe_top1": linear_probe(pre, labelled, data["test"])})
    probe = storage.read_json(probe_uri)["linear_probe_top1"]
    if cfg.semi_weak:
        cand = storage.join(syn_out, "candidates.parquet")
        ts = storage.join(run, "teacher-student")
        semi_scores = storage.join(ts, "semi-weak", "round-1", "scores")  # one teacher, one scoring
        variants = {"plain": (base, {}), "semi-weak": (ft, {}),
                    "semi-weak-tags": (ft, {"restrict": "tags", "candidates": cand,
                                            "scores_from": semi_scores}),
                    "semi-weak-tags-random": (ft, {"restrict": "tags", "candidates": cand,
                                                   "strategy": "random",
                                                   "scores_from": semi_scores})}
        for (name, (teacher, sel)), row in zip(variants.items(), TS_ROWS):
            res = _ts(cfg, data, tagged, storage.join(ts, name), teacher, **sel)
            student = [e for e in entries_from_results(res, {"models": {}, "rounds": []})
                       if e["model"] == "student, fine-tuned"]
            entries += [dict(e, model=row) for e in student]
    report = write_report(entries, probe, syn, simulated, read_meta(data["test"]).classes,
                          storage.join(run, "report"), dd)
    print("\n" + "\n\n".join(x for x in (banner(simulated), format_table(entries, ROWS)) if x))
    print(f"\nReport: {storage.join(run, 'report', 'report.md')}")
    return report
