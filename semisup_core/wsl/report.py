"""The WSL report: the comparison table every method shows (``report.format_table``), the
synsets stage's audit (vocabulary, drops by reason, the tag candidates' oracle precision), the
linear probe of the weak-pre-trained features and, whenever the tags were simulated, a banner
saying so above everything else."""

from __future__ import annotations

from semisup_core import storage
from semisup_core.report import dedup_summary, format_table, plot_recall, write_report_files

BASELINE = "supervised baseline"
FINETUNED = "WSL pre-trained + fine-tuned"
EXTERNAL = "WSL on another collection's tags + fine-tuned"
TS_PLAIN = "teacher/student (supervised teacher)"
TS_SEMI = "semi-weak teacher/student"
TS_TAGS = "semi-weak, tag candidates ranked"
TS_TAGS_RANDOM = "semi-weak, balanced-with-tags (random)"
TS_ROWS = (TS_PLAIN, TS_SEMI, TS_TAGS, TS_TAGS_RANDOM)
ROWS = (BASELINE, FINETUNED, EXTERNAL) + TS_ROWS


def banner(simulated: dict | None) -> str | None:
    if not simulated:
        return None
    return (f"**The pool's tags are SIMULATED from the hidden labels** (seed {simulated['seed']}, "
            f"noise rate {simulated['noise_rate']}, measured {100 * simulated['noise_measured']:.1f}%, "
            f"confusion share {simulated['confusion_share']}; docs/wsl.md): rows that use them "
            "read the oracle through the tags and are not an oracle-free result.")


def write_report(entries: list[dict], probe: float | None, synsets: dict, simulated: dict | None,
                 classes: list[str], out: str, dedup: dict | None) -> dict:
    """report.md, report.html, metrics.json and the per-class recall plot under ``out``."""
    named, plots = {e["model"]: e for e in entries}, {}
    shown = [n for n in ROWS if n in named]
    if len(shown) > 1:
        plots["recall"] = plot_recall(classes, {n: named[n]["per_class_recall"] for n in shown},
                                      storage.join(out, "per_class_recall.png"))
    notes = []
    if dedup:
        notes.append(dedup_summary(dedup))
    notes.append(f"Synsets ({synsets['vocabulary']} vocabulary, {synsets['vocabulary_size']} "
                 f"labels): {synsets['mapped_tags']:,} of {synsets['distinct_tags']:,} distinct "
                 f"tags map; {synsets['images_with_labels']:,} of {synsets['images']:,} pool images "
                 f"get a label; tags dropped by reason: " + ", ".join(
                     f"{k} {v:,}" for k, v in synsets["dropped_tags"].items()) + "; labels "
                 f"merging more than one tag: {synsets['merged']:,}.")
    cand = synsets.get("candidates")
    if cand:
        notes.append(f"Tag candidates (image, class) for the semi-weak selection: {cand['rows']:,} "
                     f"rows on {cand['images']:,} images.")
    if probe is not None:
        notes.append(f"Linear probe of the weak-pre-trained network's frozen features (logistic "
                     f"regression on the labels): {100 * probe:.2f}%.")
    return write_report_files(out, "semisup WSL report", format_table(entries, ROWS), notes, plots,
                              {"entries": entries, "probe": probe, "synsets": synsets,
                               "tags_simulated": simulated, "dedup": dedup},
                              banner=banner(simulated))
