"""What an address earned, by source, read from the chain's events and the dataset registry."""

from __future__ import annotations

from dataclasses import dataclass

from node.services.amounts import format_amount
from node.services.contributions import all_contributions


@dataclass(frozen=True)
class RewardSummary:
    address: str
    node_fees: int  # compute part of redeemed vouchers, credited to the node
    usage_shares: int  # other escrow credits: adapter-owner shares and the protocol fee
    dataset_harvested: int  # dataset rewards already moved into the vault
    dataset_pending: int  # dataset rewards accrued, moved into the vault by `claim`
    claimed: int
    claimable: int  # in the vault now
    pending_contributions: tuple[int, ...]


def _logs(c, contract, from_block: int) -> list:
    logs = c.w3.eth.get_logs({"address": contract.address, "fromBlock": from_block, "toBlock": "latest"})
    return c.decode_events(logs)


def summarize(c, who: str) -> RewardSummary:
    """Scan the vault's and escrow's events since deployment (fine for one address on a dev-size chain)."""
    start = min(c.deployment.blocks.values()) if c.deployment.blocks else 0
    credited_by: dict[str, int] = {}
    claimed = 0
    for ev in _logs(c, c.vault, start):
        name = type(ev).__name__
        if name == "Credited" and ev.account == who:
            credited_by[ev.creditor] = credited_by.get(ev.creditor, 0) + ev.amount
        elif name == "Claimed" and ev.account == who:
            claimed += ev.amount
    node_fees = sum(
        ev.compute_paid for ev in _logs(c, c.escrow, start) if type(ev).__name__ == "VoucherRedeemed" and ev.node == who
    )
    from_escrow = credited_by.get(c.escrow.address, 0)
    pending, pending_ids = 0, []
    for info in all_contributions(c):
        if info.contributor == who and info.status == "accepted":
            p = c.datasets.pending_reward(info.contribution_id)
            if p:
                pending += p
                pending_ids.append(info.contribution_id)
    return RewardSummary(
        address=who,
        node_fees=min(node_fees, from_escrow),
        usage_shares=from_escrow - min(node_fees, from_escrow),
        dataset_harvested=credited_by.get(c.datasets.address, 0),
        dataset_pending=pending,
        claimed=claimed,
        claimable=c.vault.claimable(who),
        pending_contributions=tuple(pending_ids),
    )


def summary_row(s: RewardSummary, places: int | None = None) -> dict:
    """Human table row; `--json` keeps the exact integers instead."""

    def amt(units: int) -> str:
        return format_amount(units, places=places)

    return {
        "address": s.address,
        "node fees": amt(s.node_fees),
        "adapter/protocol shares": amt(s.usage_shares),
        "datasets (harvested)": amt(s.dataset_harvested),
        "datasets (pending)": amt(s.dataset_pending),
        "claimed": amt(s.claimed),
        "claimable now": amt(s.claimable + s.dataset_pending),
    }
