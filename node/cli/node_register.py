"""`loranode node register`: publish this node in NodeRegistry (endpoint, base models, price) with its
bond: only a node holding at least the registry's minimum bond can redeem vouchers."""

from __future__ import annotations

from pathlib import Path

import typer

from node.cli.common import (
    CliError, DeploymentOpt, JsonOpt, KeystoreOpt, PasswordFileOpt, RpcOpt, connect, format_amount, handle_errors,
    load_account, parse_amount, tx_done,
)


@handle_errors
def register(
    endpoint: str = typer.Option(..., "--endpoint", help="Public URL of the node's API."),
    base_model: list[str] = typer.Option(None, "--base-model", help="Base model ids served (repeatable; default: the embedded one)."),
    price: str = typer.Option("0", "--price", help="Compute price per 1K tokens, in tokens."),
    bond: str = typer.Option("min", "--bond", help="Bond to hold, in tokens (approved and locked): 'min' tops it "
                                                  "up to the registry's minimum; more answers for more."),
    rpc_url: str = RpcOpt, deployment: Path = DeploymentOpt, keystore: Path = KeystoreOpt,
    password_file: Path = PasswordFileOpt, as_json: bool = JsonOpt,
) -> None:
    """Register (or update) the operator's node in NodeRegistry."""
    from inference.embedded_model import EMBEDDED_MODEL_ID

    if not endpoint.startswith(("http://", "https://")) or len(endpoint) > 512:
        raise CliError("--endpoint must be an http(s) URL of at most 512 characters")
    models = base_model or [EMBEDDED_MODEL_ID]
    price_units = parse_amount(price)
    target = None if bond == "min" else parse_amount(bond)
    c = connect(rpc_url, deployment)
    account = load_account(keystore, password_file)
    min_bond = c.nodes.dispute_terms().min_bond
    held = c.nodes.get_node(account.address).bond
    target = min_bond if target is None else target
    if target < min_bond:
        typer.echo(f"warning: a bond below the minimum ({format_amount(min_bond)}) cannot redeem vouchers", err=True)
    add = max(0, target - held)
    if add and c.token.balance_of(account.address) < add:
        raise CliError(f"insufficient token balance for the bond: it needs {format_amount(add)} more")
    if add and c.token.allowance(account.address, c.nodes.address) < add:
        c.token.approve(account, c.nodes.address, add)
    if c.nodes.is_active(account.address):
        receipt = c.nodes.update(account, endpoint, models, price_units)
        if add:
            c.nodes.add_bond(account, add)
        tx_done(receipt, "node updated", as_json, node=account.address, bond=format_amount(held + add))
        return
    receipt = c.nodes.register(account, endpoint, models, price_units, add)
    tx_done(receipt, "node registered", as_json, node=account.address, bond=format_amount(held + add))
