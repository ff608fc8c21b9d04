"""Compiled (numba) loops of the streaming per-class top-K in ``topk.py``.

State, shared by all kernels (one row of an arena per kept candidate):
    bits  uint32[A]     order-preserving pattern of the score (``topk.order_bits``)
    rows  uint64[A, R]  the key as ``nkey`` big-endian words (order of the words = order of the
                        keys), then payload codes (carried, never compared)
    seg   int64[C]      start of class c's segment in the arena; ``cap[c]`` rows, ``n[c]`` used;
                        ``n[c] < cap[c]`` between calls: a kept candidate always has a free row
    thr   int64[C]      -1 while class c holds fewer than k[c]; then the score pattern of the
                        worst one it keeps, ``trow[c]`` that one's key; NEVER when k[c] == 0
Row 0 of the arena is scratch: the one-row segment of classes with k[c] == 0 (never written:
nothing beats NEVER) and, when segments grow, of classes that have none yet (their first
kept candidate lands there and moves at once into a segment of their own).
A candidate ``a`` beats ``b`` when its score is higher, or equal with a smaller key (the total
order of the manifest: score descending, key ascending).
"""

from __future__ import annotations

import numpy as np
from numba import njit

SIGN = np.uint64(1 << 63)  # int64 keys -> uint64 words that sort alike: flip the sign bit
OK, BAD_CLASS, NAN, NO_ROOM = 0, 1, 2, 3  # what the kernels return
NEVER = 1 << 40  # thr of a class with k == 0: above every score pattern


@njit(cache=True, inline="always")
def _score_bits(u):
    """float32 bit pattern (as int64) -> order-preserving uint32 pattern (as int64); -1 = NaN."""
    if (u & 0x7FFFFFFF) > 0x7F800000:
        return -1
    if u == 0x80000000:  # -0.0 == 0.0
        u = 0
    return 0xFFFFFFFF - u if u >= 0x80000000 else u + 0x80000000


@njit(cache=True, inline="always")
def _float_bits(b):
    """The inverse of ``_score_bits``: order pattern (as int64) -> float32 bit pattern."""
    return b - 0x80000000 if b >= 0x80000000 else 0xFFFFFFFF - b


@njit(cache=True)
def to_order(raw, out):
    """``out[i] = _score_bits(raw[i])``; returns the index of the first NaN, or -1."""
    for i in range(raw.shape[0]):
        b = _score_bits(np.int64(raw[i]))
        if b < 0:
            return i
        out[i] = b
    return -1


@njit(cache=True)
def from_order(bits, out):
    """``out[i]``: the float32 bit pattern of order pattern ``bits[i]``."""
    for i in range(bits.shape[0]):
        out[i] = _float_bits(np.int64(bits[i]))


@njit(cache=True, inline="always")
def _key_below_threshold(rows, i, flip, nkey, c, trow):
    """Candidate i's key is smaller than that of class c's worst kept (their scores tie)."""
    for j in range(nkey):
        w = rows[i, j] ^ SIGN if flip and j == 0 else rows[i, j]
        if w != trow[c, j]:
            return w < trow[c, j]
    return False  # the same key again


@njit(cache=True)
def _key_order(rows, idx, nkey):
    """Permutation sorting ``rows[idx]`` by key (lexicographic over the words; stable)."""
    order = np.arange(idx.shape[0])
    col = np.empty(idx.shape[0], np.uint64)
    for j in range(nkey - 1, -1, -1):  # least significant word first, stable sorts
        for m in range(order.shape[0]):
            col[m] = rows[idx[order[m]], j]
        order = order[np.argsort(col, kind="mergesort")]
    return order


@njit(cache=True)
def _kth_largest(s, kk):
    """The kk-th largest ``t`` of uint32 ``s`` (1 <= kk <= len(s)), how many entries are
    above it, and the positions of those equal to it: a radix select -- one histogram of
    2,048 buckets over the values' range, then a partition of the boundary bucket only (a
    class's held scores are all above its last threshold: a narrow range)."""
    lo, hi = np.int64(s[0]), np.int64(s[0])
    for j in range(s.shape[0]):
        v = np.int64(s[j])
        lo, hi = min(lo, v), max(hi, v)
    shift = 0
    while ((hi - lo) >> shift) >= 2048:
        shift += 1
    hist = np.zeros(2048, np.int64)
    for j in range(s.shape[0]):
        hist[(np.int64(s[j]) - lo) >> shift] += 1
    need, d, above = kk, 2047, 0
    while hist[d] < need:  # the bucket holding the kk-th largest, from the top
        need -= hist[d]
        above += hist[d]
        d -= 1
    pos = np.empty(hist[d], np.int64)
    q = 0
    for j in range(s.shape[0]):
        if (np.int64(s[j]) - lo) >> shift == d:
            pos[q] = j
            q += 1
    t = np.partition(s[pos], q - need)[q - need]
    tied = 0
    for j in range(q):
        above += s[pos[j]] > t
        if s[pos[j]] == t:
            pos[tied] = pos[j]
            tied += 1
    return t, above, pos[:tied]


@njit(cache=True)
def compact(c, k, seg, n, bits, rows, nkey, thr, trow):
    """Keep exactly the best k[c] candidates of class c (in place, any order); the worst of
    them becomes the class's threshold. Linear time: a radix select finds the k-th score;
    ties at it go by key."""
    lo, m, kk = seg[c], n[c], k[c]
    if m < kk or kk == 0:
        return
    s = bits[lo:lo + m]
    t, above, ties = _kth_largest(s, kk)
    need = kk - above  # >= 1 of the tied stay: the threshold itself
    all_ties = ties.shape[0] == need
    if not all_ties:  # rare: the key decides which ties stay (the smallest)
        ties = np.sort(ties[_key_order(rows, ties + lo, nkey)[:need]])  # in position order
    worst = ties[0]
    for q in range(1, need):
        if _key_greater(rows, lo + ties[q], lo + worst, nkey):
            worst = ties[q]
    for j in range(nkey):
        trow[c, j] = rows[lo + worst, j]
    thr[c] = t
    R = rows.shape[1]
    w = lo
    if all_ties:  # every s >= t stays: a branch-free pass
        for j in range(lo, lo + m):
            b = bits[j]
            bits[w] = b
            for r in range(R):
                rows[w, r] = rows[j, r]
            w += b >= t
    else:
        q = 0  # ties[] is in position order: walk it alongside
        for j in range(m):
            keep = s[j] > t
            if not keep and q < need and ties[q] == j:
                keep, q = True, q + 1
            if keep:
                bits[w] = bits[lo + j]
                for r in range(R):
                    rows[w, r] = rows[lo + j, r]
                w += 1
    n[c] = kk


@njit(cache=True, inline="always")
def _key_greater(rows, a, b, nkey):
    for j in range(nkey):
        if rows[a, j] != rows[b, j]:
            return rows[a, j] > rows[b, j]
    return False


@njit(cache=True)
def _any_bad(cls, raw, num_classes):
    """A class id out of range or a NaN score anywhere: a branch-free pass (vectorised)."""
    bad = False
    for i in range(cls.shape[0]):  # a negative id is a large uint32
        bad |= (np.uint32(cls[i]) >= np.uint32(num_classes)) | ((raw[i] & 0x7FFFFFFF) > 0x7F800000)
    return bad


@njit(cache=True, nogil=True)
def check(cls, raw, num_classes):
    """``(BAD_CLASS | NAN, i)`` for the first candidate with a class id out of range or a NaN
    score, else ``(OK, 0)``: a block is refused whole, before any of it is added."""
    if not _any_bad(cls, raw, num_classes):
        return OK, 0
    for i in range(cls.shape[0]):
        if cls[i] < 0 or cls[i] >= num_classes:
            return BAD_CLASS, i
        if (raw[i] & 0x7FFFFFFF) > 0x7F800000:
            return NAN, i
    return OK, 0


@njit(cache=True)
def _make_room(c, k, seg, cap, n, bits, rows, nkey, thr, trow, used, cap_max):
    """Give class c (n[c] == cap[c]) a free row: grow its segment (a fresh one at the arena's
    end, up to cap_max[c]) or compact it to k[c]. False: the arena is full, grow it first."""
    if cap[c] < cap_max[c]:
        new = min(cap_max[c], max(2 * cap[c], 1024))
        if used[0] + new > bits.shape[0]:
            return False
        lo, dst, m = seg[c], used[0], n[c]
        bits[dst:dst + m] = bits[lo:lo + m]
        rows[dst:dst + m, :] = rows[lo:lo + m, :]
        seg[c], cap[c] = dst, new
        used[0] += new
    else:
        compact(c, k, seg, n, bits, rows, nkey, thr, trow)
    return True


@njit(cache=True, nogil=True)
def insert(start, cls, raw, rows, flip, nkey, k, seg, cap, n, bits, arena_rows, thr, trow,
           used, cap_max):
    """Add candidates ``start..`` (class ``cls[i]``, float32 pattern ``raw[i]``, key/payload
    ``rows[i]``; ``flip``: word 0 is an int64 to flip; checked by ``check`` first). Returns
    ``(OK, len)``, or ``(NO_ROOM, i)``: the arena must grow before candidates i.. are added."""
    R = rows.shape[1]
    for c in range(k.shape[0]):
        if n[c] == cap[c] and k[c] > 0:
            if not _make_room(c, k, seg, cap, n, bits, arena_rows, nkey, thr, trow, used, cap_max):
                return NO_ROOM, start
    for i in range(start, cls.shape[0]):
        c = cls[i]
        b = _score_bits(np.int64(raw[i]))
        t = thr[c]
        keep = b > t
        if b == t:  # rare: the key decides
            keep = _key_below_threshold(rows, i, flip, nkey, c, trow)
        if not keep:
            continue
        p = seg[c] + n[c]  # a free row
        bits[p] = b
        arena_rows[p, 0] = rows[i, 0] ^ SIGN if flip else rows[i, 0]
        for r in range(1, R):
            arena_rows[p, r] = rows[i, r]
        n[c] += 1
        if n[c] == cap[c]:
            if not _make_room(c, k, seg, cap, n, bits, arena_rows, nkey, thr, trow, used, cap_max):
                return NO_ROOM, i + 1
    return OK, cls.shape[0]


@njit(cache=True, nogil=True)
def prefilter(cls, raw, thr):
    """Indices of the candidates that may enter (score pattern >= their class's threshold:
    ties are settled by key in ``insert``); blocks are ``check``-ed first."""
    out = np.empty(cls.shape[0], np.int64)
    m = 0
    for i in range(cls.shape[0]):
        out[m] = i
        m += _score_bits(np.int64(raw[i])) >= thr[cls[i]]
    return out[:m]


@njit(cache=True)
def _radix_argsort_desc(s):
    """Stable permutation sorting uint32 ``s`` descending: LSD radix sort of
    ``(~s) << 32 | position`` packed in one uint64, over only the bits in which the entries
    differ (a class's kept scores span a narrow range), in digits of at most 13 bits."""
    m = s.shape[0]
    a, tmp = np.empty(m, np.uint64), np.empty(m, np.uint64)
    lo, hi = np.int64(0xFFFFFFFF), np.int64(0)
    for i in range(m):
        v = 0xFFFFFFFF - np.int64(s[i])
        lo, hi = min(lo, v), max(hi, v)
        a[i] = np.uint64((v << 32) | i)
    nbits = 0
    while ((lo ^ hi) >> nbits) > 0:
        nbits += 1
    passes = (nbits + 12) // 13
    width = (nbits + passes - 1) // passes if passes else 0
    mask = (1 << width) - 1
    count = np.empty((1 << width) + 1, np.int64)
    for p in range(passes):
        shift = np.uint64(32 + p * width)
        count[:] = 0
        for i in range(m):
            count[(np.int64(a[i] >> shift) & mask) + 1] += 1
        for d in range(1, mask + 2):
            count[d] += count[d - 1]
        for i in range(m):
            d = np.int64(a[i] >> shift) & mask
            tmp[count[d]] = a[i]
            count[d] += 1
        a, tmp = tmp, a
    idx = np.empty(m, np.int64)
    for i in range(m):
        idx[i] = np.int64(a[i] & np.uint64(0xFFFFFFFF))
    return idx


@njit(cache=True)
def _class_order(bits, rows, lo, m, kk, nkey):
    """Arena indices of the best ``min(m, kk)`` of class rows ``lo..lo+m``, by score
    descending, then key ascending (the whole segment is sorted: cheaper than compacting
    it first)."""
    take = min(m, kk)
    if take == 0:
        return np.empty(0, np.int64)
    idx = _radix_argsort_desc(bits[lo:lo + m]) + lo
    a = 0
    while a < take:  # runs of equal scores that reach into the result: order by key
        b = a + 1
        while b < m and bits[idx[b]] == bits[idx[a]]:
            b += 1
        if b - a > 1:
            run = idx[a:b].copy()
            idx[a:b] = run[_key_order(rows, run, nkey)]
        a = b
    return idx[:take]


@njit(cache=True)
def finish(k, seg, n, bits, rows, nkey):
    """The arena indices of the result: the best k[c] rows of every class, by class, then
    score descending, then key ascending."""
    out = np.empty(np.minimum(n, k).sum(), np.int64)
    p = 0
    for c in range(k.shape[0]):
        idx = _class_order(bits, rows, seg[c], n[c], k[c], nkey)
        out[p:p + idx.shape[0]] = idx
        p += idx.shape[0]
        n[c] = idx.shape[0]
    return out


@njit(cache=True)
def finish_inplace(k, seg, n, bits, rows, nkey, cls_out, rank_out):
    """``finish`` without a copy, for segments laid out in class order: each class's sorted
    rows move to the front of the arena (never past a later class's segment), and the
    score patterns turn back into float32 bits. The arena is the result afterwards; the
    class ids and ranks are written last (they may live in the arena's freed tail)."""
    p = 0
    for c in range(k.shape[0]):
        idx = _class_order(bits, rows, seg[c], n[c], k[c], nkey)
        m = n[c] = idx.shape[0]
        sb, sr = bits[idx], rows[idx]  # this class's rows, sorted (a copy: p <= seg[c])
        for j in range(m):
            bits[p + j] = _float_bits(np.int64(sb[j]))
        rows[p:p + m, :] = sr
        p += m
    return class_ranks(n, cls_out, rank_out)


@njit(cache=True)
def class_ranks(n, cls_out, rank_out):
    """The result's class id and rank columns for ``n[c]`` rows per class, in class order;
    returns the number of rows."""
    p = 0
    for c in range(n.shape[0]):
        for j in range(n[c]):
            cls_out[p + j] = c
            rank_out[p + j] = j
        p += n[c]
    return p


@njit(cache=True, nogil=True)
def group_by_range(ids, starts):
    """Which range each id lies in and a stable order that groups the ids by range.

    ``starts`` (ascending) begins range r at ``starts[r]``; ``where[i]`` is the last r with
    ``starts[r] <= ids[i]`` (-1 below the first). ``order`` lists the ids of range -1, then
    0, 1, ... each in input order (a counting sort); ``bounds[r + 1]:bounds[r + 2]`` is range
    r's part of it. Used by select to read each shard's table once for its selected ids."""
    n, m = ids.shape[0], starts.shape[0]
    where = np.empty(n, np.int64)
    count = np.zeros(m + 2, np.int64)
    if n == 0 or m == 0:
        where[:] = -1
        count[1] = n
    else:
        # a table of the range at every 2**shift-th id (2**shift <= the narrowest range), so an
        # id is at most one range past its bucket's: no binary search (mispredicted branches)
        gap = starts[m - 1] - starts[0] + 1
        for r in range(m - 1):
            gap = min(gap, starts[r + 1] - starts[r])
        shift = 0
        while (2 << shift) <= gap:
            shift += 1
        top = max(ids.max(), starts[m - 1])
        lo_id = starts[0]
        size = ((top - lo_id) >> shift) + 1
        table = np.empty(size, np.int64)
        r = 0
        for b in range(size):
            x = lo_id + (b << shift)
            while r + 1 < m and starts[r + 1] <= x:
                r += 1
            table[b] = r
        for i in range(n):
            x = ids[i]
            if x < lo_id:
                r = -1
            else:
                r = table[(x - lo_id) >> shift]
                while r + 1 < m and starts[r + 1] <= x:
                    r += 1
            where[i] = r
            count[r + 2] += 1
    bounds = np.cumsum(count)
    fill = bounds[:-1].copy()
    order = np.empty(n, np.int64)
    for i in range(n):
        r = where[i] + 1
        order[fill[r]] = i
        fill[r] += 1
    return where, order, bounds
