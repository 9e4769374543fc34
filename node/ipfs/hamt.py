"""HAMT-sharded UnixFS directories, as Kubo makes them for large folders.

Kubo switches a folder to a HAMT when its estimated link data (sum of name length + CID bytes)
exceeds 256 KiB. Shards have 256 slots; an entry's slot at depth d is byte d of the big-endian
64-bit murmur3 (x64, seed 0) hash of its name. A slot holding one entry links to it under the
name "<2 upper-case hex digits><name>"; a slot where several entries collide links to a
sub-shard under just the two hex digits. Shard data: UnixFS {Type: HAMTShard, Data: bitfield
of used slots (big-endian, leading zero bytes dropped), hashType: murmur3 (0x22), fanout: 256}.
The result does not depend on insertion order, so building it level by level equals Kubo's
incremental inserts.
"""

from __future__ import annotations

from node.ipfs.cid import CID, CODEC_DAG_PB, encode_varint
from node.ipfs.dagpb import T_HAMT, encode_link, encode_node
from node.ipfs.errors import UnsupportedContent

FANOUT = 256
MURMUR3_X64_64 = 0x22
_M = (1 << 64) - 1


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M


def _fmix(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _M
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _M
    return k ^ (k >> 33)


def murmur3_64(data: bytes) -> int:
    """The first 64 bits of MurmurHash3_x64_128 with seed 0 (Go's `murmur3.New64().Sum64()`)."""
    c1, c2 = 0x87C37B91114253D5, 0x4CF5AD432745937F
    h1 = h2 = 0
    n = len(data)
    nblocks = n // 16
    for i in range(nblocks):
        k1 = int.from_bytes(data[16 * i : 16 * i + 8], "little")
        k2 = int.from_bytes(data[16 * i + 8 : 16 * i + 16], "little")
        h1 ^= (_rotl((k1 * c1) & _M, 31) * c2) & _M
        h1 = (((_rotl(h1, 27) + h2) & _M) * 5 + 0x52DCE729) & _M
        h2 ^= (_rotl((k2 * c2) & _M, 33) * c1) & _M
        h2 = (((_rotl(h2, 31) + h1) & _M) * 5 + 0x38495AB5) & _M
    tail = data[16 * nblocks :]
    if len(tail) > 8:
        h2 ^= (_rotl((int.from_bytes(tail[8:], "little") * c2) & _M, 33) * c1) & _M
    if tail:
        h1 ^= (_rotl((int.from_bytes(tail[:8], "little") * c1) & _M, 31) * c2) & _M
    h1 ^= n
    h2 ^= n
    h1 = (h1 + h2) & _M
    h2 = (h2 + h1) & _M
    h1, h2 = _fmix(h1), _fmix(h2)
    return (h1 + h2) & _M


def shard_data(bitfield: int) -> bytes:
    bf = bitfield.to_bytes(FANOUT // 8, "big").lstrip(b"\0")
    out = b"\x08" + encode_varint(T_HAMT)
    if bf:
        out += b"\x12" + encode_varint(len(bf)) + bf
    return out + b"\x28" + encode_varint(MURMUR3_X64_64) + b"\x30" + encode_varint(FANOUT)


def build_hamt(entries, version: int, sink, imported_cls):
    """entries: [(name bytes, Imported)] -> Imported of the root shard."""
    items = [(name, child, murmur3_64(name).to_bytes(8, "big")) for name, child in entries]
    return _shard(items, 0, version, sink, imported_cls)


def _shard(items, depth: int, version: int, sink, imported_cls):
    buckets: dict[int, list] = {}
    for item in items:
        buckets.setdefault(item[2][depth], []).append(item)
    links: list[bytes] = []
    tsizes = 0
    bitfield = 0
    for idx in sorted(buckets):
        group = buckets[idx]
        bitfield |= 1 << idx
        prefix = f"{idx:02X}".encode()
        if len(group) == 1:
            name, child, _ = group[0]
            links.append(encode_link(child.cid.to_bytes(), prefix + name, child.tsize))
        else:
            if depth + 1 >= 8:
                raise UnsupportedContent("names whose 64-bit hashes collide fully cannot be sharded")
            child = _shard(group, depth + 1, version, sink, imported_cls)
            links.append(encode_link(child.cid.to_bytes(), prefix, child.tsize))
        tsizes += child.tsize
    block = encode_node(links, shard_data(bitfield))
    cid = CID.of(version, CODEC_DAG_PB, block)
    if sink:
        sink(cid, block)
    return imported_cls(cid, len(block) + tsizes, 0)
