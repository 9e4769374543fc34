"""A contributor's rewards per contribution, from public data: the registry's events and state, and
the committed receipts files on IPFS (for the answers that drew on each contribution).

Receipts files are CID-verified but their receipts are not re-checked here (that is
`loranode attribution audit`); unreadable files are counted and skipped. What attribution credited
is recomputed from each settle (its entries, checked against BatchSettled's hash, and the pools it
drained) less the credits DatasetRegistry refused: the contracts log no event per credit."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Sequence

from chain.protocol import TOTAL_BPS
from node.attribution_rewards.audit import MAX_RECEIPTS_FILE_BYTES, AuditError, fetch_receipts_file, settled_entries
from node.attribution_rewards.rule import payouts


@dataclass
class ContributionRewards:
    contribution_id: int
    dataset_id: int
    status: str
    answers: int = 0  # receipts whose attribution names it
    tokens_attributed: Fraction = Fraction(0)  # sum of completionTokens * bps / 10,000 over those
    earned_by_attribution: int = 0  # credited by AttributionPool settles (and not refused)
    earned: int = 0  # harvested + pending: by attribution and by accepted weight
    pending: int = 0  # not yet harvested into the vault
    harvested: int = 0  # moved into the vault (claimable by the contributor, or claimed)


@dataclass
class Breakdown:
    address: str
    contributions: list[ContributionRewards] = field(default_factory=list)
    batches_read: int = 0
    batches_unreadable: int = 0
    settles_unreadable: int = 0  # settles whose entries are not in their calldata: not in earned_by_attribution


def _events(c, contract, start: int, *names: str) -> list:
    logs = c.w3.eth.get_logs({"address": contract.address, "fromBlock": start, "toBlock": "latest"})
    return [e for e in c.decode_events(logs) if type(e).__name__ in names]


def attributed_credits(c, start: int) -> tuple[dict[int, int], int]:
    """({contribution: amount} credited by every AttributionPool settle since block `start`, number of
    settles left out because their entries are not readable from their calldata)."""
    pool_events = _events(c, c.pool, start, "BatchSettled", "PoolDrained")
    drained: dict[tuple[str, int], dict[int, int]] = {}
    for ev in pool_events:
        if type(ev).__name__ == "PoolDrained":
            drained.setdefault((ev.node, ev.seq), {})[ev.dataset_id] = ev.amount
    refused: dict[tuple[bytes, int], int] = {}  # (settle transaction, contribution) -> amount not credited
    for ev in _events(c, c.datasets, start, "AttributionRefused"):
        refused[(ev.tx_hash, ev.contribution_id)] = refused.get((ev.tx_hash, ev.contribution_id), 0) + ev.amount
    credited: dict[int, int] = {}
    unreadable = 0
    for ev in pool_events:
        if type(ev).__name__ != "BatchSettled":
            continue
        entries = settled_entries(c, ev)
        if entries is None:
            unreadable += 1
            continue
        for cid, amount in payouts(entries, drained.get((ev.node, ev.seq), {}))[0].items():
            credited[cid] = credited.get(cid, 0) + amount - refused.get((ev.tx_hash, cid), 0)
    return credited, unreadable


async def breakdown(
    c, who: str, backends: Sequence, cache, *, max_batches: int = 1000, max_bytes: int = MAX_RECEIPTS_FILE_BYTES
) -> Breakdown:
    """Per-contribution rewards of contributor `who` (newest `max_batches` committed batches scanned)."""
    from node.services.contributions import all_contributions

    out = Breakdown(who)
    mine = {
        i.contribution_id: ContributionRewards(i.contribution_id, i.dataset_id, i.status)
        for i in all_contributions(c)
        if i.contributor == who
    }
    if not mine:
        return out
    start = c.deployment.start_block
    for ev in _events(c, c.datasets, start, "ContributionHarvested"):
        row = mine.get(ev.contribution_id)
        if row is not None:
            row.harvested += ev.amount
    credited, out.settles_unreadable = attributed_credits(c, start)
    for cid, amount in credited.items():
        if cid in mine:
            mine[cid].earned_by_attribution += amount
    for row in mine.values():
        row.pending = c.datasets.pending_reward(row.contribution_id)
        row.earned = row.harvested + row.pending
    commits = _events(c, c.receipts, start, "BatchCommitted")[-max_batches:] if max_batches else []
    for ev in commits:
        try:
            doc = await fetch_receipts_file(backends, cache, ev.receipts_cid, max_bytes)
        except AuditError:
            out.batches_unreadable += 1
            continue
        out.batches_read += 1
        for r in doc["receipts"]:
            att = r.get("attribution") if isinstance(r, dict) else None
            if not isinstance(att, dict):
                continue
            for key, bps in att.items():
                row = mine.get(int(key)) if str(key).isdigit() else None
                if row is None or not isinstance(bps, int):
                    continue
                row.answers += 1
                try:
                    row.tokens_attributed += Fraction(int(r.get("completionTokens", 0)) * bps, TOTAL_BPS)
                except (TypeError, ValueError):
                    pass
    out.contributions = [mine[k] for k in sorted(mine)]
    return out
