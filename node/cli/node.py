"""`loranode node ...`: run the node operator daemon."""

from __future__ import annotations

from pathlib import Path

import typer

node_app = typer.Typer(name="node", help="The node operator daemon.", no_args_is_help=True)


@node_app.command("run")
def run_cmd(
    config: Path = typer.Option(None, "--config", "-c", help="Node TOML file (LORANODE_* env vars override it)."),
) -> None:
    """Run the node: watch the chain, fetch and load adapters, serve the OpenAI-compatible API,
    sign receipts and settle. Stops gracefully on SIGINT/SIGTERM."""
    from node.config import load_config
    from node.daemon.root import run
    from node.errors import NodeError

    try:
        cfg = load_config(config)
        code = run(cfg)
    except NodeError as e:  # configuration, deployment or chain mismatch: a clear message, no traceback
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    raise typer.Exit(code)


@node_app.command("config-options")
def config_options() -> None:
    """Print every configuration option with its default and meaning (Markdown)."""
    from node.config import options_table

    typer.echo(options_table())
