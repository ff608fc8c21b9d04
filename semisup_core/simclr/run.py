"""SimCLRv2 (Chen et al. 2020) end to end, in-process, on the demo's split.

data (the demo's split: N labels per class, the pool with its MNIST distractors) -> dedup (the
pool's near-duplicates of the test set removed) -> the supervised baseline on the labels ->
contrastive pre-training on pool + labelled images (labels unused; SimCLR views, 3-layer
projection head, LARS) -> fine-tuning on the labels from the head's first layer (and, for the
paper's §3.3 comparison, from the encoder) -> distillation of the fine-tuned teacher into a
student on pool + labelled images -> evaluate all -> the linear probe per pre-training epoch,
the oracle's view of the teacher's labels -> report (the comparison table every method shows).
Every step is skipped or resumed when its output exists.
"""

from __future__ import annotations

import logging
from pydantic import Field

from semisup_core import config, storage
from semisup_core.data.dataset import read_meta
from semisup_core.data.demo_data import DemoData, prepare_data
from semisup_core.dedup.stage import DedupSpec, dedup_pool
from semisup_core.report import format_table
from semisup_core.simclr.analysis import teacher_analysis
from semisup_core.simclr.probe import probe_snapshots
from semisup_core.simclr.report import (BASELINE, DISTILLED, FINETUNED, FROM_ENCODER, ROWS,
                                        write_report)
from semisup_core.steps import evaluate_once, train_once
from semisup_core.train.config import LauncherSpec, TrainRecipe

log = logging.getLogger(__name__)

WIDTH = 16  # the demo's encoder: small_resnet8 at width 16 (4x the other demos' student)


def _pretrain() -> TrainRecipe:
    return TrainRecipe(
        model="small_resnet8", model_kwargs={"width": WIDTH}, objective="contrastive",
        contrastive={"views": "simclr", "proj_layers": 3, "proj_dim": 64, "temperature": 0.2,
                     "koleo_weight": 0.0},
        epochs=8, batch_size=512, snapshot_every_epochs=2,
        optim={"optimizer": "lars", "lr": 0.075, "lr_scaling": "sqrt", "weight_decay": 1e-4,
               "warmup_epochs": 0.5})


def _finetune() -> TrainRecipe:
    return TrainRecipe(model="small_resnet8", model_kwargs={"width": WIDTH, "head_mlp": 1},
                       zero_init_head=True, epochs=100, batch_size=32,
                       optim={"lr": 0.1, "warmup_epochs": 0, "weight_decay": 0.0})


def _distill() -> TrainRecipe:
    return TrainRecipe(model="small_resnet8", model_kwargs={"width": WIDTH}, objective="distill",
                       epochs=4, batch_size=256, optim={"lr": 0.2, "warmup_epochs": 0.5})


class SimCLRRunConfig(DemoData):
    """``semisup run simclr`` / ``semisup stage simclr-run``: SimCLRv2's three steps against
    the supervised baseline on the demo's split (configs/simclr_demo.yaml)."""

    out: str = Field("runs/simclr", description="where data, models and the report go")
    labels_per_class: int = Field(10, ge=1, description="labelled images per class (the "
                                                        "paper's low-label regime: 10)")
    dedup: DedupSpec = Field(default_factory=DedupSpec, description="near-duplicates of the "
                             "test set removed from the pool before pre-training on it")
    baseline: TrainRecipe = Field(default_factory=lambda: TrainRecipe(
        model="small_resnet8", model_kwargs={"width": WIDTH}, epochs=200, batch_size=64,
        optim={"lr": 0.4}), description="the supervised baseline on the labels alone (the "
                                        "encoder's architecture, the other demos' recipe)")
    pretrain: TrainRecipe = Field(default_factory=_pretrain, description="contrastive "
                                  "pre-training (objective contrastive, views simclr)")
    finetune: TrainRecipe = Field(default_factory=_finetune, description="fine-tuning on the "
                                  "labels; model_kwargs.head_mlp: from which projection-head "
                                  "layer (1: SimCLRv2's choice); a second fine-tuning starts "
                                  "from the encoder (head_mlp 0), the paper's §3.3 comparison")
    distill: TrainRecipe = Field(default_factory=_distill, description="distillation into the "
                                 "student (its model: the same as the encoder = self-"
                                 "distillation, a smaller one = big-to-small)")
    distill_temperature: float = Field(1.0, gt=0, description="τ of the distillation (the "
                                       "student distils on the pool and the labelled images; "
                                       "distill.distill.label_weight adds their labels)")
    launcher: LauncherSpec = Field(default_factory=LauncherSpec, description="where the "
                                   "pipeline's training tasks train (`semisup run simclr`; the "
                                   "in-process run trains in its own process)")

    def model_post_init(self, _ctx) -> None:
        if self.pretrain.objective != "contrastive":
            raise ValueError(f"pretrain.objective must be contrastive, got {self.pretrain.objective!r}")
        if self.finetune.objective != "supervised":
            raise ValueError(f"finetune.objective must be supervised, got {self.finetune.objective!r}")
        if self.distill.objective != "distill":
            raise ValueError(f"distill.objective must be distill, got {self.distill.objective!r}")
        layers = self.pretrain.contrastive.proj_layers if self.pretrain.contrastive else 0
        if self.finetune.model_kwargs.get("head_mlp", 0) > max(0, layers - 1):
            raise ValueError(f"finetune.model_kwargs.head_mlp "
                             f"{self.finetune.model_kwargs['head_mlp']} exceeds the pre-trained "
                             f"projection head's {max(0, layers - 1)} hidden layers")


def run_simclr(cfg: SimCLRRunConfig) -> dict:
    """Run SimCLRv2's steps and the baseline end to end; returns what the report's metrics.json
    holds."""
    data = prepare_data(cfg)
    run = storage.join(cfg.out, f"seed-{cfg.seed}")
    config.save(cfg, run, "simclr-config.yaml")
    pool, dd = dedup_pool(cfg.dedup, data["pool"], data["test"], storage.join(run, "dedup"))
    models, evals = storage.join(run, "models"), storage.join(run, "eval")
    labelled = data["labelled"]
    base = train_once(cfg.baseline, [labelled], storage.join(models, "baseline"), cfg.seed)
    pre = train_once(cfg.pretrain, [labelled, pool], storage.join(models, "pretrain"), cfg.seed)
    ft = train_once(cfg.finetune, [labelled], storage.join(models, "finetune"), cfg.seed,
                    init_from=pre)
    enc = cfg.finetune.model_copy(update={"model_kwargs": {**cfg.finetune.model_kwargs,
                                                           "head_mlp": 0}})
    trained = [(base, BASELINE), (ft, FINETUNED),
               (train_once(enc, [labelled], storage.join(models, "finetune-encoder"), cfg.seed,
                           init_from=pre), FROM_ENCODER)]
    dist = train_once(cfg.distill, [labelled, pool], storage.join(models, "distill"), cfg.seed,
                      distill={"teacher": ft, "temperature": cfg.distill_temperature})
    trained.append((dist, DISTILLED))
    entries = [evaluate_once(m, data["test"], storage.join(evals, m.rsplit("/", 1)[-1]), name)
               for m, name in trained]
    entries[-1]["selection"] = teacher_analysis(ft, pool, data["oracle"],
                                                storage.join(run, "analysis"),
                                                cfg.distill_temperature)
    probe_uri = storage.join(run, "analysis", "probe.json")
    probe = storage.read_json(probe_uri)["probe"] if storage.exists(probe_uri) else None
    if probe is None:
        probe = probe_snapshots(pre, labelled, data["test"])
        storage.write_json(probe_uri, {"probe": probe})
    report = write_report(entries, probe, read_meta(data["test"]).classes,
                          storage.join(run, "report"), dd)
    print("\n" + format_table(entries, ROWS))
    print(f"\nReport: {storage.join(run, 'report', 'report.md')}")
    return report
