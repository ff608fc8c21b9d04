"""Score outputs for select tests, written by the score stage's own ``score_shard`` and
``write_partial`` from given probabilities (no model, no images): image i has id i and key
``img-<i>`` (zero-padded, so keys sort like ids), shards of ``per_shard`` images."""

from __future__ import annotations

import numpy as np

from semisup_core import config
from semisup_core.teacher_student.score import (ScoreConfig, score_shard, worker_partial,
                                                write_partial)


def keys(n: int) -> np.ndarray:
    width = max(3, len(str(n - 1)))
    return np.array([f"img-{i:0{width}d}" for i in range(n)], dtype=object)


def write_scores(out: str, probs: np.ndarray, workers: int = 1, top_p: int | None = None,
                 partial_k: int = 50, own_dirs: bool = False, per_shard: int = 7
                 ) -> str | list[str]:
    """What ``score`` writes for ``workers`` workers (shards i::N) from an N x C matrix; the
    top-P classes of each image (P = C by default), ties by class."""
    n, c = probs.shape
    top_p = top_p or c
    names = [f"shard-{s:06d}" for s in range(-(-n // per_shard))]
    all_keys = keys(n)
    dirs = []
    for w in range(workers):
        d = f"{out}/w{w}" if own_dirs else out
        cfg = ScoreConfig(model="none", pool="none", out=d, top_p=top_p, partial_k=partial_k,
                          worker=w, num_workers=workers)
        config.save(cfg, d, f"config-worker-{w:05d}.yaml")
        tables = []
        for name in names[w::workers]:
            idx = np.arange(n)[int(name[-6:]) * per_shard:][:per_shard]
            order = np.argsort(-probs[idx], axis=1, kind="stable")[:, :top_p]
            vals = np.take_along_axis(probs[idx], order, axis=1)
            tables.append(score_shard(f"pool/{name}.tar", list(all_keys[idx]), (vals, order), [],
                                      cfg, c, int(idx[0]), len(idx), np.arange(len(idx)))[1])
        write_partial(cfg, w, workers, worker_partial(cfg, tables, c))
        dirs.append(d)
    return dirs if own_dirs else out
