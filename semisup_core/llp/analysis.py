"""The oracle's view of LLP's pseudo-labels per propagation round (``analysis.
pseudo_label_analysis`` of each epoch's table; hidden pool labels, never used for training)."""

from __future__ import annotations

from semisup_core import storage
from semisup_core.analysis import pseudo_label_analysis


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
                         "in_distribution_accuracy": a.get("in_distribution_accuracy"),
                         "confidence_in_distribution": a.get("confidence_in_distribution"),
                         "confidence_distractors": a.get("confidence_distractors")})
    return rows
