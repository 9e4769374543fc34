"""CARv1 (content-addressed archive) reading with per-block verification, and writing.

Layout: varint(len(header)) | dag-cbor {"roots": [CID...], "version": 1} | sections, each
varint(len(cid) + len(block)) | cid bytes | block bytes.  Every block is hashed against its
CID as it is read; a stream that stops inside a section is refused.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator

from node.ipfs.cid import CID, decode_varint, encode_varint
from node.ipfs.errors import (
    BlockHashMismatch,
    ContentTooLarge,
    InvalidCID,
    MalformedBlock,
    TruncatedContent,
    UnsupportedContent,
)

CAR_MEDIA_TYPE = "application/vnd.ipld.car"
MAX_HEADER_BYTES = 64 * 1024
MAX_BLOCK_BYTES = 2 * 1024 * 1024  # Kubo refuses blocks over 2 MiB too (bitswap limit)
MAX_SECTION_BYTES = MAX_BLOCK_BYTES + 128

Reader = Callable[[int], Awaitable[bytes]]  # read(n): n bytes, fewer only at end of stream


# --- a dag-cbor subset: enough for CAR headers ----------------------------------------------


def _cbor_head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([(major << 5) | n])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([(major << 5) | info]) + n.to_bytes(size, "big")
    raise ValueError("CBOR length too large")


def encode_header(roots: list[CID]) -> bytes:
    """dag-cbor {"roots": [tag42(0x00 + cid)], "version": 1}; keys in dag-cbor order (shorter first)."""
    out = bytearray(_cbor_head(5, 2))
    out += _cbor_head(3, 5) + b"roots" + _cbor_head(4, len(roots))
    for r in roots:
        link = b"\x00" + r.to_bytes()
        out += b"\xd8\x2a" + _cbor_head(2, len(link)) + link
    out += _cbor_head(3, 7) + b"version" + _cbor_head(0, 1)
    return bytes(out)


def _cbor_decode(buf: bytes, pos: int, depth: int = 0):
    if depth > 8:
        raise MalformedBlock("CAR header nests too deeply")
    if pos >= len(buf):
        raise MalformedBlock("truncated CAR header")
    ib = buf[pos]
    pos += 1
    major, info = ib >> 5, ib & 31
    if info < 24:
        n = info
    elif info in (24, 25, 26, 27):
        size = 1 << (info - 24)
        if pos + size > len(buf):
            raise MalformedBlock("truncated CAR header")
        n = int.from_bytes(buf[pos : pos + size], "big")
        pos += size
    else:
        raise MalformedBlock("CAR header uses indefinite-length CBOR")
    if major == 0:
        return n, pos
    if major == 1:
        return -1 - n, pos
    if major in (2, 3):
        if pos + n > len(buf):
            raise MalformedBlock("truncated CAR header")
        raw = buf[pos : pos + n]
        pos += n
        return (raw if major == 2 else raw.decode("utf-8", "strict")), pos
    if major == 4:
        items = []
        for _ in range(n):
            item, pos = _cbor_decode(buf, pos, depth + 1)
            items.append(item)
        return items, pos
    if major == 5:
        out = {}
        for _ in range(n):
            k, pos = _cbor_decode(buf, pos, depth + 1)
            v, pos = _cbor_decode(buf, pos, depth + 1)
            if not isinstance(k, str):
                raise MalformedBlock("CAR header map key is not a string")
            out[k] = v
        return out, pos
    if major == 6:
        inner, pos = _cbor_decode(buf, pos, depth + 1)
        if n != 42 or not isinstance(inner, bytes) or not inner.startswith(b"\x00"):
            raise MalformedBlock(f"unexpected CBOR tag {n} in CAR header")
        try:
            cid, end = CID.from_bytes(inner, 1)
        except InvalidCID as e:
            raise MalformedBlock(f"CAR root: {e}") from e
        if end != len(inner):
            raise MalformedBlock("CAR root has trailing bytes")
        return cid, pos
    if major == 7 and info in (20, 21, 22):
        return {20: False, 21: True, 22: None}[info], pos
    raise MalformedBlock(f"unsupported CBOR item (major {major}) in CAR header")


def decode_header(buf: bytes) -> list[CID]:
    try:
        header, end = _cbor_decode(buf, 0)
    except UnicodeDecodeError as e:
        raise MalformedBlock("CAR header string is not UTF-8") from e
    if end != len(buf) or not isinstance(header, dict):
        raise MalformedBlock("CAR header is not a single map")
    version = header.get("version")
    if version == 2:
        raise UnsupportedContent("CARv2 is not supported; ask for a CARv1 stream")
    if version != 1:
        raise MalformedBlock(f"CAR header version {version!r} (expected 1)")
    roots = header.get("roots")
    if not isinstance(roots, list) or not all(isinstance(r, CID) for r in roots):
        raise MalformedBlock("CAR header roots must be a list of CIDs")
    return roots


# --- writing --------------------------------------------------------------------------------


def car_section(cid: CID, block: bytes) -> bytes:
    cb = cid.to_bytes()
    return encode_varint(len(cb) + len(block)) + cb + block


def write_car(roots: list[CID], blocks: Iterable[tuple[CID, bytes]]) -> Iterator[bytes]:
    """Yield a CARv1 stream piece by piece (header, then one section per block)."""
    header = encode_header(roots)
    yield encode_varint(len(header)) + header
    for cid, block in blocks:
        yield car_section(cid, block)


# --- reading --------------------------------------------------------------------------------


def bytes_reader(data: bytes) -> Reader:
    pos = 0

    async def read(n: int) -> bytes:
        nonlocal pos
        chunk = data[pos : pos + n]
        pos += len(chunk)
        return chunk

    return read


def stream_reader(stream) -> Reader:
    """Adapt an aiohttp `StreamReader` (`resp.content`)."""
    import asyncio

    async def read(n: int) -> bytes:
        try:
            return await stream.readexactly(n)
        except asyncio.IncompleteReadError as e:
            return e.partial

    return read


async def _read_varint(read: Reader, what: str) -> int | None:
    """A varint from the stream; None at a clean end of stream (before its first byte)."""
    raw = bytearray()
    while True:
        b = await read(1)
        if not b:
            if raw:
                raise TruncatedContent(f"CAR stream ends inside a {what} length")
            return None
        raw += b
        if not b[0] & 0x80:
            return decode_varint(bytes(raw))[0]
        if len(raw) > 9:
            raise MalformedBlock(f"CAR {what} length varint too long")


class CarReader:
    """Reads a CARv1 stream: `await roots()`, then `async for cid, block in blocks()`.

    `max_bytes` caps the total bytes of the stream (a hostile server could send forever)."""

    def __init__(self, read: Reader, max_bytes: int | None = None):
        self._read = read
        self._max = max_bytes
        self._seen = 0
        self._roots: list[CID] | None = None

    async def _take(self, n: int, what: str) -> bytes:
        self._seen += n
        if self._max is not None and self._seen > self._max:
            raise ContentTooLarge(f"CAR stream exceeds the cap of {self._max} bytes")
        data = await self._read(n)
        if len(data) != n:
            raise TruncatedContent(f"CAR stream ends inside a {what} ({len(data)} of {n} bytes)")
        return data

    async def roots(self) -> list[CID]:
        if self._roots is None:
            n = await _read_varint(self._read, "header")
            if n is None:
                raise TruncatedContent("empty CAR stream")
            if n == 0 or n > MAX_HEADER_BYTES:
                raise MalformedBlock(f"CAR header length {n} out of range")
            self._roots = decode_header(await self._take(n, "header"))
        return self._roots

    async def blocks(self) -> AsyncIterator[tuple[CID, bytes]]:
        await self.roots()
        while True:
            n = await _read_varint(self._read, "section")
            if n is None:
                return
            if n == 0 or n > MAX_SECTION_BYTES:
                raise MalformedBlock(f"CAR section length {n} out of range")
            section = await self._take(n, "section")
            try:
                cid, pos = CID.from_bytes(section)
            except InvalidCID as e:
                raise MalformedBlock(f"CAR section CID: {e}") from e
            block = section[pos:]
            try:
                cid.verify(block)
            except BlockHashMismatch as e:
                raise BlockHashMismatch(f"CAR block does not hash to its CID {cid}") from e
            yield cid, block


async def read_car(data: bytes, max_bytes: int | None = None) -> tuple[list[CID], list[tuple[CID, bytes]]]:
    """Read a whole in-memory CAR (verified); mostly for tests and small archives."""
    reader = CarReader(bytes_reader(data), max_bytes)
    roots = await reader.roots()
    return roots, [b async for b in reader.blocks()]
