"""The oracle's view of what a distilled student learns from: the teacher's labels on the
pool (its argmax, with the softmax probability as confidence), read as pseudo-labels by the
shared ``analysis.pseudo_label_analysis``, so the comparison table's selection columns mean
the same as for LLP (every pool image is used, distractors included: distillation does not
select)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from semisup_core import checkpoint, storage
from semisup_core.analysis import pseudo_label_analysis
from semisup_core.data.dataset import read_meta, shard_uris
from semisup_core.evaluate import predict
from semisup_core.tables import write_table


def teacher_labels(teacher: str, pool: str, uri: str, temperature: float = 1.0) -> str:
    """The teacher's label and confidence (at ``temperature``) for every pool image, as the
    label table LLP writes (key, label, confidence, labelled=False)."""
    if not storage.exists(uri):
        model, state = checkpoint.load_model(teacher)
        logits, _, keys = predict(model, shard_uris(pool, read_meta(pool)), state["mean"],
                                  state["std"], state["model"]["in_chans"], desc="teacher")
        p = torch.softmax(torch.from_numpy(logits).double() / temperature, 1)
        conf, label = p.max(1)
        write_table(uri, pa.table({"key": keys, "label": label.numpy().astype(np.int64),
                                   "confidence": conf.float().numpy(),
                                   "labelled": np.zeros(len(keys), bool)}))
    return uri


def teacher_analysis(teacher: str, pool: str, oracle: str, out: str,
                     temperature: float = 1.0) -> dict:
    return pseudo_label_analysis(teacher_labels(teacher, pool, storage.join(
        out, "teacher_labels.parquet"), temperature), oracle)
