"""Suffix array build, lockstep longest-match search and the weight formula, against brute force."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.attribution.suffix_array import build_suffix_array, find_occurrence, matches_with_positions, matching_statistics
from inference.attribution.weights import TOTAL_BPS, coverage, credit, maximal_spans, to_bps

small_texts = st.lists(st.integers(0, 3), min_size=0, max_size=60)


def brute_ms(text: list[int], query: list[int], k: int, cap: int) -> list[int]:
    out = []
    for i in range(len(query)):
        best = 0
        for j in range(len(text)):
            n = 0
            while i + n < len(query) and j + n < len(text) and n < cap and query[i + n] == text[j + n]:
                n += 1
            best = max(best, n)
        out.append(best if best >= k else 0)
    return out


@settings(max_examples=100, deadline=None)
@given(small_texts)
def test_suffix_array_sorts_all_suffixes(text):
    sa = build_suffix_array(np.array(text, dtype=np.uint32))
    assert sa.dtype == np.uint32
    assert list(sa) == sorted(range(len(text)), key=lambda i: text[i:])


def test_suffix_array_on_long_repeats():
    # A long periodic text needs many doubling rounds (longest repeat ~ n).
    text = np.array([1, 2, 3] * 200 + [1, 2], dtype=np.uint32)
    sa = build_suffix_array(text)
    ref = sorted(range(len(text)), key=lambda i: tuple(text[i:]))
    assert list(sa) == ref


@settings(max_examples=100, deadline=None)
@given(st.lists(small_texts.filter(bool), min_size=1, max_size=4), small_texts, st.integers(1, 4), st.integers(1, 12))
def test_matching_statistics_equal_brute_force(segments, query, k, cap):
    tokens = np.concatenate([np.array(s, dtype=np.uint32) for s in segments])
    sa = np.concatenate([build_suffix_array(np.array(s, dtype=np.uint32)) for s in segments])
    offsets = np.cumsum([0] + [len(s) for s in segments])
    ms = matching_statistics(tokens, sa, offsets, np.array(query, dtype=np.int64), k, cap)
    assert ms.shape == (len(segments), len(query))
    for c, seg in enumerate(segments):
        assert list(ms[c]) == brute_ms(seg, query, k, min(cap, max(len(query), 1)))


@settings(max_examples=100, deadline=None)
@given(st.lists(small_texts.filter(bool), min_size=1, max_size=4), small_texts, st.integers(1, 4), st.integers(1, 12))
def test_match_positions_point_at_the_match(segments, query, k, cap):
    """Every reported position is a real occurrence of the match, in its own segment."""
    tokens = np.concatenate([np.array(s, dtype=np.uint32) for s in segments])
    sa = np.concatenate([build_suffix_array(np.array(s, dtype=np.uint32)) for s in segments])
    offsets = np.cumsum([0] + [len(s) for s in segments])
    q = np.array(query, dtype=np.int64)
    ms, at = matches_with_positions(tokens, sa, offsets, q, k, cap)
    assert at.shape == ms.shape and at.dtype == np.uint32
    for c, seg in enumerate(segments):
        for i in range(len(query)):
            n, p = int(ms[c, i]), int(at[c, i])
            assert seg[p : p + n] == query[i : i + n] if n else p == 0
    assert np.array_equal(matches_with_positions(tokens, sa, offsets, q, k, cap)[1], at)  # deterministic


@settings(max_examples=100, deadline=None)
@given(small_texts.filter(bool), small_texts.filter(bool))
def test_find_occurrence_equals_brute_force(text, query):
    t = np.array(text, dtype=np.uint32)
    found = find_occurrence(t, build_suffix_array(t), np.array(query, dtype=np.int64))
    occurs = [j for j in range(len(text) - len(query) + 1) if text[j : j + len(query)] == query]
    assert (found is None) == (not occurs)
    assert found is None or found in occurs


def test_maximal_spans_drop_contained_runs():
    # ms of a query whose positions 2..9 copy an 8-token run: 8,7,6,... then a new run at 12.
    ms = np.array([0, 0, 8, 7, 6, 5, 4, 3, 2, 1, 0, 0, 9, 8, 7, 6, 5, 4, 3, 2, 1])
    ms = np.where(ms >= 3, ms, 0)
    assert maximal_spans(ms, 3) == [(2, 10), (12, 21)]


def test_credit_splits_ties_and_prefers_longer_spans():
    m = 10
    covs = {
        7: coverage([(0, 10)], m),  # one 10-token span: longest everywhere it covers
        3: coverage([(0, 4)], m),  # shorter span over the same tokens: loses
        5: coverage([(0, 10)], m),  # same 10-token span as 7: ties, splits evenly
    }
    c = credit(covs)
    assert c == {7: Fraction(5), 5: Fraction(5)}
    assert to_bps(c) == {5: 5000, 7: 5000}


def test_bps_sum_exactly_and_rounding_is_ordered_by_id():
    bps = to_bps({1: Fraction(1), 2: Fraction(1), 3: Fraction(1)})
    assert sum(bps.values()) == TOTAL_BPS
    assert bps == {1: 3334, 2: 3333, 3: 3333}  # the leftover bp goes to the smallest id
    assert to_bps({}) == {}
    assert to_bps({4: Fraction(0)}) == {}


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.integers(0, 2**64), st.builds(Fraction, st.integers(0, 1000), st.integers(1, 24)), max_size=12))
def test_bps_always_sum_to_total_or_empty(credits):
    bps = to_bps(credits)
    if any(v > 0 for v in credits.values()):
        assert sum(bps.values()) == TOTAL_BPS
        assert all(b > 0 for b in bps.values())
    else:
        assert bps == {}


def test_build_rejects_more_tokens_than_uint32_can_index():
    class Huge:
        shape = (2**32,)

    with pytest.raises(ValueError, match="uint32"):
        build_suffix_array(Huge())


def test_blocked_search_equals_unblocked(monkeypatch):
    import inference.attribution.suffix_array as sa_mod

    rng = np.random.default_rng(3)
    segments = [rng.integers(0, 3, n).astype(np.uint32) for n in (50, 400, 90)]
    tokens = np.concatenate(segments)
    sa = np.concatenate([build_suffix_array(s) for s in segments])
    offsets = np.cumsum([0] + [len(s) for s in segments])
    query = np.concatenate([segments[1][100:140], rng.integers(0, 3, 30)]).astype(np.int64)
    whole = matching_statistics(tokens, sa, offsets, query, 2, 64)
    monkeypatch.setattr(sa_mod, "_MAX_WINDOW_CELLS", 64 * 7)  # blocks of 7 rows
    assert np.array_equal(matching_statistics(tokens, sa, offsets, query, 2, 64), whole)
    assert whole[1, 0] >= 40  # the copied run is found (longer if the random tail continues it)


def test_copies_longer_than_the_cap_are_one_span():
    rng = np.random.default_rng(4)
    text = rng.integers(0, 50, 2000).astype(np.uint32)
    query = np.concatenate([[60, 61], text[100:400], [62]]).astype(np.int64)  # a 300-token copy
    ms = matching_statistics(text, build_suffix_array(text), np.array([0, 2000]), query, 8, 32)[0]
    assert ms.max() == 32
    assert maximal_spans(ms, 8, 32) == [(2, 302)]
    # Without the cap's chaining every capped position would look like a new run.
    assert len(maximal_spans(ms, 8)) > 200
