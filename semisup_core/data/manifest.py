"""Turn a ranked manifest into a labelled training dataset (Yalniz et al. §3.2).

Every (image, class) row of the manifest becomes one training sample whose label is
that class: an image selected for several classes appears once per class. Only the pool
shards holding selected images are streamed, once each; only selected images are copied
(their encoded bytes as-is).
"""

from __future__ import annotations

import logging
import posixpath
from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from semisup_core import storage
from semisup_core.data.dataset import make_meta, read_meta, shard_uris, write_meta
from semisup_core.data.shards import ShardInfo, ShardWriter, iter_shard
from semisup_core.errors import DataError

log = logging.getLogger(__name__)


def shard_name(uri: str) -> str:
    """``.../shard-000012.tar`` -> ``shard-000012`` (the score and manifest tables' shard)."""
    return posixpath.basename(uri.replace("\\", "/")).rsplit(".", 1)[0]


def _by_shard(manifest) -> dict[str, tuple[pa.Array, np.ndarray]] | None:
    """The manifest's (keys, classes) per pool shard name, rows in manifest order within each
    (None when it has no shard column: then every pool shard is read)."""
    if "shard" not in manifest.column_names:
        return None
    shard = manifest["shard"].combine_chunks()
    codes = pc.dictionary_encode(shard)
    idx = codes.indices.to_numpy(zero_copy_only=False)
    order = np.argsort(idx, kind="stable")
    bounds = np.searchsorted(idx[order], np.arange(len(codes.dictionary) + 1))
    keys = manifest["key"].combine_chunks()
    cls = manifest["class_id"].to_numpy()
    return {name: (keys.take(pa.array(order[lo:hi])), cls[order[lo:hi]])
            for name, lo, hi in zip(codes.dictionary.to_pylist(), bounds[:-1], bounds[1:])
            if hi > lo}


def _wanted(keys, classes) -> dict[str, list[int]]:
    wanted: dict[str, list[int]] = defaultdict(list)  # one shard's selection only
    for key, cls in zip(keys.to_pylist(), classes.tolist()):
        wanted[key].append(int(cls))
    return wanted


def _copy_selected(writer: ShardWriter, uri: str, wanted: dict[str, list[int]]) -> int:
    """Write the selected samples of pool shard ``uri``; returns how many images it held."""
    found = 0
    for sample in iter_shard(uri):
        for i, cls in enumerate(wanted.get(sample.key, ())):
            found += i == 0
            writer.write(f"{sample.key}-c{cls}", sample.image, sample.ext, cls,
                         {"source_key": sample.key})
    return found


def _selected_meta(out_uri: str, meta, shards, class_counts):
    return make_meta(out_uri, f"selected-from-{meta.name}", meta.classes, shards, class_counts,
                     source="manifest", channels=meta.channels,
                     hw=(meta.height, meta.width) if meta.height else None)


def manifest_dataset(manifest, pool_uri: str, out_uri: str, samples_per_shard: int = 4096,
                     worker: int = 0, num_workers: int = 1) -> str:
    """Write ``out_uri`` (shards + dataset.json) from a manifest table.

    Only the pool shards that hold a selected image are read (the manifest's ``shard``
    column; without one, every shard), one at a time: memory holds the manifest and one
    shard's selection, whatever the size of the pool. Samples come out in pool order (shards
    in dataset.json order, then tar order), each image once per selected class.

    With ``num_workers`` > 1 (parallel tasks, like the score workers), worker ``w`` copies the
    selected shards ``w::W`` into ``part-<w>-NNNNNN.tar`` and writes a part marker; the task
    that finds every part marker writes dataset.json (parts in worker order). The samples are
    the same for any worker split; their packing into shards depends on it.

    Args:
        manifest: a pyarrow table with at least ``key`` and ``class_id`` (and ``shard``).
        pool_uri: the unlabelled dataset the manifest was selected from.
    """
    meta = read_meta(pool_uri)
    groups = _by_shard(manifest)
    uris = shard_uris(pool_uri, meta)
    if groups is not None:
        unknown = sorted(set(groups) - {shard_name(u) for u in uris})
        if unknown:
            raise DataError(f"manifest names shard {unknown[0]} that pool {pool_uri} does not have")
    if num_workers > 1:
        if groups is None:
            raise DataError("materialising with several workers needs the manifest's shard column")
        return _manifest_part(meta, groups, [u for u in uris if shard_name(u) in groups], pool_uri,
                              out_uri, samples_per_shard, worker, num_workers)
    wanted_total = int(pc.count_distinct(manifest["key"]).as_py()) if manifest.num_rows else 0
    found = 0
    with ShardWriter(out_uri, samples_per_shard) as writer:
        for uri in uris:
            if groups is not None and shard_name(uri) not in groups:
                continue
            keys, classes = ((manifest["key"], manifest["class_id"].to_numpy()) if groups is None
                             else groups[shard_name(uri)])
            found += _copy_selected(writer, uri, _wanted(keys, classes))
    if found != wanted_total:
        raise DataError(f"{wanted_total - found} manifest keys are not in pool {pool_uri}")
    write_meta(out_uri, _selected_meta(out_uri, meta, writer.shards, writer.class_counts))
    log.info("materialised %d samples (%d images) into %s", sum(s.count for s in writer.shards),
             found, out_uri)
    return out_uri


PARTS = "_parts"


def _manifest_part(meta, groups, uris, pool_uri, out_uri, samples_per_shard, worker,
                   num_workers) -> str:
    """One worker's share of a parallel materialisation (``manifest_dataset``)."""
    if not 0 <= worker < num_workers:
        raise DataError(f"worker must be in [0, num_workers={num_workers}), got {worker}")
    marker = storage.join(out_uri, PARTS, f"{worker:04d}-of-{num_workers:04d}.json")
    if not storage.exists(marker):
        found = wanted = 0
        with ShardWriter(out_uri, samples_per_shard, name=f"part-{worker:04d}") as writer:
            for uri in uris[worker::num_workers]:
                want = _wanted(*groups[shard_name(uri)])
                wanted += len(want)
                found += _copy_selected(writer, uri, want)
        if found != wanted:
            raise DataError(f"{wanted - found} manifest keys are not in pool {pool_uri}")
        storage.write_json(marker, {
            "shards": [{"uri": s.uri, "count": s.count} for s in writer.shards],
            "class_counts": {str(c): n for c, n in writer.class_counts.items()}, "images": found})
        log.info("materialised part %d of %d: %d images", worker, num_workers, found)
    markers = [storage.join(out_uri, PARTS, f"{w:04d}-of-{num_workers:04d}.json")
               for w in range(num_workers)]
    if all(storage.exists(m) for m in markers):  # the last part to finish writes dataset.json
        parts = [storage.read_json(m) for m in markers]
        counts = Counter()
        for p in parts:
            counts.update({int(c): n for c, n in p["class_counts"].items()})
        shards = [ShardInfo(s["uri"], s["count"]) for p in parts for s in p["shards"]]
        write_meta(out_uri, _selected_meta(out_uri, meta, shards, counts))
        log.info("materialised %d samples (%d images) into %s from %d parts",
                 sum(s.count for s in shards), sum(p["images"] for p in parts), out_uri, num_workers)
    return out_uri


def without_keys(pool_uri: str, removed: set[str], out_uri: str,
                 samples_per_shard: int = 4096) -> str:
    """A copy of the unlabelled ``pool_uri`` without the samples whose key is in ``removed``
    (a dedup output's near-duplicates), same keys, no labels: for stages that train on the
    pool itself (LLP) rather than skip keys while reading it (score). Written once: an
    existing complete copy is reused."""
    if storage.exists(storage.join(out_uri, "dataset.json")):
        return out_uri
    meta = read_meta(pool_uri)
    with ShardWriter(out_uri, samples_per_shard) as writer:
        for uri in shard_uris(pool_uri, meta):
            for s in iter_shard(uri):
                if s.key not in removed:
                    writer.write(s.key, s.image, s.ext, s.cls, s.meta)
    write_meta(out_uri, make_meta(out_uri, f"{meta.name}-deduped", meta.classes, writer.shards,
                                  writer.class_counts if meta.labelled else None,
                                  source="dedup", channels=meta.channels,
                                  hw=(meta.height, meta.width) if meta.height else None))
    log.info("%s without %d near-duplicates: %s", pool_uri, len(removed), out_uri)
    return out_uri
