"""Evaluation metrics against a plain-Python reference; the evaluate stage's errors."""

from __future__ import annotations

import numpy as np
import pytest

from semisup_core.errors import DataError
from semisup_core.evaluate import EvaluateConfig, classification_metrics, evaluate


def _reference(logits, labels, c):
    n = len(labels)
    top1 = top5 = 0
    confusion = [[0] * c for _ in range(c)]
    for i in range(n):
        order = sorted(range(c), key=lambda j: (-logits[i][j], j))
        top1 += order[0] == labels[i]
        top5 += labels[i] in order[:5]
        confusion[labels[i]][order[0]] += 1
    recall = [confusion[k][k] / sum(confusion[k]) if sum(confusion[k]) else None for k in range(c)]
    return top1 / n, top5 / n, confusion, recall


@pytest.mark.parametrize("seed, c", [(0, 3), (1, 10), (2, 7)])
def test_metrics_match_reference(seed, c):
    rng = np.random.default_rng(seed)
    logits = rng.integers(0, 4, (200, c)).astype(np.float32)  # many ties on purpose
    labels = rng.integers(0, c - 1, 200)  # the last class never occurs
    m = classification_metrics(logits, labels, c)
    top1, top5, confusion, recall = _reference(logits.tolist(), labels.tolist(), c)
    assert m["top1"] == pytest.approx(top1) and m["top5"] == pytest.approx(top5)
    assert m["confusion_matrix"] == confusion and m["per_class_recall"] == recall
    assert m["per_class_recall"][-1] is None


def test_bad_shapes_and_labels():
    with pytest.raises(DataError, match="cannot evaluate"):
        classification_metrics(np.zeros((3, 2)), np.zeros(2, dtype=int), 2)
    with pytest.raises(DataError, match="out of range"):
        classification_metrics(np.zeros((2, 2)), np.array([0, 5]), 2)


def test_class_mismatch_is_refused(tmp_path, blocks_test_dataset):
    from tests.data.conftest import make_dataset
    from tests.train.test_train import _cfg
    from semisup_core.train import train

    other = str(tmp_path / "other")
    make_dataset(other, 40, ["a", "b", "c", "d"], prefix="o", hw=(28, 28))
    train(_cfg(tmp_path / "m", blocks_test_dataset, epochs=0.5, batch_size=16))
    with pytest.raises(DataError, match="class mismatch"):
        evaluate(EvaluateConfig(model=str(tmp_path / "m"), data=other, out=str(tmp_path / "e")))
