"""Analysis that the oracle makes possible (hidden pool labels; never used for training).

- precision of the selected set, per class and as a function of rank;
- the share of out-of-distribution distractors that were selected;
- per-class recall of two models side by side;
- pseudo-labels (LLP's, a distillation teacher's) read as a selection: every pool image with a
  label is a (key, class) row ranked within its class by confidence, so the comparison table
  reads the same for every method.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from semisup_core.data.split import read_oracle
from semisup_core.errors import DataError
from semisup_core.tables import read_table


def _join_oracle(manifest: pa.Table, oracle_uri: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per manifest row: (class_id, rank, true_class); true_class -1 = distractor."""
    oracle = read_oracle(oracle_uri)
    truth = dict(zip(oracle["key"].to_pylist(), oracle["true_class"].to_pylist()))
    keys = manifest["key"].to_pylist()
    missing = [k for k in keys if k not in truth]
    if missing:
        raise DataError(f"{len(missing)} selected keys are not in the oracle {oracle_uri} "
                        f"(e.g. {missing[0]}): wrong oracle for this pool?")
    return (manifest["class_id"].to_numpy(), manifest["rank"].to_numpy(),
            np.array([truth[k] for k in keys]))


def precision_by_rank(correct: np.ndarray, rank: np.ndarray, bins: int = 10) -> list[dict]:
    """Precision of the rows in ``bins`` equal-width rank buckets [lo, hi)."""
    if len(rank) == 0:
        return []
    edges = np.unique(np.linspace(0, rank.max() + 1, bins + 1).astype(int))
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (rank >= lo) & (rank < hi)
        if m.any():
            out.append({"rank_lo": int(lo), "rank_hi": int(hi), "precision": float(correct[m].mean()),
                        "n": int(m.sum())})
    return out


def selection_analysis(manifest: pa.Table, oracle_uri: str, bins: int = 10) -> dict:
    """Precision overall / per class / by rank, and the distractor share, of a manifest."""
    cls, rank, truth = _join_oracle(manifest, oracle_uri)
    correct = cls == truth
    num_classes = int(max(cls.max(initial=-1), truth.max(initial=-1)) + 1)
    per_class = []
    for c in range(num_classes):
        m = cls == c
        per_class.append(float(correct[m].mean()) if m.any() else None)
    return {"precision": float(correct.mean()) if len(correct) else None,
            "per_class_precision": per_class,
            "precision_by_rank": precision_by_rank(correct, rank, bins),
            "distractor_share": float((truth == -1).mean()) if len(truth) else None,
            "rows": int(len(truth))}


def recall_comparison(a: dict, b: dict, classes: list[str]) -> list[dict]:
    """Per-class recall of two evaluated models (metrics dicts) side by side."""
    return [{"class": name, "a": ra, "b": rb, "delta": None if ra is None or rb is None else rb - ra}
            for name, ra, rb in zip(classes, a["per_class_recall"], b["per_class_recall"])]


def as_manifest(labels: pa.Table) -> pa.Table:
    """Pool rows with a pseudo-label as a manifest: key, class_id, rank (0 = the most
    confident of its class), confidence."""
    t = labels.filter(pa.compute.and_(pa.compute.invert(labels["labelled"]),
                                      pa.compute.greater_equal(labels["label"], 0)))
    cls, conf = t["label"].to_numpy(), t["confidence"].to_numpy()
    order = np.lexsort((-conf, cls))  # by class, most confident first
    rank = np.empty(len(order), np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(cls[order])) + 1]
    for lo, hi in zip(starts, np.r_[starts[1:], len(order)]):
        rank[order[lo:hi]] = np.arange(hi - lo)
    return pa.table({"key": t["key"], "class_id": pa.array(cls, pa.int64()),
                     "rank": pa.array(rank), "confidence": t["confidence"]})


def pseudo_label_analysis(labels_uri: str, oracle_uri: str) -> dict:
    """``selection_analysis`` of the pseudo-labelled pool, plus coverage (pool images with a
    pseudo-label), the confidence-weighted precision and the accuracy on in-distribution images."""
    labels = read_table(labels_uri)
    manifest = as_manifest(labels)
    pool_n = int((~labels["labelled"].to_numpy()).sum())
    out = selection_analysis(manifest, oracle_uri) if manifest.num_rows else {
        "precision": None, "distractor_share": None, "rows": 0}
    if manifest.num_rows:
        o = read_oracle(oracle_uri)
        truth = dict(zip(o["key"].to_pylist(), o["true_class"].to_pylist()))
        t = np.array([truth[k] for k in manifest["key"].to_pylist()])
        correct = manifest["class_id"].to_numpy() == t
        conf = manifest["confidence"].to_numpy()
        out["weighted_precision"] = float((conf * correct).sum() / conf.sum())
        ind = t >= 0
        out["in_distribution_accuracy"] = float(correct[ind].mean()) if ind.any() else None
    out.update(coverage=manifest.num_rows / max(pool_n, 1), pool_images=pool_n)
    return out
