"""What the llp-report component runs: LLP's report from the two evaluations and the model's
pseudo-labels (semisup_core.llp.report)."""

from __future__ import annotations

import re

from semisup_core import storage
from semisup_core.data.dataset import read_meta
from semisup_core.analysis import pseudo_label_analysis
from semisup_core.llp.analysis import rounds
from semisup_core.llp.report import BASELINE, LLP, LLP_FINETUNED, ROWS, write_report
from semisup_core.report import dedup_summary, format_table

from components.artifacts import dataset_uri, location
from components.evaluate.runner import read as read_metrics


def _entry(doc: dict, name: str) -> dict:
    return {"model": name, "arch": doc["arch"], "top1": doc["top1"], "top5": doc["top5"],
            "per_class_recall": doc["per_class_recall"], "selection": None}


def run(baseline, llp, model, test, oracle, markdown, html, report, summary,
        dedup=None, finetuned=None) -> str:
    entries = [_entry(read_metrics(baseline), BASELINE), _entry(read_metrics(llp), LLP)]
    if finetuned is not None:
        entries.append(_entry(read_metrics(finetuned), LLP_FINETUNED))
    run_dir, oracle_uri = location(model), dataset_uri(oracle)
    entries[1]["selection"] = pseudo_label_analysis(
        storage.join(run_dir, "pseudo_labels.parquet"), oracle_uri)
    dd = None
    if dedup is not None and storage.exists(storage.join(location(dedup), "summary.json")):
        dd = storage.read_json(storage.join(location(dedup), "summary.json"))
    write_report(entries, rounds(run_dir, oracle_uri), read_meta(dataset_uri(test)).classes,
                 location(report), dd)
    table = format_table(entries, ROWS)
    dd_line = dedup_summary(dd) if dd else ""
    storage.put_bytes(location(markdown), (f"# LLP comparison\n\n{table}\n\n{dd_line}\n\n"
                                           "Plots: see the HTML artifact.\n").encode())
    storage.put_bytes(location(html), storage.get_bytes(storage.join(location(report),
                                                                     "report.html")))
    for e in entries:
        summary.log_metric(re.sub(r"[^A-Za-z0-9]+", "_", e["model"]) + "_top1", round(e["top1"], 6))
    summary.log_metric("llp_minus_baseline", round(entries[1]["top1"] - entries[0]["top1"], 6))
    if len(entries) > 2:
        summary.log_metric("llp_finetuned_minus_baseline",
                           round(entries[2]["top1"] - entries[0]["top1"], 6))
    summary.log_metric("pseudo_label_precision", round(entries[1]["selection"]["precision"] or 0, 6))
    print("\n" + table, flush=True)
    return table
