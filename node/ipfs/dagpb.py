"""dag-pb nodes and the UnixFS `Data` message inside them, encoded exactly as Kubo does.

PBNode { repeated PBLink Links = 2; optional bytes Data = 1; }   -- Links are written first
PBLink { optional bytes Hash = 1; optional string Name = 2; optional uint64 Tsize = 3; }
UnixFS Data { Type = 1; Data = 2; filesize = 3; repeated blocksizes = 4 (unpacked); hashType = 5; fanout = 6;
              mode = 7; mtime = 8 }
Kubo always writes a link's Name (empty for file chunks) and Tsize.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from node.ipfs.cid import CID, decode_varint, encode_varint
from node.ipfs.errors import InvalidCID, MalformedBlock

# UnixFS Data.Type
T_RAW, T_DIRECTORY, T_FILE, T_METADATA, T_SYMLINK, T_HAMT = 0, 1, 2, 3, 4, 5

_V = encode_varint


def unixfs_data(kind: int, data: bytes | None = None, filesize: int | None = None, blocksizes=()) -> bytes:
    out = bytearray(b"\x08" + _V(kind))
    if data is not None:
        out += b"\x12" + _V(len(data)) + data
    if filesize is not None:
        out += b"\x18" + _V(filesize)
    for bs in blocksizes:
        out += b"\x20" + _V(bs)
    return bytes(out)


def encode_link(cid_bytes: bytes, name: bytes, tsize: int) -> bytes:
    body = b"\x0a" + _V(len(cid_bytes)) + cid_bytes + b"\x12" + _V(len(name)) + name + b"\x18" + _V(tsize)
    return b"\x12" + _V(len(body)) + body


def encode_node(links: list[bytes], data: bytes | None) -> bytes:
    """`links` are already encoded with `encode_link` (in their final order)."""
    out = b"".join(links)
    if data is not None:
        out += b"\x0a" + _V(len(data)) + data
    return out


def file_leaf_frame(chunk_len: int) -> tuple[bytes, bytes]:
    """The bytes before and after a chunk in a CIDv0-style leaf (PBNode{Data: UnixFS File}), so a
    leaf can be hashed without copying the chunk: sha256(prefix + chunk + suffix)."""
    if chunk_len == 0:  # Kubo leaves an empty file's Data field out: Type=File, filesize=0
        return b"\x0a\x04\x08\x02\x18\x00", b""
    lv = _V(chunk_len)
    inner_len = 4 + 2 * len(lv) + chunk_len  # 08 02 | 12 len chunk | 18 len
    prefix = b"\x0a" + _V(inner_len) + b"\x08\x02\x12" + lv
    suffix = b"\x18" + lv
    return prefix, suffix


# --- decoding -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PBLink:
    cid: CID
    name: str
    tsize: int


@dataclass(frozen=True, slots=True)
class PBNode:
    links: list[PBLink]
    data: bytes | None


@dataclass(slots=True)
class UnixFSData:
    kind: int
    data: bytes = b""
    filesize: int | None = None
    blocksizes: list[int] = field(default_factory=list)
    fanout: int | None = None


def _fields(buf: bytes | memoryview, what: str):
    """Yield (field number, wire type, value) of a protobuf message; value is int or bytes."""
    pos, n = 0, len(buf)
    val: int | bytes
    try:
        while pos < n:
            key, pos = decode_varint(buf, pos)
            num, wt = key >> 3, key & 7
            if wt == 0:
                val, pos = decode_varint(buf, pos)
            elif wt == 2:
                ln, pos = decode_varint(buf, pos)
                if pos + ln > n:
                    raise MalformedBlock(f"{what}: field {num} runs past the end")
                val = bytes(buf[pos : pos + ln])
                pos += ln
            else:
                raise MalformedBlock(f"{what}: unsupported wire type {wt} for field {num}")
            yield num, wt, val
    except ValueError as e:
        if isinstance(e, InvalidCID):
            raise MalformedBlock(f"{what}: bad CID: {e}") from e
        raise MalformedBlock(f"{what}: {e}") from e


def decode_node(block: bytes | memoryview) -> PBNode:
    links: list[PBLink] = []
    data = None
    for num, wt, val in _fields(block, "dag-pb node"):
        if num == 2 and wt == 2:
            links.append(_decode_link(val))
        elif num == 1 and wt == 2:
            data = val
        else:
            raise MalformedBlock(f"dag-pb node: unexpected field {num}")
    return PBNode(links, data)


def _decode_link(buf: bytes) -> PBLink:
    cid = None
    name = ""
    tsize = 0
    for num, wt, val in _fields(buf, "dag-pb link"):
        if num == 1 and wt == 2:
            try:
                cid, end = CID.from_bytes(val)
            except InvalidCID as e:
                raise MalformedBlock(f"dag-pb link: {e}") from e
            if end != len(val):
                raise MalformedBlock("dag-pb link: trailing bytes after CID")
        elif num == 2 and wt == 2:
            try:
                name = val.decode("utf-8")
            except UnicodeDecodeError as e:
                raise MalformedBlock("dag-pb link: name is not UTF-8") from e
        elif num == 3 and wt == 0:
            tsize = val
        else:
            raise MalformedBlock(f"dag-pb link: unexpected field {num}")
    if cid is None:
        raise MalformedBlock("dag-pb link without a hash")
    return PBLink(cid, name, tsize)


def decode_unixfs(buf: bytes | None) -> UnixFSData:
    if buf is None:
        raise MalformedBlock("dag-pb node has no UnixFS data")
    kind = None
    out = UnixFSData(kind=-1)
    for num, wt, val in _fields(buf, "UnixFS data"):
        if num == 1 and wt == 0:
            kind = val
        elif num == 2 and wt == 2:
            out.data = val
        elif num == 3 and wt == 0:
            out.filesize = val
        elif num == 4 and wt == 0:
            out.blocksizes.append(val)
        elif num == 4 and wt == 2:  # tolerate a packed encoding
            pos = 0
            while pos < len(val):
                v, pos = decode_varint(val, pos)
                out.blocksizes.append(v)
        elif num == 6 and wt == 0:
            out.fanout = val
        # hashType (5), mode (7), mtime (8): metadata we do not need
    if kind is None:
        raise MalformedBlock("UnixFS data without a Type")
    out.kind = kind
    return out
