"""Suffix array over token ids and longest-match queries against it (infini-gram style).

Build: prefix doubling in numpy (Manber-Myers): after round r every suffix is ranked by its first
2^r tokens; one int64 sort per round, so O(n log n log L) for a longest repeat L. No Python loop
over tokens.

Query: for every position i of a query and every text (segment) c, the longest prefix of query[i:]
occurring in c ("matching statistics"). Texts are concatenated segments, each with its own suffix
array, and all (segment, position) pairs are binary-searched in lockstep, so the numpy call count
per query is O(log n) whatever the number of segments, and the text is never scanned. Two phases:
first the range of suffixes sharing the query's first k tokens (most positions drop out here),
then inside that range the insertion point of the longer window; the suffix sharing the longest
prefix with a string sits next to its insertion point in the sorted order.
"""

from __future__ import annotations

import numpy as np

_END = -1  # sentinel past the end of a text or query; sorts before every token id


def build_suffix_array(tokens: np.ndarray) -> np.ndarray:
    """Suffix array of `tokens` (n,) -> (n,) uint32: sa[r] = start of the r-th smallest suffix.

    A suffix that is a prefix of another sorts first (end of text < any token).
    """
    n = int(tokens.shape[0])
    if n == 0:
        return np.zeros(0, dtype=np.uint32)
    if n >= 2**32 - 1:
        raise ValueError(f"{n} tokens: a uint32 suffix array holds at most 2^32 - 2")
    _, rank = np.unique(tokens, return_inverse=True)  # (n,) dense rank of the first token
    rank = rank.astype(np.int64).reshape(-1)
    h = 1
    while True:
        # key(i) = (rank of tokens[i:i+h], rank of tokens[i+h:i+2h] + 1, or 0 past the end)
        second = np.zeros(n, dtype=np.int64)
        if h < n:
            second[: n - h] = rank[h:] + 1
        key = rank * (n + 1) + second  # < n^2 + n: fits int64 for n < 3e9
        del second
        sa = np.argsort(key)  # equal keys get equal ranks below, so stability is not needed
        ks = key[sa]
        del key
        bumps = np.empty(n, dtype=np.int64)
        bumps[0] = 0
        np.not_equal(ks[1:], ks[:-1], out=bumps[1:])
        del ks
        np.cumsum(bumps, out=bumps)  # rank of each sorted suffix's 2h-prefix
        rank = np.empty(n, dtype=np.int64)
        rank[sa] = bumps
        distinct = int(bumps[-1]) + 1
        del bumps
        if distinct == n:
            return sa.astype(np.uint32)
        h *= 2


def _windows(tokens: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
    """(r,) starts/ends into `tokens` -> (r, width) int64 windows, _END at and past each end."""
    idx = starts[:, None] + np.arange(width)[None, :]  # (r, width)
    win = tokens[np.minimum(idx, tokens.shape[0] - 1)].astype(np.int64)
    win[idx >= ends[:, None]] = _END
    return win


def _compare(s: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise lexicographic sign of s - q for (r, w) windows: -1, 0 or 1 per row."""
    diff = s != q  # (r, w)
    first = diff.argmax(axis=1)  # (r,)
    rows = np.arange(s.shape[0])
    sv, qv = s[rows, first], q[rows, first]
    return np.where(diff.any(axis=1), np.where(sv < qv, -1, 1), 0)


def _bound(tokens, sa, off, end, lo, hi, q, upper: bool) -> np.ndarray:
    """Per row, the first rank in [lo, hi) (segment-local) whose suffix window is >= q (lower
    bound) or > q (upper bound). off/end: each row's segment in the concatenated arrays."""
    width = q.shape[1]
    lo, hi = lo.copy(), hi.copy()
    while True:
        active = lo < hi
        if not active.any():
            return lo
        mid = (lo + hi) // 2
        pos = off + sa[np.minimum(off + mid, sa.shape[0] - 1)].astype(np.int64)  # global starts
        c = _compare(_windows(tokens, pos, end, width), q)
        go_right = active & ((c <= 0) if upper else (c < 0))
        lo = np.where(go_right, mid + 1, lo)
        hi = np.where(active & ~go_right, mid, hi)


def matching_statistics(
    tokens: np.ndarray,
    sa: np.ndarray,
    offsets: np.ndarray,
    query: np.ndarray,
    k: int,
    cap: int,
) -> np.ndarray:
    """Longest matches of a query in each segment.

    tokens (N,) uint32 and sa (N,) uint32: segments concatenated, segment c at
    offsets[c]:offsets[c+1], its sa values local to it. query (m,) int.
    Returns (C, m) int32: ms[c, i] = length of the longest prefix of query[i:] occurring in
    segment c, capped at `cap`; 0 where that length is below k.
    """
    return matches_with_positions(tokens, sa, offsets, query, k, cap)[0]


def matches_with_positions(
    tokens: np.ndarray,
    sa: np.ndarray,
    offsets: np.ndarray,
    query: np.ndarray,
    k: int,
    cap: int,
) -> tuple[np.ndarray, np.ndarray]:
    """`matching_statistics` plus where each match is: (ms, pos), both (C, m); pos[c, i] (uint32)
    is the segment-local token offset of an occurrence of query[i:i+ms[c, i]] in segment c (0
    where ms is 0). The occurrence is the suffix the search lands on: read from the suffix array,
    no extra search, and deterministic for the same segment and query."""
    offsets = np.asarray(offsets, dtype=np.int64)
    n_seg, m = offsets.shape[0] - 1, int(query.shape[0])
    out = np.zeros((n_seg, m), dtype=np.int32)
    where = np.zeros((n_seg, m), dtype=np.uint32)
    width = min(cap, m)
    if n_seg == 0 or m < k or width < k:
        return out, where
    q_all = _windows(query.astype(np.int64), np.arange(m), np.full(m, m), width)  # (m, width)
    seg_all = np.repeat(np.arange(n_seg), m)  # (r,) rows = (segment, position)
    posn_all = np.tile(np.arange(m), n_seg)  # (r,)
    # Rows in blocks: bounds the (rows, width) temporaries for long outputs x many segments.
    block = max(1, _MAX_WINDOW_CELLS // width)
    for b in range(0, seg_all.shape[0], block):
        seg, posn = seg_all[b : b + block], posn_all[b : b + block]
        ms, at = _longest(tokens, sa, offsets[seg], offsets[seg + 1], q_all, posn, k)
        out[seg, posn] = ms
        where[seg, posn] = at
    return out, where


_MAX_WINDOW_CELLS = 1 << 21  # rows x width per block: ~16 MiB per int64 temporary


def _longest(tokens, sa, off, end, q_all, posn, k) -> tuple[np.ndarray, np.ndarray]:
    """Matching statistics for rows (segment bounds off/end, query position posn), 0 below k, and
    the segment-local start of the matching suffix (0 where none)."""
    m, width = q_all.shape
    # Phase 1: suffixes whose first k tokens equal query[i:i+k]; a window running past the end
    # of the query (fewer than k tokens left) cannot match k tokens.
    qk = q_all[posn, :k]  # (r, k)
    full = posn + k <= m
    lo0 = np.zeros_like(off)
    hi0 = np.where(full, end - off, 0)
    lo_k = _bound(tokens, sa, off, end, lo0, hi0, qk, upper=False)
    hi_k = _bound(tokens, sa, off, end, lo_k, hi0, qk, upper=True)
    result = np.zeros(posn.shape[0], dtype=np.int32)
    at = np.zeros(posn.shape[0], dtype=np.uint32)
    hit = np.nonzero(hi_k > lo_k)[0]
    if hit.size == 0:
        return result, at
    posn, off, end, lo_k, hi_k = posn[hit], off[hit], end[hit], lo_k[hit], hi_k[hit]
    q = q_all[posn]  # (h, width)
    # Phase 2: insertion point of the full window inside that range; best neighbour wins.
    lb = _bound(tokens, sa, off, end, lo_k, hi_k, q, upper=False)
    best = np.zeros(hit.size, dtype=np.int64)
    best_at = np.zeros(hit.size, dtype=np.int64)
    for cand, ok in ((lb, lb < hi_k), (lb - 1, lb - 1 >= lo_k)):
        local = sa[np.clip(off + cand, 0, sa.shape[0] - 1)].astype(np.int64)
        eq = (_windows(tokens, off + local, end, width) == q) & (q != _END)
        lcp = np.where(ok, np.where(eq.all(axis=1), width, eq.argmin(axis=1)), 0)
        better = lcp > best  # a tie keeps the first candidate (lb): deterministic
        best, best_at = np.where(better, lcp, best), np.where(better, local, best_at)
    keep = best >= k
    result[hit] = np.where(keep, best, 0)
    at[hit] = np.where(keep, best_at, 0)
    return result, at


def find_occurrence(tokens: np.ndarray, sa: np.ndarray, query: np.ndarray) -> int | None:
    """Start of an occurrence of all of `query` (w,) in one text's tokens (n,) / sa (n,), else None:
    the lowest-ranked suffix starting with it. One binary search of width w."""
    w, n = int(query.shape[0]), int(tokens.shape[0])
    if w == 0 or w > n:
        return None
    q = np.asarray(query, dtype=np.int64).reshape(1, w)
    zero, size = np.zeros(1, dtype=np.int64), np.full(1, n, dtype=np.int64)
    lo = _bound(tokens, sa, zero, size, zero, size, q, upper=False)
    if lo[0] >= n:
        return None
    start = int(sa[lo[0]])
    return start if np.array_equal(tokens[start : start + w].astype(np.int64), q[0]) else None
