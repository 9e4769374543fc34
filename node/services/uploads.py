"""The content store the user-facing CLI uploads to: the embedded store (default), or Kubo."""

from __future__ import annotations

from pathlib import Path

import typer

from node.cli.common import run_async
from node.cli.ipfs import store_root  # the same default store as `loranode ipfs` and the daemon

IpfsStoreOpt = typer.Option(
    None, "--ipfs-store", envvar="LORANODE_IPFS_STORE", help="Embedded IPFS store folder (default: <data dir>/ipfs, as the node)."
)
KuboOpt = typer.Option(
    None, "--kubo-url", envvar="LORANODE_KUBO_URL", help="Upload through a Kubo RPC API instead of the embedded store."
)


def upload(path: Path, store: Path | None, kubo_url: str | None) -> str:
    """Add a file or folder; returns its CIDv1 (the same CID on every backend)."""
    from node.ipfs import EmbeddedStore, KuboClient

    if kubo_url:
        from node.cli.progress import spinner

        async def _kubo() -> str:
            async with KuboClient(kubo_url) as client:
                return await client.add_path(path)

        with spinner(f"adding {path.name} to Kubo"):  # Kubo's add API reports no progress we could show
            return run_async(_kubo())
    from rich.progress import Progress

    from node.cli.common import console

    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    # A progress bar on a terminal only (rich disables it otherwise); advanced per imported entry.
    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task(f"adding {path.name}", total=total)
        done: dict[str, int] = {}

        def on_entry(rel: str, cid, size: int) -> None:
            if rel and (path / rel).is_file():
                done[rel] = (path / rel).stat().st_size
                bar.update(task, completed=sum(done.values()))

        return EmbeddedStore(store_root(store)).add_path_sync(path, on_entry=on_entry if path.is_dir() else None)
