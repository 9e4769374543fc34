"""A contributor's rewards per contribution, from public data: the registry's events and state, and
the committed receipts files on IPFS (for the answers that drew on each contribution).

Receipts files are CID-verified but their receipts are not re-checked here (that is
`loranode attribution audit`); unreadable files are counted and skipped."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Sequence

from chain.protocol import TOTAL_BPS
from node.attribution_rewards.audit import MAX_RECEIPTS_FILE_BYTES, AuditError, fetch_receipts_file


@dataclass
class ContributionRewards:
    contribution_id: int
    dataset_id: int
    status: str
    answers: int = 0  # receipts whose attribution names it
    tokens_attributed: Fraction = Fraction(0)  # sum of completionTokens * bps / 10,000 over those
    earned_by_attribution: int = 0  # ContributionAttributed
    earned: int = 0  # harvested + pending: by attribution and by accepted weight
    pending: int = 0  # not yet harvested into the vault
    harvested: int = 0  # moved into the vault (claimable by the contributor, or claimed)


@dataclass
class Breakdown:
    address: str
    contributions: list[ContributionRewards] = field(default_factory=list)
    batches_read: int = 0
    batches_unreadable: int = 0


def _events(c, contract, start: int, *names: str) -> list:
    logs = c.w3.eth.get_logs({"address": contract.address, "fromBlock": start, "toBlock": "latest"})
    return [e for e in c.decode_events(logs) if type(e).__name__ in names]


async def breakdown(c, who: str, backends: Sequence, cache, *, max_batches: int = 1000,
                    max_bytes: int = MAX_RECEIPTS_FILE_BYTES) -> Breakdown:
    """Per-contribution rewards of contributor `who` (newest `max_batches` committed batches scanned)."""
    from node.services.contributions import all_contributions

    out = Breakdown(who)
    mine = {i.contribution_id: ContributionRewards(i.contribution_id, i.dataset_id, i.status)
            for i in all_contributions(c) if i.contributor == who}
    if not mine:
        return out
    start = c.deployment.start_block
    for ev in _events(c, c.datasets, start, "ContributionAttributed", "ContributionHarvested"):
        row = mine.get(ev.contribution_id)
        if row is None:
            continue
        if type(ev).__name__ == "ContributionAttributed":
            row.earned_by_attribution += ev.amount
        else:
            row.harvested += ev.amount
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
