"""The demo's report: one comparison table, plots and a contact sheet."""

from __future__ import annotations

import os

from semisup_core import storage
from semisup_core.data.dataset import read_meta
from semisup_core.data.split import read_oracle
from semisup_core.report import contact_sheet, plot_accuracy_vs_k, plot_precision_by_rank, plot_recall
from semisup_core.select import read_manifest


def _row(name: str, model: dict | None, analysis: dict | None = None) -> dict | None:
    if model is None:
        return None
    row = {"model": name, "arch": model["arch"], "top1": model["top1"], "top5": model["top5"]}
    if analysis:
        row["selection_precision"] = analysis["precision"]
        row["distractor_share"] = analysis["distractor_share"]
    return row


def comparison_rows(results: dict) -> list[dict]:
    """Baseline, teacher, student before/after fine-tuning, self-training."""
    ts, st = results["teacher_student"], results["self_training"]
    m, rnd = ts["models"], (ts["rounds"][0] if ts["rounds"] else {})
    rows = [_row("supervised baseline", st["models"].get("teacher")),
            _row("teacher", m.get("teacher")),
            _row("student, pre-trained only", m.get("student-r1-pretrain"), rnd.get("analysis")),
            _row("student, fine-tuned", m.get("student-r1"), rnd.get("analysis"))]
    if st["rounds"]:
        rows.append(_row("self-training, fine-tuned", st["models"].get("student-r1"),
                         st["rounds"][0].get("analysis")))
    return [r for r in rows if r]


def format_table(rows: list[dict]) -> str:
    """A Markdown table (also readable as plain text)."""
    lines = ["| model | arch | top-1 | top-5 | selection precision | distractors selected |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        sp = f"{100 * r['selection_precision']:.1f}%" if "selection_precision" in r else ""
        ds = f"{100 * r['distractor_share']:.2f}%" if "distractor_share" in r else ""
        lines.append(f"| {r['model']} | {r['arch']} | {100 * r['top1']:.2f}% | {100 * r['top5']:.2f}% "
                     f"| {sp} | {ds} |")
    return "\n".join(lines)


def _plots(results: dict, out: str, data: dict, classes: list[str]) -> dict[str, str]:
    ts, st = results["teacher_student"], results["self_training"]
    plots = {}
    curves = {name: r["rounds"][0]["analysis"]["precision_by_rank"]
              for name, r in (("teacher/student", ts), ("self-training", st))
              if r and r["rounds"] and "analysis" in r["rounds"][0]}
    if curves:
        plots["precision_vs_rank"] = plot_precision_by_rank(curves, storage.join(out, "precision_vs_rank.png"))
    base, student = st["models"].get("teacher"), ts["models"].get("student-r1")
    if base and student:
        plots["recall"] = plot_recall(classes, {"supervised baseline": base["per_class_recall"],
                                                "student (fine-tuned)": student["per_class_recall"]},
                                      storage.join(out, "per_class_recall.png"))
    k = results["config"]["selection"]["k"]
    points = [(k, student["top1"])] if student else []
    points += [(kk, r["models"]["student-r1"]["top1"]) for kk, r in results["k_sweep"].items()
               if "student-r1" in r["models"]]
    if points:
        plots["accuracy_vs_k"] = plot_accuracy_vs_k({"student (fine-tuned)": points},
                                                    base["top1"] if base else None,
                                                    storage.join(out, "accuracy_vs_k.png"))
    return plots


def write_report(results: dict, out: str, data: dict) -> dict:
    """Write ``report.md``, ``metrics.json`` and the PNGs under ``out``; print the table."""
    classes = read_meta(data["test"]).classes
    rows = comparison_rows(results)
    plots = _plots(results, out, data, classes)
    ts_out = results["config"]["out"]
    sel = storage.join(ts_out, f"seed-{results['config']['seed']}", "teacher-student", "round-1",
                       "select", "manifest.parquet")
    if storage.exists(sel):
        oracle = read_oracle(data["oracle"])
        truth = dict(zip(oracle["key"].to_pylist(), oracle["true_class"].to_pylist()))
        plots["contact_sheet"] = contact_sheet(read_manifest(sel), data["pool"], classes,
                                               storage.join(out, "contact_sheet.png"), oracle=truth)
    table = format_table(rows)
    md = ["# semisup demo report", "", table, ""]
    md += [f"![{name}]({os.path.basename(uri)})" for name, uri in plots.items()]
    storage.put_bytes(storage.join(out, "report.md"), ("\n".join(md) + "\n").encode())
    metrics = {"rows": rows, "results": results}
    storage.write_json(storage.join(out, "metrics.json"), metrics)
    print("\n" + table)
    return metrics
