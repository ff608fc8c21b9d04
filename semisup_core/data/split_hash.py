"""The split as a streaming map/reduce (``order: hash``): memory bounded independent of the
pool's size, any number of parallel workers, the same output for any worker split.

The ``permutation`` order (``split.py``) holds every encoded image and draws one permutation
of the whole pool; it defines every recorded result, so it stays the default. This order gives
each image a 64-bit hash of ``(seed, key)`` (BLAKE2b keyed with the seed) and decides
everything from it:

- **labelled set**: per class, the ``labels_per_class`` images with the smallest
  ``(hash, key)``: a uniform draw without replacement, independent of shard order, kept as a
  running top-n per class (O(C*n) images in memory);
- **pool shards**: image -> output shard ``hash % S`` with ``S = ceil(pool / samples_per_shard)``
  (each shard a uniform random subset of the pool, sources mixed; counts vary around
  ``samples_per_shard`` by about its square root), images inside a shard in ``(hash, key)``
  order; shard ``b`` is ``unlabelled/shard-<b>.tar`` (an empty bucket writes no shard);
- **oracle**: rows in pool order (shard by shard), not sorted by key.

Phases, each resumable through markers under ``out/_work`` (removed when the split finishes):

1. ``choose`` (one task): streams the labelled dataset once, writes ``labelled/`` (sorted by
   key, as the permutation order does) and the plan (labelled keys, bucket count);
2. ``map`` (``num_workers`` tasks): worker ``w`` reads input shards ``w::W`` of the dataset and
   the distractors, routes every pool image to its bucket in memory and spills all buckets to
   ``_work/runs/<bucket>/<w>-<spill>.arrow`` whenever ``spill_mb`` of images are buffered;
3. ``reduce`` (``num_workers`` tasks): worker ``w`` merges buckets ``w::W``: reads their runs,
   sorts by ``(hash, key)``, refuses a key seen twice, writes the shard and its oracle part;
4. ``finish`` (one task): ``unlabelled/dataset.json``, ``oracle.parquet``, ``split.json``.

``phase: all`` runs the four in one process (a laptop). Memory: the labelled set, one input
shard and ``spill_mb`` of buffered images in a map task; one output shard in a reduce task.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import shutil
from collections import Counter, defaultdict

import pyarrow as pa
import pyarrow.parquet as pq

from semisup_core import storage
from semisup_core.data.dataset import make_meta, read_meta, shard_uris, write_meta
from semisup_core.data.shards import ShardInfo, ShardWriter, iter_shard, shard_name
from semisup_core.data.split import (ORACLE_FILE, ORACLE_SCHEMA, SPLIT_FILE, SplitResult,
                                     _geometry, _pool_meta, _pool_row, _write_labelled)
from semisup_core.errors import DataError
from semisup_core.tables import read_table

log = logging.getLogger(__name__)

PHASES = ("all", "choose", "map", "reduce", "finish")
WORK = "_work"
ROW_OVERHEAD = 1024  # bytes a buffered row costs beside its image (Python objects), for spill_mb
RUN_SCHEMA = pa.schema([("hash", pa.uint64()), ("key", pa.string()), ("ext", pa.string()),
                        ("image", pa.large_binary()), ("meta", pa.string()),
                        *[(f.name, f.type) for f in ORACLE_SCHEMA if f.name != "key"]])


def key_hash(seed: int, key: str) -> int:
    """The 64-bit draw of ``key`` under ``seed``: BLAKE2b-64 of the key, keyed with the seed."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8,
                                          key=seed.to_bytes(8, "little", signed=True)).digest(),
                          "little")


def _work(out: str, *parts: str) -> str:
    return storage.join(out, WORK, *parts)


def _inputs(dataset_uri: str, extras) -> list[tuple[int, str]]:
    """(dataset index, shard URI) of every input shard: the dataset's, then each distractor's."""
    return [(d, uri) for d, ds in enumerate([dataset_uri, *extras]) for uri in shard_uris(ds)]


def choose(dataset_uri: str, out: str, labels_per_class: int, seed: int, extras,
           samples_per_shard: int) -> dict:
    """Phase 1: the labelled set (per class the n smallest ``(hash, key)``), ``labelled/`` and
    the plan. Done once: an existing plan is returned."""
    plan_uri = _work(out, "plan.json")
    if storage.exists(plan_uri):
        return storage.read_json(plan_uri)
    meta = read_meta(dataset_uri)
    if not meta.labelled:
        raise DataError(f"{dataset_uri}: dataset {meta.name!r} is unlabelled; split needs labels")
    if labels_per_class < 1:
        raise DataError(f"labels_per_class must be >= 1, got {labels_per_class}")
    for c, (cname, have) in enumerate(zip(meta.classes, meta.class_counts)):
        if have < labels_per_class:
            raise DataError(f"{meta.name}: class {c} ({cname!r}) has {have} samples, "
                            f"fewer than labels_per_class={labels_per_class}")
    best: dict[int, list] = defaultdict(list)  # class -> [(hash, key, sample)], n smallest
    for uri in shard_uris(dataset_uri, meta):
        new: dict[int, list] = defaultdict(list)
        for s in iter_shard(uri):
            if s.cls is None:
                raise DataError(f"{meta.name}: sample {s.key!r} has no class; split needs labels")
            new[s.cls].append((key_hash(seed, s.key), s.key, s))
        for c, items in new.items():
            best[c] = sorted(best[c] + items, key=lambda t: t[:2])[:labels_per_class]
    chosen = [t[2] for c in sorted(best) for t in best[c]]
    lab = _write_labelled(storage.join(out, "labelled"), chosen, meta, labels_per_class, seed,
                          dataset_uri, samples_per_shard)
    lab.extra["order"] = "hash"
    write_meta(storage.join(out, "labelled"), lab)
    pool = meta.num_samples - lab.num_samples + sum(read_meta(e).num_samples for e in extras)
    plan = {"buckets": max(1, math.ceil(pool / samples_per_shard)), "pool": pool, "seed": seed,
            "labels_per_class": labels_per_class, "samples_per_shard": samples_per_shard,
            "labelled_keys": sorted(s.key for s in chosen), "inputs": len(_inputs(dataset_uri, extras))}
    storage.write_json(plan_uri, plan)
    log.info("split (hash order): %d labelled, %d pool images into %d shards", lab.num_samples,
             pool, plan["buckets"])
    return plan


def _spill(out: str, worker: int, spill: int, buffers: list[list[dict]]) -> None:
    for b, rows in enumerate(buffers):
        buf = io.BytesIO()
        with pa.ipc.new_stream(buf, RUN_SCHEMA) as w:
            w.write_table(pa.Table.from_pylist(rows, schema=RUN_SCHEMA))
        storage.put_bytes(_work(out, "runs", f"{b:06d}", f"{worker:04d}-{spill:04d}.arrow"),
                          buf.getvalue())
        rows.clear()


def map_worker(dataset_uri: str, out: str, plan: dict, extras, worker: int, num_workers: int,
               spill_mb: float) -> dict:
    """Phase 2: route worker ``worker``'s input shards into the buckets (runs + a marker)."""
    marker = _work(out, "map", f"{worker:04d}-of-{num_workers:04d}.json")
    if storage.exists(marker):
        return storage.read_json(marker)
    datasets = [dataset_uri, *extras]
    metas = [read_meta(d) for d in datasets]
    target, labelled = metas[0], set(plan["labelled_keys"])
    inputs = _inputs(dataset_uri, extras)
    if len(inputs) != plan["inputs"]:
        raise DataError(f"the split's inputs changed since it was planned ({plan['inputs']} "
                        f"shards then, {len(inputs)} now); split into a new out")
    buffers: list[list[dict]] = [[] for _ in range(plan["buckets"])]
    spills = held = images = 0
    for d, uri in inputs[worker::num_workers]:
        for s in iter_shard(uri):
            if d == 0 and s.key in labelled:
                continue
            h = key_hash(plan["seed"], s.key)
            row = _pool_row(s, metas[d], target)
            del row["key"]
            buffers[h % plan["buckets"]].append(
                {"hash": h, "key": s.key, "ext": s.ext, "image": s.image,
                 "meta": json.dumps(_pool_meta(s, metas[d]), sort_keys=True), **row})
            held += len(s.image) + ROW_OVERHEAD
            images += 1
            if held >= spill_mb * 2**20:
                _spill(out, worker, spills, buffers)
                spills, held = spills + 1, 0
    if held or not spills:
        _spill(out, worker, spills, buffers)
        spills += 1
    done = {"worker": worker, "num_workers": num_workers, "spills": spills, "images": images}
    storage.write_json(marker, done)
    return done


def _map_spills(out: str, num_workers: int) -> list[int]:
    """How many spills each map worker wrote (its marker); one line if one has not finished."""
    spills = []
    for w in range(num_workers):
        marker = _work(out, "map", f"{w:04d}-of-{num_workers:04d}.json")
        if not storage.exists(marker):
            raise DataError(f"split map worker {w} of {num_workers} has not finished; run "
                            f"phase=map worker={w} num_workers={num_workers} first")
        spills.append(storage.read_json(marker)["spills"])
    return spills


def _runs(out: str, bucket: int, spills: list[int]) -> list[str]:
    return [_work(out, "runs", f"{bucket:06d}", f"{w:04d}-{i:04d}.arrow")
            for w, n in enumerate(spills) for i in range(n)]


def reduce_worker(out: str, plan: dict, worker: int, num_workers: int) -> None:
    """Phase 3: merge buckets ``worker::num_workers`` into pool shards and oracle parts."""
    pool_uri = storage.join(out, "unlabelled")
    spills = _map_spills(out, num_workers)  # the map markers, read once
    for b in range(worker, plan["buckets"], num_workers):
        marker = _work(out, "reduce", f"{b:06d}.json")
        if storage.exists(marker):
            continue
        parts = [pa.ipc.open_stream(storage.get_bytes(u)).read_all()
                 for u in _runs(out, b, spills)]
        table = pa.concat_tables(parts).sort_by([("hash", "ascending"), ("key", "ascending")])
        keys = table["key"].to_pylist()
        dup = next((k for k, n in Counter(keys).items() if n > 1), None)  # equal keys share a bucket
        if dup is not None:
            raise DataError(f"sample key {dup!r} appears more than once in the pool datasets")
        count = 0
        if table.num_rows:
            with ShardWriter(pool_uri, table.num_rows, first_index=b) as writer:
                for key, ext, image, meta in zip(keys, table["ext"].to_pylist(),
                                                 table["image"].to_pylist(),
                                                 table["meta"].to_pylist()):
                    writer.write(key, image, ext, None, json.loads(meta))
            count = writer.shards[0].count
        oracle = table.select([f.name for f in ORACLE_SCHEMA]).cast(ORACLE_SCHEMA)
        buf = io.BytesIO()
        pq.write_table(oracle, buf)
        storage.put_bytes(_work(out, "oracle", f"{b:06d}.parquet"), buf.getvalue())
        storage.write_json(marker, {"count": count,
                                    "sources": dict(Counter(table["source"].to_pylist()))})


def finish(dataset_uri: str, out: str, plan: dict, extras, labels_per_class: int) -> SplitResult:
    """Phase 4: the pool's dataset.json, the oracle (parts concatenated in pool order) and
    split.json; then the work directory goes."""
    metas = [read_meta(d) for d in [dataset_uri, *extras]]
    pool_uri, lab_uri = storage.join(out, "unlabelled"), storage.join(out, "labelled")
    shards, sources = [], Counter()
    for b in range(plan["buckets"]):
        marker = _work(out, "reduce", f"{b:06d}.json")
        if not storage.exists(marker):
            raise DataError(f"split bucket {b} has not been reduced; run phase=reduce first")
        done = storage.read_json(marker)
        sources.update(done["sources"])
        if done["count"]:
            shards.append(ShardInfo(storage.join(pool_uri, shard_name("shard", b)), done["count"]))
    if sum(s.count for s in shards) != plan["pool"]:
        raise DataError(f"the split's pool holds {sum(s.count for s in shards)} images, "
                        f"its inputs {plan['pool']}: an input shard changed during the split")
    oracle_uri = storage.join(out, ORACLE_FILE)
    with storage.open_write(oracle_uri) as f, pq.ParquetWriter(f, ORACLE_SCHEMA) as writer:
        for b in range(plan["buckets"]):  # one bucket's part at a time (fetched whole)
            writer.write_table(read_table(_work(out, "oracle", f"{b:06d}.parquet")))
    channels, hw = _geometry(metas)
    target = metas[0]
    unl = make_meta(pool_uri, f"{target.name}-unlabelled", target.classes, shards, None,
                    source="split", channels=channels, hw=hw,
                    extra={"sources": dict(sorted(sources.items())), "order": "hash"})
    write_meta(pool_uri, unl)
    lab = read_meta(lab_uri)
    storage.write_json(storage.join(out, SPLIT_FILE), {
        "dataset": dataset_uri, "pool_extra": list(extras), "labels_per_class": labels_per_class,
        "seed": plan["seed"], "order": "hash", "labelled": lab.num_samples,
        "unlabelled": unl.num_samples, "unlabelled_sources": unl.extra["sources"],
        "oracle": ORACLE_FILE})
    work = storage.join(out, WORK)
    for uri in list(storage.list_uris(work)):
        storage.delete(uri)
    if storage.is_local(work):  # the empty directories an object store would not have
        shutil.rmtree(storage.local_path(work), ignore_errors=True)
    log.info("split %s (hash order): %d labelled, %d unlabelled (%s)", target.name,
             lab.num_samples, unl.num_samples, unl.extra["sources"])
    return SplitResult(lab, unl, lab_uri, pool_uri, oracle_uri)


def split_hashed(dataset_uri: str, out_uri: str, labels_per_class: int, seed: int,
                 pool_extra=(), samples_per_shard: int = 4096, phase: str = "all",
                 worker: int = 0, num_workers: int = 1, spill_mb: float = 256) -> SplitResult | dict:
    """Run ``phase`` of the hash-order split (module docstring); ``all`` runs every phase in
    this process and returns the SplitResult, the others return their marker or plan."""
    if phase not in PHASES:
        raise DataError(f"split phase must be one of {', '.join(PHASES)}, got {phase!r}")
    if not 0 <= worker < num_workers:
        raise DataError(f"split worker must be in [0, num_workers={num_workers}), got {worker}")
    extras = list(pool_extra)
    if storage.exists(storage.join(out_uri, SPLIT_FILE)):  # finished: the work is gone
        done = storage.read_json(storage.join(out_uri, SPLIT_FILE))
        if (done.get("order"), done["seed"], done["labels_per_class"]) != ("hash", seed,
                                                                           labels_per_class):
            raise DataError(f"{out_uri} holds another split (order {done.get('order', 'permutation')}"
                            f", seed {done['seed']}, {done['labels_per_class']} labels per class); "
                            "choose another out")
        lab_uri, pool_uri = storage.join(out_uri, "labelled"), storage.join(out_uri, "unlabelled")
        return SplitResult(read_meta(lab_uri), read_meta(pool_uri), lab_uri, pool_uri,
                           storage.join(out_uri, ORACLE_FILE))
    if phase in ("all", "choose"):
        plan = choose(dataset_uri, out_uri, labels_per_class, seed, extras, samples_per_shard)
        if phase == "choose":
            return plan
    plan_uri = _work(out_uri, "plan.json")
    if not storage.exists(plan_uri):
        raise DataError(f"{out_uri}: the split has no plan; run phase=choose first")
    plan = storage.read_json(plan_uri)
    for name, value in (("seed", seed), ("labels_per_class", labels_per_class),
                        ("samples_per_shard", samples_per_shard)):
        if plan.get(name, value) != value:
            raise DataError(f"{out_uri}: the split was planned with {name} {plan[name]}, not "
                            f"{value}")
    workers = range(num_workers) if phase == "all" else [worker]
    if phase in ("all", "map"):
        for w in workers:
            done = map_worker(dataset_uri, out_uri, plan, extras, w, num_workers, spill_mb)
        if phase == "map":
            return done
    if phase in ("all", "reduce"):
        for w in workers:
            reduce_worker(out_uri, plan, w, num_workers)
        if phase == "reduce":
            return {"worker": worker, "buckets": len(range(worker, plan["buckets"], num_workers))}
    return finish(dataset_uri, out_uri, plan, extras, labels_per_class)
