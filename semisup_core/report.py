"""The report a person looks at: report.md, metrics.json and PNG plots; what every method's
report shares (the comparison table, the page, the dedup line).

Plots: accuracy vs K, selection precision vs rank, per-class recall of the baseline
vs the student, and a contact sheet of the top-ranked images of each class (the
paper's Figure 2), framed green/red by the oracle when one is given.
"""

from __future__ import annotations

import base64
import io
import logging
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from semisup_core import storage  # noqa: E402
from semisup_core.data.dataset import read_meta, shard_uris  # noqa: E402
from semisup_core.data.decode import decode_image  # noqa: E402
from semisup_core.data.manifest import shard_name  # noqa: E402
from semisup_core.data.shards import iter_shard  # noqa: E402

log = logging.getLogger(__name__)


def _save(fig, uri: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    storage.put_bytes(uri, buf.getvalue())
    return uri


def plot_precision_by_rank(curves: dict[str, list[dict]], uri: str) -> str:
    """``curves``: label -> precision_by_rank buckets."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for label, buckets in curves.items():
        mid = [(b["rank_lo"] + b["rank_hi"]) / 2 for b in buckets]
        ax.plot(mid, [100 * b["precision"] for b in buckets], marker="o", label=label)
    ax.set(xlabel="rank within class", ylabel="precision of selected images (%)",
           title="Selection precision vs rank (oracle)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, uri)


def plot_recall(classes: list[str], series: dict[str, list], uri: str) -> str:
    """Grouped bars of per-class recall, one series per model."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(classes))
    for i, (label, recall) in enumerate(series.items()):
        ax.bar(x + i * width, [100 * (r or 0) for r in recall], width, label=label)
    ax.set_xticks(x + width * (len(series) - 1) / 2, classes, rotation=30, ha="right")
    ax.set(ylabel="recall (%)", title="Per-class recall on the test set")
    ax.set_ylim(max(0, min(100 * (r or 0) for rs in series.values() for r in rs) - 10), 100)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, uri)


def plot_accuracy_vs_k(points: dict[str, list[tuple[int, float]]], baseline: float | None,
                       uri: str) -> str:
    """``points``: label -> [(K, top-1)], plus the supervised baseline as a line."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for label, pts in points.items():
        pts = sorted(pts)
        ax.plot([k for k, _ in pts], [100 * a for _, a in pts], marker="o", label=label)
    if baseline is not None:
        ax.axhline(100 * baseline, color="grey", ls="--", label="supervised baseline")
    ax.set(xscale="log", xlabel="K (images per class)", ylabel="test top-1 (%)",
           title="Student accuracy vs K")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, uri)


def plot_rounds(rounds: list[dict], uri: str) -> str:
    """LLP's pseudo-labels per propagation round (epoch): precision (oracle), coverage, the
    distractors' share and the mean confidence on in-distribution images and on distractors."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = [r["epoch"] for r in rounds]
    for key, label in (("precision", "pseudo-label precision"), ("coverage", "coverage of the pool"),
                       ("distractor_share", "distractor share"),
                       ("confidence_in_distribution", "mean confidence, in-distribution"),
                       ("confidence_distractors", "mean confidence, distractors")):
        ax.plot(epochs, [np.nan if r.get(key) is None else r[key] for r in rounds], marker="o",
                label=label, ls="--" if key.startswith("confidence") else "-")
    ax.set_xlabel("epoch (one propagation round per visit)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, uri)


def plot_probe(probe: list[dict], baseline: float | None, uri: str) -> str:
    """Linear-probe top-1 of the frozen pre-trained network after each pre-training epoch."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot([r["epoch"] for r in probe], [100 * r["linear_probe_top1"] for r in probe],
            marker="o", label="linear probe on the labels")
    if baseline is not None:
        ax.axhline(100 * baseline, color="grey", ls="--", label="supervised baseline")
    ax.set(xlabel="pre-training epoch", ylabel="test top-1 (%)",
           title="Representation quality during pre-training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, uri)


def _wanted_images(manifest: pa.Table, per_class: int) -> dict[int, list[str]]:
    rows = manifest.filter(pa.compute.less(manifest["rank"], per_class))
    out: dict[int, list[str]] = defaultdict(list)
    for c, k in zip(rows["class_id"].to_pylist(), rows["key"].to_pylist()):
        out[c].append(k)
    return out


def contact_sheet(manifest: pa.Table, pool: str, classes: list[str], uri: str,
                  per_class: int = 12, oracle: str | None = None, scale: int = 2) -> str:
    """Top-``per_class`` selected images of every class, one row per class; with an oracle
    URI each is framed green (right class) or red. Only the pool shards holding those images
    are read (the manifest's ``shard`` column), and the oracle only for their keys."""
    wanted = _wanted_images(manifest, per_class)
    keys = {k for ks in wanted.values() for k in ks}
    top = manifest.filter(pa.compute.less(manifest["rank"], per_class))
    names = set(top["shard"].to_pylist()) if "shard" in manifest.column_names else None
    images = {}
    for shard in shard_uris(pool, read_meta(pool)):
        if names is not None and shard_name(shard) not in names:
            continue
        for s in iter_shard(shard):
            if s.key in keys:
                images[s.key] = decode_image(s.image)
    truth = None
    if oracle is not None:
        from semisup_core.data.split import oracle_truth
        ordered = sorted(keys)
        truth = dict(zip(ordered, oracle_truth(pa.array(ordered, pa.string()), oracle).tolist()))
    h, w = next(iter(images.values())).shape[:2] if images else (28, 28)
    cell, label_w = (h * scale + 4, w * scale + 4), 110
    sheet = Image.new("RGB", (label_w + per_class * cell[1], len(classes) * cell[0]), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(classes):
        draw.text((4, c * cell[0] + cell[0] // 2 - 6), name[:16], fill="black")
        for j, key in enumerate(wanted.get(c, [])):
            arr = images[key]
            img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).convert("RGB")
            img = img.resize((w * scale, h * scale), Image.NEAREST)
            x0, y0 = label_w + j * cell[1], c * cell[0]
            if truth is not None:
                color = "green" if truth.get(key) == c else "red"
                draw.rectangle([x0, y0, x0 + cell[1] - 1, y0 + cell[0] - 1], fill=color)
            sheet.paste(img, (x0 + 2, y0 + 2))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    storage.put_bytes(uri, buf.getvalue())
    return uri


def format_table(entries: list[dict], rows: tuple[str, ...] | None = None) -> str:
    """The comparison table every method's report shows (Markdown, readable as plain text).

    An entry: ``{"model", "arch", "top1", "top5", "selection": {"precision",
    "distractor_share"} | None}``; ``selection`` is the oracle's view (``analysis``) of the pool
    images the model trained on with inferred labels: a teacher's selected set, LLP's
    pseudo-labels. ``rows``: the model names in table order (others are left out); None: all,
    in the given order."""
    lines = ["| model | arch | top-1 | top-5 | selection precision | distractors selected |",
             "|---|---|---:|---:|---:|---:|"]
    for name in rows if rows is not None else list(dict.fromkeys(e["model"] for e in entries)):
        for e in entries:
            if e["model"] != name:
                continue
            sel = e.get("selection") or {}
            sp = f"{100 * sel['precision']:.1f}%" if sel.get("precision") is not None else ""
            ds = (f"{100 * sel['distractor_share']:.2f}%"
                  if sel.get("distractor_share") is not None else "")
            lines.append(f"| {name} | {e['arch']} | {100 * e['top1']:.2f}% | "
                         f"{100 * e['top5']:.2f}% | {sp} | {ds} |")
    return "\n".join(lines)


def html_page(title: str, table_md: str, plots: dict[str, str]) -> str:
    """A self-contained page (PNGs inlined) for the KFP UI's HTML viewer."""
    rows = [r.strip("|").split("|") for r in table_md.splitlines() if not r.startswith("|---")]
    cells = ["<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{c.strip()}</{'th' if i == 0 else 'td'}>"
                              for c in r) + "</tr>" for i, r in enumerate(rows)]
    imgs = [f'<h3>{name}</h3><img src="data:image/png;base64,'
            f'{base64.b64encode(storage.get_bytes(uri)).decode()}"/>' for name, uri in plots.items()]
    return (f"<html><body><h2>{title}</h2><table border='1'>"
            + "".join(cells) + "</table>" + "".join(imgs) + "</body></html>\n")


def write_report_files(out: str, title: str, table: str, notes: list[str],
                       plots: dict[str, str], metrics: dict, banner: str | None = None) -> dict:
    """A method's report under ``out``: report.md (title, ``banner`` above everything, table,
    notes, the plots as images), report.html (the same, PNGs inlined) and metrics.json
    (``metrics`` plus the plots' file names). Returns what metrics.json holds."""
    import os
    if banner:
        table = f"{banner}\n\n{table}"
    md = [f"# {title}", "", table, "", *notes, ""]
    md += [f"![{name}]({os.path.basename(uri)})" for name, uri in plots.items()]
    storage.put_bytes(storage.join(out, "report.md"), ("\n".join(md) + "\n").encode())
    storage.put_bytes(storage.join(out, "report.html"), html_page(
        title, table + "".join(f"\n\n{n}" for n in notes), plots).encode())
    metrics = dict(metrics, plots={k: os.path.basename(v) for k, v in plots.items()})
    storage.write_json(storage.join(out, "metrics.json"), metrics)
    return metrics


def dedup_summary(dd: dict) -> str:
    """One line on what dedup removed (or that it was off)."""
    if not dd.get("enabled", True):
        return "Dedup: off (the pool was not checked against the test set)."
    rule = (f"verifier margin >= {dd['threshold']:.2f} over the {dd['verify_candidates']} "
            f"nearest by {dd['embedder']} embeddings" if dd.get("verifier") else
            f"cosine >= {dd['threshold']:.4f}, {dd['embedder']} embeddings")
    return (f"Dedup: {dd['removed']:,} of {dd['pool_images']:,} pool images "
            f"({100 * dd['removed_fraction']:.2f}%) removed as near-duplicates of the test set "
            f"({rule}, {dd['index']} index).")
