"""The teacher/student report: one comparison table, plots and a contact sheet.

Its input is a list of *entries*, one per evaluated model, so the in-process demo and the
KFP report component build the same report::

    {"model": "student, fine-tuned", "arch": "small_resnet8 width=4", "top1": 0.87,
     "top5": 0.99, "per_class_recall": [...], "selection": {...} | None}

``selection`` is the select step's summary with the oracle analysis (``precision``,
``distractor_share``, ``precision_by_rank``) of the set the model was pre-trained on.
"""

from __future__ import annotations

import os

from semisup_core import storage
from semisup_core.report import (contact_sheet, dedup_summary, format_table, html_page,
                                 plot_accuracy_vs_k, plot_precision_by_rank, plot_recall)
from semisup_core.teacher_student.select import read_manifest

BASELINE, STUDENT = "supervised baseline", "student, fine-tuned"
#: the rows of the comparison table, in order (entries with other names are left out)
ROWS = (BASELINE, "teacher", "student, pre-trained only", STUDENT, "self-training, fine-tuned")


def entries_from_results(ts: dict, st: dict) -> list[dict]:
    """Entries from the in-process runner's results (teacher/student and self-training runs)."""
    def entry(name: str, run: dict, model: str, with_selection: bool) -> dict | None:
        m = run["models"].get(model)
        if m is None:
            return None
        sel = None
        if with_selection and run["rounds"]:
            rnd = run["rounds"][0]
            sel = dict(rnd["selection"], **rnd.get("analysis", {}))
        return dict(m, model=name, selection=sel)

    found = [entry(BASELINE, st, "teacher", False), entry("teacher", ts, "teacher", False),
             entry("student, pre-trained only", ts, "student-r1-pretrain", True),
             entry(STUDENT, ts, "student-r1", True),
             entry("self-training, fine-tuned", st, "student-r1", True)]
    return [e for e in found if e]


def _by_name(entries: list[dict]) -> dict[str, dict]:
    return {e["model"]: e for e in entries}


def _plots(entries: list[dict], k_points: list[tuple[int, float]], out: str,
           classes: list[str]) -> dict[str, str]:
    named, plots = _by_name(entries), {}
    curves = {label: named[row]["selection"]["precision_by_rank"]
              for label, row in (("teacher/student", STUDENT),
                                 ("self-training", "self-training, fine-tuned"))
              if row in named and (named[row].get("selection") or {}).get("precision_by_rank")}
    if curves:
        plots["precision_vs_rank"] = plot_precision_by_rank(
            curves, storage.join(out, "precision_vs_rank.png"))
    base, student = named.get(BASELINE), named.get(STUDENT)
    if base and student:
        plots["recall"] = plot_recall(classes, {BASELINE: base["per_class_recall"],
                                                "student (fine-tuned)": student["per_class_recall"]},
                                      storage.join(out, "per_class_recall.png"))
    if k_points:
        plots["accuracy_vs_k"] = plot_accuracy_vs_k({"student (fine-tuned)": k_points},
                                                    base["top1"] if base else None,
                                                    storage.join(out, "accuracy_vs_k.png"))
    return plots


def write_report(entries: list[dict], out: str, classes: list[str], *,
                 k_points: list[tuple[int, float]] = (), manifest: str | None = None,
                 pool: str | None = None, oracle: str | None = None,
                 dedup: str | None = None) -> dict:
    """Write ``report.md``, ``report.html``, ``metrics.json`` and the PNGs under ``out``.

    ``k_points``: (K, fine-tuned student top-1) pairs for the accuracy-vs-K plot;
    ``manifest``/``pool``: the ranked manifest and pool for the contact sheet (framed by the
    ``oracle`` when given); ``dedup``: a dedup output (its count and pair sheet are shown).
    Returns what ``metrics.json`` holds.
    """
    plots = _plots(entries, sorted(k_points), out, classes)
    dd = dedup_line = None
    if dedup and storage.exists(storage.join(dedup, "summary.json")):
        dd = storage.read_json(storage.join(dedup, "summary.json"))
        dedup_line = dedup_summary(dd)
        if dd.get("pool_images") and storage.exists(storage.join(dedup, "contact_sheet.png")):
            uri = storage.join(out, "dedup_pairs.png")
            storage.put_bytes(uri, storage.get_bytes(storage.join(dedup, "contact_sheet.png")))
            plots["dedup_pairs"] = uri
    if manifest and pool and storage.exists(manifest):
        plots["contact_sheet"] = contact_sheet(read_manifest(manifest), pool, classes,
                                               storage.join(out, "contact_sheet.png"),
                                               oracle=oracle or None)
    table = format_table(entries, ROWS)
    md = ["# semisup teacher/student report", "", table, ""]
    if dedup_line:
        md += [dedup_line, ""]
    md += [f"![{name}]({os.path.basename(uri)})" for name, uri in plots.items()]
    storage.put_bytes(storage.join(out, "report.md"), ("\n".join(md) + "\n").encode())
    page = html_page("semisup teacher/student report",
                     table + (f"\n\n{dedup_line}" if dedup_line else ""), plots)
    storage.put_bytes(storage.join(out, "report.html"), page.encode())
    metrics = {"rows": [{k: v for k, v in e.items() if k != "per_class_recall"} for e in entries],
               "entries": entries, "k_points": [list(p) for p in sorted(k_points)],
               "plots": {k: os.path.basename(v) for k, v in plots.items()}, "dedup": dd}
    storage.write_json(storage.join(out, "metrics.json"), metrics)
    return metrics
