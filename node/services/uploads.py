"""The IPFS upload service of the CLI: the embedded store (default), or Kubo."""

from __future__ import annotations

import asyncio
from pathlib import Path

from node.services import progress
from node.services.content import store_root  # the same default store as `loranode ipfs` and the daemon


def upload(path: Path, store: Path | None, kubo_url: str | None) -> str:
    """Add a file or folder; returns its CIDv1 (the same CID on every backend)."""
    from node.ipfs import EmbeddedStore, KuboClient

    if kubo_url:

        async def _kubo() -> str:
            async with KuboClient(kubo_url) as client:
                return await client.add_path(path)

        with progress.spinner(f"adding {path.name} to Kubo"):  # Kubo's add API reports no progress we could show
            return asyncio.run(_kubo())
    from rich.progress import Progress

    console = progress.progress_console
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
