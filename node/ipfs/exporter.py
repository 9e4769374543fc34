"""Turn a UnixFS DAG back into files, trusting nothing: every block is hashed against the CID
that pointed to it, sizes are checked against what parents declare and against the caller's
cap, and folder entries that could escape the destination are refused.

The same walk serves every backend; only `get_block` differs (store on disk, CAR spill, HTTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import BinaryIO

from node.ipfs.car import MAX_BLOCK_BYTES
from node.ipfs.cid import CID, CODEC_DAG_PB, CODEC_RAW
from node.ipfs.dagpb import T_DIRECTORY, T_FILE, T_HAMT, T_RAW, T_SYMLINK, decode_node, decode_unixfs
from node.ipfs.errors import (
    ContentTooLarge,
    IpfsError,
    MalformedBlock,
    UnsafeEntry,
    UnsupportedContent,
)

GetBlock = Callable[[CID], Awaitable[bytes]]
Progress = Callable[[int], None]  # called with the number of new file bytes written

MAX_DEPTH = 64
MAX_ENTRIES = 100_000


def check_entry_name(name: str) -> str:
    """A folder entry must be one plain path component: no `..`, `.`, separators, NUL, or empty."""
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise UnsafeEntry(f"refused folder entry {name!r}: not a plain file name")
    return name


class _Walk:
    def __init__(self, get_block: GetBlock, max_bytes: int, progress: Progress | None):
        self.get_block = get_block
        self.max_bytes = max_bytes
        self.progress = progress
        self.written = 0
        self.entries = 0

    async def block(self, cid: CID) -> bytes:
        data = await self.get_block(cid)
        await asyncio.sleep(0)  # one block at a time: keep the event loop (the API) responsive, allow cancellation
        if len(data) > MAX_BLOCK_BYTES:
            raise MalformedBlock(f"block {cid} is {len(data)} bytes (limit {MAX_BLOCK_BYTES})")
        cid.verify(data)  # raises BlockHashMismatch
        return data

    def _count(self, n: int) -> None:
        self.written += n
        if self.written > self.max_bytes:
            raise ContentTooLarge(f"content exceeds the cap of {self.max_bytes} bytes")
        if self.progress:
            self.progress(n)

    async def node(self, cid: CID):
        block = await self.block(cid)
        if cid.codec == CODEC_RAW:
            return block, None
        if cid.codec != CODEC_DAG_PB:
            raise UnsupportedContent(f"codec 0x{cid.codec:x} of {cid} is not UnixFS")
        pb = decode_node(block)
        return pb, decode_unixfs(pb.data)

    async def export(self, cid: CID, dest: Path, depth: int = 0) -> None:
        if depth > MAX_DEPTH:
            raise MalformedBlock("DAG nests too deeply")
        self.entries += 1
        if self.entries > MAX_ENTRIES:
            raise ContentTooLarge(f"more than {MAX_ENTRIES} entries")
        pb, fs = await self.node(cid)
        if fs is None:  # a raw block is a whole file
            async with _new_file(dest) as fh:
                self._count(len(pb))
                fh.write(pb)
            return
        if fs.kind in (T_FILE, T_RAW):
            if fs.filesize is not None and self.written + fs.filesize > self.max_bytes:
                raise ContentTooLarge(f"file of {fs.filesize} bytes exceeds the cap of {self.max_bytes} bytes")
            async with _new_file(dest) as fh:
                await self.file_body(cid, pb, fs, fh, 0)
        elif fs.kind == T_DIRECTORY:
            os.mkdir(dest)
            seen: set[str] = set()
            for link in pb.links:
                name = check_entry_name(link.name)
                if name in seen:
                    raise UnsafeEntry(f"duplicate folder entry {name!r}")
                seen.add(name)
                await self.export(link.cid, dest / name, depth + 1)
        elif fs.kind == T_SYMLINK:
            raise UnsafeEntry(f"refused symlink entry at {dest.name!r}")
        elif fs.kind == T_HAMT:
            os.mkdir(dest)
            await self.shard(cid, pb, fs, dest, set(), depth)
        else:
            raise UnsupportedContent(f"UnixFS type {fs.kind} is not a file or folder")

    async def shard(self, cid: CID, pb, fs, dest: Path, seen: set[str], depth: int) -> None:
        """Export the entries of a HAMT-sharded folder: links named "<hex slot><name>" are entries,
        links named "<hex slot>" alone are sub-shards."""
        if depth > MAX_DEPTH:
            raise MalformedBlock("HAMT nests too deeply")
        fanout = fs.fanout or 0
        if fanout < 2 or fanout > 1024 or fanout & (fanout - 1):
            raise MalformedBlock(f"{cid}: HAMT fanout {fanout} is not a power of two up to 1024")
        pad = len(f"{fanout - 1:X}")
        for link in pb.links:
            slot = link.name[:pad]
            if len(slot) != pad or any(c not in "0123456789ABCDEF" for c in slot) or int(slot, 16) >= fanout:
                raise MalformedBlock(f"{cid}: HAMT link {link.name[:40]!r} lacks a slot prefix")
            if len(link.name) == pad:
                cpb, cfs = await self.node(link.cid)
                if cfs is None or cfs.kind != T_HAMT or cfs.fanout != fanout:
                    raise MalformedBlock(f"{link.cid}: a HAMT sub-shard link points to something else")
                await self.shard(link.cid, cpb, cfs, dest, seen, depth + 1)
                continue
            name = check_entry_name(link.name[pad:])
            if name in seen:
                raise UnsafeEntry(f"duplicate folder entry {name!r}")
            seen.add(name)
            await self.export(link.cid, dest / name, depth + 1)

    async def file_body(self, cid: CID, pb, fs, fh, depth: int) -> int:
        """Write a file node's bytes (its own data, then its children in order); returns the count."""
        if depth > MAX_DEPTH:
            raise MalformedBlock("file DAG nests too deeply")
        if fs is None:
            self._count(len(pb))
            fh.write(pb)
            return len(pb)
        if fs.kind not in (T_FILE, T_RAW):
            raise MalformedBlock(f"{cid}: a file links to a non-file node (type {fs.kind})")
        total = len(fs.data)
        if fs.data:
            self._count(len(fs.data))
            fh.write(fs.data)
        if pb.links and len(fs.blocksizes) != len(pb.links):
            raise MalformedBlock(f"{cid}: {len(pb.links)} links but {len(fs.blocksizes)} block sizes")
        for link, expected in zip(pb.links, fs.blocksizes, strict=False):  # lengths checked above when there are links
            cpb, cfs = await self.node(link.cid)
            got = await self.file_body(link.cid, cpb, cfs, fh, depth + 1)
            if got != expected:
                raise MalformedBlock(f"{link.cid}: {got} bytes where the parent declares {expected}")
            total += got
        if fs.filesize is not None and fs.filesize != total:
            raise MalformedBlock(f"{cid}: {total} bytes where the node declares {fs.filesize}")
        return total


async def export_dag(root: CID, get_block: GetBlock, dest: Path, max_bytes: int, progress: Progress | None = None) -> Path:
    """Write the file or folder `root` at `dest` (which must not exist). On any error nothing
    is left at `dest`."""
    dest = Path(dest)
    try:
        await _Walk(get_block, max_bytes, progress).export(root, dest)
    except BaseException:
        _remove(dest)
        raise
    return dest


@contextlib.asynccontextmanager
async def _new_file(dest: Path) -> AsyncIterator[BinaryIO]:
    """Create `dest` ("xb": never over an existing entry), opening and closing (flushing) it off the
    event loop: a slow disk must not stall the other requests."""
    fh = await asyncio.to_thread(open, dest, "xb")
    try:
        yield fh
    finally:
        await asyncio.to_thread(fh.close)


async def export_into(dest_dir: Path, root: CID, get_block: GetBlock, max_bytes: int, progress: Progress | None = None) -> Path:
    """Export `root` to `dest_dir/<cid>`, atomically: written under a temporary name first, renamed
    only once every block verified. Returns the final path."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / str(root)
    tmp = dest_dir / f".partial-{secrets.token_hex(8)}"
    await export_dag(root, get_block, tmp, max_bytes, progress)
    try:
        if final.exists():  # someone else completed it: identical content by construction
            _remove(tmp)
        else:
            os.rename(tmp, final)
    except OSError as e:
        _remove(tmp)
        raise IpfsError(f"could not move {root} into {dest_dir}: {e}") from e
    return final


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
