"""Per-class top-K over a stream of ``(class, score, key)`` candidates.

Memory is O(C*K + block): candidates are buffered and compacted whenever the buffer
grows past a few times the kept set. The order is total and independent of how the
stream was split or blocked -- score descending, then key ascending -- so merging
partial results from any number of workers gives exactly the single-pass answer.
"""

from __future__ import annotations

import numpy as np


def rank_within_class(classes: np.ndarray, scores: np.ndarray, keys: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Sort candidates by (class asc, score desc, key asc).

    Returns ``(order, rank)``: ``order`` indexes the sorted candidates and ``rank[i]`` is
    the 0-based rank of sorted candidate ``i`` within its class.
    """
    order = np.lexsort((keys, -scores.astype(np.float64), classes))
    cls_sorted = classes[order]
    starts = np.flatnonzero(np.r_[True, cls_sorted[1:] != cls_sorted[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    return order, np.arange(len(order)) - group_start


class TopKPerClass:
    """Keep, per class ``c``, the ``k[c]`` best candidates seen so far.

    Args:
        k: one K for every class, or per-class Ks (length ``num_classes``).
        num_classes: size of the label space.
        payload: names of extra string columns carried along (e.g. ``("shard",)``).
    """

    def __init__(self, k, num_classes: int, payload: tuple[str, ...] = (), compact_factor: int = 4):
        self.k = np.broadcast_to(np.asarray(k, dtype=np.int64), (num_classes,)).copy()
        self.num_classes, self.payload = num_classes, tuple(payload)
        self._limit = max(1 << 16, compact_factor * int(self.k.sum()))
        self._parts: list[dict[str, np.ndarray]] = []
        self._size = 0

    def add(self, classes, scores, keys, **payload) -> None:
        """Add a block of candidates (equal-length arrays; payload columns by name)."""
        classes = np.asarray(classes, dtype=np.int32)
        if len(classes) == 0:
            return
        if classes.min() < 0 or classes.max() >= self.num_classes:
            raise ValueError(f"class id out of range [0, {self.num_classes})")
        part = {"class_id": classes, "score": np.asarray(scores, dtype=np.float32),
                "key": np.asarray(keys).astype(str)}
        for name in self.payload:
            part[name] = np.asarray(payload[name]).astype(str)
        self._parts.append(part)
        self._size += len(classes)
        if self._size > self._limit:
            self._compact()

    def _merged(self) -> dict[str, np.ndarray]:
        return {c: np.concatenate([p[c] for p in self._parts]) for c in self._parts[0]}

    def _compact(self) -> dict[str, np.ndarray]:
        """Keep the top k[c] of each class; returns the kept columns sorted by (class, rank)."""
        cols = self._merged()
        order, rank = rank_within_class(cols["class_id"], cols["score"], cols["key"])
        keep = rank < self.k[cols["class_id"][order]]
        kept = {c: v[order[keep]] for c, v in cols.items()}
        kept["rank"] = rank[keep].astype(np.int32)
        self._parts = [{c: v for c, v in kept.items() if c != "rank"}]
        self._size = len(kept["key"])
        return kept

    def result(self) -> dict[str, np.ndarray]:
        """Columns ``class_id, rank, score, key`` (+ payload) sorted by (class, rank)."""
        if not self._parts:
            out = {"class_id": np.array([], np.int32), "rank": np.array([], np.int32),
                   "score": np.array([], np.float32), "key": np.array([], str)}
            out.update({name: np.array([], str) for name in self.payload})
            return out
        return self._compact()
