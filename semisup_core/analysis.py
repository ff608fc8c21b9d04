"""Analysis that the oracle makes possible (hidden pool labels; never used for training).

- precision of the selected set, per class and as a function of rank;
- the share of out-of-distribution distractors that were selected;
- per-class recall of two models side by side;
- the tag candidates' precision and recall (issue 20: how good the pool's tags are as labels);
- pseudo-labels (LLP's, a distillation teacher's) read as a selection: every pool image with a
  label is a (key, class) row ranked within its class by confidence, so the comparison table
  reads the same for every method.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from semisup_core.data.split import oracle_truth, read_oracle
from semisup_core.errors import DataError
from semisup_core.tables import read_table


def _truth(manifest: pa.Table, oracle_uri: str) -> np.ndarray:
    """Per manifest row: true_class (-1 = distractor), from a streamed join with the oracle."""
    truth = oracle_truth(manifest["key"], oracle_uri)
    missing = np.flatnonzero(truth == -2)
    if len(missing):
        raise DataError(f"{len(missing)} selected keys are not in the oracle {oracle_uri} "
                        f"(e.g. {manifest['key'][int(missing[0])].as_py()}): wrong oracle for "
                        "this pool?")
    return truth


def _join_oracle(manifest: pa.Table, oracle_uri: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per manifest row: (class_id, rank, true_class); true_class -1 = distractor."""
    return (manifest["class_id"].to_numpy(), manifest["rank"].to_numpy(),
            _truth(manifest, oracle_uri))


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


def selection_analysis(manifest: pa.Table, oracle_uri: str, bins: int = 10,
                       candidates: str | None = None) -> dict:
    """Precision overall / per class / by rank, and the distractor share, of a manifest (and
    ``candidate_analysis`` of the tag candidates under ``candidates``, when given)."""
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
            "rows": int(len(truth)),
            **({"candidates": candidate_analysis(candidates, oracle_uri)} if candidates else {})}


def candidate_analysis(candidates_uri: str, oracle_uri: str) -> dict:
    """How good tag candidates are as labels, over the images in the oracle: precision = the
    share of distinct (key, class) candidate pairs whose class is the image's true class;
    recall (per class) = the share of in-distribution images (of that class) whose true class
    is among their candidates; distractor_share = the share of pairs on distractor images."""
    from semisup_core.teacher_student.restrict import read_candidates  # here: loads numba
    oracle = read_oracle(oracle_uri).select(["key", "true_class"])
    pairs = read_candidates(candidates_uri).join(oracle, keys="key", join_type="inner")
    cls, truth = pairs["class_id"].to_numpy(), pairs["true_class"].to_numpy()
    true_all = oracle["true_class"].to_numpy()
    num_classes = int(max(cls.max(initial=-1), true_all.max(initial=-1)) + 1)
    hits = np.bincount(truth[cls == truth], minlength=num_classes)  # pairs are distinct
    images = np.bincount(true_all[true_all >= 0], minlength=num_classes)
    return {"precision": float((cls == truth).mean()) if len(cls) else None,
            "pairs": int(len(cls)), "images": int(pc.count_distinct(pairs["key"]).as_py()),
            "distractor_share": float((truth == -1).mean()) if len(cls) else None,
            "recall": float(hits.sum() / images.sum()) if images.sum() else None,
            "per_class_recall": [float(h / n) if n else None for h, n in zip(hits, images)]}


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
    pseudo-label), the confidence-weighted precision, the accuracy on in-distribution images and
    the mean confidence on in-distribution images and on distractors (a confidence that rates
    distractors higher than the real classes promotes them: docs/llp.md "Results")."""
    labels = read_table(labels_uri)
    manifest = as_manifest(labels)
    pool_n = int((~labels["labelled"].to_numpy()).sum())
    out = selection_analysis(manifest, oracle_uri) if manifest.num_rows else {
        "precision": None, "distractor_share": None, "rows": 0}
    if manifest.num_rows:
        t = _truth(manifest, oracle_uri)
        correct = manifest["class_id"].to_numpy() == t
        conf = manifest["confidence"].to_numpy()
        out["weighted_precision"] = float((conf * correct).sum() / conf.sum())
        ind = t >= 0
        out["in_distribution_accuracy"] = float(correct[ind].mean()) if ind.any() else None
        out["confidence_in_distribution"] = float(conf[ind].mean()) if ind.any() else None
        out["confidence_distractors"] = float(conf[~ind].mean()) if (~ind).any() else None
    out.update(coverage=manifest.num_rows / max(pool_n, 1), pool_images=pool_n)
    return out
