"""The one small interface every content backend (embedded store, Kubo, gateways) offers."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from node.ipfs.exporter import Progress


@runtime_checkable
class ContentBackend(Protocol):
    name: str

    async def add_path(self, path: str | Path) -> str:
        """Publish a file or folder; returns its CID (CIDv1, raw leaves, as `ipfs add --cid-version=1`)."""
        ...

    async def fetch(self, cid: str, dest_dir: str | Path, max_bytes: int, progress: Progress | None = None) -> Path:
        """Write the verified file or folder `cid` at `dest_dir/<cid>` (atomically) and return that path.
        Raises `IntegrityError` for wrong content, `BackendError` when the source fails."""
        ...

    async def pin(self, cid: str) -> None:
        """Keep `cid` (and every block under it) from garbage collection."""
        ...
