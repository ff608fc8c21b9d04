"""Labelled / unlabelled split with the hidden labels kept apart as an oracle.

``split_labelled`` takes a labelled dataset and writes, under ``out_uri``:

- ``labelled/``: exactly ``labels_per_class`` samples per class, chosen with ``seed``;
- ``unlabelled/``: the pool = every other sample of the dataset plus every image of the
  ``pool_extra`` (distractor) datasets, shuffled with ``seed`` so sources mix across
  shards, with no ``.cls`` entries and a ``.json`` holding only the source (and tags);
- ``oracle.parquet``: ``key, source, true_class, true_class_name, source_class_name`` for
  every pool image -- for analysis only; no training stage may read it;
- ``split.json``: the parameters and counts.

This mirrors the setting of Yalniz et al. 2019 (a small labelled set plus a large
unlabelled collection that contains out-of-distribution images). The split holds the
encoded images of the dataset and extras in memory (about 0.5 KB per 28x28 PNG), which
suits datasets up to a few million images; larger pools are sharded at ingestion.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from semisup_core import storage
from semisup_core.data.dataset import DatasetMeta, iter_dataset, make_meta, read_meta, write_meta
from semisup_core.data.shards import Sample, ShardWriter
from semisup_core.errors import DataError
from semisup_core.tables import parquet_source, read_table

log = logging.getLogger(__name__)

ORACLE_FILE = "oracle.parquet"
SPLIT_FILE = "split.json"
ORACLE_SCHEMA = pa.schema([
    ("key", pa.string()), ("source", pa.string()), ("true_class", pa.int32()),
    ("true_class_name", pa.string()), ("source_class_name", pa.string()),
])


@dataclasses.dataclass
class SplitResult:
    labelled: DatasetMeta
    unlabelled: DatasetMeta
    labelled_uri: str
    unlabelled_uri: str
    oracle_uri: str


def choose_labelled(samples: list[Sample], meta: DatasetMeta, labels_per_class: int,
                    seed: int, rng: np.random.Generator | None = None) -> set[str]:
    """Keys of exactly ``labels_per_class`` samples per class, drawn with ``seed``.

    Keys are sorted per class before drawing, so the choice does not depend on shard
    order. Raises DataError naming the first class with too few samples.
    """
    if labels_per_class < 1:
        raise DataError(f"labels_per_class must be >= 1, got {labels_per_class}")
    rng = rng or np.random.default_rng(seed)
    by_class: dict[int, list[str]] = defaultdict(list)
    for s in samples:
        if s.cls is None:
            raise DataError(f"{meta.name}: sample {s.key!r} has no class; split needs labels")
        by_class[s.cls].append(s.key)
    chosen: set[str] = set()
    for c, cname in enumerate(meta.classes):
        keys = sorted(by_class.get(c, []))
        if len(keys) < labels_per_class:
            raise DataError(f"{meta.name}: class {c} ({cname!r}) has {len(keys)} samples, "
                            f"fewer than labels_per_class={labels_per_class}")
        chosen.update(keys[i] for i in rng.choice(len(keys), labels_per_class, replace=False))
    return chosen


def _pool_row(s: Sample, src: DatasetMeta, target: DatasetMeta) -> dict:
    """The oracle row of one pool sample; distractors outside the label space get -1."""
    same_space = src.classes == target.classes
    true = s.cls if (same_space and s.cls is not None) else -1
    return {"key": s.key, "source": src.name, "true_class": true,
            "true_class_name": target.classes[true] if true >= 0 else None,
            "source_class_name": src.classes[s.cls] if s.cls is not None else None}


def _pool_meta(s: Sample, src: DatasetMeta) -> dict:
    """What a pool sample may carry: its source and weak tags, never its class."""
    meta = {"source": src.name}
    if "tags" in s.meta:
        meta["tags"] = s.meta["tags"]
    return meta


def _write_oracle(uri: str, rows: list[dict]) -> None:
    rows = sorted(rows, key=lambda r: r["key"])
    table = pa.Table.from_pylist(rows, schema=ORACLE_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.put_bytes(uri, buf.getvalue())


def _geometry(metas: list[DatasetMeta]) -> tuple[int, tuple[int, int] | None]:
    channels = max(m.channels for m in metas)
    sizes = {(m.height, m.width) for m in metas}
    hw = next(iter(sizes)) if len(sizes) == 1 and None not in next(iter(sizes)) else None
    return channels, hw


def _write_labelled(out: str, samples: list[Sample], meta: DatasetMeta, n: int, seed: int,
                    dataset_uri: str, samples_per_shard: int) -> DatasetMeta:
    with ShardWriter(out, samples_per_shard) as writer:
        for s in sorted(samples, key=lambda s: s.key):
            writer.write(s.key, s.image, s.ext, s.cls, s.meta)
    channels, hw = _geometry([meta])
    lab = make_meta(out, f"{meta.name}-labelled-{n}", meta.classes, writer.shards,
                    writer.class_counts, source="split", channels=channels, hw=hw,
                    extra={"parent": dataset_uri, "labels_per_class": n, "seed": seed})
    write_meta(out, lab)
    return lab


def _write_pool(out: str, pool: list[tuple[Sample, DatasetMeta]], target: DatasetMeta,
                rng: np.random.Generator, samples_per_shard: int) -> tuple[DatasetMeta, list[dict]]:
    rows, order = [], rng.permutation(len(pool))  # mixes distractors across shards
    with ShardWriter(out, samples_per_shard) as writer:
        for i in order:
            s, src = pool[i]
            writer.write(s.key, s.image, s.ext, None, _pool_meta(s, src))
            rows.append(_pool_row(s, src, target))
    channels, hw = _geometry(list({id(m): m for _, m in pool}.values()))
    sources = Counter(r["source"] for r in rows)
    pool_meta = make_meta(out, f"{target.name}-unlabelled", target.classes, writer.shards, None,
                          source="split", channels=channels, hw=hw,
                          extra={"sources": dict(sorted(sources.items()))})
    write_meta(out, pool_meta)
    return pool_meta, rows


def split_labelled(dataset_uri: str, out_uri: str, labels_per_class: int, seed: int,
                   pool_extra: list[str] | tuple[str, ...] = (),
                   samples_per_shard: int = 4096) -> SplitResult:
    """Split ``dataset_uri`` into ``out_uri/labelled`` and ``out_uri/unlabelled`` (+ oracle).

    Deterministic: the same inputs and seed give byte-identical shards. Raises DataError
    when a class has fewer than ``labels_per_class`` samples or keys collide across datasets.
    """
    meta = read_meta(dataset_uri)
    if not meta.labelled:
        raise DataError(f"{dataset_uri}: dataset {meta.name!r} is unlabelled; split needs labels")
    samples = list(iter_dataset(dataset_uri, meta))
    rng = np.random.default_rng(seed)
    chosen = choose_labelled(samples, meta, labels_per_class, seed, rng)
    pool = [(s, meta) for s in samples if s.key not in chosen]
    for uri in pool_extra:
        extra = read_meta(uri)
        pool += [(s, extra) for s in iter_dataset(uri, extra)]
    dup = [k for k, n in Counter(s.key for s, _ in pool).items() if n > 1]
    if dup:
        raise DataError(f"{len(dup)} sample key(s) appear in more than one pool dataset, "
                        f"e.g. {dup[0]!r}")
    lab_uri, pool_uri = storage.join(out_uri, "labelled"), storage.join(out_uri, "unlabelled")
    lab = _write_labelled(lab_uri, [s for s in samples if s.key in chosen], meta,
                          labels_per_class, seed, dataset_uri, samples_per_shard)
    unl, rows = _write_pool(pool_uri, pool, meta, rng, samples_per_shard)
    oracle_uri = storage.join(out_uri, ORACLE_FILE)
    _write_oracle(oracle_uri, rows)
    storage.write_json(storage.join(out_uri, SPLIT_FILE), {
        "dataset": dataset_uri, "pool_extra": list(pool_extra),
        "labels_per_class": labels_per_class,
        "seed": seed, "labelled": lab.num_samples, "unlabelled": unl.num_samples,
        "unlabelled_sources": unl.extra["sources"], "oracle": ORACLE_FILE})
    log.info("split %s: %d labelled (%d per class), %d unlabelled (%s)", meta.name,
             lab.num_samples, labels_per_class, unl.num_samples, unl.extra["sources"])
    return SplitResult(lab, unl, lab_uri, pool_uri, oracle_uri)


def oracle_truth(keys, oracle_uri: str, batch_size: int = 1 << 18) -> np.ndarray:
    """``true_class`` of each of ``keys`` (-1: a distractor; -2: not in the oracle), read from
    the oracle in record batches joined against the distinct keys asked for: memory holds
    those keys and one batch, not the pool's oracle (issue 21)."""
    keys = pa.chunked_array([keys]) if isinstance(keys, pa.Array) else keys
    uniq = pc.unique(keys)
    truth = np.full(len(uniq), -2, np.int64)
    # an object is fetched whole (compressed, ~20 B an image); tables.parquet_source: why not
    # through a Python file object
    with parquet_source(oracle_uri) as f:
        for batch in pq.ParquetFile(f).iter_batches(columns=["key", "true_class"],
                                                    batch_size=batch_size):
            pos = pc.fill_null(pc.index_in(batch.column(0), value_set=uniq), -1).to_numpy()
            hit = pos >= 0
            truth[pos[hit]] = batch.column(1).to_numpy(zero_copy_only=False)[hit]
    return truth[pc.index_in(keys, value_set=uniq).to_numpy()]


def read_oracle(oracle_uri: str) -> pa.Table:
    """The oracle table (analysis only): key, source, true_class, true_class_name,
    source_class_name."""
    return read_table(oracle_uri)
