"""Resampling of the weak labels by frequency (Mahajan et al. 2018: square-root sampling of
hashtags; natural and uniform as options).

One draw picks a label t with probability f_t^a / sum_u f_u^a (f_t: images carrying t; a =
``power``), then an image uniformly among the f_t that carry it. An image i with labels T_i is
then drawn with probability

    w_i = sum_{t in T_i} f_t^a / (f_t * sum_u f_u^a)

and trained on all of its labels (1/k each, ``objective: weak``), not only the drawn one.

The draws are fixed per run and written as a dataset (``write_resampled``): ``draws`` x N
samples in draw order, keys ``<image key>-r<j>``, ``.cls`` the drawn label (so ``objective:
supervised`` on the same set is the drawn-label-only ablation), and ``targets.parquet`` beside
it holding each image's labels, keyed by the image's own key. One epoch over it is
``draws`` passes' worth of images. The copy holds the drawn images' encoded bytes in memory
while it writes (the demo's pool: ~60 MB); a pool of 10^8 images wants a weighted sampler in
the stream instead, which is not built.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pyarrow as pa

from semisup_core import storage
from semisup_core.data.dataset import make_meta, shard_uris, write_meta
from semisup_core.data.shards import ShardWriter, iter_shard
from semisup_core.tables import write_table

log = logging.getLogger(__name__)

_DRAW_SUFFIX = re.compile(r"-r\d+$")


def source_key(key: str) -> str:
    """The image key of a resampled sample (``<key>-r<j>`` -> ``<key>``)."""
    return _DRAW_SUFFIX.sub("", key)


def _carriers(labels: list[list[int]], vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR of label -> images carrying it: (offsets [vocab + 1], image indices)."""
    flat_img = np.repeat(np.arange(len(labels)), [len(x) for x in labels])
    flat_lab = np.fromiter((t for x in labels for t in x), np.int64, count=len(flat_img))
    order = np.argsort(flat_lab, kind="stable")
    counts = np.bincount(flat_lab, minlength=vocab)
    return np.concatenate([[0], np.cumsum(counts)]), flat_img[order]


def _frequencies(labels: list[list[int]], vocab: int) -> np.ndarray:
    return np.bincount([t for x in labels for t in x], minlength=vocab).astype(np.float64)


def label_probs(labels: list[list[int]], vocab: int, power: float,
                f: np.ndarray | None = None) -> np.ndarray:
    f = _frequencies(labels, vocab) if f is None else f
    p = np.where(f > 0, f ** power, 0.0)
    return p / p.sum()


def image_weights(labels: list[list[int]], vocab: int, power: float) -> np.ndarray:
    """w_i, each image's probability per draw (the formula above)."""
    f = _frequencies(labels, vocab)
    p = label_probs(labels, vocab, power, f)
    per = np.divide(p, f, out=np.zeros_like(p), where=f > 0)
    return np.array([per[x].sum() for x in labels])


def draw(labels: list[list[int]], vocab: int, power: float, n: int, seed: int
         ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` draws: (image indices, drawn labels), in draw order."""
    rng = np.random.default_rng([seed, 0x5A3])
    offsets, images = _carriers(labels, vocab)
    t = rng.choice(vocab, size=n, p=label_probs(labels, vocab, power))
    f = offsets[t + 1] - offsets[t]
    pick = offsets[t] + np.floor(rng.random(n) * f).astype(np.int64)
    return images[pick], t


def write_resampled(cfg, meta, keys: list[str], labels: list[list[int]], vocab: list[str],
                    out: str) -> dict:
    """The resampled weak training set (see the module doc) at ``out``; returns its summary."""
    n = int(round(cfg.draws * len(keys)))
    idx, drawn = draw(labels, len(vocab), cfg.power, n, cfg.seed)
    wanted = set(idx.tolist())
    row_of = {k: i for i, k in enumerate(keys)}
    encoded: dict[int, tuple[bytes, str]] = {}
    for uri in shard_uris(cfg.data, meta):
        for s in iter_shard(uri):
            i = row_of.get(s.key)
            if i is not None and i in wanted:
                encoded[i] = (s.image, s.ext)
    copies: dict[int, int] = {}
    with ShardWriter(out, cfg.samples_per_shard) as writer:
        for i, t in zip(idx.tolist(), drawn.tolist()):
            j = copies[i] = copies.get(i, -1) + 1
            image, ext = encoded[i]
            writer.write(f"{keys[i]}-r{j}", image, ext, int(t), {"source_key": keys[i]})
    write_meta(out, make_meta(out, f"{meta.name}-weak", vocab, writer.shards, writer.class_counts,
                              source="synsets", channels=meta.channels,
                              hw=(meta.height, meta.width) if meta.height else None,
                              extra={"weak": {"draws": cfg.draws, "power": cfg.power,
                                              "seed": cfg.seed, "images": len(wanted)},
                                     "tags_simulated": (meta.extra or {}).get("tags_simulated")}))
    write_table(storage.join(out, "targets.parquet"), pa.table(
        {"key": pa.array(keys, pa.string()), "labels": pa.array(labels, pa.list_(pa.int32()))}))
    log.info("resampled weak training set: %d samples of %d images (power %.2f) in %s",
             n, len(wanted), cfg.power, out)
    return {"uri": out, "samples": n, "images": len(wanted), "power": cfg.power}
