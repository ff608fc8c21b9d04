"""Turn a ranked manifest into a labelled training dataset (Yalniz et al. §3.2).

Every (image, class) row of the manifest becomes one training sample whose label is
that class: an image selected for several classes appears once per class. Pool shards
are streamed once each; only selected images are copied (their encoded bytes as-is).
"""

from __future__ import annotations

import logging
from collections import defaultdict

from semisup_core import storage
from semisup_core.data.dataset import make_meta, read_meta, shard_uris, write_meta
from semisup_core.data.shards import ShardWriter, iter_shard
from semisup_core.errors import DataError

log = logging.getLogger(__name__)


def manifest_dataset(manifest, pool_uri: str, out_uri: str, samples_per_shard: int = 4096,
                     ) -> str:
    """Write ``out_uri`` (shards + dataset.json) from a manifest table.

    Args:
        manifest: a pyarrow table with at least ``key`` and ``class_id``.
        pool_uri: the unlabelled dataset the manifest was selected from.
    """
    meta = read_meta(pool_uri)
    wanted: dict[str, list[int]] = defaultdict(list)
    for key, cls in zip(manifest["key"].to_pylist(), manifest["class_id"].to_pylist()):
        wanted[key].append(int(cls))
    found = 0
    with ShardWriter(out_uri, samples_per_shard) as writer:
        for uri in shard_uris(pool_uri, meta):
            for sample in iter_shard(uri):
                for i, cls in enumerate(wanted.get(sample.key, ())):
                    found += i == 0
                    writer.write(f"{sample.key}-c{cls}", sample.image, sample.ext, cls,
                                 {"source_key": sample.key})
    if found != len(wanted):
        raise DataError(f"{len(wanted) - found} manifest keys are not in pool {pool_uri}")
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
