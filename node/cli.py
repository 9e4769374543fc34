"""`loranode` command line. Sub-command groups live in their own modules and are added here."""

from __future__ import annotations

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
    prompt: str = typer.Option("What is the capital of France?", help="Question for the embedded model."),
) -> None:
    """Run the end-to-end demo on embedded defaults (local anvil chain, embedded model)."""
    from node.demo import run_demo

    raise typer.Exit(run_demo(prompt=prompt))


from node.cli_ipfs import ipfs_app  # noqa: E402  (sub-command group: loranode ipfs ...)

app.add_typer(ipfs_app, name="ipfs")

from node.cli_attribution import attribution_app  # noqa: E402  (loranode attribution ...)

app.add_typer(attribution_app, name="attribution")

from node.cli_node import node_app  # noqa: E402  (loranode node run ...)

app.add_typer(node_app, name="node")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
