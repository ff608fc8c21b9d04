"""Reading what the ``score`` stage wrote: its shard tables, done markers, per-worker configs
and partial tables, in one or several score directories (one per scoring task).

- ``check_complete``: every shard table has its marker, no shard scored twice, and every
  marker carries the shard's image-id range (outputs written before image ids are refused);
- ``read_blocks``: score tables, only the columns asked for, read ahead by a thread pool
  (Parquet decoding and I/O release the GIL), optionally cut to each image's first P classes;
- ``resolve_ids``: selected image ids back to their keys and shards (and, for a random draw,
  the teacher's scores of the drawn pairs): each shard table holding one is read once; in a
  shard whose images are all there an image's rows are found by position (the score stage's
  layout), elsewhere by binary search in its id column.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from semisup_core import config, storage
from semisup_core.errors import DataError
from semisup_core.tables import read_table
from semisup_core.teacher_student import topk_kernels as kern

READERS = 4  # score tables read ahead (threads: Parquet decoding and I/O release the GIL)
RANK_COLUMNS = ["class_id", "score", "id"]  # what ranking needs of a score table


def score_dirs(scores: str | list[str]) -> list[str]:
    return [scores] if isinstance(scores, str) else list(scores)


def score_files(scores: str | list[str], sub: str, suffix: str) -> list[str]:
    """Files under ``<dir>/<sub>`` of every score directory, sorted by name within each."""
    return [u for d in score_dirs(scores) for u in sorted(storage.list_uris(storage.join(d, sub)))
            if u.endswith(suffix)]


def shard_tables(scores: str | list[str]) -> list[str]:
    return score_files(scores, "shards", ".parquet")


def partial_tables(scores: str | list[str]) -> list[str]:
    return score_files(scores, "partials", ".parquet")


def prefetch(fn: Callable, items: Iterable, depth: int = READERS) -> Iterator:
    """``fn(item)`` for each item, in order, computed ``depth`` ahead by a thread pool."""
    items = iter(items)
    with ThreadPoolExecutor(depth) as pool:
        ahead = [pool.submit(fn, x) for _, x in zip(range(depth), items)]
        while ahead:
            out = ahead.pop(0).result()
            ahead += [pool.submit(fn, x) for _, x in zip(range(1), items)]
            yield out


def read_blocks(uris: list[str], top_p: int | None, columns: list[str]) -> Iterator[pa.Table]:
    cols = columns + (["p_rank"] if top_p is not None and "p_rank" not in columns else [])
    for t in prefetch(lambda u: read_table(u, columns=cols), uris):
        if top_p is not None:  # p_rank 0 is the image's top-1 class
            t = t.filter(pc.less(t["p_rank"], top_p))
        yield t


def stem(uri: str, suffix: str) -> str:
    return uri.rsplit("/", 1)[-1][:-len(suffix)]


def read_markers(scores: str | list[str]) -> list[dict]:
    return list(prefetch(storage.read_json, score_files(scores, "shards", ".done.json"), 16))


def check_complete(scores: str | list[str]) -> list[dict]:
    markers = read_markers(scores)
    tables = shard_tables(scores)
    where = ", ".join(score_dirs(scores))
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


def worker_configs(scores: str | list[str]) -> list[dict]:
    """The score stage's per-worker configs (top_p, partial_k) in every score directory."""
    return [config.read_yaml(u) for d in score_dirs(scores) for u in storage.list_uris(d, recursive=False)
            if "config-worker-" in u]


def resolve_ids(ids: np.ndarray, classes: np.ndarray, tables: list[str], markers: list[dict],
             with_scores: bool = False) -> tuple[pa.Array, pa.Array, np.ndarray | None]:
    """Shard names and keys of the selected image ids (and, ``with_scores``, the score rows of
    their (id, class) pairs), read from the score tables of the shards that hold them: the
    marker's id range names the shard; in a shard whose images are all there (no corrupt or
    deduplicated one) image ``first_id + j`` owns rows ``j*P ... j*P + P - 1`` (the score
    stage's layout), elsewhere a binary search in the table's id column finds them."""
    uri = {stem(u, ".parquet"): u for u in tables}
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
    keys = pa.concat_arrays(list(prefetch(lookup, jobs, READERS)) or [pa.array([], pa.string())])
    back = np.empty(len(ids), np.int64)
    back[order] = np.arange(len(ids))
    del order
    return shards, keys.take(pa.array(back)), score
