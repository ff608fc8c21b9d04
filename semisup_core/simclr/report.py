"""SimCLRv2's report: the comparison table every method shows (``report.format_table``), the
linear probe per pre-training epoch, the oracle's view of the teacher's labels on the pool
(what the distilled student learns from) and per-class recall."""

from __future__ import annotations

from semisup_core import storage
from semisup_core.report import (dedup_summary, format_table, plot_precision_by_rank,
                                 plot_probe, plot_recall, write_report_files)

BASELINE = "supervised baseline"
FINETUNED = "SimCLR pre-trained + fine-tuned"
FROM_ENCODER = "SimCLR fine-tuned from the encoder"
DISTILLED = "SimCLR distilled"
ROWS = (BASELINE, FINETUNED, FROM_ENCODER, DISTILLED)


def write_report(entries: list[dict], probe: list[dict], classes: list[str], out: str,
                 dedup: dict | None) -> dict:
    """report.md, report.html, metrics.json and the plots under ``out``."""
    named, plots = {e["model"]: e for e in entries}, {}
    base = named.get(BASELINE, {}).get("top1")
    if probe:
        plots["linear_probe_per_epoch"] = plot_probe(probe, base, storage.join(out, "probe.png"))
    sel = (named.get(DISTILLED) or {}).get("selection") or {}
    if sel.get("precision_by_rank"):
        plots["precision_vs_confidence_rank"] = plot_precision_by_rank(
            {"teacher's labels on the pool": sel["precision_by_rank"]},
            storage.join(out, "precision_vs_rank.png"))
    shown = [n for n in ROWS if n in named]
    if len(shown) > 1:
        plots["recall"] = plot_recall(classes, {n: named[n]["per_class_recall"] for n in shown},
                                      storage.join(out, "per_class_recall.png"))
    table = format_table(entries, ROWS)
    notes = [dedup_summary(dedup)] if dedup else []
    if probe:
        notes.append("Linear probe (the frozen pre-trained network's features, logistic "
                     "regression on the labels) after "
                     "pre-training epochs " + ", ".join(
                         f"{r['epoch']}: {100 * r['linear_probe_top1']:.1f}%" for r in probe) + ".")
    if sel:
        notes.append(f"The distilled student's targets (oracle): the teacher's argmax on "
                     f"{sel['pool_images']:,} pool images is right for "
                     f"{100 * (sel.get('in_distribution_accuracy') or 0):.1f}% of the "
                     f"in-distribution ones; {100 * (sel['distractor_share'] or 0):.2f}% of the "
                     "pool are distractors, all of them distilled (the selection columns read "
                     "the teacher's labels; distillation selects nothing).")
    return write_report_files(out, "semisup SimCLRv2 report", table, notes, plots,
                              {"entries": entries, "probe": probe, "dedup": dedup})
