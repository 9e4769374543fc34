"""Matched spans -> weights per contribution, in basis points. The formula (deterministic):

1. For each contribution c, its spans are the maximal runs output[i:i+L] occurring in c with
   L >= k (L from the suffix array search, measured up to `max_span_tokens`; longer copies are
   chains of overlapping capped matches, see `maximal_spans`).
2. Each output token t is covered, for each c, by the longest span of c containing it: len_c(t)
   (0 if none). Token t is credited to the contributions with the largest len_c(t) > 0; when
   several tie, each gets 1/(number tied). Uncovered tokens credit nobody.
3. weight_c = credit_c / total credit * 10,000, rounded by largest remainder: every contribution
   gets floor(weight_c), then the leftover bps go one each to the largest fractional parts,
   ties broken by the smaller contribution id. The result sums to exactly 10,000, or is empty
   when no token is covered. Exact rational arithmetic: no float in the result.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

TOTAL_BPS = 10_000


def maximal_spans(ms: np.ndarray, k: int, cap: int | None = None) -> list[tuple[int, int]]:
    """Matching statistics (m,) -> [(start, end)] of maximal matched runs of length >= k.

    The run at i is inside the run at i-1 exactly when ms[i] == ms[i-1] - 1 (it cannot be
    shorter), so a run starts where ms[i] >= ms[i-1] (or i == 0). Matches are measured up to
    `cap` tokens: when ms[i-1] and ms[i] both reach the cap, the run at i continues the one at
    i-1 (a copy longer than the cap is one span, a chain of overlapping verbatim matches).
    """
    m = ms.shape[0]
    if m == 0:
        return []
    prev = np.concatenate([[0], ms[:-1]])
    cont = (prev >= cap) & (ms >= cap) if cap is not None else np.zeros(m, dtype=bool)
    starts = np.nonzero((ms >= k) & (ms >= prev) & ~cont)[0]
    runs = []
    for s in starts:
        end, j = int(s + ms[s]), int(s) + 1
        while j < m and cont[j]:
            end = max(end, int(j + ms[j]))
            j += 1
        runs.append((int(s), end))
    return runs


def coverage(spans: list[tuple[int, int]], m: int) -> np.ndarray:
    """(m,) int32: length of the longest span covering each output position (0 if none)."""
    cov = np.zeros(m, dtype=np.int32)
    for s, e in spans:
        np.maximum(cov[s:e], e - s, out=cov[s:e])
    return cov


def credit(covs: dict[int, np.ndarray]) -> dict[int, Fraction]:
    """{contribution id: coverage (m,)} -> {id: credited tokens} (only ids with credit > 0)."""
    if not covs:
        return {}
    ids = sorted(covs)
    mat = np.stack([covs[i] for i in ids])  # (c, m)
    best = mat.max(axis=0)  # (m,)
    winners = (mat == best[None, :]) & (best[None, :] > 0)  # (c, m)
    n_win = winners.sum(axis=0)  # (m,)
    out: dict[int, Fraction] = {}
    for row, cid in enumerate(ids):
        cols = np.nonzero(winners[row])[0]
        if cols.size:
            # Sum of 1/n_win over this contribution's won tokens, exactly: group by n_win.
            counts = np.bincount(n_win[cols])
            out[cid] = sum((Fraction(int(c), d) for d, c in enumerate(counts) if c), Fraction(0))
    return out


def to_bps(credits: dict[int, Fraction]) -> dict[int, int]:
    """Largest-remainder rounding of credits to bps summing to 10,000 (empty stays empty)."""
    credits = {i: c for i, c in credits.items() if c > 0}
    total = sum(credits.values(), Fraction(0))
    if total == 0:
        return {}
    exact = {i: c * TOTAL_BPS / total for i, c in credits.items()}
    bps = {i: int(v) for i, v in exact.items()}  # floor (values are positive)
    left = TOTAL_BPS - sum(bps.values())
    order = sorted(exact, key=lambda i: (-(exact[i] - bps[i]), i))
    for i in order[:left]:
        bps[i] += 1
    return {i: b for i, b in sorted(bps.items()) if b > 0}
