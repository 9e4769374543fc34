"""`loranode ipfs ...`: compute CIDs as Kubo would, add to the embedded store, fetch verified."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import typer

from node.cli.errors import handle_errors
from node.cli.options import GatewayOpt, IpfsStoreOpt, KuboOpt
from node.services.content import read_backends, store_root
from node.services.errors import InputError

ipfs_app = typer.Typer(
    name="ipfs",
    help="Content by CID: compute Kubo-compatible CIDs, add to the embedded store, fetch verified.",
    no_args_is_help=True,
)


def _existing(path: Path) -> Path:
    if not path.exists() and not path.is_symlink():  # a symlink is refused by the importer, with its reason
        raise InputError(f"no such file or folder: {path}")
    return path


@ipfs_app.command("cid")
@handle_errors
def cid_cmd(
    path: Path = typer.Argument(..., help="A file or a folder."),
    v0: bool = typer.Option(False, "--v0", help="CIDv0 as Kubo's default `ipfs add` (else CIDv1 with raw leaves)."),
    hidden: bool = typer.Option(False, "--hidden", help="Include hidden files (as `ipfs add -r --hidden`)."),
) -> None:
    """Print the CID `ipfs add --only-hash [-r] --cid-version=1` (or, with --v0, Kubo's default) gives PATH."""
    from node.ipfs import cid_of_path

    typer.echo(cid_of_path(_existing(path), 0 if v0 else 1, include_hidden=hidden))


@ipfs_app.command("add")
@handle_errors
def add_cmd(
    path: Path = typer.Argument(..., help="A file or a folder."),
    v0: bool = typer.Option(False, "--v0", help="Store as CIDv0 (Kubo's default layout)."),
    store: Path | None = IpfsStoreOpt,
) -> None:
    """Add PATH to the embedded store, pin it, and print its CID."""
    from node.ipfs import EmbeddedStore

    async def run() -> str:
        s = EmbeddedStore(store_root(store))
        cid = await s.add_path(_existing(path), version=0 if v0 else 1)
        await s.pin(cid)
        return cid

    typer.echo(asyncio.run(run()))


@ipfs_app.command("get")
@handle_errors
def get_cmd(
    cid: str = typer.Argument(..., help="CID of a file or folder."),
    dest: Path = typer.Argument(..., help="Where to write it (must not exist)."),
    store: Path | None = IpfsStoreOpt,
    kubo: str | None = KuboOpt,
    gateway: list[str] = GatewayOpt,
    max_bytes: int = typer.Option(10 * 1024**3, "--max-bytes", help="Refuse content larger than this."),
) -> None:
    """Fetch CID (embedded store first, then Kubo, then gateways), verify every block, write it at DEST."""
    from node.ipfs import fetch_verified
    from node.services.content import fetch_cache
    from node.services.progress import transfer_bar

    if dest.exists() or dest.is_symlink():
        raise InputError(f"{dest} already exists")

    async def run() -> Path:
        backends = read_backends(store, kubo, gateway)
        try:
            with transfer_bar(f"fetching {cid[:16]}…") as advance:  # drawn on a terminal only
                return await fetch_verified(backends, cid, max_bytes, fetch_cache(), progress=advance)
        finally:
            for b in backends:
                close = getattr(b, "close", None)
                if close:
                    await close()

    got = asyncio.run(run())
    if got.is_dir():
        shutil.copytree(got, dest, symlinks=True)
    else:
        shutil.copy2(got, dest)
    typer.echo(str(dest))
