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
``draws`` passes' worth of images.

The copy streams: one pass over the source shards routes each drawn image's copies to the
output shard their draw positions fall in, buffered up to ``spill_mb`` and then spilled as
Arrow runs under ``<out>/_work/`` (removed at the end); then each output shard is written
from its runs in draw order. Memory: ``spill_mb`` plus one output shard, plus per image a row
number and its draw positions (numpy) and its key and labels (the stage's lists); the images'
bytes are never all held (they were, in an earlier version: ~60 MB for the demo's pool, 10 TB
for 10^8 100-kB images). The output is byte for byte the in-memory copy's (tested).
"""

from __future__ import annotations

import io
import logging
import re
from collections import Counter

import numpy as np
import pyarrow as pa

from semisup_core import storage
from semisup_core.data.dataset import make_meta, shard_uris, write_meta
from semisup_core.data.shards import ShardWriter, iter_shard
from semisup_core.errors import DataError
from semisup_core.tables import write_table

RUN_SCHEMA = pa.schema([("position", pa.int64()), ("image", pa.binary()), ("ext", pa.string())])
ROW_OVERHEAD = 256  # bytes a buffered copy costs beside its image (Python objects), for spill_mb

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


def copy_numbers(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For draws ``idx`` (image per draw position): each draw's copy number j (the j-th draw of
    its image in draw order), and the draw positions grouped by image (``order``, ascending
    within an image) with each image's first index into it (``start``, N + 1)."""
    order = np.argsort(idx, kind="stable")
    n_images = int(idx.max()) + 1 if len(idx) else 0
    start = np.searchsorted(idx[order], np.arange(n_images + 1))
    j = np.empty(len(idx), np.int64)
    j[order] = np.arange(len(idx)) - start[idx[order]]
    return j, order, start


def _work(out: str, *parts: str) -> str:
    return storage.join(out, "_work", *parts)


def _clear(out: str) -> None:
    for uri in list(storage.list_uris(_work(out))):
        storage.delete(uri)


def _spill(out: str, spill: int, buffers: dict[int, list]) -> None:
    for shard, rows in buffers.items():
        pos, image, ext = zip(*rows)
        buf = io.BytesIO()
        with pa.ipc.new_stream(buf, RUN_SCHEMA) as w:
            w.write_table(pa.table([pa.array(pos, pa.int64()), pa.array(image, pa.binary()),
                                    pa.array(ext, pa.string())], schema=RUN_SCHEMA))
        storage.put_bytes(_work(out, f"{shard:06d}", f"{spill:05d}.arrow"), buf.getvalue())
    buffers.clear()


def write_resampled(cfg, meta, keys: list[str], labels: list[list[int]], vocab: list[str],
                    out: str, spill_mb: float = 256) -> dict:
    """The resampled weak training set (see the module doc) at ``out``; returns its summary."""
    n = int(round(cfg.draws * len(keys)))
    idx, drawn = draw(labels, len(vocab), cfg.power, n, cfg.seed)
    copy, order, start = copy_numbers(idx)
    sps = cfg.samples_per_shard
    _clear(out)  # a killed copy's runs (perhaps of another spill_mb): the copy starts over
    row_of = {k: i for i, k in enumerate(keys)}
    buffers: dict[int, list] = {}  # output shard -> [(draw position, image, ext)]
    spills = held = 0
    for uri in shard_uris(cfg.data, meta):  # map: each drawn image's copies to their shards
        for s in iter_shard(uri):
            i = row_of.get(s.key)
            if i is None or i >= len(start) - 1 or start[i] == start[i + 1]:
                continue
            for p in order[start[i]:start[i + 1]].tolist():
                buffers.setdefault(p // sps, []).append((p, s.image, s.ext))
                held += len(s.image) + ROW_OVERHEAD
            if held >= spill_mb * 2**20:
                _spill(out, spills, buffers)
                spills, held = spills + 1, 0
    if buffers:
        _spill(out, spills, buffers)
        spills += 1
    shards, counts = [], Counter()
    for o in range((n + sps - 1) // sps):  # reduce: each output shard in draw order
        runs = [_work(out, f"{o:06d}", f"{r:05d}.arrow") for r in range(spills)]
        table = pa.concat_tables([RUN_SCHEMA.empty_table()] + [
            pa.ipc.open_stream(storage.get_bytes(u)).read_all() for u in runs
            if storage.exists(u)]).sort_by("position")
        positions = table["position"].to_numpy()
        if not np.array_equal(positions, np.arange(o * sps, min(n, (o + 1) * sps))):
            raise DataError(f"resampling: {cfg.data} no longer holds every image it was "
                            f"tagged with (output shard {o} lacks draws)")
        with ShardWriter(out, sps, first_index=o) as writer:
            for p, image, ext in zip(positions.tolist(), table["image"].to_pylist(),
                                     table["ext"].to_pylist()):
                i = int(idx[p])
                writer.write(f"{keys[i]}-r{int(copy[p])}", image, ext, int(drawn[p]),
                             {"source_key": keys[i]})
        shards += writer.shards
        counts.update(writer.class_counts)
    images = int(np.count_nonzero(np.diff(start))) if len(start) else 0
    write_meta(out, make_meta(out, f"{meta.name}-weak", vocab, shards, counts,
                              source="synsets", channels=meta.channels,
                              hw=(meta.height, meta.width) if meta.height else None,
                              extra={"weak": {"draws": cfg.draws, "power": cfg.power,
                                              "seed": cfg.seed, "images": images},
                                     "tags_simulated": (meta.extra or {}).get("tags_simulated")}))
    write_table(storage.join(out, "targets.parquet"), pa.table(
        {"key": pa.array(keys, pa.string()), "labels": pa.array(labels, pa.list_(pa.int32()))}))
    _clear(out)
    log.info("resampled weak training set: %d samples of %d images (power %.2f) in %s",
             n, images, cfg.power, out)
    return {"uri": out, "samples": n, "images": images, "power": cfg.power}
