"""Turn a ranked manifest into a labelled training dataset (Yalniz et al. §3.2).

Every (image, class) row of the manifest becomes one training sample whose label is
that class: an image selected for several classes appears once per class. Only the pool
shards holding selected images are streamed, once each; only selected images are copied
(their encoded bytes as-is).
"""

from __future__ import annotations

import logging
import posixpath
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from semisup_core import storage
from semisup_core.data.dataset import make_meta, read_meta, shard_uris, write_meta
from semisup_core.data.shards import ShardWriter, iter_shard
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


def manifest_dataset(manifest, pool_uri: str, out_uri: str, samples_per_shard: int = 4096,
                     ) -> str:
    """Write ``out_uri`` (shards + dataset.json) from a manifest table.

    Only the pool shards that hold a selected image are read (the manifest's ``shard``
    column; without one, every shard), one at a time: memory holds the manifest and one
    shard's selection, whatever the size of the pool. Samples come out in pool order (shards
    in dataset.json order, then tar order), each image once per selected class.

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
    wanted_total = int(pc.count_distinct(manifest["key"]).as_py()) if manifest.num_rows else 0
    found = 0
    with ShardWriter(out_uri, samples_per_shard) as writer:
        for uri in uris:
            if groups is not None and shard_name(uri) not in groups:
                continue
            if groups is None:
                keys, classes = manifest["key"], manifest["class_id"].to_numpy()
            else:
                keys, classes = groups[shard_name(uri)]
            wanted: dict[str, list[int]] = defaultdict(list)  # this shard's selection only
            for key, cls in zip(keys.to_pylist(), classes.tolist()):
                wanted[key].append(int(cls))
            for sample in iter_shard(uri):
                for i, cls in enumerate(wanted.get(sample.key, ())):
                    found += i == 0
                    writer.write(f"{sample.key}-c{cls}", sample.image, sample.ext, cls,
                                 {"source_key": sample.key})
    if found != wanted_total:
        raise DataError(f"{wanted_total - found} manifest keys are not in pool {pool_uri}")
    write_meta(out_uri, make_meta(out_uri, f"selected-from-{meta.name}", meta.classes, writer.shards,
                                  writer.class_counts, source="manifest", channels=meta.channels,
                                  hw=(meta.height, meta.width) if meta.height else None))
    log.info("materialised %d samples (%d images) into %s", sum(s.count for s in writer.shards),
             found, out_uri)
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
