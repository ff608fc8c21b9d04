"""Local Label Propagation (Zhuang et al. 2019) end to end, in-process, on the demo's split.

data (the demo's split: N labels per class, the pool with its MNIST distractors) -> dedup (the
pool's near-duplicates of the test set removed) -> the supervised baseline on the labels ->
LLP on labels + pool (``objective: llp`` in the one training loop) -> evaluate both -> the
oracle's view of the pseudo-labels, overall and per propagation round -> report (the comparison
table every method shows). Every step is skipped or resumed when its output exists.
"""

from __future__ import annotations

import logging
import os

from pydantic import Field

from semisup_core import config, storage
from semisup_core.data.dataset import read_meta
from semisup_core.data.demo_data import DemoData, prepare_data
from semisup_core.dedup.stage import DedupSpec, dedup_pool
from semisup_core.evaluate import EvaluateConfig, evaluate
from semisup_core.llp.analysis import pseudo_label_analysis, rounds
from semisup_core.report import (dedup_summary, format_table, html_page, plot_precision_by_rank,
                                 plot_recall, plot_rounds)
from semisup_core.train import TrainConfig, train
from semisup_core.train.config import TrainRecipe

log = logging.getLogger(__name__)

BASELINE, LLP = "supervised baseline", "LLP"
ROWS = (BASELINE, LLP)


def _default_llp() -> TrainRecipe:
    return TrainRecipe(model="small_resnet8", model_kwargs={"width": 4}, objective="llp",
                       epochs=12, batch_size=256, optim={"lr": 0.4, "warmup_epochs": 1},
                       llp={"warm_epochs": 2})


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

    def model_post_init(self, _ctx) -> None:
        if self.llp.objective != "llp":
            raise ValueError(f"llp.objective must be llp, got {self.llp.objective!r}")


def _train(recipe: TrainRecipe, data: list[str], out: str, seed: int) -> str:
    cfg = config.build(TrainConfig, dict(recipe.model_dump(mode="json", exclude_none=True),
                                         out=out, seed=seed, data={"train": data}))
    if not storage.exists(storage.join(out, "model.safetensors")):
        train(cfg)
    return out


def _evaluate(model: str, test: str, out: str, name: str) -> dict:
    uri = storage.join(out, "metrics.json")
    m = storage.read_json(uri) if storage.exists(uri) else evaluate(
        EvaluateConfig(model=model, data=test, out=out))
    return {"model": name, "arch": m["arch"], "top1": m["top1"], "top5": m["top5"],
            "per_class_recall": m["per_class_recall"], "selection": None}


def write_report(entries: list[dict], per_round: list[dict], classes: list[str], out: str,
                 dedup: dict | None) -> dict:
    """report.md, report.html, metrics.json and the plots under ``out``."""
    named, plots = {e["model"]: e for e in entries}, {}
    if per_round:
        plots["pseudo_labels_per_round"] = plot_rounds(per_round, storage.join(out, "rounds.png"))
    sel = (named.get(LLP) or {}).get("selection") or {}
    if sel.get("precision_by_rank"):
        plots["precision_vs_confidence_rank"] = plot_precision_by_rank(
            {"LLP pseudo-labels": sel["precision_by_rank"]}, storage.join(out, "precision_vs_rank.png"))
    if BASELINE in named and LLP in named:
        plots["recall"] = plot_recall(classes, {BASELINE: named[BASELINE]["per_class_recall"],
                                                LLP: named[LLP]["per_class_recall"]},
                                      storage.join(out, "per_class_recall.png"))
    table = format_table(entries, ROWS)
    notes = [dedup_summary(dedup)] if dedup else []
    if sel:
        notes.append(f"LLP's pseudo-labels (oracle): {100 * sel['coverage']:.1f}% of the "
                     f"{sel['pool_images']:,} pool images labelled, precision "
                     f"{100 * (sel['precision'] or 0):.1f}% ({100 * sel['weighted_precision']:.1f}% "
                     f"weighted by confidence), {100 * (sel['distractor_share'] or 0):.2f}% of "
                     "them distractors; rows ranked by confidence within their class.")
    md = ["# semisup LLP report", "", table, "", *notes, ""]
    md += [f"![{name}]({os.path.basename(uri)})" for name, uri in plots.items()]
    storage.put_bytes(storage.join(out, "report.md"), ("\n".join(md) + "\n").encode())
    storage.put_bytes(storage.join(out, "report.html"), html_page(
        "semisup LLP report", table + "".join(f"\n\n{n}" for n in notes), plots).encode())
    metrics = {"entries": entries, "rounds": per_round, "dedup": dedup,
               "plots": {k: os.path.basename(v) for k, v in plots.items()}}
    storage.write_json(storage.join(out, "metrics.json"), metrics)
    return metrics


def run_llp(cfg: LLPRunConfig) -> dict:
    """Run LLP and its baseline end to end; returns what the report's metrics.json holds."""
    data = prepare_data(cfg)
    run = storage.join(cfg.out, f"seed-{cfg.seed}")
    config.save(cfg, run, "llp-config.yaml")
    pool, dd = dedup_pool(cfg.dedup, data["pool"], data["test"], storage.join(run, "dedup"))
    base = _train(cfg.baseline, [data["labelled"]], storage.join(run, "models", "baseline"), cfg.seed)
    llp = _train(cfg.llp, [data["labelled"], pool], storage.join(run, "models", "llp"), cfg.seed)
    entries = [_evaluate(base, data["test"], storage.join(run, "eval", "baseline"), BASELINE),
               _evaluate(llp, data["test"], storage.join(run, "eval", "llp"), LLP)]
    entries[1]["selection"] = pseudo_label_analysis(storage.join(llp, "pseudo_labels.parquet"),
                                                    data["oracle"])
    per_round = rounds(llp, data["oracle"])
    report = write_report(entries, per_round, read_meta(data["test"]).classes,
                          storage.join(run, "report"), dd)
    print("\n" + format_table(entries, ROWS))
    print(f"\nReport: {storage.join(run, 'report', 'report.md')}")
    return report
