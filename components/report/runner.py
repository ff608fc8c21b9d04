"""What the report component runs: the teacher/student comparison from every evaluate step."""

from __future__ import annotations

import logging

from semisup_core import storage
from semisup_core.data.dataset import read_meta
from semisup_core.report import dedup_summary, format_table
from semisup_core.teacher_student.report import BASELINE, ROWS, STUDENT, write_report

from components.artifacts import dataset_uri, location
from components.evaluate.runner import read as read_metrics

log = logging.getLogger(__name__)


def _entry(doc: dict, name: str) -> dict:
    return {"model": name, "arch": doc["arch"], "top1": doc["top1"], "top5": doc["top5"],
            "per_class_recall": doc["per_class_recall"], "selection": doc.get("selection")}


def run(rows: dict, sweep: list, manifest, test, pool, oracle, markdown, html, report,
        summary, dedup=None) -> str:
    """``rows``: table row name -> evaluate metrics artifact (None = not run);
    ``sweep``: the gathered evaluations of the K sweep. Returns the Markdown table."""
    entries = [_entry(read_metrics(m), name) for name, m in rows.items() if m is not None]
    swept = [_entry(doc, "sweep") for doc in read_metrics(sweep)["items"]]
    k_points = [(e["selection"]["k"], e["top1"]) for e in
                swept + [x for x in entries if x["model"] == STUDENT] if e.get("selection")]
    out = location(report)
    test, pool = dataset_uri(test), dataset_uri(pool)
    oracle = dataset_uri(oracle) if oracle is not None else None
    write_report(entries, out, read_meta(test).classes, k_points=k_points,
                 manifest=storage.join(location(manifest), "manifest.parquet"), pool=pool,
                 oracle=oracle, dedup=location(dedup) if dedup is not None else None)
    table = format_table(entries, ROWS)
    dd_uri = storage.join(location(dedup), "summary.json") if dedup is not None else None
    dd_line = dedup_summary(storage.read_json(dd_uri)) if dd_uri and storage.exists(dd_uri) else ""
    storage.put_bytes(location(markdown), (f"# Teacher/student comparison\n\n{table}\n\n{dd_line}\n\n"
                                           "Plots: see the HTML artifact.\n").encode())
    if dd_line:
        summary.log_metric("dedup_removed", storage.read_json(dd_uri).get("removed", 0))
    storage.put_bytes(location(html), storage.get_bytes(storage.join(out, "report.html")))
    named = {e["model"]: e for e in entries}
    for name, e in named.items():
        summary.log_metric(name.replace(", ", "_").replace(" ", "_") + "_top1", round(e["top1"], 6))
    if BASELINE in named and STUDENT in named:
        summary.log_metric("student_minus_baseline", round(named[STUDENT]["top1"]
                                                           - named[BASELINE]["top1"], 6))
    log.info("\n%s", table)
    print("\n" + table, flush=True)
    return table
