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

Tag restriction (issue 20), applied to every score block before any strategy:
- ``restrict=tags``: a score row (image, c) stays only if the ``candidates`` table pairs the
  image with c (a semi-join on key, class_id). ``balanced``/``unbalanced`` + tags is
  tags-then-rank, our extension: the paper never restricts by tags *and* ranks. It needs the
  scores of all C classes (score ``top_p`` >= C), else a candidate class outside an image's
  top-P would be dropped without a trace;
- ``restrict=targeted``: only images with any candidate class (Yalniz §4.1's IG-1B-Targeted).

The manifest is Parquet ``class_id, rank, score, shard, key``; ties are broken by key,
so the result does not depend on how scoring was split across workers.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Callable, Iterator, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from semisup_core import config, storage
from semisup_core.config import StageConfig
from semisup_core.data.manifest import manifest_dataset
from semisup_core.errors import ConfigError, DataError, StorageError
from semisup_core.tables import read_table, write_table
from semisup_core.teacher_student.topk import TopKPerClass

log = logging.getLogger(__name__)

MANIFEST = pa.schema([("class_id", pa.int32()), ("rank", pa.int32()), ("score", pa.float32()),
                      ("shard", pa.string()), ("key", pa.string())])

Restrict = Literal["none", "tags", "targeted"]
RESTRICT_HELP = ("tags: an image stays a candidate for class c only if `candidates` pairs it with "
                 "c (random+tags = the paper's balanced-with-tags; balanced+tags = tags-then-rank, "
                 "our extension; needs score top_p >= the class count); targeted: only images "
                 "with any candidate class (the paper's IG-1B-Targeted pool)")
CANDIDATES_HELP = ("Parquet table key (string), class_id (int32): the image is a tag candidate "
                   "for the class, one row per pair; required unless restrict=none")
_JOIN_ROWS = 1 << 23  # score rows per semi-join at most: bounds the buffer (~50 B a row)


def needs_candidates(cls, value: str | None, info) -> str | None:
    """Validator of a ``candidates`` field: required when ``restrict`` is not none."""
    restrict = info.data.get("restrict", "none")
    if restrict != "none" and not value:
        raise ValueError(f"restrict={restrict} needs a candidates table (key, class_id)")
    return value


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


def _read(uris: list[str], top_p: int | None) -> Iterator[pa.Table]:
    for uri in uris:
        t = read_table(uri)
        if top_p is not None:  # p_rank 0 is the image's top-1 class
            t = t.filter(pc.less(t["p_rank"], top_p))
        yield t


def _blocks(uris: list[str], top_p: int | None = None,
            restriction: "_Restriction | None" = None) -> Iterator[pa.Table]:
    """Score blocks (one per shard table, or per batch of them when restricted)."""
    blocks = _read(uris, top_p)
    return restriction.apply(blocks) if restriction else blocks


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
    student's training set, when ``pool`` is given); returns the summary. With a restriction
    the summary's ``restricted`` counts the distinct candidate pairs and images of the table,
    the score rows before and after it (``rows_in``, ``rows_kept``) and ``images_kept``."""
    tables, markers = _subset(cfg)
    top1 = np.sum([m["top1_counts"] for m in markers], axis=0)
    num_classes = len(top1)
    only = _Restriction(cfg, num_classes) if cfg.restrict != "none" else None
    # per-worker partials cover it all, but only of the unrestricted rows
    whole = cfg.top_p is None and cfg.pool_fraction >= 1 and only is None
    if cfg.strategy == "balanced":
        partial_k = _partial_k(cfg.scores) if whole else None
        src = _partials(cfg.scores) if partial_k and partial_k >= cfg.k else tables
        res = _run_topk(_blocks(src, cfg.top_p, only), cfg.k, num_classes)
    elif cfg.strategy == "unbalanced":
        res = _run_topk(_blocks(tables, cfg.top_p, only), per_class_k(cfg, top1), num_classes)
    elif cfg.strategy == "random":
        res = _run_topk(_blocks(tables, cfg.top_p, only), cfg.k, num_classes,
                        lambda t: _random_scores(t["key"].to_numpy(zero_copy_only=False),
                                                 t["class_id"].to_numpy(), cfg.seed))
        res["score"] = _lookup_scores(tables, res)
    else:
        res = _threshold(cfg, tables, num_classes, only)
    summary = _write_manifest(cfg, res, top1, markers, only.counts if only else None)
    if cfg.pool:
        manifest_dataset(read_manifest(storage.join(cfg.out, "manifest.parquet")), cfg.pool,
                         storage.join(cfg.out, "selected"))
    return summary


def _worker_configs(scores: str | list[str]) -> list[dict]:
    """The score stage's per-worker configs (top_p, partial_k) in every score directory."""
    return [config.read_yaml(u) for d in _dirs(scores) for u in storage.list_uris(d, recursive=False)
            if "config-worker-" in u]


def _partial_k(scores: str | list[str]) -> int | None:
    cfgs = _worker_configs(scores)
    if not cfgs or not _partials(scores):
        return None
    return min(c.get("partial_k", 0) for c in cfgs)


def read_candidates(uri: str, num_classes: int | None = None) -> pa.Table:
    """The distinct (key: string, class_id: int32) pairs of a tag-candidates table; one line
    for each bad input (unreadable, a column missing or of the wrong type, nulls, a class id
    outside ``[0, num_classes)``)."""
    try:
        t = read_table(uri)
    except StorageError as err:
        raise StorageError(f"candidates: {err}") from None
    except pa.ArrowException as err:
        raise DataError(f"candidates {uri}: not a Parquet table ({str(err).splitlines()[0]})") from None
    missing = [c for c in ("key", "class_id") if c not in t.column_names]
    if missing:
        raise DataError(f"candidates {uri}: no column {', '.join(missing)} (want key: string, "
                        f"class_id: int32; it has {', '.join(t.column_names) or 'none'})")
    key, cls = t["key"], t["class_id"]
    if not (pa.types.is_string(key.type) or pa.types.is_large_string(key.type)):
        raise DataError(f"candidates {uri}: key must be a string column, not {key.type}")
    if not pa.types.is_integer(cls.type):
        raise DataError(f"candidates {uri}: class_id must be an integer column, not {cls.type}")
    if key.null_count or cls.null_count or not t.num_rows:
        raise DataError(f"candidates {uri}: " + ("null key or class_id" if t.num_rows else "no rows"))
    lo, hi = (v.as_py() for v in pc.min_max(cls).values())
    limit = num_classes if num_classes is not None else 2 ** 31 - 1
    if lo < 0 or hi >= limit:
        raise DataError(f"candidates {uri}: class_id {lo if lo < 0 else hi} is outside [0, {limit}) "
                        "(made for another label space?)")
    pairs = pa.table({"key": key.cast(pa.string()), "class_id": cls.cast(pa.int32())})
    return pairs.group_by(["key", "class_id"]).aggregate([])


class _Restriction:
    """The semi-join of score blocks with the tag candidates, and what it kept.

    Blocks are joined in batches of at least the candidate table's size (up to ``_JOIN_ROWS``
    rows), so building the join's hash table of the candidates costs no more than probing it.
    A batch holds whole shard tables, so an image's rows never span two batches."""

    def __init__(self, cfg: SelectConfig, num_classes: int):
        self.tags = cfg.restrict == "tags"
        if self.tags:
            self._check_full(cfg, num_classes)
        pairs = read_candidates(cfg.candidates, num_classes)
        keys = pc.unique(pairs["key"])
        self.right = pairs if self.tags else pa.table({"key": keys})
        self.num_classes = num_classes
        self.counts = {"candidate_pairs": pairs.num_rows, "candidate_images": len(keys),
                       "rows_in": 0, "rows_kept": 0, "images_kept": 0}

    @staticmethod
    def _check_full(cfg: SelectConfig, num_classes: int) -> None:
        """Refuse restrict=tags on scores that keep fewer than all classes per image (the
        score stage's top_p is in its per-worker configs; a select top_p cuts further)."""
        scored = min([c["top_p"] for c in _worker_configs(cfg.scores) if c.get("top_p")]
                     + [num_classes])
        if cfg.top_p is not None and cfg.top_p < min(scored, num_classes):
            raise ConfigError(f"select top_p={cfg.top_p} keeps {cfg.top_p} of {num_classes} "
                              f"classes per image: {_why_full(num_classes)}")
        if scored < num_classes:
            raise ConfigError(f"the scores in {', '.join(_dirs(cfg.scores))} keep {scored} of "
                              f"{num_classes} classes per image: {_why_full(num_classes)}")

    def apply(self, blocks: Iterator[pa.Table]) -> Iterator[pa.Table]:
        buf: list[pa.Table] = []
        rows = 0
        for t in blocks:
            p = pc.max(t["p_rank"]).as_py() + 1 if self.tags and t.num_rows else self.num_classes
            if p < self.num_classes:  # scores without a config: the table itself tells
                raise ConfigError(f"the score tables keep {p} of {self.num_classes} classes per "
                                  f"image: {_why_full(self.num_classes)}")
            buf.append(t)
            rows += t.num_rows
            if rows >= min(self.right.num_rows, _JOIN_ROWS):
                yield self._join(buf)
                buf, rows = [], 0
        if buf:
            yield self._join(buf)

    def _join(self, buf: list[pa.Table]) -> pa.Table:
        t = pa.concat_tables(buf)
        # the join's row order is arbitrary; the top-K's order is total, so it does not matter
        kept = t.join(self.right, keys=self.right.column_names, join_type="left semi")
        self.counts["rows_in"] += t.num_rows
        self.counts["rows_kept"] += kept.num_rows
        self.counts["images_kept"] += pc.count_distinct(kept["key"]).as_py() if kept.num_rows else 0
        return kept


def _why_full(num_classes: int) -> str:
    return (f"restrict=tags needs the scores of all {num_classes} classes (score with top_p >= "
            f"{num_classes}), else a candidate class outside an image's top-P is lost silently")


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


def _threshold(cfg: SelectConfig, tables: list[str], num_classes: int,
               only: _Restriction | None) -> dict:
    def kept() -> Iterator[pa.Table]:
        for t in _blocks(tables, cfg.top_p, only):
            yield t.filter(pc.greater_equal(t["score"], cfg.threshold))
    big = np.iinfo(np.int32).max // max(1, num_classes)
    return _run_topk(kept(), big, num_classes)


def _write_manifest(cfg: SelectConfig, res: dict, top1: np.ndarray, markers: list[dict],
                    restricted: dict | None) -> dict:
    if len(res["key"]) == 0:
        why = (f"restrict={cfg.restrict} kept no score row: do the keys of {cfg.candidates} name "
               "this pool's images?" if restricted and not restricted["rows_kept"]
               else "threshold too high?")
        raise DataError(f"selection from {', '.join(_dirs(cfg.scores))} is empty (strategy "
                        f"{cfg.strategy}; {why})")
    table = pa.table({"class_id": res["class_id"], "rank": res["rank"], "score": res["score"],
                      "shard": res["shard"], "key": res["key"]}, schema=MANIFEST)
    write_table(storage.join(cfg.out, "manifest.parquet"), table)
    counts = np.bincount(res["class_id"], minlength=len(top1))
    summary = {"strategy": cfg.strategy, "k": cfg.k, "top_p": cfg.top_p,
               "pool_fraction": cfg.pool_fraction, "selected": int(len(res["key"])),
               "unique_images": int(len(set(res["key"].tolist()))),
               "per_class": counts.tolist(), "pool_images": int(sum(m["images"] for m in markers)),
               "corrupt": int(sum(m["corrupt"] for m in markers)), "top1_counts": top1.tolist(),
               "restrict": cfg.restrict, "candidates": cfg.candidates, "restricted": restricted}
    config.save(cfg, cfg.out)
    storage.write_json(storage.join(cfg.out, "summary.json"), summary)
    if restricted:
        log.info("restrict=%s kept %d of %d score rows (%d images)", cfg.restrict,
                 restricted["rows_kept"], restricted["rows_in"], restricted["images_kept"])
    log.info("selected %d (image, class) pairs, %d distinct images", summary["selected"],
             summary["unique_images"])
    return summary


def read_manifest(uri: str) -> pa.Table:
    """The ranked manifest: class_id, rank, score, shard, key."""
    return read_table(uri)
