"""LLP's report: the comparison table every method shows (``report.format_table``), the
oracle's view of the pseudo-labels, and their precision and coverage per propagation round."""

from __future__ import annotations

from semisup_core import storage
from semisup_core.report import (dedup_summary, format_table, plot_precision_by_rank,
                                 plot_recall, plot_rounds, write_report_files)

BASELINE, LLP, LLP_FINETUNED = "supervised baseline", "LLP", "LLP, fine-tuned on the labels"
ROWS = (BASELINE, LLP, LLP_FINETUNED)


def _confidences(sel: dict) -> str:
    ind, dis = sel.get("confidence_in_distribution"), sel.get("confidence_distractors")
    if ind is None or dis is None:
        return ""
    return (f" Mean confidence: {ind:.3f} on in-distribution images, {dis:.3f} on distractors"
            + (" (higher: the confidence weighting promotes the distractors)." if dis > ind else "."))


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
        plots["recall"] = plot_recall(classes, {name: named[name]["per_class_recall"]
                                                for name in ROWS if name in named},
                                      storage.join(out, "per_class_recall.png"))
    table = format_table(entries, ROWS)
    notes = [dedup_summary(dedup)] if dedup else []
    if sel:
        notes.append(f"LLP's pseudo-labels (oracle): {100 * sel['coverage']:.1f}% of the "
                     f"{sel['pool_images']:,} pool images labelled, precision "
                     f"{100 * (sel['precision'] or 0):.1f}% ({100 * sel['weighted_precision']:.1f}% "
                     f"weighted by confidence), {100 * (sel['distractor_share'] or 0):.2f}% of "
                     "them distractors; rows ranked by confidence within their class."
                     + _confidences(sel))
    return write_report_files(out, "semisup LLP report", table, notes, plots,
                              {"entries": entries, "rounds": per_round, "dedup": dedup})
