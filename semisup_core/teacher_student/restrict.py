"""Tag-restricted selection (issue 20; Yalniz et al. §4.1, §4.4): the semi-join of score
blocks with a table of (key, class) tag candidates, applied before any select strategy.

- ``restrict=tags``: a score row (image, c) stays only if the candidates pair the image with
  c. It needs the scores of all C classes (score ``top_p`` >= C), else a candidate class
  outside an image's top-P would be dropped without a trace;
- ``restrict=targeted``: only images with any candidate class (IG-1B-Targeted).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Literal

import pyarrow as pa
import pyarrow.compute as pc

from semisup_core.errors import ConfigError, DataError, StorageError
from semisup_core.tables import read_table
from semisup_core.teacher_student.score_output import score_dirs, worker_configs

if TYPE_CHECKING:
    from semisup_core.teacher_student.select import SelectConfig

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


class Restriction:
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
        scored = min([c["top_p"] for c in worker_configs(cfg.scores) if c.get("top_p")]
                     + [num_classes])
        if cfg.top_p is not None and cfg.top_p < min(scored, num_classes):
            raise ConfigError(f"select top_p={cfg.top_p} keeps {cfg.top_p} of {num_classes} "
                              f"classes per image: {_why_full(num_classes)}")
        if scored < num_classes:
            raise ConfigError(f"the scores in {', '.join(score_dirs(cfg.scores))} keep {scored} of "
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
