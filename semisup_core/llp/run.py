"""Local Label Propagation (Zhuang et al. 2019) end to end, in-process, on the demo's split.

data (the demo's split: N labels per class, the pool with its MNIST distractors) -> dedup (the
pool's near-duplicates of the test set removed) -> the supervised baseline on the labels ->
LLP on labels + pool (``objective: llp`` in the one training loop) -> LLP's network
fine-tuned on the labels (``finetune``; the teacher/student's last step, not the LLP paper's)
-> evaluate all three -> the oracle's view of the pseudo-labels, overall and per propagation
round -> report (the comparison table every method shows). Every step is skipped or resumed
when its output exists.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field

from semisup_core import config, storage
from semisup_core.data.dataset import read_meta
from semisup_core.data.demo_data import DemoData, prepare_data
from semisup_core.dedup.stage import DedupSpec, dedup_pool
from semisup_core.analysis import pseudo_label_analysis
from semisup_core.llp.analysis import rounds
from semisup_core.llp.report import BASELINE, LLP, LLP_FINETUNED, ROWS, write_report
from semisup_core.report import format_table
from semisup_core.steps import evaluate_once, train_once
from semisup_core.train.config import FinetuneSpec, LauncherSpec, TrainRecipe

log = logging.getLogger(__name__)

def _default_llp() -> TrainRecipe:
    return TrainRecipe(model="small_resnet8", model_kwargs={"width": 4}, objective="llp",
                       epochs=10, batch_size=256, optim={"lr": 0.06, "warmup_epochs": 0.5},
                       llp={"bank_init": "forward", "softmax_support": 16384})


class LLPRunConfig(DemoData):
    """``semisup run llp`` / ``semisup stage llp-run``: LLP against the supervised baseline on
    the demo's split (configs/llp_demo.yaml)."""

    out: str = Field("runs/llp", description="where data, models and the report go")
    dedup: DedupSpec = Field(default_factory=DedupSpec, description="near-duplicates of the "
                             "test set removed from the pool before LLP trains on it")
    baseline: TrainRecipe = Field(default_factory=lambda: TrainRecipe(
        model="small_resnet8", model_kwargs={"width": 4}, epochs=200, batch_size=64,
        optim={"lr": 0.4}), description="the supervised baseline on the labels alone (the "
                                        "teacher/student demo's baseline)")
    llp: TrainRecipe = Field(default_factory=_default_llp, description="LLP's training recipe "
                             "(objective llp; its llp section: K, T, τ, density, warm start)")
    finetune: FinetuneSpec = Field(default_factory=lambda: FinetuneSpec(
        model="small_resnet8", model_kwargs={"width": 4}, epochs=100, batch_size=64,
        optim={"lr": 0.1, "warmup_epochs": 0}), description="after LLP: its network fine-tuned "
        "on the labels alone (the teacher/student demo's fine-tuning recipe; the LLP paper has "
        "no such step; model and model_kwargs are LLP's, whatever is written here); enabled: false "
        "skips it")
    warm_start: Literal["baseline", "none"] = Field(
        "baseline", description="baseline: LLP starts from the supervised baseline's weights "
        "(with llp.bank_init forward); none: from scratch (the paper's IR warm start is then "
        "llp.warm_epochs of instance recognition: at this scale 1-2 epochs leave it at chance)")
    launcher: LauncherSpec = Field(default_factory=LauncherSpec, description="where the "
                                   "pipeline's training tasks train (`semisup run llp`; the "
                                   "in-process run trains in its own process)")

    def model_post_init(self, _ctx) -> None:
        if self.llp.objective != "llp":
            raise ValueError(f"llp.objective must be llp, got {self.llp.objective!r}")
        if self.finetune.labels != "true":
            raise ValueError("finetune.labels must be true: LLP has no selected set to add "
                             "(its pseudo-labels are trained on in the llp step)")


def run_llp(cfg: LLPRunConfig) -> dict:
    """Run LLP and its baseline end to end; returns what the report's metrics.json holds."""
    data = prepare_data(cfg)
    run = storage.join(cfg.out, f"seed-{cfg.seed}")
    config.save(cfg, run, "llp-config.yaml")
    pool, dd = dedup_pool(cfg.dedup, data["pool"], data["test"], storage.join(run, "dedup"))
    base = train_once(cfg.baseline, [data["labelled"]], storage.join(run, "models", "baseline"), cfg.seed)
    llp = train_once(cfg.llp, [data["labelled"], pool], storage.join(run, "models", "llp"), cfg.seed,
                 init_from=base if cfg.warm_start == "baseline" else None)
    entries = [evaluate_once(base, data["test"], storage.join(run, "eval", "baseline"), BASELINE),
               evaluate_once(llp, data["test"], storage.join(run, "eval", "llp"), LLP)]
    if cfg.finetune.enabled:
        arch = {"model": cfg.llp.model, "model_kwargs": cfg.llp.model_kwargs}
        ft = train_once(cfg.finetune.recipe().model_copy(update=arch), [data["labelled"]],
                        storage.join(run, "models", "llp-finetuned"), cfg.seed, init_from=llp)
        entries.append(evaluate_once(ft, data["test"], storage.join(run, "eval", "llp-finetuned"),
                                     LLP_FINETUNED))
    entries[1]["selection"] = pseudo_label_analysis(storage.join(llp, "pseudo_labels.parquet"),
                                                    data["oracle"])
    per_round = rounds(llp, data["oracle"])
    report = write_report(entries, per_round, read_meta(data["test"]).classes,
                          storage.join(run, "report"), dd)
    print("\n" + format_table(entries, ROWS))
    print(f"\nReport: {storage.join(run, 'report', 'report.md')}")
    return report
