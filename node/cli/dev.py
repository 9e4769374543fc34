"""The dev tools: `loranode dev up`, a whole local setup in one command (Ctrl-C stops all of it),
and `loranode demo`, the whole mission on embedded defaults."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import typer

from node.cli.common import console
from node.cli.errors import FAILED, handle_errors

dev_app = typer.Typer(name="dev", help="Local development chain and node.", no_args_is_help=True)


@dev_app.command("up")
@handle_errors
def up(
    data_dir: Path = typer.Option(
        Path(".loranode/dev"), "--data-dir", help="Where the dev chain's files and the node's data go."
    ),
    chain_port: int = typer.Option(8545, "--chain-port", min=0, max=65535, help="anvil port (a free one if taken)."),
    node_port: int = typer.Option(8080, "--node-port", min=0, max=65535, help="Node API port (a free one if taken)."),
    no_node: bool = typer.Option(False, "--no-node", help="Only the chain, the deployment and node.toml."),
) -> None:
    """Start anvil on 127.0.0.1, deploy the contracts, fund the dev accounts, write node.toml and run the node."""
    from eth_account import Account

    from chain.devchain import DEV_PRIVATE_KEYS
    from chain.protocol import DEV_CHAIN_ID
    from node.config import load_config
    from node.dev.stack import DEV_ROLES, NodeThread, start_dev_stack

    stack = start_dev_stack(data_dir, chain_port=chain_port, node_port=node_port)
    node = None
    try:
        console.print(f"[bold]chain[/]      anvil {stack.rpc_url} (chain id {DEV_CHAIN_ID})")
        console.print(f"[bold]deployment[/] {stack.deployment_path}")
        console.print(f"[bold]config[/]     {stack.config_path}")
        console.print(
            "dev accounts: anvil's standard accounts of the mnemonic \"test test test test test test test test "
            "test test test junk\" (public keys: use them on this dev chain only)"
        )
        for role, key in zip(DEV_ROLES, DEV_PRIVATE_KEYS, strict=True):
            console.print(f"  {role:9s} {Account.from_key(key).address} key {key}", highlight=False)
        console.print("Point the CLI at it:")
        for k, v in stack.env().items():
            console.print(f"  export {k}={v}")
        if not no_node:
            node = NodeThread(load_config(stack.config_path)).start()
            console.print(f"[bold]node[/]       {node.url} (OpenAI API at {node.url}/v1)")
        console.print("Ctrl-C stops everything.")
        stop = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        while not stop.wait(0.5):
            if node is not None and not node.thread.is_alive():
                raise typer.Exit(FAILED)
    finally:
        if node is not None:
            node.stop()
        stack.anvil.stop()
        console.print("stopped")


def demo(
    data_dir: Path = typer.Option(Path(".loranode/demo"), "--data-dir", help="Scratch folder (wiped at start)."),
    train_steps: int = typer.Option(30, "--train-steps", min=1, max=10_000, help="Training steps per adapter."),
    quick: bool = typer.Option(False, "--quick", help="One question instead of two."),
) -> None:
    """Run the whole mission on embedded defaults: dev chain, datasets, training, publishing, serving, settlement, rewards."""
    from node.dev.demo import run_demo

    raise typer.Exit(run_demo(data_dir=data_dir, train_steps=train_steps, quick=quick))
