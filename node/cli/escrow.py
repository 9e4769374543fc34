"""`loranode escrow deposit|authorize|signer-proof|thaw|withdraw|balance`: a payer's funds in UsageEscrow.

Funds are earmarked per node: every deposit, thaw, withdrawal and balance names the node (`--node`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from node.cli.common import chain_time, checksum, connect, emit, keystore_address, load_account, tx_done
from node.cli.errors import CliError, handle_errors
from node.cli.options import DeploymentOpt, JsonOpt, KeystoreOpt, PasswordFileOpt, RpcOpt
from node.services.amounts import format_amount, parse_amount
from node.services.errors import InputError

escrow_app = typer.Typer(name="escrow", help="Fund inference: deposits per node, signer keys, withdrawals.", no_args_is_help=True)

NodeOpt = typer.Option(..., "--node", help="Address of the node the funds are for (only it can redeem them).")
MAX_PROOF_TTL_S = 30 * 24 * 3600


def _node(node: str) -> str:
    return checksum(node, "node address")


@escrow_app.command("deposit")
@handle_errors
def deposit(
    amount: str = typer.Argument(..., help="Tokens to deposit (e.g. 25 or 0.5)."),
    node: str = NodeOpt,
    rpc_url: str = RpcOpt,
    deployment: Path = DeploymentOpt,
    keystore: Path = KeystoreOpt,
    password_file: Path = PasswordFileOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Approve and deposit tokens into your escrow account for one node."""
    units = parse_amount(amount)
    if units == 0:
        raise InputError("amount must be greater than zero")
    node_addr = _node(node)
    c = connect(rpc_url, deployment)
    account = load_account(keystore, password_file)
    have = c.token.balance_of(account.address)
    if have < units:
        raise CliError(f"insufficient token balance: you hold {format_amount(have)}, deposit needs {amount}")
    if not c.nodes.can_redeem(node_addr):
        typer.echo(f"warning: {node_addr} is not a staked node yet: it cannot redeem until it bonds", err=True)
    if c.token.allowance(account.address, c.escrow.address) < units:
        c.token.approve(account, c.escrow.address, units)
    receipt = c.escrow.deposit(account, node_addr, units)
    tx_done(receipt, "deposited", as_json, amount=format_amount(units), node=node_addr)


@escrow_app.command("signer-proof")
@handle_errors
def signer_proof(
    payer: str = typer.Argument(..., help="The payer that will authorize this wallet's key as its voucher signer."),
    ttl: int = typer.Option(3600, "--ttl", help="Seconds the proof stays valid."),
    rpc_url: str = RpcOpt,
    deployment: Path = DeploymentOpt,
    keystore: Path = KeystoreOpt,
    password_file: Path = PasswordFileOpt,
) -> None:
    """Run with the SIGNER's wallet: print its proof (JSON) that the payer passes to `escrow authorize --proof`."""
    payer_addr = checksum(payer, "payer address")
    if not 0 < ttl <= MAX_PROOF_TTL_S:
        raise InputError(f"--ttl must be in 1..{MAX_PROOF_TTL_S} seconds")
    c = connect(rpc_url, deployment)
    account = load_account(keystore, password_file)
    deadline = chain_time(c) + ttl
    signer, deadline, nonce, proof = c.escrow.signer_proof(payer_addr, account, deadline)
    out = {"signer": signer, "payer": payer_addr, "deadline": deadline, "nonce": nonce, "proof": "0x" + proof.hex()}
    typer.echo(json.dumps(out))


def _load_proof(path: Path, signer: str) -> tuple[int, int, bytes]:
    """(deadline, nonce, signature) of a proof file written by `escrow signer-proof`."""
    try:
        if path.stat().st_size > 4096:
            raise InputError(f"{path} is too large to be a signer proof")
        obj = json.loads(path.read_text())
        deadline, nonce = int(obj["deadline"]), int(obj["nonce"])
        proof = bytes.fromhex(str(obj["proof"]).removeprefix("0x"))
        named = checksum(str(obj.get("signer", signer)), "signer address in the proof")
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise InputError(f"{path} is not a signer proof (`loranode escrow signer-proof` writes one)") from None
    if named != signer:
        raise InputError(f"the proof is for signer {named}, not {signer}")
    if len(proof) != 65 or not 0 < deadline < 2**64 or not 0 <= nonce < 2**32:
        raise InputError("the proof must hold a 65-byte signature, a deadline and a nonce")
    return deadline, nonce, proof


@escrow_app.command("authorize")
@handle_errors
def authorize(
    signer: str = typer.Argument(..., help="Address allowed to sign vouchers for you (e.g. your client's hot key)."),
    proof: Path = typer.Option(None, "--proof", help="The signer's proof file (`loranode escrow signer-proof`)."),
    signer_keystore: Path = typer.Option(
        None, "--signer-keystore", help="Or the signer's keystore, to sign the proof here (same password file)."
    ),
    revoke: bool = typer.Option(
        False, "--revoke", help="Revoke instead (vouchers it signed stay redeemable for the thawing period)."
    ),
    rpc_url: str = RpcOpt,
    deployment: Path = DeploymentOpt,
    keystore: Path = KeystoreOpt,
    password_file: Path = PasswordFileOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Authorize a voucher-signing key with its proof, or start revoking it."""
    addr = checksum(signer, "signer address")
    if not revoke and (proof is None) == (signer_keystore is None):
        raise InputError("authorizing needs the signer's consent: give --proof FILE or --signer-keystore FILE")
    deadline_proof = _load_proof(proof, addr) if proof is not None and not revoke else None
    c = connect(rpc_url, deployment)
    account = load_account(keystore, password_file)
    if revoke:
        info = c.escrow.signer_of(addr)
        if info.payer != account.address or info.revoke_at:
            raise CliError(f"{addr} is not a signer of yours, or its revocation already started")
        receipt = c.escrow.revoke_signer(account, addr)
        until = c.escrow.signer_of(addr).revoke_at
        tx_done(receipt, "signer revoked", as_json, signer=addr, redeemable_until=until)
        return
    if deadline_proof is None:
        key = load_account(signer_keystore, password_file)
        if key.address != addr:
            raise InputError(f"{signer_keystore} holds {key.address}, not {addr}")
        _, deadline, nonce, sig = c.escrow.signer_proof(account.address, key)
    else:
        deadline, nonce, sig = deadline_proof
    now = chain_time(c)
    if deadline < now:
        raise InputError(f"the proof expired {now - deadline} s ago: ask the signer for a new one")
    current = c.escrow.signer_of(addr)
    if nonce != current.nonce:
        raise InputError(
            f"the proof is for authorization {nonce} of {addr}, the next is {current.nonce}: "
            "a proof authorizes once, ask the signer for a new one"
        )
    from chain.eip712 import TypedDataError, recover_digest_signer

    try:
        ok = recover_digest_signer(c.escrow.hash_signer_proof(account.address, deadline, nonce), sig) == addr
    except TypedDataError:
        ok = False
    if not ok:
        raise InputError(f"the proof was not signed by {addr} for payer {account.address}")
    if current.payer != "0x" + "00" * 20 and (current.revoke_at == 0 or current.revoke_at > now):
        raise CliError(f"{addr} already signs for {current.payer}")
    receipt = c.escrow.authorize_signer(account, addr, deadline, sig)
    tx_done(receipt, "signer authorized", as_json, signer=addr)


@escrow_app.command("thaw")
@handle_errors
def thaw(
    amount: str = typer.Argument(..., help="Tokens to start thawing for withdrawal."),
    node: str = NodeOpt,
    rpc_url: str = RpcOpt,
    deployment: Path = DeploymentOpt,
    keystore: Path = KeystoreOpt,
    password_file: Path = PasswordFileOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Start the thawing period for a withdrawal (the node can still redeem vouchers meanwhile)."""
    units = parse_amount(amount)
    node_addr = _node(node)
    c = connect(rpc_url, deployment)
    account = load_account(keystore, password_file)
    acct = c.escrow.account_of(account.address, node_addr)
    if units == 0 or units > acct.balance:
        raise CliError(f"can thaw between 0 and your balance {format_amount(acct.balance)} for {node_addr}, asked {amount}")
    receipt = c.escrow.start_thaw(account, node_addr, units)
    after = c.escrow.account_of(account.address, node_addr)
    tx_done(receipt, "thawing", as_json, amount=format_amount(units), withdrawable_at=after.thaw_end)


@escrow_app.command("withdraw")
@handle_errors
def withdraw(
    node: str = NodeOpt,
    rpc_url: str = RpcOpt,
    deployment: Path = DeploymentOpt,
    keystore: Path = KeystoreOpt,
    password_file: Path = PasswordFileOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Withdraw what has finished thawing."""
    node_addr = _node(node)
    c = connect(rpc_url, deployment)
    account = load_account(keystore, password_file)
    acct = c.escrow.account_of(account.address, node_addr)
    if acct.thawing == 0:
        raise CliError("nothing is thawing: run `loranode escrow thaw AMOUNT --node NODE` first")
    now = chain_time(c)
    if now < acct.thaw_end:
        raise CliError(f"still thawing for {acct.thaw_end - now} s (until {time.ctime(acct.thaw_end)})")
    receipt = c.escrow.withdraw(account, node_addr)
    tx_done(receipt, "withdrawn", as_json, amount=format_amount(min(acct.thawing, acct.balance)))


@escrow_app.command("balance")
@handle_errors
def balance(
    address: str = typer.Argument(None, help="Payer address (default: your wallet's)."),
    node: str = NodeOpt,
    rpc_url: str = RpcOpt,
    deployment: Path = DeploymentOpt,
    keystore: Path = KeystoreOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Escrow balance for one node, thawing amount and wallet token balance of a payer."""
    node_addr = _node(node)
    who = checksum(address) if address else keystore_address(keystore)
    c = connect(rpc_url, deployment)
    acct = c.escrow.account_of(who, node_addr)
    emit(
        {
            "payer": who,
            "node": node_addr,
            "escrow": format_amount(acct.balance),
            "thawing": format_amount(acct.thawing),
            "thaw_end": acct.thaw_end,
            "wallet": format_amount(c.token.balance_of(who)),
        },
        as_json,
        title="escrow",
    )
