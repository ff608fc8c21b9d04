"""The oracle's view of LLP's pseudo-labels (hidden pool labels; never used for training).

The pseudo-labelled pool is read as a selection: every pool image with a label is a
(key, class) row ranked within its class by confidence, so ``analysis.selection_analysis``
gives the same figures as for a teacher's selected set (precision overall, per class and by
rank, the share of distractors), and the comparison table reads the same for both methods.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from semisup_core import storage
from semisup_core.analysis import selection_analysis
from semisup_core.data.split import read_oracle
from semisup_core.tables import read_table


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


def rounds(run_dir: str, oracle_uri: str) -> list[dict]:
    """Per propagation round (epoch): the precision and coverage of the pseudo-labels then."""
    found = sorted(storage.list_uris(storage.join(run_dir, "pseudo_labels"), recursive=False))
    rows = []
    for uri in found:
        name = uri.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("epoch-") and name.endswith(".parquet"):
            a = pseudo_label_analysis(uri, oracle_uri)
            rows.append({"epoch": int(name[6:-8]), "precision": a["precision"],
                         "coverage": a["coverage"], "distractor_share": a["distractor_share"],
                         "in_distribution_accuracy": a.get("in_distribution_accuracy")})
    return rows
