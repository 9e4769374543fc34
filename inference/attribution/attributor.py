"""Per-adapter attribution: which accepted contributions an answer's tokens came from.

The node keeps one `Attributor` per adapter, over the accepted contributions of the adapter's
datasets: `add()` when a contribution is accepted (its index is built once, then loaded from the
store), `remove()` when it is rejected. `attribute(token_ids)` is pure CPU numpy and holds no
lock while it works, so the node runs it in a worker thread after generation, off the
response's critical path. Weights follow `inference.attribution.weights` (documented there).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from inference.attribution.errors import UnknownContributionError
from inference.attribution.index import ContributionIndex
from inference.attribution.store import IndexStore
from inference.attribution.suffix_array import find_occurrence, matches_with_positions
from inference.attribution.text import read_contribution
from inference.attribution.weights import coverage, credit, maximal_spans, to_bps


@dataclass(frozen=True)
class AttributionConfig:
    min_span_tokens: int = 8
    """k: the shortest output run that counts as drawn from a contribution. Shorter runs are
    common phrases, not evidence."""
    max_span_tokens: int = 128
    """Matches are measured up to this many tokens (bounds query cost at O(m * cap * log n));
    a longer copy is reported as one span chained from overlapping capped matches."""
    max_output_tokens: int = 8192
    """Longer outputs are refused (ValueError) rather than silently truncated."""
    max_attributed: int = 256
    """At most this many contributions get weight (those with the most credit, ties to the
    smaller id); keeps the receipt's attribution arrays bounded (chain.eip712 caps them)."""
    max_spans: int = 64
    """At most this many spans are reported (longest first, then by position and id)."""

    def __post_init__(self):
        if not 1 <= self.min_span_tokens <= self.max_span_tokens:
            raise ValueError("need 1 <= min_span_tokens <= max_span_tokens")
        if self.max_attributed < 1 or self.max_spans < 0 or self.max_output_tokens < 1:
            raise ValueError("max_attributed >= 1, max_spans >= 0, max_output_tokens >= 1")


@dataclass(frozen=True)
class Span:
    """output_token_ids[start:end] occurs verbatim in the contribution, at token offset
    `contribution_start` of the contribution's token ids as `inference.attribution.text.tokenize`
    gives them (what the index holds; an auditor re-tokenizes the CID-verified content to check it)."""

    contribution_id: int
    dataset_id: int
    start: int
    end: int
    text: str | None = None
    contribution_start: int | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "contributionId": self.contribution_id,
            "datasetId": self.dataset_id,
            "start": self.start,
            "end": self.end,
        }
        if self.contribution_start is not None:
            d["contributionStart"] = self.contribution_start
        if self.text is not None:
            d["text"] = self.text
        return d


@dataclass(frozen=True)
class Attribution:
    """weights_bps: contribution id -> bps (sum 10,000, or empty when nothing matched);
    dataset_weights: dataset id -> bps (same total); spans ordered by (start, contribution id)."""

    weights_bps: dict[int, int]
    spans: list[Span]
    dataset_weights: dict[int, int]
    covered_tokens: int = 0
    output_tokens: int = 0

    @property
    def empty(self) -> bool:
        return not self.weights_bps

    def ids_and_weights(self) -> tuple[list[int], list[int]]:
        """Ascending ids and their bps: the two arrays `attributionHash` encodes."""
        ids = sorted(self.weights_bps)
        return ids, [self.weights_bps[i] for i in ids]

    def to_json(self) -> dict[str, Any]:
        """The receipt JSON fields (docs/interfaces.md, "attribution"). JSON keys are strings."""
        return {
            "attribution": {str(i): self.weights_bps[i] for i in sorted(self.weights_bps)},
            "datasetAttribution": {str(i): self.dataset_weights[i] for i in sorted(self.dataset_weights)},
            "spans": [s.to_json() for s in self.spans],
        }


EMPTY = Attribution({}, [], {})


@dataclass(frozen=True)
class _Member:
    contribution_id: int
    dataset_id: int
    index: ContributionIndex


@dataclass(frozen=True)
class _Corpus:
    """Immutable snapshot of the members, their indexes concatenated so that one lockstep search
    covers all of them: tokens (N,) uint32, sa (N,) uint32, offsets (C+1,) int64."""

    ids: tuple[int, ...]
    dataset_ids: tuple[int, ...]
    tokens: np.ndarray
    sa: np.ndarray
    offsets: np.ndarray


def _consolidate(members: dict[int, _Member]) -> _Corpus:
    """Concatenate the members' arrays, then point each member's index at its slice of the new
    buffers, so the old per-contribution arrays are freed and memory stays 8 bytes per token
    (2x only while copying)."""
    ids = tuple(sorted(members))
    idxs = [members[i].index for i in ids]
    sizes = [ix.n_tokens for ix in idxs]
    offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
    empty = np.zeros(0, dtype=np.uint32)
    tokens = np.concatenate([ix.tokens for ix in idxs]) if idxs else empty
    sa = np.concatenate([ix.sa for ix in idxs]) if idxs else empty
    for ix, a, b in zip(idxs, offsets[:-1], offsets[1:], strict=True):
        ix.tokens, ix.sa = tokens[a:b], sa[a:b]
    return _Corpus(ids, tuple(members[i].dataset_id for i in ids), tokens, sa, offsets)


@dataclass
class Attributor:
    """Attribution for one adapter over the accepted contributions of its datasets."""

    store: IndexStore
    config: AttributionConfig = field(default_factory=AttributionConfig)
    _members: dict[int, _Member] = field(default_factory=dict, repr=False)
    _corpus: _Corpus | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, contribution_id: int, dataset_id: int, cid: str, data: bytes) -> ContributionIndex:
        """Index an accepted contribution (bytes already verified against `cid`). Re-adding the
        same id replaces it. Raises ContributionError subclasses for unusable content."""
        if contribution_id < 0 or dataset_id < 0:
            raise ValueError("contribution and dataset ids are uint256: non-negative")
        idx = self.store.get_or_build(cid, data)  # the slow part, outside the lock
        with self._lock:
            self._members[contribution_id] = _Member(contribution_id, dataset_id, idx)
            self._corpus = None  # rebuilt on the next attribute()/prepare()
        return idx

    def add_file(self, contribution_id: int, dataset_id: int, cid: str, path: Path) -> ContributionIndex:
        """`add` from a verified file, refusing an oversized one before reading all of it."""
        return self.add(contribution_id, dataset_id, cid, read_contribution(Path(path), cid, self.store.max_bytes))

    def remove(self, contribution_id: int) -> None:
        """Drop a contribution (rejected after acceptance): it earns nothing from now on."""
        with self._lock:
            if contribution_id not in self._members:
                raise UnknownContributionError(contribution_id)
            del self._members[contribution_id]
            self._corpus = None

    def contribution_ids(self) -> list[int]:
        with self._lock:
            return sorted(self._members)

    def prepare(self) -> None:
        """Consolidate pending adds/removes now (else the next attribute() does it)."""
        self._snapshot()

    def _snapshot(self) -> _Corpus:
        with self._lock:
            if self._corpus is None:
                self._corpus = _consolidate(self._members)
            return self._corpus

    @property
    def corpus_tokens(self) -> int:
        return int(self._snapshot().offsets[-1])

    @property
    def index_bytes(self) -> int:
        """Resident bytes of all index arrays (8 per corpus token)."""
        c = self._snapshot()
        return c.tokens.nbytes + c.sa.nbytes

    def attribute(self, output_token_ids: Sequence[int] | np.ndarray, tokenizer=None, *, with_text: bool = True) -> Attribution:
        """Weights and spans for one generated answer's token ids (completion only).

        Each span carries its decoded text (the store's tokenizer unless `tokenizer` is given;
        none with `with_text=False`). Deterministic: the same members and the same tokens always
        give the same result. Thread-safe; the search runs without the lock.
        """
        tokenizer = (tokenizer or self.store.tokenizer) if with_text else None
        q = np.asarray(output_token_ids, dtype=np.int64).reshape(-1)  # (m,)
        m = int(q.shape[0])
        if m > self.config.max_output_tokens:
            raise ValueError(f"{m} output tokens is over max_output_tokens={self.config.max_output_tokens}")
        if q.size and (q.min() < 0 or q.max() >= 2**32 - 1):
            raise ValueError("token ids must be in [0, 2^32 - 1)")
        corpus = self._snapshot()
        k = self.config.min_span_tokens
        cap = self.config.max_span_tokens
        ms, at = matches_with_positions(corpus.tokens, corpus.sa, corpus.offsets, q, k, cap)  # (C, m) each
        ds_of = dict(zip(corpus.ids, corpus.dataset_ids, strict=True))
        covs: dict[int, np.ndarray] = {}
        runs_of: dict[int, list[tuple[int, int]]] = {}
        for row in np.nonzero(ms.any(axis=1))[0]:
            cid = corpus.ids[row]
            runs_of[cid] = maximal_spans(ms[row], k, self.config.max_span_tokens)
            covs[cid] = coverage(runs_of[cid], m)
        credits = credit(covs)
        top = sorted(credits, key=lambda i: (-credits[i], i))[: self.config.max_attributed]
        weights = to_bps({i: credits[i] for i in top})
        # Spans of the weighted contributions only, longest first, then re-ordered by position.
        cand = sorted(((s, e, i) for i in weights for s, e in runs_of[i]), key=lambda r: (r[0] - r[1], r[0], r[2]))
        row_of = {cid: row for row, cid in enumerate(corpus.ids)}
        spans = [
            Span(
                i,
                ds_of[i],
                s,
                e,
                tokenizer.decode(q[s:e].tolist()) if tokenizer is not None else None,
                _position(corpus, row_of[i], at, q, s, e, cap),
            )
            for s, e, i in cand[: self.config.max_spans]
        ]
        datasets: dict[int, int] = {}
        for cid, b in weights.items():
            datasets[ds_of[cid]] = datasets.get(ds_of[cid], 0) + b
        covered = int((np.stack(list(covs.values())).max(axis=0) > 0).sum()) if covs else 0
        spans.sort(key=lambda s: (s.start, s.contribution_id, s.end))
        return Attribution(weights, spans, dict(sorted(datasets.items())), covered, m)


def _position(corpus: _Corpus, row: int, at: np.ndarray, q: np.ndarray, s: int, e: int, cap: int) -> int:
    """Token offset in contribution `row` of the span q[s:e]: the search's own match at s, which
    covers a span up to `cap` tokens. A longer span (a chain of capped matches) is searched for
    whole, once; if it does not occur verbatim, the first match's offset stands (the audit will
    flag that span, as it flags its text)."""
    if e - s > cap:
        a, b = int(corpus.offsets[row]), int(corpus.offsets[row + 1])
        found = find_occurrence(corpus.tokens[a:b], corpus.sa[a:b], q[s:e])
        if found is not None:
            return found
    return int(at[row, s])
