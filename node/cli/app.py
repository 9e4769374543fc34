"""`loranode` command line. Sub-command groups live in their own modules and are added here."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    name="loranode",
    help="LoRA Node: serve many LoRA adapters on one base model and pay their owners and data contributors.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def version() -> None:
    """Print the installed LoRA Node version."""
    from importlib.metadata import version as dist_version

    typer.echo(dist_version("loranode"))


@app.command()
def demo(
    data_dir: Path = typer.Option(Path(".loranode/demo"), "--data-dir", help="Scratch folder (wiped at start)."),
    train_steps: int = typer.Option(30, "--train-steps", min=1, max=10_000, help="Training steps per adapter."),
    quick: bool = typer.Option(False, "--quick", help="One question instead of two."),
) -> None:
    """Run the whole mission on embedded defaults: dev chain, datasets, training, publishing, serving, settlement, rewards."""
    from node.dev.demo import run_demo

    raise typer.Exit(run_demo(data_dir=data_dir, train_steps=train_steps, quick=quick))


from node.cli.ipfs import ipfs_app  # noqa: E402  (sub-command group: loranode ipfs ...)

app.add_typer(ipfs_app, name="ipfs")

from node.cli.attribution import attribution_app  # noqa: E402  (loranode attribution ...)

app.add_typer(attribution_app, name="attribution")

from node.cli.node import node_app  # noqa: E402  (loranode node run ...)

app.add_typer(node_app, name="node")

from node.cli.wallet import wallet_app  # noqa: E402
from node.cli.dataset import dataset_app  # noqa: E402
from node.cli.adapter import adapter_app  # noqa: E402
from node.cli.escrow import escrow_app  # noqa: E402
from node.cli.rewards import rewards_app  # noqa: E402
from node.cli.receipts import receipts_app  # noqa: E402
from node.cli.train import train  # noqa: E402

for _group in (wallet_app, dataset_app, adapter_app, escrow_app, rewards_app, receipts_app):
    app.add_typer(_group)
app.command("train")(train)

from node.cli.dev import dev_app  # noqa: E402
from node.cli.node_register import register as _node_register  # noqa: E402

app.add_typer(dev_app)
node_app.command("register")(_node_register)
from node.cli.node_dispute import dispute as _node_dispute  # noqa: E402

node_app.command("dispute")(_node_dispute)

from node.cli.chat import chat as _chat  # noqa: E402

app.command("chat")(_chat)


def main() -> None:
    import os

    # Models and tokenizers come from local files only; never reach for a model hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    app()


if __name__ == "__main__":
    main()
