"""`loranode` command line: every command group and top-level command is registered here, once.

Each group lives in its own module; exit codes are those of `node.cli.errors`.
"""

from __future__ import annotations

import typer

from node.cli.adapter import adapter_app
from node.cli.attribution import attribution_app
from node.cli.chat import chat
from node.cli.dataset import dataset_app
from node.cli.dev import demo, dev_app
from node.cli.escrow import escrow_app
from node.cli.ipfs import ipfs_app
from node.cli.node import node_app
from node.cli.receipts import receipts_app
from node.cli.rewards import rewards_app
from node.cli.train import train
from node.cli.wallet import wallet_app

app = typer.Typer(
    name="loranode",
    help="LoRA Node: serve many LoRA adapters on one base model and pay their owners and data contributors.",
    no_args_is_help=True,
    add_completion=False,
)


def version() -> None:
    """Print the installed LoRA Node version."""
    from importlib.metadata import version as dist_version

    typer.echo(dist_version("loranode"))


app.command("version")(version)
app.command("demo")(demo)
app.add_typer(ipfs_app, name="ipfs")
app.add_typer(attribution_app, name="attribution")
app.add_typer(node_app, name="node")
app.add_typer(wallet_app, name="wallet")
app.add_typer(dataset_app, name="dataset")
app.add_typer(adapter_app, name="adapter")
app.add_typer(escrow_app, name="escrow")
app.add_typer(rewards_app, name="rewards")
app.add_typer(receipts_app, name="receipts")
app.command("train")(train)
app.add_typer(dev_app, name="dev")
app.command("chat")(chat)


def main() -> None:
    import os

    # Models and tokenizers come from local files only; never reach for a model hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    app()


if __name__ == "__main__":
    main()
