"""Embedded content-addressed store: blocks in a folder, one file per block.

The default backend for a single machine and `make demo`. Blocks are verified when written and
again when read (a disk can rot); files are rebuilt by the same verified walk as remote content.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from node.ipfs.cid import CID, CODEC_DAG_PB
from node.ipfs.dagpb import decode_node
from node.ipfs.errors import ContentNotFound
from node.ipfs.exporter import Progress, export_into
from node.ipfs.importer import EntryCallback, ImportParams, dir_node, import_path


class EmbeddedStore:
    name = "embedded"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.blocks_dir = self.root / "blocks"
        self.pins_dir = self.root / "pins"
        self.blocks_dir.mkdir(parents=True, exist_ok=True)
        self.pins_dir.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"EmbeddedStore({str(self.root)!r})"

    # --- blocks ---------------------------------------------------------------------------
    def _block_path(self, cid: CID) -> Path:
        key = str(cid.to_v1())  # one key per (codec, digest): v0 and v1 of a dag-pb block share it
        return self.blocks_dir / key[-2:] / key

    def has_block(self, cid: CID) -> bool:
        return self._block_path(cid).exists()

    def put_block(self, cid: CID, block: bytes) -> None:
        cid.verify(block)
        path = self._block_path(cid)
        if path.exists():
            return
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        tmp.write_bytes(block)
        os.replace(tmp, path)

    def get_block_sync(self, cid: CID) -> bytes:
        try:
            block = self._block_path(cid).read_bytes()
        except FileNotFoundError:
            raise ContentNotFound(f"block {cid} is not in the store at {self.root}") from None
        cid.verify(block)
        return block

    async def get_block(self, cid: CID) -> bytes:
        return self.get_block_sync(cid)

    def iter_dag(self, root: CID) -> Iterator[tuple[CID, bytes]]:
        """Every block under `root`, depth-first, each once (the order trustless gateways use)."""
        seen: set[CID] = set()
        stack = [root]
        while stack:
            cid = stack.pop()
            if cid in seen:
                continue
            seen.add(cid)
            block = self.get_block_sync(cid)
            yield cid, block
            if cid.codec == CODEC_DAG_PB:
                stack.extend(reversed([link.cid for link in decode_node(block).links]))

    # --- ContentBackend ---------------------------------------------------------------------
    def add_path_sync(
        self,
        path: str | os.PathLike,
        *,
        version: int = 1,
        raw_leaves: bool | None = None,
        wrap: bool = False,
        include_hidden: bool = False,
        on_entry: EntryCallback | None = None,
    ) -> str:
        params = ImportParams(version, raw_leaves, include_hidden)
        result = import_path(path, params, sink=self.put_block, on_entry=on_entry)
        if wrap:
            name = Path(path).resolve().name.encode("utf-8")
            result = dir_node([(name, result)], version, self.put_block)
            if on_entry:
                on_entry("", result.cid, result.tsize)
        return str(result.cid)

    async def add_path(self, path: str | os.PathLike, **kwargs) -> str:
        return await asyncio.to_thread(self.add_path_sync, path, **kwargs)

    async def fetch(self, cid: str, dest_dir: str | os.PathLike, max_bytes: int, progress: Progress | None = None) -> Path:
        return await export_into(Path(dest_dir), CID.parse(cid), self.get_block, max_bytes, progress)

    async def pin(self, cid: str) -> None:
        root = CID.parse(cid)
        for _ in self.iter_dag(root):  # a pin is only worth something if every block is here
            pass
        (self.pins_dir / str(root)).touch()

    def pinned(self) -> set[str]:
        return {p.name for p in self.pins_dir.iterdir()}
