"""Progress shown by long work of the CLI and its services: transfers (IPFS fetches and uploads),
and a spinner while a transaction waits to be mined. Only on a terminal (rich disables live output
otherwise), and never on stdout, which may carry `--json`."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from rich.console import Console

progress_console = Console(stderr=True)


@contextlib.contextmanager
def transfer_bar(description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """A bytes bar (size, speed); yields `advance(n_bytes)`."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=progress_console,
        transient=True,
        disable=not progress_console.is_terminal,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


@contextlib.contextmanager
def spinner(description: str) -> Iterator[None]:
    if not progress_console.is_terminal:
        yield
        return
    with progress_console.status(description):
        yield


def show_tx_waits(w3) -> None:
    """Wrap this Web3's `wait_for_transaction_receipt` with a spinner naming the transaction."""
    eth = w3.eth
    wait = eth.wait_for_transaction_receipt

    def waiting(tx_hash, *args, **kwargs):
        h = tx_hash.hex() if isinstance(tx_hash, (bytes, bytearray)) else str(tx_hash)
        h = h if h.startswith("0x") else "0x" + h
        with spinner(f"waiting for transaction {h[:12]}… to be mined"):
            return wait(tx_hash, *args, **kwargs)

    eth.wait_for_transaction_receipt = waiting
