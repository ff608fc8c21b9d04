"""Compiled (numba) loops of ``topk.py`` for integer keys in ``[0, 2**32)`` without payload:
one 64-bit word per kept candidate.

    u = (0xFFFFFFFF - score pattern) << 32 | key

``u`` ascending is the manifest's order (score descending, then key ascending), so a
candidate enters when ``u < thr[c]`` -- one compare, no tie rule -- a compaction is a radix
select over plain integers, and the result is a radix sort of them. Against the general
layout of ``topk_kernels`` (a 4-byte score plus 8 bytes per key word in two arrays) the arena
is two thirds the size and every step is a compare of two integers: 1.75 s -> ~1.2 s at 10M
images x 1,000 classes (``benchmarks/RESULTS.md``).

State: the general kernels' ``k, seg, cap, n`` (same layout: row 0 is scratch, segments of
``k[c] + slack`` rows in class order); ``arena`` uint64 rows; ``thr`` uint64[C]: ``FULL``
while class c has not been compacted yet (everything enters), then the largest ``u`` it
keeps; 0 when ``k[c] == 0`` (nothing enters). ``unpack`` turns this into the general state
when a key outside the range arrives.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from semisup_core.teacher_student.topk_kernels import NEVER, OK, SIGN, _float_bits, _score_bits, class_ranks

KEY_RANGE = 4  # insert's status: candidate i's key does not fit in 32 bits
FULL = np.uint64(0xFFFFFFFFFFFFFFFF)  # thr before a class's first compaction
LOW = np.uint64(0xFFFFFFFF)
_DIGIT = 11  # radix sort digit width: 2,048 counters stay in L1


@njit(cache=True, inline="always")
def _pack(b, key):
    return (np.uint64(0xFFFFFFFF - b) << np.uint64(32)) | np.uint64(key)


@njit(cache=True)
def _kth_smallest(s, kk):
    """The kk-th smallest of uint64 ``s`` (1 <= kk <= len(s)): one histogram of 4,096
    buckets over the values' range, then a partition of the boundary bucket only."""
    lo, hi = s[0], s[0]
    for j in range(s.shape[0]):
        lo, hi = min(lo, s[j]), max(hi, s[j])
    shift = np.uint64(0)
    while ((hi - lo) >> shift) >= np.uint64(4096):
        shift += np.uint64(1)
    hist = np.zeros(4096, np.int64)
    for j in range(s.shape[0]):
        hist[np.int64((s[j] - lo) >> shift)] += 1
    need, d = kk, 0
    while hist[d] < need:
        need -= hist[d]
        d += 1
    bucket = np.empty(hist[d], np.uint64)
    q, dd = 0, np.uint64(d)
    for j in range(s.shape[0]):
        if (s[j] - lo) >> shift == dd:
            bucket[q] = s[j]
            q += 1
    return np.partition(bucket, need - 1)[need - 1]


@njit(cache=True)
def compact(c, k, seg, n, arena, thr):
    """Keep exactly the k[c] smallest rows of class c (any order); the largest of them
    becomes the threshold. Rows equal to it (the same key added twice) are values, not
    records: the missing copies are written back."""
    lo, m, kk = seg[c], n[c], k[c]
    if m <= kk or kk == 0:
        return
    s = arena[lo:lo + m]
    t = _kth_smallest(s, kk)
    w = 0
    for j in range(m):  # branch-free
        v = s[j]
        s[w] = v
        w += v < t
    while w < kk:
        s[w] = t
        w += 1
    n[c], thr[c] = kk, t


@njit(cache=True, nogil=True)
def insert(start, cls, raw, keys, k, seg, cap, n, arena, thr):
    """Add candidates ``start..`` (``check``-ed first). Returns ``(OK, len)`` or
    ``(KEY_RANGE, i)``: candidates before i were added, key i needs the general layout."""
    for i in range(start, cls.shape[0]):
        if np.uint64(keys[i]) >> np.uint64(32):  # negative or >= 2**32
            return KEY_RANGE, i
        c = cls[i]
        u = _pack(_score_bits(np.int64(raw[i])), keys[i])
        if u < thr[c]:
            arena[seg[c] + n[c]] = u
            n[c] += 1
            if n[c] == cap[c]:
                compact(c, k, seg, n, arena, thr)
    return OK, cls.shape[0]


@njit(cache=True)
def unpack(seg, n, k, arena, thr, bits, rows, gthr, trow):
    """This state as the general kernels' (``topk_kernels``): same segments, int64 keys
    stored sign-flipped."""
    for c in range(k.shape[0]):
        for j in range(seg[c], seg[c] + n[c]):
            bits[j] = LOW - (arena[j] >> np.uint64(32))
            rows[j, 0] = (arena[j] & LOW) ^ SIGN
        if k[c] == 0:
            gthr[c] = NEVER
        elif thr[c] == FULL:
            gthr[c] = -1
        else:
            gthr[c] = 0xFFFFFFFF - np.int64(thr[c] >> np.uint64(32))
            trow[c, 0] = (thr[c] & LOW) ^ SIGN


@njit(cache=True)
def _radix_sort(a, tmp):
    """Sort uint64 ``a`` ascending: LSD radix passes over only the bits in which the high
    (score) words differ -- a class's kept scores span a narrow range -- then each run of
    equal scores by key."""
    m = a.shape[0]
    lo, hi = a[0] >> np.uint64(32), a[0] >> np.uint64(32)
    for i in range(m):
        h = a[i] >> np.uint64(32)
        lo, hi = min(lo, h), max(hi, h)
    nbits, x = 0, lo ^ hi
    while x >> np.uint64(nbits):
        nbits += 1
    passes = (nbits + _DIGIT - 1) // _DIGIT
    width = (nbits + passes - 1) // passes if passes else 0
    mask = np.uint64((1 << width) - 1)
    count = np.empty((1 << width) + 1, np.int64)
    src, dst = a, tmp[:m]
    for p in range(passes):
        shift = np.uint64(32 + p * width)
        count[:] = 0
        for i in range(m):
            count[np.int64((src[i] >> shift) & mask) + 1] += 1
        for d in range(1, (1 << width) + 1):
            count[d] += count[d - 1]
        for i in range(m):
            d = np.int64((src[i] >> shift) & mask)
            dst[count[d]] = src[i]
            count[d] += 1
        src, dst = dst, src
    if passes % 2:
        a[:] = src
    i = 0
    while i < m:  # ties: rare for real scores, whole classes for constant ones
        j, h = i + 1, a[i] >> np.uint64(32)
        while j < m and a[j] >> np.uint64(32) == h:
            j += 1
        if j - i > 1:
            a[i:j].sort()
        i = j


@njit(cache=True)
def finish(k, seg, n, arena, thr, score_out, cls_out, rank_out):
    """The result in place: each class's best k[c] rows, sorted, move to the front of the
    arena (never past a later class's segment) and become int64 keys; their scores go to
    ``score_out`` (float32 bits), class ids and ranks are written last (they may live in the
    arena's freed tail). Returns the number of rows."""
    tmp = np.empty(max(1, k.max()), np.uint64)
    p = 0
    for c in range(k.shape[0]):
        compact(c, k, seg, n, arena, thr)
        m = n[c]
        if m == 0:
            continue
        s = arena[seg[c]:seg[c] + m]
        _radix_sort(s, tmp)
        for j in range(m):  # p <= seg[c]: forward copy
            score_out[p + j] = _float_bits(0xFFFFFFFF - np.int64(s[j] >> np.uint64(32)))
            arena[p + j] = s[j] & LOW
        p += m
    return class_ranks(n, cls_out, rank_out)
