"""`loranode rewards show [ADDRESS]` and `rewards claim`: what an address earned, by source."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import typer

from node.cli.common import checksum, connect, emit, keystore_address, load_account, tx_done
from node.cli.errors import CliError, handle_errors
from node.cli.options import DeploymentOpt, IpfsStoreOpt, JsonOpt, KeystoreOpt, KuboOpt, PasswordFileOpt, RpcOpt
from node.services.amounts import format_amount
from node.services.contribution_rewards import contribution_rows, contributions_of
from node.services.rewards import summarize, summary_row

rewards_app = typer.Typer(name="rewards", help="See and claim rewards.", no_args_is_help=True)


@rewards_app.command("show")
@handle_errors
def show(
    address: str = typer.Argument(None, help="Address to look at (default: your wallet's)."),
    rpc_url: str = RpcOpt,
    deployment: Path = DeploymentOpt,
    keystore: Path = KeystoreOpt,
    ipfs_store: Path = IpfsStoreOpt,
    kubo_url: str = KuboOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Claimable rewards per source: node fees, adapter shares, dataset contributions (per contribution:
    answers that drew on it, tokens attributed, earned, pending, harvested into the vault)."""
    who = checksum(address) if address else keystore_address(keystore)
    c = connect(rpc_url, deployment)
    s = summarize(c, who)
    per = contributions_of(c, who, ipfs_store, kubo_url)
    if as_json:
        # amounts are decimal strings in every --json output (docs/protocol.md); tokens_attributed is a token count
        rows = [
            {
                **asdict(r),
                "tokens_attributed": float(r.tokens_attributed),
                **{k: str(getattr(r, k)) for k in ("earned_by_attribution", "earned", "pending", "harvested")},
            }
            for r in per.contributions
        ]
        emit({**asdict(s), "contributions": rows}, True)
        return
    emit(summary_row(s), False, title="rewards")
    if per.contributions:
        emit(contribution_rows(per), False, title="dataset contributions")


@rewards_app.command("claim")
@handle_errors
def claim(
    rpc_url: str = RpcOpt,
    deployment: Path = DeploymentOpt,
    keystore: Path = KeystoreOpt,
    password_file: Path = PasswordFileOpt,
    as_json: bool = JsonOpt,
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
