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

The manifest is Parquet ``class_id, rank, score, shard, key, id``; ties are broken by the
image id (``data.dataset.first_ids``), so the result does not depend on how scoring was split
across workers. Every strategy streams the score tables (read ahead by a thread pool, only the
columns it needs) through compiled loops on integer ids (``topk``'s packed path): per-class
top-K in O(C*K) memory, ``threshold`` in memory bounded by its output, ``random`` ranking by a
vectorised seeded hash of (seed, class, id). The selected ids' keys and shards (and, for
``random``, their teacher scores) are then read back from the score tables of the shards that
hold them, each read once (``_resolve``), with no per-row Python.
"""

from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from semisup_core import config, storage
from semisup_core.config import StageConfig
from semisup_core.data.manifest import manifest_dataset
from semisup_core.errors import ConfigError, DataError, StorageError
from semisup_core.tables import read_table, write_table
from semisup_core.teacher_student import topk_kernels as kern
from semisup_core.teacher_student.topk import TopKPerClass, order_bits

log = logging.getLogger(__name__)

MANIFEST = pa.schema([("class_id", pa.int32()), ("rank", pa.int32()), ("score", pa.float32()),
                      ("shard", pa.string()), ("key", pa.string()), ("id", pa.int64())])

Restrict = Literal["none", "tags", "targeted"]
RESTRICT_HELP = ("tags: an image stays a candidate for class c only if `candidates` pairs it with "
                 "c (random+tags = the paper's balanced-with-tags; balanced+tags = tags-then-rank, "
                 "our extension; needs score top_p >= the class count); targeted: only images "
                 "with any candidate class (the paper's IG-1B-Targeted pool)")
CANDIDATES_HELP = ("Parquet table key (string), class_id (int32): the image is a tag candidate "
                   "for the class, one row per pair; required unless restrict=none")
_JOIN_ROWS = 1 << 23  # score rows per semi-join at most: bounds the buffer (~50 B a row)
_READERS = 4  # score tables read ahead (threads: Parquet decoding and I/O release the GIL)
_COLUMNS = ["class_id", "score", "id"]  # what ranking needs of a score table


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


def _prefetch(fn: Callable, items: Iterable, depth: int = _READERS) -> Iterator:
    """``fn(item)`` for each item, in order, computed ``depth`` ahead by a thread pool."""
    items = iter(items)
    with ThreadPoolExecutor(depth) as pool:
        ahead = [pool.submit(fn, x) for _, x in zip(range(depth), items)]
        while ahead:
            out = ahead.pop(0).result()
            ahead += [pool.submit(fn, x) for _, x in zip(range(1), items)]
            yield out


def _read(uris: list[str], top_p: int | None, columns: list[str]) -> Iterator[pa.Table]:
    cols = columns + (["p_rank"] if top_p is not None and "p_rank" not in columns else [])
    for t in _prefetch(lambda u: read_table(u, columns=cols), uris):
        if top_p is not None:  # p_rank 0 is the image's top-1 class
            t = t.filter(pc.less(t["p_rank"], top_p))
        yield t


def _blocks(uris: list[str], top_p: int | None = None,
            restriction: "_Restriction | None" = None) -> Iterator[pa.Table]:
    """Score blocks (one per shard table, or per batch of them when restricted), with the
    columns ranking needs (and what the restriction joins on)."""
    if restriction is None:
        return _read(uris, top_p, _COLUMNS)
    return restriction.apply(_read(uris, top_p, _COLUMNS + ["key", "p_rank"]))


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
    return list(_prefetch(storage.read_json, _files(scores, "shards", ".done.json"), 16))


def _check_complete(scores: str | list[str]) -> list[dict]:
    markers = _markers(scores)
    tables = _shard_tables(scores)
    where = ", ".join(_dirs(scores))
    if not markers:
        raise DataError(f"{where}: no scored shards (run the score stage first)")
    if len(tables) != len(markers):
        raise DataError(f"{where}: {len(tables)} shard tables but {len(markers)} done markers "
                        "(a scoring worker did not finish)")
    twice = sorted(n for n, c in Counter(u.rsplit("/", 1)[-1] for u in tables).items() if c > 1)
    if twice:
        raise DataError(f"shard {twice[0]} was scored in more than one of {where}")
    old = next((m["shard"] for m in markers if "first_id" not in m), None)
    if old is not None:
        raise DataError(f"{where}: shard {old} was scored without image ids (an older semisup); "
                        "score the pool again into a new out (semisup stage score --set out=...)")
    return markers


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
    only = _Restriction(cfg, num_classes) if cfg.restrict != "none" else None
    # per-worker partials cover it all, but only of the unrestricted rows
    whole = cfg.top_p is None and cfg.pool_fraction >= 1 and only is None
    if cfg.strategy == "balanced":
        partial = whole and _partials_pay(cfg, markers, num_classes)
        res = _run_topk(_blocks(_partials(cfg.scores) if partial else tables, cfg.top_p, only),
                        cfg.k, num_classes)
    elif cfg.strategy == "unbalanced":
        res = _run_topk(_blocks(tables, cfg.top_p, only), per_class_k(cfg, top1), num_classes)
    elif cfg.strategy == "random":
        res = _run_topk(_blocks(tables, cfg.top_p, only), cfg.k, num_classes,
                        lambda t: _random_scores(t["id"].to_numpy(), t["class_id"].to_numpy(),
                                                 cfg.seed))
    else:
        res = _threshold(cfg, tables, num_classes, only)
    res["shard"], res["key"], true = _resolve(res["id"], res["class_id"], tables, markers,
                                              with_scores=cfg.strategy == "random")
    if true is not None:  # the manifest shows the teacher's scores of the drawn pairs
        res["score"] = true
    summary = _write_manifest(cfg, res, top1, markers, only.counts if only else None,
                              "partials" if partial else "shards")
    if cfg.pool:
        manifest_dataset(read_manifest(storage.join(cfg.out, "manifest.parquet")), cfg.pool,
                         storage.join(cfg.out, "selected"))
    return summary


def _resolve(ids: np.ndarray, classes: np.ndarray, tables: list[str], markers: list[dict],
             with_scores: bool = False) -> tuple[pa.Array, pa.Array, np.ndarray | None]:
    """Shard names and keys of the selected image ids (and, ``with_scores``, the score rows of
    their (id, class) pairs), read from the score tables of the shards that hold them: the
    marker's id range names the shard; in a shard whose images are all there (no corrupt or
    deduplicated one) image ``first_id + j`` owns rows ``j*P ... j*P + P - 1`` (the score
    stage's layout), elsewhere a binary search in the table's id column finds them."""
    uri = {_stem(u, ".parquet"): u for u in tables}
    held = sorted((m["first_id"], m["first_id"] + m["count"], m["shard"], m["images"])
                  for m in markers if m["shard"] in uri)
    starts = np.array([h[0] for h in held], np.int64)
    ends = np.array([h[1] for h in held], np.int64)
    where, order, bounds = kern.group_by_range(np.ascontiguousarray(ids, np.int64), starts)
    if len(ids) and ((where < 0) | (ids >= ends[np.maximum(where, 0)])).any():
        raise DataError("a selected image id lies in no scored shard's id range (done markers "
                        "of another pool?)")
    jobs = [(s, order[bounds[s + 1]:bounds[s + 2]]) for s in range(len(held))
            if bounds[s + 2] > bounds[s + 1]]
    score = np.empty(len(ids), np.float32) if with_scores else None

    def lookup(job):
        s, rows = job
        first, end, name, images = held[s]
        dense = images == end - first
        cols = (["key"] if dense else ["id", "key"]) + (["class_id", "score"] if with_scores else [])
        t = read_table(uri[name], columns=cols, dictionary=["key"])
        want = ids[rows]
        if dense:  # P rows per image, in image order
            p = t.num_rows // max(1, images)
            lo = (want - first) * p
            hi = lo + p
        else:
            tid = t["id"].to_numpy()
            if len(tid) > 1 and (np.diff(tid) < 0).any():
                raise DataError(f"{uri[name]}: ids not in image order (not written by score)")
            lo = np.searchsorted(tid, want, side="left")
            hi = np.searchsorted(tid, want, side="right")
            if (hi <= lo).any():
                raise DataError(f"{uri[name]}: a selected image id is missing from its table")
        keys = t["key"].take(pa.array(lo)).cast(pa.string()).combine_chunks()
        if with_scores:  # the pair's row among the image's rows (at most P of them)
            cls, sc = t["class_id"].to_numpy(), t["score"].to_numpy()
            got = np.zeros(len(rows), bool)
            for j in range(int((hi - lo).max())):
                r = np.minimum(lo + j, len(cls) - 1)
                hit = ~got & (lo + j < hi) & (cls[r] == classes[rows])
                score[rows[hit]] = sc[r[hit]]
                got |= hit
            if not got.all():
                raise DataError(f"{uri[name]}: a selected (image, class) pair is missing")
        return keys

    names = pa.array([h[2] for h in held], pa.string())
    shards = names.take(pa.array(where.astype(np.int32))) if len(ids) else pa.array([], pa.string())
    del where
    keys = pa.concat_arrays(list(_prefetch(lookup, jobs, _READERS)) or [pa.array([], pa.string())])
    back = np.empty(len(ids), np.int64)
    back[order] = np.arange(len(ids))
    del order
    return shards, keys.take(pa.array(back)), score


def _worker_configs(scores: str | list[str]) -> list[dict]:
    """The score stage's per-worker configs (top_p, partial_k) in every score directory."""
    return [config.read_yaml(u) for d in _dirs(scores) for u in storage.list_uris(d, recursive=False)
            if "config-worker-" in u]


def _partials_pay(cfg: SelectConfig, markers: list[dict], num_classes: int) -> bool:
    """Whether balanced reads the score workers' partial top-K tables instead of the shard
    tables: they must keep at least K per class, and hold clearly fewer rows (at most W * C *
    partial_k) than the shards (images * P), else reading them gains nothing (one partial row
    per score row when every worker has fewer than C * partial_k rows)."""
    cfgs, parts = _worker_configs(cfg.scores), _partials(cfg.scores)
    if not cfgs or not parts:
        return False
    partial_k = min(c.get("partial_k", 0) for c in cfgs)
    top_p = min([c.get("top_p") or num_classes for c in cfgs] + [num_classes])
    score_rows = sum(m["images"] for m in markers) * top_p
    return partial_k >= cfg.k and 2 * len(parts) * num_classes * partial_k <= score_rows


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


def _threshold(cfg: SelectConfig, tables: list[str], num_classes: int,
               only: _Restriction | None) -> dict:
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
        raise DataError(f"selection from {', '.join(_dirs(cfg.scores))} is empty (strategy "
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
