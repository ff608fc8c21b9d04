"""The ``select`` stage: merge scoring results into the ranked manifest (Yalniz et al. §3.1-3.2).

Strategies (a registry, since the set grows):
- ``balanced`` (default): the top-K images of every class by score;
- ``unbalanced``: per-class K_c following the teacher's predicted class frequency
  (``k_law=frequency``) or a Zipf law over classes ranked by that frequency
  (``k_law=zipf``), with sum K_c = K * C (§4.4);
- ``random``: K images per class drawn uniformly among those whose top-P contains the
  class -- the paper's "balanced-with-tags" control (Table 5);
- ``threshold``: every (image, class) with score >= ``threshold``, ranked.

The manifest is Parquet ``class_id, rank, score, shard, key``; ties are broken by key,
so the result does not depend on how scoring was split across workers.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Callable, Iterator, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from semisup_core import config, storage
from semisup_core.config import StageConfig
from semisup_core.data.manifest import manifest_dataset
from semisup_core.errors import DataError
from semisup_core.tables import read_table, write_table
from semisup_core.teacher_student.topk import TopKPerClass

log = logging.getLogger(__name__)

MANIFEST = pa.schema([("class_id", pa.int32()), ("rank", pa.int32()), ("score", pa.float32()),
                      ("shard", pa.string()), ("key", pa.string())])


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


def _dirs(scores: str | list[str]) -> list[str]:
    return [scores] if isinstance(scores, str) else list(scores)


def _files(scores: str | list[str], sub: str, suffix: str) -> list[str]:
    """Files under ``<dir>/<sub>`` of every score directory, sorted by name within each."""
    return [u for d in _dirs(scores) for u in sorted(storage.list_uris(storage.join(d, sub)))
            if u.endswith(suffix)]


def _shard_tables(scores: str | list[str]) -> list[str]:
    return _files(scores, "shards", ".parquet")


def _partials(scores: str | list[str]) -> list[str]:
    return _files(scores, "partials", ".parquet")


def _blocks(uris: list[str], top_p: int | None = None) -> Iterator[pa.Table]:
    for uri in uris:
        t = read_table(uri)
        if top_p is not None:  # p_rank 0 is the image's top-1 class
            t = t.filter(pa.compute.less(t["p_rank"], top_p))
        yield t


def _stem(uri: str, suffix: str) -> str:
    return uri.rsplit("/", 1)[-1][:-len(suffix)]


def _subset(cfg: "SelectConfig") -> tuple[list[str], list[dict]]:
    """Shard tables and done markers of the first ``pool_fraction`` of the shards (by name)."""
    tables = _shard_tables(cfg.scores)
    markers = _check_complete(cfg.scores)
    if cfg.pool_fraction >= 1:
        return tables, markers
    names = sorted(_stem(u, ".parquet") for u in tables)
    keep = set(names[:max(1, int(np.ceil(cfg.pool_fraction * len(names))))])
    done = dict(zip([_stem(u, ".done.json") for u in _files(cfg.scores, "shards", ".done.json")],
                    markers))
    return ([u for u in tables if _stem(u, ".parquet") in keep],
            [done[n] for n in sorted(keep)])


def _markers(scores: str | list[str]) -> list[dict]:
    return [storage.read_json(u) for u in _files(scores, "shards", ".done.json")]


def _check_complete(scores: str | list[str]) -> list[dict]:
    markers = _markers(scores)
    tables = _shard_tables(scores)
    where = ", ".join(_dirs(scores))
    if not markers:
        raise DataError(f"{where}: no scored shards (run the score stage first)")
    if len(tables) != len(markers):
        raise DataError(f"{where}: {len(tables)} shard tables but {len(markers)} done markers "
                        "(a scoring worker did not finish)")
    names = [u.rsplit("/", 1)[-1] for u in tables]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"shard {twice[0]} was scored in more than one of {where}")
    return markers


def _random_scores(keys: np.ndarray, classes: np.ndarray, seed: int) -> np.ndarray:
    """A uniform score per (key, class) that depends on nothing else: split-invariant."""
    out = np.empty(len(keys), np.float32)
    for i, (k, c) in enumerate(zip(keys, classes)):
        h = hashlib.blake2b(f"{seed}/{c}/{k}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(h, "little") / 2**64
    return out


def per_class_k(cfg: SelectConfig, top1_counts: np.ndarray) -> np.ndarray:
    """K_c for the unbalanced strategy, summing to about K * C (each >= 1)."""
    c = len(top1_counts)
    if cfg.k_law == "frequency":
        weights = top1_counts / max(1, top1_counts.sum())
    else:
        order = np.argsort(-top1_counts, kind="stable")
        weights = np.empty(c)
        weights[order] = 1.0 / np.arange(1, c + 1) ** cfg.zipf_exponent
        weights /= weights.sum()
    return np.maximum(1, np.round(weights * cfg.k * c)).astype(np.int64)


def _run_topk(blocks: Iterator[pa.Table], k, num_classes: int,
              score_fn: Callable[[pa.Table], np.ndarray] | None = None) -> dict:
    top = TopKPerClass(k, num_classes, payload=("shard",))
    for t in blocks:
        scores = score_fn(t) if score_fn else t["score"].to_numpy()
        # keys and shards stay arrow columns: only the candidates that pass are converted
        top.add(t["class_id"].to_numpy(), scores, t["key"], shard=t["shard"])
    return top.result()


def select(cfg: SelectConfig) -> dict:
    """Write ``out/manifest.parquet`` and ``out/summary.json`` (and ``out/selected``, the
    student's training set, when ``pool`` is given); returns the summary."""
    tables, markers = _subset(cfg)
    top1 = np.sum([m["top1_counts"] for m in markers], axis=0)
    num_classes = len(top1)
    whole = cfg.top_p is None and cfg.pool_fraction >= 1  # per-worker partials cover it all
    if cfg.strategy == "balanced":
        partial_k = _partial_k(cfg.scores) if whole else None
        src = _partials(cfg.scores) if partial_k and partial_k >= cfg.k else tables
        res = _run_topk(_blocks(src, cfg.top_p), cfg.k, num_classes)
    elif cfg.strategy == "unbalanced":
        res = _run_topk(_blocks(tables, cfg.top_p), per_class_k(cfg, top1), num_classes)
    elif cfg.strategy == "random":
        res = _run_topk(_blocks(tables, cfg.top_p), cfg.k, num_classes,
                        lambda t: _random_scores(t["key"].to_numpy(zero_copy_only=False),
                                                 t["class_id"].to_numpy(), cfg.seed))
        res["score"] = _lookup_scores(tables, res)
    else:
        res = _threshold(cfg, tables, num_classes)
    summary = _write_manifest(cfg, res, top1, markers)
    if cfg.pool:
        manifest_dataset(read_manifest(storage.join(cfg.out, "manifest.parquet")), cfg.pool,
                         storage.join(cfg.out, "selected"))
    return summary


def _partial_k(scores: str | list[str]) -> int | None:
    cfgs = [u for d in _dirs(scores) for u in storage.list_uris(d, recursive=False)
            if "config-worker-" in u]
    if not cfgs or not _partials(scores):
        return None
    return min(config.read_yaml(u).get("partial_k", 0) for u in cfgs)


def _lookup_scores(tables: list[str], res: dict) -> np.ndarray:
    """The teacher's scores of randomly drawn (key, class) pairs, for the manifest."""
    want = {(k, c) for k, c in zip(res["key"].tolist(), res["class_id"].tolist())}
    found: dict = {}
    for t in _blocks(tables):
        for k, c, s in zip(t["key"].to_pylist(), t["class_id"].to_pylist(), t["score"].to_pylist()):
            if (k, c) in want:
                found[(k, c)] = s
    return np.array([found[(k, c)] for k, c in zip(res["key"].tolist(), res["class_id"].tolist())],
                    np.float32)


def _threshold(cfg: SelectConfig, tables: list[str], num_classes: int) -> dict:
    def kept() -> Iterator[pa.Table]:
        for t in _blocks(tables, cfg.top_p):
            yield t.filter(pa.compute.greater_equal(t["score"], cfg.threshold))
    big = np.iinfo(np.int32).max // max(1, num_classes)
    return _run_topk(kept(), big, num_classes)


def _write_manifest(cfg: SelectConfig, res: dict, top1: np.ndarray, markers: list[dict]) -> dict:
    if len(res["key"]) == 0:
        raise DataError(f"selection from {', '.join(_dirs(cfg.scores))} is empty (strategy {cfg.strategy}; "
                        f"threshold too high?)")
    table = pa.table({"class_id": res["class_id"], "rank": res["rank"], "score": res["score"],
                      "shard": res["shard"], "key": res["key"]}, schema=MANIFEST)
    write_table(storage.join(cfg.out, "manifest.parquet"), table)
    counts = np.bincount(res["class_id"], minlength=len(top1))
    summary = {"strategy": cfg.strategy, "k": cfg.k, "top_p": cfg.top_p,
               "pool_fraction": cfg.pool_fraction, "selected": int(len(res["key"])),
               "unique_images": int(len(set(res["key"].tolist()))),
               "per_class": counts.tolist(), "pool_images": int(sum(m["images"] for m in markers)),
               "corrupt": int(sum(m["corrupt"] for m in markers)), "top1_counts": top1.tolist()}
    config.save(cfg, cfg.out)
    storage.write_json(storage.join(cfg.out, "summary.json"), summary)
    log.info("selected %d (image, class) pairs, %d distinct images", summary["selected"],
             summary["unique_images"])
    return summary


def read_manifest(uri: str) -> pa.Table:
    """The ranked manifest: class_id, rank, score, shard, key."""
    return read_table(uri)
