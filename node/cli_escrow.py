"""`loranode escrow deposit|authorize|thaw|withdraw|balance`: a payer's funds in UsageEscrow."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from node.cli_common import (
    CliError, DeploymentOpt, JsonOpt, KeystoreOpt, PasswordFileOpt, RpcOpt, checksum, connect, emit,
    format_amount, handle_errors, keystore_address, load_account, parse_amount, tx_done,
)

escrow_app = typer.Typer(name="escrow", help="Fund inference: deposits, signer keys, withdrawals.", no_args_is_help=True)


@escrow_app.command("deposit")
@handle_errors
def deposit(
    amount: str = typer.Argument(..., help="Tokens to deposit (e.g. 25 or 0.5)."),
    rpc_url: str = RpcOpt, deployment: Path = DeploymentOpt, keystore: Path = KeystoreOpt,
    password_file: Path = PasswordFileOpt, as_json: bool = JsonOpt,
) -> None:
    """Approve and deposit tokens into your escrow account."""
    units = parse_amount(amount)
    if units == 0:
        raise CliError("amount must be greater than zero")
    c = connect(rpc_url, deployment)
    account = load_account(keystore, password_file)
    have = c.token.balance_of(account.address)
    if have < units:
        raise CliError(f"insufficient token balance: you hold {format_amount(have)}, deposit needs {amount}")
    if c.token.allowance(account.address, c.escrow.address) < units:
        c.token.approve(account, c.escrow.address, units)
    receipt = c.escrow.deposit(account, units)
    tx_done(receipt, "deposited", as_json, amount=format_amount(units))


@escrow_app.command("authorize")
@handle_errors
def authorize(
    signer: str = typer.Argument(..., help="Address allowed to sign vouchers for you (e.g. your client's hot key)."),
    revoke: bool = typer.Option(False, "--revoke", help="Revoke instead of authorize."),
    rpc_url: str = RpcOpt, deployment: Path = DeploymentOpt, keystore: Path = KeystoreOpt,
    password_file: Path = PasswordFileOpt, as_json: bool = JsonOpt,
) -> None:
    """Authorize (or revoke) a voucher-signing key for your escrow account."""
    addr = checksum(signer, "signer address")
    c = connect(rpc_url, deployment)
    account = load_account(keystore, password_file)
    if revoke:
        receipt = c.escrow.revoke_signer(account, addr)
    else:
        receipt = c.escrow.authorize_signer(account, addr)
    tx_done(receipt, "signer revoked" if revoke else "signer authorized", as_json, signer=addr)


@escrow_app.command("thaw")
@handle_errors
def thaw(
    amount: str = typer.Argument(..., help="Tokens to start thawing for withdrawal."),
    rpc_url: str = RpcOpt, deployment: Path = DeploymentOpt, keystore: Path = KeystoreOpt,
    password_file: Path = PasswordFileOpt, as_json: bool = JsonOpt,
) -> None:
    """Start the thawing period for a withdrawal (nodes can still redeem vouchers meanwhile)."""
    units = parse_amount(amount)
    c = connect(rpc_url, deployment)
    account = load_account(keystore, password_file)
    acct = c.escrow.account_of(account.address)
    if units == 0 or units > acct.balance:
        raise CliError(f"can thaw between 0 and your balance {format_amount(acct.balance)}, asked {amount}")
    receipt = c.escrow.start_thaw(account, units)
    after = c.escrow.account_of(account.address)
    tx_done(receipt, "thawing", as_json, amount=format_amount(units), withdrawable_at=after.thaw_end)


@escrow_app.command("withdraw")
@handle_errors
def withdraw(
    rpc_url: str = RpcOpt, deployment: Path = DeploymentOpt, keystore: Path = KeystoreOpt,
    password_file: Path = PasswordFileOpt, as_json: bool = JsonOpt,
) -> None:
    """Withdraw what has finished thawing."""
    c = connect(rpc_url, deployment)
    account = load_account(keystore, password_file)
    acct = c.escrow.account_of(account.address)
    if acct.thawing == 0:
        raise CliError("nothing is thawing: run `loranode escrow thaw AMOUNT` first")
    now = c.w3.eth.get_block("latest")["timestamp"]
    if now < acct.thaw_end:
        raise CliError(f"still thawing for {acct.thaw_end - now} s (until {time.ctime(acct.thaw_end)})")
    receipt = c.escrow.withdraw(account)
    tx_done(receipt, "withdrawn", as_json, amount=format_amount(acct.thawing))


@escrow_app.command("balance")
@handle_errors
def balance(
    address: str = typer.Argument(None, help="Payer address (default: your wallet's)."),
    rpc_url: str = RpcOpt, deployment: Path = DeploymentOpt, keystore: Path = KeystoreOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Escrow balance, thawing amount and wallet token balance of a payer."""
    who = checksum(address) if address else keystore_address(keystore)
    c = connect(rpc_url, deployment)
    acct = c.escrow.account_of(who)
    emit({"payer": who, "escrow": format_amount(acct.balance), "thawing": format_amount(acct.thawing),
          "thaw_end": acct.thaw_end, "wallet": format_amount(c.token.balance_of(who))}, as_json, title="escrow")
