"""`loranode node register`: publish this node in NodeRegistry (endpoint, base models, price)."""

from __future__ import annotations

from pathlib import Path

import typer

from node.cli_common import (
    CliError, DeploymentOpt, JsonOpt, KeystoreOpt, PasswordFileOpt, RpcOpt, connect, handle_errors, load_account,
    parse_amount, tx_done,
)


@handle_errors
def register(
    endpoint: str = typer.Option(..., "--endpoint", help="Public URL of the node's API."),
    base_model: list[str] = typer.Option(None, "--base-model", help="Base model ids served (repeatable; default: the embedded one)."),
    price: str = typer.Option("0", "--price", help="Compute price per 1K tokens, in tokens."),
    bond: str = typer.Option("0", "--bond", help="Optional bond, in tokens (approved and locked)."),
    rpc_url: str = RpcOpt, deployment: Path = DeploymentOpt, keystore: Path = KeystoreOpt,
    password_file: Path = PasswordFileOpt, as_json: bool = JsonOpt,
) -> None:
    """Register (or update) the operator's node in NodeRegistry."""
    from inference.base_model import EMBEDDED_MODEL_ID

    if not endpoint.startswith(("http://", "https://")) or len(endpoint) > 512:
        raise CliError("--endpoint must be an http(s) URL of at most 512 characters")
    models = base_model or [EMBEDDED_MODEL_ID]
    price_units, bond_units = parse_amount(price), parse_amount(bond)
    c = connect(rpc_url, deployment)
    account = load_account(keystore, password_file)
    if c.nodes.is_active(account.address):
        receipt = c.nodes.update(account, endpoint, models, price_units)
        tx_done(receipt, "node updated", as_json, node=account.address)
        return
    if bond_units:
        if c.token.balance_of(account.address) < bond_units:
            raise CliError("insufficient token balance for the bond")
        c.token.approve(account, c.nodes.address, bond_units)
    receipt = c.nodes.register(account, endpoint, models, price_units, bond_units)
    tx_done(receipt, "node registered", as_json, node=account.address)
