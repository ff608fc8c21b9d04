"""The ``select`` stage: merge scoring results into the ranked manifest (Yalniz et al. §3.1-3.2).

Strategies (a registry, since the set grows):
- ``balanced`` (default): the top-K images of every class by score;
- ``unbalanced``: per-class K_c following the teacher's predicted class frequency
  (``k_law=frequency``) or a Zipf law over classes ranked by that frequency
  (``k_law=zipf``), with sum K_c = K * C (§4.4);
- ``random``: K images per class drawn uniformly among those whose top-P contains the
  class; with ``restrict=tags`` it is the paper's "balanced-with-tags" control (Table 5,
  supplement §2: random per class among the images whose tags map to it, no ranking);
- ``threshold``: every (image, class) with score >= ``threshold``, ranked.

Tag restriction (``restrict.py``, issue 20) applies to every score block before any
strategy; ``balanced``/``unbalanced`` + tags is tags-then-rank, our extension (the paper never
restricts by tags *and* ranks). Reading the score stage's output is ``score_output.py``.

The manifest is Parquet ``class_id, rank, score, shard, key, id``; ties are broken by the
image id (``data.dataset.first_ids``), so the result does not depend on how scoring was split
across workers. Every strategy streams the score tables (read ahead by a thread pool, only the
columns it needs) through compiled loops on integer ids (``topk``'s packed path): per-class
top-K in O(C*K) memory, ``threshold`` in memory bounded by its output, ``random`` ranking by a
vectorised seeded hash of (seed, class, id). The selected ids' keys and shards (and, for
``random``, their teacher scores) are then read back from the score tables of the shards that
hold them, each read once (``resolve_ids``), with no per-row Python.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterator, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from semisup_core import config, storage
from semisup_core.config import StageConfig
from semisup_core.data.manifest import manifest_dataset
from semisup_core.errors import DataError
from semisup_core.tables import read_table, write_table
from semisup_core.teacher_student.restrict import (CANDIDATES_HELP, RESTRICT_HELP, Restrict,
                                                   Restriction, needs_candidates)
from semisup_core.teacher_student.score_output import (RANK_COLUMNS, check_complete,
                                                       partial_tables, read_blocks,
                                                       resolve_ids, score_dirs, score_files,
                                                       shard_tables, stem, worker_configs)
from semisup_core.teacher_student.topk import TopKPerClass, order_bits

log = logging.getLogger(__name__)

MANIFEST = pa.schema([("class_id", pa.int32()), ("rank", pa.int32()), ("score", pa.float32()),
                      ("shard", pa.string()), ("key", pa.string()), ("id", pa.int64())])


class SelectConfig(StageConfig):
    """Build the ranked manifest from a ``score`` output directory."""

    scores: str | list[str] = Field(description="score stage output directory URI, or several "
                                                "(one per scoring task, e.g. a KFP ParallelFor)")
    out: str = Field(description="output directory URI (manifest.parquet, summary.json)")
    strategy: Literal["balanced", "unbalanced", "random", "threshold"] = "balanced"
    k: int = Field(16000, ge=1, description="images per class (paper: 16k of 1B for 1000 "
                                            "classes; scale with pool size / classes)")
    k_law: Literal["frequency", "zipf"] = Field("frequency", description="unbalanced: shape of K_c")
    zipf_exponent: float = Field(1.0, gt=0, description="unbalanced zipf: K_c ~ 1/rank^s")
    threshold: float = Field(0.5, description="threshold: minimum score kept")
    seed: int = Field(0, description="random strategy: seed of the draw")
    top_p: int | None = Field(None, ge=1, description="use only each image's first P scored "
                              "classes (the P ablation without rescoring); null = all scored")
    pool_fraction: float = Field(1.0, gt=0, le=1, description="select from the first fraction "
                                 "of the scored shards only (pool-size ablation; split shuffles "
                                 "the pool across shards, so this is a random subset)")
    pool: str | None = Field(None, description="the scored pool's dataset URI: also write the "
                             "student's training set to out/selected (one sample per selected "
                             "(image, class) pair); null = the manifest only")
    restrict: Restrict = Field("none", description=RESTRICT_HELP)
    candidates: str | None = Field(None, validate_default=True, description=CANDIDATES_HELP)

    _candidates = field_validator("candidates")(classmethod(needs_candidates))


def _blocks(uris: list[str], top_p: int | None = None,
            restriction: "Restriction | None" = None) -> Iterator[pa.Table]:
    """Score blocks (one per shard table, or per batch of them when restricted), with the
    columns ranking needs (and what the restriction joins on)."""
    if restriction is None:
        return read_blocks(uris, top_p, RANK_COLUMNS)
    return restriction.apply(read_blocks(uris, top_p, RANK_COLUMNS + ["key", "p_rank"]))


def _subset(cfg: "SelectConfig") -> tuple[list[str], list[dict]]:
    """Shard tables and done markers of the first ``pool_fraction`` of the shards (by name)."""
    tables = shard_tables(cfg.scores)
    markers = check_complete(cfg.scores)
    if cfg.pool_fraction >= 1:
        return tables, markers
    names = sorted(stem(u, ".parquet") for u in tables)
    keep = set(names[:max(1, int(np.ceil(cfg.pool_fraction * len(names))))])
    done = dict(zip([stem(u, ".done.json") for u in score_files(cfg.scores, "shards", ".done.json")],
                    markers))
    return ([u for u in tables if stem(u, ".parquet") in keep],
            [done[n] for n in sorted(keep)])


_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F),
        np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def _random_scores(ids: np.ndarray, classes: np.ndarray, seed: int) -> np.ndarray:
    """A uniform rank value per (image id, class) that depends on nothing else, so the draw
    is the same for any worker split: splitmix64 of the three, whose top 30 bits become a
    positive normal float32 (the bit patterns order like the floats; ~1e9 distinct values,
    ties broken by id)."""
    x = np.asarray(ids).astype(np.uint64) * _MIX[0]
    x ^= np.asarray(classes).astype(np.uint64) * _MIX[1]
    x ^= np.uint64((seed * int(_MIX[2]) + int(_MIX[0])) % 2**64)
    x ^= x >> np.uint64(30)
    x *= _MIX[2]
    x ^= x >> np.uint64(27)
    x *= _MIX[3]
    x ^= x >> np.uint64(31)
    return ((x >> np.uint64(34)).astype(np.uint32) + np.uint32(0x00800000)).view(np.float32)


def per_class_k(cfg: SelectConfig, top1_counts: np.ndarray) -> np.ndarray:
    """K_c for the unbalanced strategy: sum K_c = K * C exactly, K_c = w_c * K * C rounded by
    largest remainder (w_c: the teacher's top-1 frequency of c, or Zipf over the classes ranked
    by it), then every class raised to at least 1, taken from the largest K_c."""
    c = len(top1_counts)
    if cfg.k_law == "frequency":
        weights = top1_counts / top1_counts.sum() if top1_counts.sum() else np.full(c, 1 / c)
    else:
        order = np.argsort(-top1_counts, kind="stable")
        weights = np.empty(c)
        weights[order] = 1.0 / np.arange(1, c + 1) ** cfg.zipf_exponent
        weights /= weights.sum()
    total = cfg.k * c
    raw = weights * total
    k = np.floor(raw).astype(np.int64)
    short = total - int(k.sum())  # < c: one more to the largest remainders (ties: lower class)
    k[np.argsort(-(raw - k), kind="stable")[:short]] += 1
    for z in np.flatnonzero(k == 0):  # total >= c, so a class with K_c >= 2 exists
        k[int(np.argmax(k))] -= 1
        k[z] = 1
    return k


def _run_topk(blocks: Iterator[pa.Table], k, num_classes: int,
              score_fn: Callable[[pa.Table], np.ndarray] | None = None) -> dict:
    top = TopKPerClass(k, num_classes)  # integer ids, no payload: the packed layout
    for t in blocks:
        scores = score_fn(t) if score_fn else t["score"].to_numpy()
        top.add(t["class_id"].to_numpy(), scores, t["id"].to_numpy())
    res = top.result()
    key = res.pop("key")
    res["id"] = key if len(key) else np.zeros(0, np.int64)  # nothing was added: no key type
    return res


def select(cfg: SelectConfig) -> dict:
    """Write ``out/manifest.parquet`` and ``out/summary.json`` (and ``out/selected``, the
    student's training set, when ``pool`` is given); returns the summary. With a restriction
    the summary's ``restricted`` counts the distinct candidate pairs and images of the table,
    the score rows before and after it (``rows_in``, ``rows_kept``) and ``images_kept``."""
    tables, markers = _subset(cfg)
    partial = False
    top1 = np.sum([m["top1_counts"] for m in markers], axis=0)
    num_classes = len(top1)
    only = Restriction(cfg, num_classes) if cfg.restrict != "none" else None
    # per-worker partials cover it all, but only of the unrestricted rows
    whole = cfg.top_p is None and cfg.pool_fraction >= 1 and only is None
    if cfg.strategy == "balanced":
        partial = whole and _partials_pay(cfg, markers, num_classes)
        res = _run_topk(_blocks(partial_tables(cfg.scores) if partial else tables, cfg.top_p, only),
                        cfg.k, num_classes)
    elif cfg.strategy == "unbalanced":
        res = _run_topk(_blocks(tables, cfg.top_p, only), per_class_k(cfg, top1), num_classes)
    elif cfg.strategy == "random":
        res = _run_topk(_blocks(tables, cfg.top_p, only), cfg.k, num_classes,
                        lambda t: _random_scores(t["id"].to_numpy(), t["class_id"].to_numpy(),
                                                 cfg.seed))
    else:
        res = _threshold(cfg, tables, num_classes, only)
    res["shard"], res["key"], true = resolve_ids(res["id"], res["class_id"], tables, markers,
                                              with_scores=cfg.strategy == "random")
    if true is not None:  # the manifest shows the teacher's scores of the drawn pairs
        res["score"] = true
    summary = _write_manifest(cfg, res, top1, markers, only.counts if only else None,
                              "partials" if partial else "shards")
    if cfg.pool:
        manifest_dataset(read_manifest(storage.join(cfg.out, "manifest.parquet")), cfg.pool,
                         storage.join(cfg.out, "selected"))
    return summary


def _partials_pay(cfg: SelectConfig, markers: list[dict], num_classes: int) -> bool:
    """Whether balanced reads the score workers' partial top-K tables instead of the shard
    tables: they must keep at least K per class, and hold clearly fewer rows (at most W * C *
    partial_k) than the shards (images * P), else reading them gains nothing (one partial row
    per score row when every worker has fewer than C * partial_k rows)."""
    cfgs, parts = worker_configs(cfg.scores), partial_tables(cfg.scores)
    if not cfgs or not parts:
        return False
    partial_k = min(c.get("partial_k", 0) for c in cfgs)
    top_p = min([c.get("top_p") or num_classes for c in cfgs] + [num_classes])
    score_rows = sum(m["images"] for m in markers) * top_p
    return partial_k >= cfg.k and 2 * len(parts) * num_classes * partial_k <= score_rows


def _threshold(cfg: SelectConfig, tables: list[str], num_classes: int,
               only: Restriction | None) -> dict:
    """Every (image, class) with score >= threshold, ranked: memory bounded by the output."""
    cls, score, ids = [], [], []
    for t in _blocks(tables, cfg.top_p, only):
        kept = t.filter(pc.greater_equal(t["score"], cfg.threshold))
        cls.append(kept["class_id"].to_numpy())
        score.append(kept["score"].to_numpy())
        ids.append(kept["id"].to_numpy())
    cls = np.concatenate(cls).astype(np.int32) if cls else np.zeros(0, np.int32)
    score = np.concatenate(score).astype(np.float32) if score else np.zeros(0, np.float32)
    ids = np.concatenate(ids).astype(np.int64) if ids else np.zeros(0, np.int64)
    # class, score descending, id: one sort of a 64-bit word (score descending, id) when the
    # ids fit 32 bits, then a stable sort by class (radix for <= 2**15 classes)
    if len(ids) and 0 <= ids.min() and ids.max() < 2**32:
        word = (np.uint64(0xFFFFFFFF) - order_bits(score).astype(np.uint64)) << np.uint64(32)
        order = np.argsort(word | ids.astype(np.uint64))
        order = order[np.argsort(cls[order].astype(np.int16 if num_classes < 2**15 else np.int32),
                                 kind="stable")]
    else:
        order = np.lexsort((ids, -score, cls))
    cls, score, ids = cls[order], score[order], ids[order]
    starts = np.searchsorted(cls, np.arange(num_classes))
    rank = (np.arange(len(cls)) - starts[cls]).astype(np.int32)
    return {"class_id": cls, "rank": rank, "score": score, "id": ids}


def _write_manifest(cfg: SelectConfig, res: dict, top1: np.ndarray, markers: list[dict],
                    restricted: dict | None, read: str) -> dict:
    if len(res["key"]) == 0:
        why = (f"restrict={cfg.restrict} kept no score row: do the keys of {cfg.candidates} name "
               "this pool's images?" if restricted and not restricted["rows_kept"]
               else "threshold too high?")
        raise DataError(f"selection from {', '.join(score_dirs(cfg.scores))} is empty (strategy "
                        f"{cfg.strategy}; {why})")
    table = pa.table({"class_id": res["class_id"], "rank": res["rank"], "score": res["score"],
                      "shard": res["shard"], "key": res["key"], "id": res["id"]}, schema=MANIFEST)
    # dictionary pages only where values repeat (a dictionary of 16M keys costs a second)
    write_table(storage.join(cfg.out, "manifest.parquet"), table,
                use_dictionary=["class_id", "shard"])
    counts = np.bincount(res["class_id"], minlength=len(top1))
    summary = {"strategy": cfg.strategy, "k": cfg.k, "top_p": cfg.top_p,
               "pool_fraction": cfg.pool_fraction, "selected": int(len(res["key"])),
               "unique_images": _distinct(res["id"]),
               "per_class": counts.tolist(), "pool_images": int(sum(m["images"] for m in markers)),
               "corrupt": int(sum(m["corrupt"] for m in markers)), "top1_counts": top1.tolist(),
               "restrict": cfg.restrict, "candidates": cfg.candidates, "restricted": restricted,
               "read": read}
    config.save(cfg, cfg.out)
    storage.write_json(storage.join(cfg.out, "summary.json"), summary)
    if restricted:
        log.info("restrict=%s kept %d of %d score rows (%d images)", cfg.restrict,
                 restricted["rows_kept"], restricted["rows_in"], restricted["images_kept"])
    log.info("selected %d (image, class) pairs, %d distinct images", summary["selected"],
             summary["unique_images"])
    return summary


def _distinct(ids: np.ndarray) -> int:
    """How many distinct ids (a sort: several times faster than numpy's or Arrow's hashing at
    16M ids)."""
    s = np.sort(ids)
    return int(len(s) and 1 + np.count_nonzero(s[1:] != s[:-1]))


def read_manifest(uri: str) -> pa.Table:
    """The ranked manifest: class_id, rank, score, shard, key, id."""
    return read_table(uri)
