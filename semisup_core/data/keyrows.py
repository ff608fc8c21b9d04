"""The row of each sample of an ordered list of shards, looked up by key, without a Python dict.

A method that keeps per-image state (LLP's memory bank and label store) addresses it by row:
the samples of ``shards`` numbered in stored order. The stream gives each batch's keys; a
``dict`` of N keys and the key strings cost ~140 B a key in Python (14 GB at 10^8 images, on
every rank).
``KeyRows`` holds each key's 64-bit hash (pandas' ``hash_array``, SipHash with a fixed key: the
same in every process) sorted, with the row beside it: 12 B a sample below 2^31 samples, 16 B
above. A lookup hashes the batch's keys and binary-searches them.

Two distinct keys with one hash (about N^2 / 2^65: 3 x 10^-4 at 10^8 keys) are found when the
table is built; their rows go to a small exact dict, so lookups stay exact. A key that occurs
twice is refused. The keys themselves are not held: ``keys()`` lists them again, shard by shard
(from each shard's index), when a table keyed by sample is written.
"""

from __future__ import annotations

from typing import Callable, Iterator, Mapping

import numpy as np
import pandas as pd
import torch

from semisup_core.errors import ConfigError

_HASH_KEY = "semisup-keyrows0"  # 16 bytes: SipHash's key, fixed so every rank hashes alike


def hash_keys(keys: list[str]) -> np.ndarray:
    """Each key's 64-bit SipHash (uint64), vectorised."""
    return pd.util.hash_array(np.asarray(keys, dtype=object), hash_key=_HASH_KEY,
                              categorize=False)


class KeyRows:
    """Row (position in ``shards`` order) of each sample key; ``len`` is the sample count."""

    def __init__(self, shards: list[str], cache: Mapping | None = None,
                 beat: Callable[[str], None] = lambda msg: None):
        self.shards, self.cache = list(shards), cache
        hashes, counts = [], []
        for i, keys in enumerate(self._shard_keys()):
            hashes.append(hash_keys(keys))
            counts.append(len(keys))
            beat(f"listing the keys of shard {i + 1} of {len(self.shards)}")
        self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        h = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
        order = np.argsort(h, kind="stable")
        self.sorted = h[order]
        self.rows = order.astype(np.int32 if len(h) < 2**31 else np.int64)
        self.exact: dict[str, int] = {}  # keys whose hash another key shares
        same = np.flatnonzero(self.sorted[1:] == self.sorted[:-1])
        if len(same):
            self._resolve(np.unique(np.concatenate([same, same + 1])))

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _shard_keys(self, shards: list[str] | None = None) -> Iterator[list[str]]:
        from semisup_core.data.shards import shard_keys
        for uri in self.shards if shards is None else shards:
            yield ([r.key for r in self.cache[uri]] if self.cache and uri in self.cache
                   else shard_keys(uri))

    def keys(self) -> Iterator[list[str]]:
        """Every shard's keys in row order, one shard at a time."""
        return self._shard_keys()

    def key_of(self, rows: np.ndarray) -> list[str]:
        """The keys of ``rows`` (reading only the shards that hold them)."""
        shard_of = np.searchsorted(self.offsets, rows, side="right") - 1
        out: dict[int, str] = {}
        for s in np.unique(shard_of):
            keys = next(self._shard_keys([self.shards[s]]))
            for r in np.asarray(rows)[shard_of == s]:
                out[int(r)] = keys[int(r - self.offsets[s])]
        return [out[int(r)] for r in rows]

    def _resolve(self, positions: np.ndarray) -> None:
        """Rows whose hashes are equal: one key twice is an error, two keys one hash go to the
        exact dict."""
        rows = self.rows[positions]
        keys = self.key_of(rows)
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise ConfigError(f"sample key {dup!r} occurs twice in the training data (per-image "
                              "state is addressed by key)")
        self.exact = dict(zip(keys, (int(r) for r in rows)))

    def lookup(self, keys: list[str]) -> np.ndarray:
        """The rows of ``keys`` (int64); a key not in the shards is an error."""
        h = hash_keys(list(keys))
        pos = np.searchsorted(self.sorted, h).clip(max=max(len(self.sorted) - 1, 0))
        if not len(self.sorted) or not (self.sorted[pos] == h).all():
            missing = keys[int(np.flatnonzero(
                (self.sorted[pos] != h) if len(self.sorted) else np.ones(len(h), bool))[0])]
            raise ConfigError(f"sample key {missing!r} is not in the training data")
        rows = self.rows[pos].astype(np.int64)
        if self.exact:
            for i, k in enumerate(keys):
                if k in self.exact:
                    rows[i] = self.exact[k]
        return rows

    def rows_of(self, keys: list[str], device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.from_numpy(self.lookup(keys)).to(device)
