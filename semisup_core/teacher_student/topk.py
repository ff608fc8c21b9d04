"""Per-class top-K over a stream of ``(class, score, key)`` candidates, in O(C*K) memory.

The order is total and independent of how the stream was split or blocked -- score
descending, then key ascending -- so merging the partial results of any number of workers
gives exactly the single-pass answer.

How it stays fast (issue 6: 10M images x P=10 over 1,000 classes, K=16k), in compiled loops
(``topk_packed``, ``topk_kernels``; numba):

- every class keeps its candidates in a segment of ``k[c] + slack`` rows; once a class holds
  ``k[c]``, the worst of them is its threshold and a candidate enters only if it beats it --
  one compare against a per-class value that stays in cache, so most candidates cost a few
  nanoseconds and are never copied;
- a full segment is *compacted*: a partition (linear time) finds the ``k[c]``-th score, ties
  at it are settled by key, and the threshold rises;
- the result sorts each class's ``k[c]`` rows once (radix sort of the score patterns, then
  the runs of equal scores by key).

Keys are integers (the benchmark's image ids) or strings (the score stage's WebDataset keys).
Integer keys in ``[0, 2**32)`` without payload are packed with the score in one 64-bit word
whose order is the manifest's (``topk_packed``: a third less memory to touch, no tie rule);
the first key outside that range or a string key moves the state to the general layout
(``topk_kernels``; a selector with payload starts there), where keys are big-endian 64-bit
words whose order is the keys' order (strings: UTF-8, zero-padded, so they must not contain
NUL) and payload columns (e.g. the shard name) ride along as integer codes.
"""

from __future__ import annotations

import mmap

import numpy as np

from semisup_core.teacher_student import topk_kernels as kern
from semisup_core.teacher_student import topk_packed as packed

_PREALLOC = 1 << 31  # arena rows * bytes up to which every segment is laid out at once


def order_bits(scores: np.ndarray) -> np.ndarray:
    """uint32 patterns that sort like the float32 scores (-0.0 == 0.0; NaN is refused): the
    mapping the compiled loops use."""
    raw = np.ascontiguousarray(scores, dtype=np.float32).view(np.uint32)
    out = np.empty(len(raw), np.uint32)
    if kern.to_order(raw, out) >= 0:
        raise ValueError("NaN score")
    return out


def _from_bits(u: np.ndarray) -> np.ndarray:
    out = np.empty(len(u), np.uint32)
    kern.from_order(np.ascontiguousarray(u, dtype=np.uint32), out)
    return out.view(np.float32)


def _empty(shape, dtype) -> np.ndarray:
    """An uninitialised array in anonymous memory that the kernel may back with huge pages:
    the arena's first touch (a page fault per 4 KiB otherwise) dominated the fill."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes < 1 << 22 or not hasattr(mmap, "MADV_HUGEPAGE"):
        return np.empty(shape, dtype)
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(buf, dtype).reshape(shape)  # the array keeps the mapping alive


def _as_numpy(values) -> np.ndarray:
    """numpy array of a numpy/list/pyarrow column."""
    if hasattr(values, "to_numpy") and not isinstance(values, np.ndarray):  # pyarrow
        return values.to_numpy(zero_copy_only=False)
    return np.asarray(values)


def _int_keys(keys) -> np.ndarray | None:
    """Integer keys (numpy, list or arrow) as contiguous int64, else None."""
    if hasattr(keys, "type") and not str(keys.type).startswith(("int", "uint")):
        return None  # an arrow column of strings: converted only where it passes (prefilter)
    keys = _as_numpy(keys)
    return np.ascontiguousarray(keys, dtype=np.int64) if keys.dtype.kind in "iu" else None


def _id_columns(free: np.ndarray, total: int) -> tuple[np.ndarray, np.ndarray]:
    """int32 class id and rank columns of ``total`` rows: in ``free`` (the arena's tail, which
    the result's rows no longer use) when it has room, else new."""
    tail = free.view(np.int32)
    if len(tail) >= 2 * total:
        return tail[:total], tail[total:2 * total]
    return np.empty(total, np.int32), np.empty(total, np.int32)


def _take(values, idx: np.ndarray) -> np.ndarray:
    """``values[idx]`` as numpy; a pyarrow column converts only the taken rows."""
    if hasattr(values, "take") and not isinstance(values, np.ndarray):
        return values.take(idx).to_numpy(zero_copy_only=False)
    return np.asarray(values)[idx]


def _str_words(keys: np.ndarray) -> np.ndarray:
    """Strings -> uint64[n, W]: UTF-8 bytes, zero-padded to 8W, as big-endian words."""
    u = keys.astype(str)
    cp = u.view(np.uint32).reshape(len(u), -1)  # code points, NUL-padded on the right
    if ((cp[:, :-1] == 0) & (cp[:, 1:] != 0)).any():
        raise ValueError("keys must not contain NUL characters")
    b = np.char.encode(u, "utf-8")
    width = max(1, -(-b.dtype.itemsize // 8))
    return np.frombuffer(b.astype(f"S{8 * width}").tobytes(), ">u8").reshape(len(u), width) \
        .astype(np.uint64)


def _words_str(words: np.ndarray) -> np.ndarray:
    raw = np.ascontiguousarray(words.astype(">u8")).view(f"S{8 * words.shape[1]}").ravel()
    return np.char.decode(raw, "utf-8")


class TopKPerClass:
    """Keep, per class ``c``, the ``k[c]`` best candidates seen so far.

    Args:
        k: one K for every class, or per-class Ks (length ``num_classes``).
        num_classes: size of the label space.
        payload: names of extra columns carried along (e.g. ``("shard",)``).
        slack: rows per class beyond ``k[c]`` before a compaction (default ``k[c]``, at least
            64: then the result's class ids and ranks fit in the free half). Memory is at
            most ``sum(k + slack)`` rows of 8 bytes for packed integer keys (plus the
            result's scores: 1.25x C*K entries of 16 bytes), else of 4 bytes of score plus 8
            per key word and payload column; segments are laid out at once when that is
            under 2 GiB (pages are only touched as they fill), else grown by doubling.
    """

    def __init__(self, k, num_classes: int, payload: tuple[str, ...] = (), slack: int | None = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.k = np.broadcast_to(np.asarray(k, dtype=np.int64), (num_classes,)).copy()
        if (self.k < 0).any():
            raise ValueError("k must be >= 0")
        if slack is not None and slack < 1:
            raise ValueError("slack must be >= 1")
        self.num_classes, self.payload = num_classes, tuple(payload)
        extra = np.maximum(self.k, 64) if slack is None else np.full(num_classes, slack)
        self._cap_max = np.where(self.k > 0, self.k + extra, 0).astype(np.int64)
        self._key_kind: str | None = None  # "i" (int64) or "U" (strings), set by the first add
        self._nkey = 1  # key words per row; grows with longer string keys (_widen)
        self._n = np.zeros(num_classes, np.int64)
        self._thr = np.where(self.k > 0, -1, kern.NEVER).astype(np.int64)  # see topk_kernels
        self._names: dict[str, dict] = {name: {} for name in self.payload}
        self._done = False  # result() was taken
        size, laid_out = self._layout()
        self._arena = self._pthr = None  # the packed layout (``topk_packed``), while it lasts
        if laid_out and not self.payload:
            self._arena = _empty(size, np.uint64)
            self._pthr = np.where(self.k > 0, packed.FULL, 0).astype(np.uint64)
        else:
            self._alloc(size)

    # -- arena -----------------------------------------------------------------------------
    def _layout(self) -> tuple[int, bool]:
        """Segment offsets: all laid out at once when the general arena fits ``_PREALLOC``
        (pages are mapped as they fill), else grown from the scratch row. Returns the
        arena's rows and whether it was laid out."""
        width = self._nkey + len(self.payload)
        total = int(self._cap_max.sum())
        scratch = self._cap_max == 0  # k == 0: candidates go to row 0 and never stay
        laid_out = total * (4 + 8 * width) <= _PREALLOC
        if laid_out:
            self._seg = 1 + np.concatenate([[0], np.cumsum(self._cap_max)])[:-1].astype(np.int64)
            self._cap = self._cap_max.copy()
            size = used = 1 + total
        else:  # segments start at the scratch row and grow by doubling at the arena's end
            self._seg, self._cap = np.zeros_like(self._n), np.ones_like(self._n)
            size, used = 1 << 20, 1
        self._seg[scratch], self._cap[scratch] = 0, 1
        self._used = np.array([used], np.int64)  # arena rows handed out to segments
        return size, laid_out

    def _alloc(self, size: int) -> None:
        """The general layout's arrays (``topk_kernels``)."""
        self._bits = _empty(size, np.uint32)
        self._rows = _empty((size, self._nkey + len(self.payload)), np.uint64)
        self._trow = np.zeros((self.num_classes, self._nkey), np.uint64)

    def _unpack(self) -> None:
        """Leave the packed layout for good: a string key or an integer key outside
        ``[0, 2**32)`` arrived (or the result of an empty stream is asked for)."""
        self._alloc(len(self._arena))
        packed.unpack(self._seg, self._n, self.k, self._arena, self._pthr, self._bits,
                      self._rows, self._thr, self._trow)
        self._arena = self._pthr = None

    def _grow(self, rows_needed: int) -> None:
        """A bigger arena (x2): segments keep their offsets."""
        size = max(2 * len(self._bits), int(self._used[0]) + rows_needed)
        bits, rows = _empty(size, np.uint32), _empty((size, self._rows.shape[1]), np.uint64)
        used = int(self._used[0])
        bits[:used], rows[:used] = self._bits[:used], self._rows[:used]
        self._bits, self._rows = bits, rows

    def _widen(self, nkey: int) -> None:
        """Longer string keys arrived: more key words (zeros on the right keep the order)."""
        rows = np.zeros((len(self._bits), nkey + len(self.payload)), np.uint64)
        rows[:, :self._nkey] = self._rows[:, :self._nkey]
        rows[:, nkey:] = self._rows[:, self._nkey:]
        trow = np.zeros((self.num_classes, nkey), np.uint64)
        trow[:, :self._nkey] = self._trow
        self._rows, self._trow, self._nkey = rows, trow, nkey

    # -- adding ----------------------------------------------------------------------------
    def _check_kind(self, kind: str) -> None:
        if self._key_kind is None:
            self._key_kind = kind
        elif kind != self._key_kind:
            raise ValueError("keys must all be integers or all strings")

    def _insert(self, classes: np.ndarray, raw: np.ndarray, rows: np.ndarray, flip: bool,
                i: int = 0) -> None:
        while True:
            status, i = kern.insert(i, classes, raw, rows, flip, self._nkey, self.k, self._seg,
                                    self._cap, self._n, self._bits, self._rows, self._thr,
                                    self._trow, self._used, self._cap_max)
            if status != kern.NO_ROOM:
                return
            self._grow(int(self._cap_max.max()))

    def _check(self, classes: np.ndarray, raw: np.ndarray) -> None:
        status, i = kern.check(classes, raw, self.num_classes)
        if status == kern.BAD_CLASS:
            raise ValueError(f"class id {classes[i]} out of range [0, {self.num_classes})")
        if status == kern.NAN:
            raise ValueError(f"NaN score (candidate {i} of the block)")

    def add(self, classes, scores, keys, **payload) -> None:
        """Add a block of candidates (equal-length arrays, numpy or pyarrow; payload by name)."""
        if self._done:
            raise RuntimeError("TopKPerClass.add() after result()")
        classes = np.ascontiguousarray(_as_numpy(classes), dtype=np.int32)
        if len(classes) == 0:
            return
        raw = np.ascontiguousarray(_as_numpy(scores), dtype=np.float32).view(np.uint32)
        self._check(classes, raw)
        ints = _int_keys(keys)
        self._check_kind("U" if ints is None else "i")
        if ints is not None and not self.payload:  # the hot path: one pass, keys read in place
            start = 0
            if self._arena is not None:
                status, start = packed.insert(0, classes, raw, ints, self.k, self._seg, self._cap,
                                              self._n, self._arena, self._pthr)
                if status == kern.OK:
                    return
                self._unpack()  # key ``start`` needs 64 bits
            self._insert(classes, raw, ints.view(np.uint64).reshape(-1, 1), True, start)
            return
        if self._arena is not None:
            self._unpack()
        idx = kern.prefilter(classes, raw, self._thr)
        if len(idx) == 0:
            return
        key = _take(keys, idx)
        if self._key_kind == "i":
            words = (key.astype(np.int64).view(np.uint64) ^ kern.SIGN).reshape(-1, 1)
        else:
            words = _str_words(key)
            if words.shape[1] > self._nkey:
                self._widen(words.shape[1])
            words = np.pad(words, ((0, 0), (0, self._nkey - words.shape[1])))
        cols = [self._encode(name, _take(payload[name], idx)) for name in self.payload]
        rows = np.column_stack([words, *cols]).astype(np.uint64) if cols else words
        self._insert(classes[idx], raw[idx], np.ascontiguousarray(rows), False)

    def _encode(self, name: str, values: np.ndarray) -> np.ndarray:
        names = self._names[name]
        uniq, inverse = np.unique(values.astype(str), return_inverse=True)
        codes = np.array([names.setdefault(u, len(names)) for u in uniq.tolist()], np.uint64)
        return codes[inverse.reshape(-1)]

    # -- result ----------------------------------------------------------------------------
    def result(self) -> dict[str, np.ndarray]:
        """Columns ``class_id, rank, score, key`` (+ payload) sorted by (class, rank).

        This ends the stream: the columns are built in the selector's own memory where its
        layout allows (no second copy of C*K rows), so ``add`` and ``result`` cannot follow.
        """
        if self._done:
            raise RuntimeError("TopKPerClass.result() was already taken")
        self._done = True
        if self._arena is not None and self._key_kind == "i":
            return self._packed_result()
        if self._arena is not None:  # nothing was added
            self._unpack()
        state = (self.k, self._seg, self._n, self._bits, self._rows, self._nkey)
        total = int(np.minimum(self._n, self.k).sum())
        held = self._cap_max > 0
        laid = 1 + np.concatenate([[0], np.cumsum(np.where(held, self._cap, 0))[:-1]])
        if (self._seg[held] == laid[held]).all():  # segments in class order, as allocated
            # class ids and ranks go to the arena's free tail when it has room (it has with
            # the default slack): no new memory at all
            cls, rank = _id_columns(self._rows.reshape(-1)[total * self._rows.shape[1]:], total)
            kern.finish_inplace(*state, cls, rank)
            score, rows = self._bits[:total].view(np.float32), self._rows[:total]
        else:  # segments grown at the arena's end: gather
            order = kern.finish(*state)  # (n becomes min(n, k))
            cls = np.repeat(np.arange(self.num_classes, dtype=np.int32), self._n)
            starts = np.concatenate([[0], np.cumsum(self._n)[:-1]])
            rank = (np.arange(total) - starts[cls]).astype(np.int32)
            score, rows = _from_bits(self._bits[order]), self._rows[order]
        if self._key_kind == "U":
            key = _words_str(rows[:, :self._nkey])
        elif self._key_kind == "i":
            key = rows[:, 0]
            key ^= kern.SIGN  # in place: the arena's words become the int64 keys
            key = key.view(np.int64)
        else:
            key = np.array([], str)
        out = {"class_id": cls, "rank": rank, "score": score, "key": key}
        for j, name in enumerate(self.payload):
            names = np.array(list(self._names[name]) or [""], dtype=str)
            out[name] = names[rows[:, self._nkey + j].astype(np.int64)]
        return out

    def _packed_result(self) -> dict[str, np.ndarray]:
        total = int(np.minimum(self._n, self.k).sum())
        cls, rank = _id_columns(self._arena[total:], total)  # free once the rows moved up
        score = np.empty(total, np.float32)
        packed.finish(self.k, self._seg, self._n, self._arena, self._pthr, score.view(np.uint32),
                      cls, rank)
        return {"class_id": cls, "rank": rank, "score": score,
                "key": self._arena[:total].view(np.int64)}
