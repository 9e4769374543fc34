"""`loranode node dispute`: a fisherman holds a node to its signed receipts.

With one receipt it opens a dispute in NodeRegistry (the dispute deposit is approved and locked;
the arbitrator set at deployment rules before the deadline). With `--equivocation OTHER` it proves
that the node signed two different receipts with the same `seq`: the node's bond is slashed at once
and half of it is paid to the caller."""

from __future__ import annotations

from pathlib import Path

import typer

from node.cli.common import (
    CliError, DeploymentOpt, JsonOpt, KeystoreOpt, PasswordFileOpt, RpcOpt, connect, format_amount, handle_errors,
    load_account, tx_done,
)
from node.cli.receipts import _SIGNED_FIELDS, load_receipt_file


def _signed_receipt(path: Path, chain_id: int, receipt_log: str):
    from chain.eip712 import SignedReceipt, TypedDataError

    raw = load_receipt_file(path)["receipt"]
    if not isinstance(raw, dict):
        raise CliError(f"{path}: 'receipt' must be an object")
    try:
        signed = SignedReceipt.from_json({k: v for k, v in raw.items() if k in _SIGNED_FIELDS})
        signer = signed.signer(chain_id, receipt_log)
    except TypedDataError as e:
        raise CliError(f"{path}: malformed receipt: {e}") from None
    if signer != signed.receipt.node:
        raise CliError(f"{path}: the receipt is not signed by its node {signed.receipt.node} (signer {signer})")
    return signed


@handle_errors
def dispute(
    receipt: Path = typer.Argument(..., help="The disputed receipt (JSON as returned by GET /v1/receipts/{id})."),
    equivocation: Path = typer.Option(None, "--equivocation",
                                      help="Another receipt of the same node with the same seq: slash at once."),
    rpc_url: str = RpcOpt, deployment: Path = DeploymentOpt, keystore: Path = KeystoreOpt,
    password_file: Path = PasswordFileOpt, as_json: bool = JsonOpt,
) -> None:
    """Dispute a node's receipt (deposit, arbitrated), or slash a node that equivocated."""
    c = connect(rpc_url, deployment)
    a = _signed_receipt(receipt, c.chain_id, c.receipts.address)
    node = a.receipt.node
    if c.nodes.get_node(node).bond == 0:
        raise CliError(f"node {node} holds no bond: nothing to dispute")
    if equivocation is not None:
        b = _signed_receipt(equivocation, c.chain_id, c.receipts.address)
        if b.receipt.node != node or b.receipt.seq != a.receipt.seq:
            raise CliError("an equivocation needs two receipts of the same node with the same seq")
        if c.receipts.hash_receipt(a.receipt) == c.receipts.hash_receipt(b.receipt):
            raise CliError("the two receipts are the same: not an equivocation")
        account = load_account(keystore, password_file)
        bond = c.nodes.get_node(node).bond
        rcpt = c.nodes.slash_equivocation(account, a.receipt, a.signature, b.receipt, b.signature)
        tx_done(rcpt, "node slashed", as_json, node=node, slashed=format_amount(bond))
        return
    terms = c.nodes.dispute_terms()
    account = load_account(keystore, password_file)
    if terms.dispute_deposit:
        if c.token.balance_of(account.address) < terms.dispute_deposit:
            raise CliError(f"the dispute deposit is {format_amount(terms.dispute_deposit)}: insufficient balance")
        if c.token.allowance(account.address, c.nodes.address) < terms.dispute_deposit:
            c.token.approve(account, c.nodes.address, terms.dispute_deposit)
    rcpt = c.nodes.open_dispute(account, a.receipt, a.signature)
    dispute_id = c.nodes.dispute_count()
    tx_done(rcpt, "dispute opened", as_json, dispute_id=dispute_id, node=node,
            deposit=format_amount(terms.dispute_deposit), deadline=c.nodes.get_dispute(dispute_id).deadline)
