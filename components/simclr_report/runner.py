"""What the simclr-report component runs: the linear probe per pre-training snapshot, the
teacher's labels on the pool, and SimCLRv2's report (semisup_core.simclr.report)."""

from __future__ import annotations

from semisup_core import storage
from semisup_core.data.dataset import read_meta
from semisup_core.report import dedup_summary, format_table
from semisup_core.simclr.analysis import teacher_analysis
from semisup_core.simclr.probe import probe_snapshots
from semisup_core.simclr.report import (BASELINE, DISTILLED, FINETUNED, FROM_ENCODER, ROWS,
                                        write_report)

from components.artifacts import dataset_uri, location, pool_for_training
from components.evaluate.runner import read as read_metrics


def _entry(doc: dict, name: str) -> dict:
    return {"model": name, "arch": doc["arch"], "top1": doc["top1"], "top5": doc["top5"],
            "per_class_recall": doc["per_class_recall"], "selection": None}


def run(baseline, finetuned, distilled, pretrained, teacher, labelled, pool, test, oracle,
        markdown, html, report, summary, from_encoder=None, dedup=None,
        temperature: float = 1.0) -> str:
    rows = [(baseline, BASELINE), (finetuned, FINETUNED), (from_encoder, FROM_ENCODER),
            (distilled, DISTILLED)]
    entries = [_entry(read_metrics(m), name) for m, name in rows if m is not None]
    out = location(report)
    pool_uri = pool_for_training(pool, storage.join(out, "work"))
    entries[-1]["selection"] = teacher_analysis(location(teacher), pool_uri, dataset_uri(oracle),
                                                storage.join(out, "work"), temperature)
    probe = probe_snapshots(location(pretrained), dataset_uri(labelled), dataset_uri(test))
    dd = None
    if dedup is not None and storage.exists(storage.join(location(dedup), "summary.json")):
        dd = storage.read_json(storage.join(location(dedup), "summary.json"))
    write_report(entries, probe, read_meta(dataset_uri(test)).classes, out, dd)
    table = format_table(entries, ROWS)
    dd_line = dedup_summary(dd) if dd else ""
    storage.put_bytes(location(markdown), (f"# SimCLRv2 comparison\n\n{table}\n\n{dd_line}\n\n"
                                           "Plots: see the HTML artifact.\n").encode())
    storage.put_bytes(location(html), storage.get_bytes(storage.join(out, "report.html")))
    base = entries[0]["top1"]
    for e in entries:
        key = e["model"].replace(" ", "_").replace("+", "and")
        summary.log_metric(key + "_top1", round(e["top1"], 6))
        if e["model"] != BASELINE:
            summary.log_metric(key + "_minus_baseline", round(e["top1"] - base, 6))
    if probe:
        summary.log_metric("linear_probe_top1", round(probe[-1]["linear_probe_top1"], 6))
    print("\n" + table, flush=True)
    return table
