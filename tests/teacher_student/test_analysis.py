"""Oracle analysis against hand-computed values."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semisup_core import storage
from semisup_core.analysis import precision_by_rank, selection_analysis
from semisup_core.errors import DataError

import numpy as np


def _oracle(tmp_path) -> str:
    t = pa.table({"key": ["a", "b", "c", "d", "e"], "source": ["f", "f", "f", "m", "f"],
                  "true_class": pa.array([0, 1, 1, -1, 0], pa.int32()),
                  "true_class_name": ["x", "y", "y", "", "x"], "source_class_name": ["x", "y", "y", "3", "x"]})
    uri = str(tmp_path / "oracle.parquet")
    buf = io.BytesIO()
    pq.write_table(t, buf)
    storage.put_bytes(uri, buf.getvalue())
    return uri


def test_selection_analysis(tmp_path):
    manifest = pa.table({"class_id": [0, 0, 0, 1, 1, 1], "rank": [0, 1, 2, 0, 1, 2],
                         "key": ["a", "e", "d", "b", "a", "c"]})
    res = selection_analysis(manifest, _oracle(tmp_path), bins=3)
    assert res["precision"] == pytest.approx(4 / 6)
    assert res["per_class_precision"] == pytest.approx([2 / 3, 2 / 3])
    assert res["distractor_share"] == pytest.approx(1 / 6)
    assert [b["precision"] for b in res["precision_by_rank"]] == pytest.approx([1.0, 0.5, 0.5])


def test_precision_by_rank_bins_cover_everything():
    rank = np.arange(100)
    out = precision_by_rank(rank < 50, rank, bins=2)
    assert [(b["rank_lo"], b["rank_hi"], b["precision"], b["n"]) for b in out] == [
        (0, 50, 1.0, 50), (50, 100, 0.0, 50)]


def test_unknown_keys_are_an_error(tmp_path):
    manifest = pa.table({"class_id": [0], "rank": [0], "key": ["zzz"]})
    with pytest.raises(DataError, match="not in the oracle"):
        selection_analysis(manifest, _oracle(tmp_path))


def test_oracle_truth_equals_a_dict_lookup_across_batches(tmp_path):
    """The streamed oracle join (record batches of 7 rows here) against a Python dict, with
    repeated keys, keys in no batch order and a key the oracle lacks (-2)."""
    from semisup_core.data.split import oracle_truth
    rng = np.random.default_rng(0)
    keys = [f"k{i:03d}" for i in range(50)]
    classes = rng.integers(-1, 5, 50)
    uri = str(tmp_path / "o.parquet")
    buf = io.BytesIO()
    pq.write_table(pa.table({"key": keys, "true_class": pa.array(classes, pa.int32())}), buf)
    storage.put_bytes(uri, buf.getvalue())
    ask = [keys[i] for i in rng.integers(0, 50, 80)] + ["nope"]
    got = oracle_truth(pa.array(ask), uri, batch_size=7)
    truth = dict(zip(keys, classes.tolist()))
    assert got.tolist() == [truth.get(k, -2) for k in ask]


def test_pseudo_label_analysis_counts_by_hand(tmp_path):
    """Precision, confidence-weighted precision, coverage, in-distribution accuracy and the mean
    confidences by in-distribution / distractor, against a count by hand; labelled rows and
    rows without a pseudo-label are not pool rows with a label."""
    from semisup_core.analysis import pseudo_label_analysis
    labels = pa.table({"key": ["a", "b", "c", "d", "e", "z"], "label": [0, 0, 1, 2, -1, 1],
                       "confidence": pa.array([0.5, 1.0, 0.8, 0.9, 1.0, 1.0], pa.float32()),
                       "labelled": [False, False, False, False, False, True]})
    uri = str(tmp_path / "labels.parquet")
    buf = io.BytesIO()
    pq.write_table(labels, buf)
    storage.put_bytes(uri, buf.getvalue())
    res = pseudo_label_analysis(uri, _oracle(tmp_path))
    # a: 0 right, b: 0 wrong (1), c: 1 right, d: distractor; e has no pseudo-label; z labelled
    assert res["precision"] == pytest.approx(2 / 4)
    assert res["weighted_precision"] == pytest.approx((0.5 + 0.8) / (0.5 + 1.0 + 0.8 + 0.9))
    assert res["coverage"] == pytest.approx(4 / 5) and res["pool_images"] == 5
    assert res["in_distribution_accuracy"] == pytest.approx(2 / 3)
    assert res["distractor_share"] == pytest.approx(1 / 4)
    assert res["confidence_in_distribution"] == pytest.approx((0.5 + 1.0 + 0.8) / 3)
    assert res["confidence_distractors"] == pytest.approx(0.9)
