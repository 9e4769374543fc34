"""The settlement rule: a receipt batch -> integer weights per (dataset, contribution), and the
amounts AttributionPool pays for them. Pure functions; the node (settler) and anyone auditing a
batch (audit) run the same code. docs/attribution-rewards.md states the rule in prose.

For a receipt r of adapter a with adapter cost C_r, registered dataset split s_d (bps) and
attribution b_c (bps per contribution, `attribution` of the receipt JSON):
  base_{r,d}   = C_r * s_d
  A_{r,d}      = sum of b_c over the contributions c of dataset d that r names
  w_{r,d,c}    = floor(base_{r,d} * b_c / A_{r,d})                  (A_{r,d} > 0)
  u_{r,d}      = base_{r,d} - sum_c w_{r,d,c}   (all of base_{r,d} when r names nothing in d)
A batch's entry (d, c) weighs sum_r w_{r,d,c}; (d, 0) weighs sum_r u_{r,d}. Settling drains the
pool P_d of (node, d): c gets floor(P_d * W_{d,c} / W_d), the rest goes to the accepted-weight split.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable, Mapping

from chain.protocol import TOTAL_BPS

MAX_ENTRIES = 4096  # AttributionPool.MAX_ENTRIES
MAX_WEIGHT = 2**128 - 1  # AttributionPool.MAX_WEIGHT

Entry = tuple[int, int, int]  # (datasetId, contributionId, weight); contributionId 0 = unattributed
SplitOf = Callable[[int], Mapping[int, int]]  # adapter id -> {dataset id: bps}
DatasetOf = Callable[[int], int | None]  # contribution id -> its dataset (None if unknown)


class RuleError(ValueError):
    """A receipt cannot be weighed (malformed fields); the message names the field."""


def _uint(value, what: str) -> int:
    if isinstance(value, bool):
        raise RuleError(f"{what} must be an integer")
    try:
        n = int(value, 10) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise RuleError(f"{what} must be an integer, got {value!r}") from None
    if isinstance(value, float) or not 0 <= n < 2**256:
        raise RuleError(f"{what} out of range: {value!r}")
    return n


def leaf_attribution(receipt: Mapping) -> dict[int, int]:
    """{contribution id: bps} of a receipt JSON as its attributionHash commits them (ids ascending
    in the hash), without the sum check: a leaf attributing past the whole answer is still evidence
    (AttributionPool.attributionFault)."""
    raw = receipt.get("attribution")
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise RuleError("attribution must be an object {contributionId: bps}")
    return {_uint(k, "attribution id"): _uint(v, f"attribution[{k}]") for k, v in raw.items()}


def attribution_of(receipt: Mapping) -> dict[int, int]:
    """{contribution id: bps} of a receipt JSON (empty when it has no attribution), at most 10,000 bps in all."""
    out = leaf_attribution(receipt)
    if sum(out.values()) > TOTAL_BPS:
        raise RuleError(f"attribution sums to {sum(out.values())} bps, more than {TOTAL_BPS:,}")
    return out


def receipt_weights(receipt: Mapping, split: Mapping[int, int], dataset_of: DatasetOf) -> dict[tuple[int, int], int]:
    """Weights of one receipt: {(dataset, contribution): w}, contribution 0 = unattributed."""
    cost = _uint(receipt.get("adapterCost", 0), "adapterCost")
    attribution = attribution_of(receipt)
    by_dataset: dict[int, dict[int, int]] = defaultdict(dict)
    for cid, bps in attribution.items():
        d = dataset_of(cid)
        if d is not None and bps:
            by_dataset[d][cid] = bps
    out: dict[tuple[int, int], int] = {}
    for d, s in split.items():
        base = cost * s
        if base == 0:
            continue
        named = by_dataset.get(d, {})
        total = sum(named.values())
        given = 0
        for cid in sorted(named):
            w = base * named[cid] // total
            if w:
                out[(d, cid)] = w
                given += w
        if base - given:
            out[(d, 0)] = base - given
    return out


def batch_weights(receipts: Iterable[Mapping], split_of: SplitOf, dataset_of: DatasetOf) -> dict[tuple[int, int], int]:
    """Sum of `receipt_weights` over a batch's receipts (base-model receipts weigh nothing)."""
    total: dict[tuple[int, int], int] = defaultdict(int)
    for r in receipts:
        adapter = _uint(r.get("adapterId", 0), "adapterId")
        if adapter == 0:
            continue
        for key, w in receipt_weights(r, split_of(adapter), dataset_of).items():
            total[key] += w
    return dict(total)


def to_entries(weights: Mapping[tuple[int, int], int]) -> list[Entry]:
    """Sorted settle entries. Past MAX_ENTRIES, the lightest contributions fold into their
    dataset's unattributed weight (they are paid by accepted weight instead); never needed
    below 4,096 distinct (dataset, contribution) pairs per batch."""
    w = {k: v for k, v in weights.items() if v > 0}
    lightest = iter(sorted((k for k in w if k[1] != 0), key=lambda k: (w[k], k)))
    while len(w) > MAX_ENTRIES:
        k = next(lightest)
        w[(k[0], 0)] = w.get((k[0], 0), 0) + w.pop(k)
    for k, v in w.items():
        if v > MAX_WEIGHT:
            raise RuleError(f"weight of {k} is {v}, over 2^128 - 1")
    return [(d, c, v) for (d, c), v in sorted(w.items())]


def payouts(entries: Iterable[Entry], drained: Mapping[int, int]) -> tuple[dict[int, int], dict[int, int]]:
    """What settling `entries` against pools `drained` ({dataset: amount}) pays:
    ({contribution: amount}, {dataset: amount to the accepted-weight split}), as the contract does."""
    groups: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for d, c, w in entries:
        groups[d].append((c, w))
    paid: dict[int, int] = defaultdict(int)
    rest: dict[int, int] = {}
    for d, group in groups.items():
        amount = drained.get(d, 0)
        total = sum(w for _, w in group)
        given = 0
        for c, w in group:
            if c != 0:
                share = amount * w // total
                paid[c] += share
                given += share
        rest[d] = amount - given
    return dict(paid), rest
