"""What the wsl-report component runs: the linear probe of the weak-pre-trained network and
the WSL report (semisup_core.wsl.report) from every evaluate step and the synsets summary."""

from __future__ import annotations

import re

from semisup_core import storage
from semisup_core.data.dataset import read_meta
from semisup_core.report import dedup_summary, format_table
from semisup_core.simclr.probe import linear_probe
from semisup_core.wsl.report import (BASELINE, FINETUNED, ROWS, TS_PLAIN, TS_SEMI, TS_TAGS,
                                     TS_TAGS_RANDOM, banner, write_report)

from components.artifacts import dataset_uri, location
from components.evaluate.runner import read as read_metrics


def _entry(doc: dict, name: str) -> dict:
    return {"model": name, "arch": doc["arch"], "top1": doc["top1"], "top5": doc["top5"],
            "per_class_recall": doc["per_class_recall"], "selection": doc.get("selection")}


def run(baseline, finetuned, pretrained, synsets, labelled, test, markdown, html, report,
        summary, plain=None, semi_weak=None, semi_weak_tags=None, semi_weak_tags_random=None,
        dedup=None) -> str:
    rows = [(baseline, BASELINE), (finetuned, FINETUNED), (plain, TS_PLAIN), (semi_weak, TS_SEMI),
            (semi_weak_tags, TS_TAGS), (semi_weak_tags_random, TS_TAGS_RANDOM)]
    entries = [_entry(read_metrics(m), name) for m, name in rows if m is not None]
    syn = storage.read_json(storage.join(location(synsets), "summary.json"))
    test_uri = dataset_uri(test)
    probe = linear_probe(location(pretrained), dataset_uri(labelled), test_uri)
    dd = None
    if dedup is not None and storage.exists(storage.join(location(dedup), "summary.json")):
        dd = storage.read_json(storage.join(location(dedup), "summary.json"))
    out = location(report)
    write_report(entries, probe, syn, syn.get("tags_simulated"), read_meta(test_uri).classes,
                 out, dd)
    table = format_table(entries, ROWS)
    head = "\n\n".join(x for x in (banner(syn.get("tags_simulated")), table,
                                   dedup_summary(dd) if dd else "") if x)
    text = f"# WSL comparison\n\n{head}\n\nPlots: see the HTML artifact.\n"
    storage.put_bytes(location(markdown), text.encode())
    storage.put_bytes(location(html), storage.get_bytes(storage.join(out, "report.html")))
    base = entries[0]["top1"]
    for e in entries:
        key = re.sub(r"[^A-Za-z0-9]+", "_", e["model"].replace("+", "and")).strip("_")
        summary.log_metric(key + "_top1", round(e["top1"], 6))
        if e["model"] != BASELINE:
            summary.log_metric(key + "_minus_baseline", round(e["top1"] - base, 6))
    summary.log_metric("linear_probe_top1", round(probe, 6))
    print("\n" + table, flush=True)
    return table
