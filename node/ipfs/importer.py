"""Kubo-compatible import of files and folders into UnixFS: the CIDs `ipfs add` would print.

Kubo defaults reproduced here: fixed 256 KiB chunks (`size-262144`), balanced layout with at
most 174 links per node, CIDv0 with dag-pb leaves, or (`--cid-version=1`) CIDv1 with raw
leaves; folders as `ipfs add -r` makes them (basic UnixFS directories, links sorted by name,
hidden entries skipped unless asked), and HAMT-sharded folders where Kubo switches to them
(above 256 KiB of link data; see hamt.py).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from node.ipfs.cid import CID, CODEC_DAG_PB, CODEC_RAW
from node.ipfs.dagpb import T_DIRECTORY, T_FILE, encode_link, encode_node, file_leaf_frame, unixfs_data
from node.ipfs.errors import IpfsError, UnsupportedContent

CHUNK_SIZE = 256 * 1024
MAX_LINKS = 174
HAMT_THRESHOLD = 256 * 1024

BlockSink = Callable[[CID, bytes], None]
EntryCallback = Callable[[str, CID, int], None]  # (relative path, cid, cumulative size)


@dataclass(frozen=True, slots=True)
class ImportParams:
    version: int = 1
    raw_leaves: bool | None = None  # default: True for CIDv1, False for CIDv0 (as Kubo)
    include_hidden: bool = False

    @property
    def leaves_raw(self) -> bool:
        return self.version == 1 if self.raw_leaves is None else self.raw_leaves


@dataclass(frozen=True, slots=True)
class Imported:
    cid: CID
    tsize: int  # cumulative size of the DAG under this node (what links carry as Tsize)
    size: int  # file bytes (for files) - used in parents' blocksizes


def _read_full(f, buf: bytearray) -> int:
    """Fill `buf` like Go's io.ReadFull: short only at end of file."""
    mv = memoryview(buf)
    got = 0
    while got < len(buf):
        n = f.readinto(mv[got:])
        if not n:
            break
        got += n
    return got


def _open(path):
    if hasattr(path, "readinto"):  # an open binary stream (e.g. BytesIO): the caller owns it
        import contextlib

        return contextlib.nullcontext(path)
    return open(path, "rb", buffering=0)


def import_file(path: str | os.PathLike | BinaryIO, params: ImportParams, sink: BlockSink | None = None) -> Imported:
    version = params.version
    raw = params.leaves_raw
    leaves: list[Imported] = []
    buf = bytearray(CHUNK_SIZE)
    sha256 = hashlib.sha256
    with _open(path) as f:
        while True:
            n = _read_full(f, buf)
            if n == 0 and leaves:
                break
            chunk = memoryview(buf)[:n]
            if raw:
                # Raw leaves are always CIDv1 (Kubo's --raw-leaves with v0 does the same).
                cid = CID(1, CODEC_RAW, sha256(chunk).digest())
                if sink:
                    sink(cid, bytes(chunk))
                leaves.append(Imported(cid, n, n))
            else:
                prefix, suffix = file_leaf_frame(n)
                h = sha256(prefix)
                h.update(chunk)
                h.update(suffix)
                cid = CID(version, CODEC_DAG_PB, h.digest())
                if sink:
                    sink(cid, prefix + bytes(chunk) + suffix)
                leaves.append(Imported(cid, len(prefix) + n + len(suffix), n))
            if n < CHUNK_SIZE:
                break
    return _balanced(leaves, version, sink)


def _balanced(level: list[Imported], version: int, sink: BlockSink | None) -> Imported:
    """Kubo's balanced layout equals grouping each level into nodes of `MAX_LINKS` children."""
    while len(level) > 1:
        level = [_file_node(level[i : i + MAX_LINKS], version, sink) for i in range(0, len(level), MAX_LINKS)]
    return level[0]


def _file_node(children: list[Imported], version: int, sink: BlockSink | None) -> Imported:
    sizes = [c.size for c in children]
    data = unixfs_data(T_FILE, filesize=sum(sizes), blocksizes=sizes)
    block = encode_node([encode_link(c.cid.to_bytes(), b"", c.tsize) for c in children], data)
    cid = CID.of(version, CODEC_DAG_PB, block)
    if sink:
        sink(cid, block)
    return Imported(cid, len(block) + sum(c.tsize for c in children), sum(sizes))


def _utf8_name(name: str, where: Path) -> bytes:
    try:
        return name.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsupportedContent(f"file name is not valid UTF-8: {where / name!r}") from None


def import_dir(
    path: str | os.PathLike,
    params: ImportParams,
    sink: BlockSink | None = None,
    on_entry: EntryCallback | None = None,
    _rel: str = "",
) -> Imported:
    root = Path(path)
    entries: list[tuple[bytes, Imported]] = []
    with os.scandir(root) as it:
        items = sorted(it, key=lambda e: _utf8_name(e.name, root))
    for entry in items:
        if entry.name.startswith(".") and not params.include_hidden:
            continue
        rel = f"{_rel}/{entry.name}" if _rel else entry.name
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            raise UnsupportedContent(f"symlinks are not imported (refused for safety): {entry.path}")
        if stat.S_ISDIR(st.st_mode):
            child = import_dir(entry.path, params, sink, on_entry, rel)
        elif stat.S_ISREG(st.st_mode):
            child = import_file(entry.path, params, sink)
            if on_entry:
                on_entry(rel, child.cid, child.tsize)
        else:
            raise UnsupportedContent(f"not a regular file or folder: {entry.path}")
        entries.append((_utf8_name(entry.name, root), child))
    result = dir_node(entries, params.version, sink, where=str(root))
    if on_entry:
        on_entry(_rel or root.name, result.cid, result.tsize)
    return result


def dir_node(entries: list[tuple[bytes, Imported]], version: int, sink: BlockSink | None = None, where: str = "") -> Imported:
    """A basic UnixFS directory over (name, child) pairs, links sorted by name as Kubo writes them."""
    entries = sorted(entries, key=lambda e: e[0])
    estimate = sum(len(name) + len(child.cid.to_bytes()) for name, child in entries)
    if estimate > HAMT_THRESHOLD:  # Kubo shards above the threshold (a folder exactly at it stays basic)
        from node.ipfs.hamt import build_hamt

        return build_hamt(entries, version, sink, Imported)
    block = encode_node([encode_link(c.cid.to_bytes(), name, c.tsize) for name, c in entries], unixfs_data(T_DIRECTORY))
    cid = CID.of(version, CODEC_DAG_PB, block)
    if sink:
        sink(cid, block)
    return Imported(cid, len(block) + sum(c.tsize for _, c in entries), 0)


def import_path(
    path: str | os.PathLike,
    params: ImportParams = ImportParams(),
    sink: BlockSink | None = None,
    on_entry: EntryCallback | None = None,
) -> Imported:
    """Import a file or a folder (recursively); `sink` receives every block, `on_entry` every path."""
    p = Path(path)
    try:
        st = p.lstat()
    except FileNotFoundError:
        raise IpfsError(f"no such file or folder: {p}") from None
    if stat.S_ISLNK(st.st_mode):
        raise UnsupportedContent(f"symlinks are not imported (refused for safety): {p}")
    if stat.S_ISDIR(st.st_mode):
        return import_dir(p, params, sink, on_entry, p.resolve().name)
    if stat.S_ISREG(st.st_mode):
        result = import_file(p, params, sink)
        if on_entry:
            on_entry(p.name, result.cid, result.tsize)
        return result
    raise UnsupportedContent(f"not a regular file or folder: {p}")


def cid_of_path(
    path: str | os.PathLike,
    version: int = 1,
    *,
    raw_leaves: bool | None = None,
    include_hidden: bool = False,
    wrap: bool = False,
) -> str:
    """The CID `ipfs add --only-hash [-r] [-w] --cid-version=<version>` prints for `path` (Kubo defaults)."""
    if version not in (0, 1):
        raise ValueError("version must be 0 or 1")
    result = import_path(path, ImportParams(version, raw_leaves, include_hidden))
    if wrap:
        result = dir_node([(Path(path).resolve().name.encode("utf-8"), result)], version)
    return str(result.cid)


def cid_of_bytes(data: bytes, version: int = 1, *, raw_leaves: bool | None = None) -> str:
    """The CID Kubo gives a file with these bytes."""
    import io

    return str(import_file(io.BytesIO(data), ImportParams(version, raw_leaves)).cid)
