"""`loranode ipfs ...`: compute CIDs as Kubo would, add to the embedded store, fetch verified."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import typer

ipfs_app = typer.Typer(
    name="ipfs",
    help="Content by CID: compute Kubo-compatible CIDs, add to the embedded store, fetch verified.",
    no_args_is_help=True,
)

STORE_OPTION = typer.Option(
    None, "--store", envvar="LORANODE_IPFS_STORE", help="Embedded store folder (default: <data dir>/ipfs, as the node daemon)."
)


def store_root(store: Path | None) -> Path:
    """The daemon's default too (`<data_dir>/ipfs`), so `add` here is served by `loranode node run`."""
    if store is not None:
        return store
    from node.config import DEFAULT_DATA_DIR

    data_dir = os.environ.get("LORANODE_DATA_DIR")
    return (Path(data_dir) if data_dir else DEFAULT_DATA_DIR).expanduser() / "ipfs"


def _fail(e: Exception) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(1)


@ipfs_app.command("cid")
def cid_cmd(
    path: Path = typer.Argument(..., help="A file or a folder."),
    v0: bool = typer.Option(False, "--v0", help="CIDv0 as Kubo's default `ipfs add` (else CIDv1 with raw leaves)."),
    hidden: bool = typer.Option(False, "--hidden", help="Include hidden files (as `ipfs add -r --hidden`)."),
) -> None:
    """Print the CID `ipfs add --only-hash [-r] --cid-version=1` (or, with --v0, Kubo's default) gives PATH."""
    from node.ipfs import IpfsError, cid_of_path

    try:
        typer.echo(cid_of_path(path, 0 if v0 else 1, include_hidden=hidden))
    except IpfsError as e:
        _fail(e)


@ipfs_app.command("add")
def add_cmd(
    path: Path = typer.Argument(..., help="A file or a folder."),
    v0: bool = typer.Option(False, "--v0", help="Store as CIDv0 (Kubo's default layout)."),
    store: Path | None = STORE_OPTION,
) -> None:
    """Add PATH to the embedded store, pin it, and print its CID."""
    from node.ipfs import EmbeddedStore, IpfsError

    async def run() -> str:
        s = EmbeddedStore(store_root(store))
        cid = await s.add_path(path, version=0 if v0 else 1)
        await s.pin(cid)
        return cid

    try:
        typer.echo(asyncio.run(run()))
    except IpfsError as e:
        _fail(e)


@ipfs_app.command("get")
def get_cmd(
    cid: str = typer.Argument(..., help="CID of a file or folder."),
    dest: Path = typer.Argument(..., help="Where to write it (must not exist)."),
    store: Path | None = STORE_OPTION,
    kubo: str | None = typer.Option(None, "--kubo", envvar="LORANODE_KUBO_URL", help="Kubo RPC URL, e.g. http://127.0.0.1:5001."),
    gateway: list[str] = typer.Option([], "--gateway", help="Trustless gateway URL (repeatable, tried in order)."),
    max_bytes: int = typer.Option(10 * 1024**3, "--max-bytes", help="Refuse content larger than this."),
) -> None:
    """Fetch CID (embedded store first, then Kubo, then gateways), verify every block, write it at DEST."""
    from node.ipfs import ContentCache, EmbeddedStore, GatewayClient, IpfsError, KuboClient, default_cache_root, fetch_verified
    from node.ipfs.fetcher import DEFAULT_CACHE_BYTES

    if dest.exists() or dest.is_symlink():
        _fail(FileExistsError(f"{dest} already exists"))

    async def run() -> Path:
        backends = [EmbeddedStore(store_root(store))]
        if kubo:
            backends.append(KuboClient(kubo))
        if gateway:
            backends.append(GatewayClient(gateway))
        cache = ContentCache(default_cache_root() / "cache", DEFAULT_CACHE_BYTES)
        try:
            from node.cli.progress import transfer_bar

            with transfer_bar(f"fetching {cid[:16]}…") as advance:  # drawn on a terminal only
                return await fetch_verified(backends, cid, max_bytes, cache, progress=advance)
        finally:
            for b in backends:
                close = getattr(b, "close", None)
                if close:
                    await close()

    try:
        got = asyncio.run(run())
    except IpfsError as e:
        _fail(e)
    if got.is_dir():
        shutil.copytree(got, dest, symlinks=True)
    else:
        shutil.copy2(got, dest)
    typer.echo(str(dest))
