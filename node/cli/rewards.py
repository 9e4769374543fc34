"""`loranode rewards show [ADDRESS]` and `rewards claim`: what an address earned, by source."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import typer

from node.cli.common import (
    CliError, DeploymentOpt, JsonOpt, KeystoreOpt, PasswordFileOpt, RpcOpt, all_contributions, checksum, connect, emit,
    format_amount, handle_errors, keystore_address, load_account, tx_done,
)
from node.services.uploads import IpfsStoreOpt, KuboOpt

rewards_app = typer.Typer(name="rewards", help="See and claim rewards.", no_args_is_help=True)


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
        ev.compute_paid for ev in _logs(c, c.escrow, start)
        if type(ev).__name__ == "VoucherRedeemed" and ev.node == who
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


@rewards_app.command("show")
@handle_errors
def show(
    address: str = typer.Argument(None, help="Address to look at (default: your wallet's)."),
    rpc_url: str = RpcOpt, deployment: Path = DeploymentOpt, keystore: Path = KeystoreOpt,
    ipfs_store: Path = IpfsStoreOpt, kubo_url: str = KuboOpt, as_json: bool = JsonOpt,
) -> None:
    """Claimable rewards per source: node fees, adapter shares, dataset contributions (per contribution:
    answers that drew on it, tokens attributed, earned, pending, harvested into the vault)."""
    from node.cli.attribution_audit import contribution_rows, contributions_of

    who = checksum(address) if address else keystore_address(keystore)
    c = connect(rpc_url, deployment)
    s = summarize(c, who)
    per = contributions_of(c, who, ipfs_store, kubo_url)
    if as_json:
        # amounts are decimal strings in every --json output (docs/protocol.md); tokens_attributed is a token count
        rows = [{**asdict(r), "tokens_attributed": float(r.tokens_attributed),
                 **{k: str(getattr(r, k)) for k in ("earned_by_attribution", "earned", "pending", "harvested")}}
                for r in per.contributions]
        emit({**asdict(s), "contributions": rows}, True)
        return
    emit(summary_row(s), False, title="rewards")
    if per.contributions:
        emit(contribution_rows(per), False, title="dataset contributions")


@rewards_app.command("claim")
@handle_errors
def claim(
    rpc_url: str = RpcOpt, deployment: Path = DeploymentOpt, keystore: Path = KeystoreOpt,
    password_file: Path = PasswordFileOpt, as_json: bool = JsonOpt,
) -> None:
    """Harvest your dataset rewards into the vault, then claim everything to your wallet."""
    c = connect(rpc_url, deployment)
    account = load_account(keystore, password_file)
    s = summarize(c, account.address)
    if s.claimable + s.dataset_pending == 0:
        raise CliError(f"nothing to claim for {account.address}")
    if s.pending_contributions:
        c.datasets.harvest(account, list(s.pending_contributions))
    before = c.token.balance_of(account.address)
    receipt = c.vault.claim(account)
    after = c.token.balance_of(account.address)
    tx_done(receipt, "claimed", as_json, amount=format_amount(after - before), wallet_balance=format_amount(after))
