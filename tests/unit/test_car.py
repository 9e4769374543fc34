"""CARv1 reading (verified per block) and writing, cross-checked with aleph-cid's CAR writer."""

from __future__ import annotations

import filecmp
import random
from pathlib import Path

import aleph_cid
import pytest

from node.ipfs import BlockHashMismatch, CID, ContentTooLarge, MalformedBlock, TruncatedContent, UnsupportedContent
from node.ipfs.car import CarReader, bytes_reader, car_section, encode_header, read_car, write_car
from node.ipfs.cid import CODEC_RAW, encode_varint
from node.ipfs.exporter import export_dag
from node.ipfs.importer import ImportParams, import_path


def make_tree(root: Path) -> Path:
    rng = random.Random(3)
    for rel, size in (("a.json", 30), ("w.safetensors", 600_000), ("sub/x.bin", 5), ("sub/y/z", 262_144)):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(size))
    return root


def dag_blocks(path: Path, version: int = 1) -> tuple[CID, list[tuple[CID, bytes]]]:
    blocks: list[tuple[CID, bytes]] = []
    root = import_path(path, ImportParams(version), sink=lambda c, b: blocks.append((c, b))).cid
    return root, blocks


async def test_reads_a_car_written_by_aleph_cid_and_rebuilds_the_folder(tmp_path):
    src = make_tree(tmp_path / "src")
    car = tmp_path / "x.car"
    root_text = aleph_cid.write_folder_car(src, car, cid_version=1)
    roots, blocks = await read_car(car.read_bytes())
    assert [str(r) for r in roots] == [root_text]
    by_cid = {c: b for c, b in blocks}

    async def get(cid):
        return by_cid[cid]

    out = await export_dag(roots[0], get, tmp_path / "out", max_bytes=10**8)
    cmp = filecmp.dircmp(src, out)
    assert not cmp.diff_files and not cmp.left_only and not cmp.right_only
    assert filecmp.cmp(src / "w.safetensors", out / "w.safetensors", shallow=False)


async def test_our_car_is_read_by_aleph_cid_and_round_trips(tmp_path):
    root, blocks = dag_blocks(make_tree(tmp_path / "src"), version=0)
    data = b"".join(write_car([root], blocks))
    (tmp_path / "ours.car").write_bytes(data)
    assert aleph_cid.read_carv1_root(tmp_path / "ours.car") == str(root)
    roots, got = await read_car(data)
    assert roots == [root] and got == blocks


def _car(blocks, roots=None) -> bytes:
    return b"".join(write_car(roots or [blocks[0][0]], blocks))


def _blocks():
    return [(CID.of(1, CODEC_RAW, d), d) for d in (b"alpha" * 100, b"beta" * 100)]


async def test_flipped_byte_is_refused():
    blocks = _blocks()
    cid, data = blocks[1]
    blocks[1] = (cid, data[:10] + bytes([data[10] ^ 0x40]) + data[11:])
    with pytest.raises(BlockHashMismatch, match=str(cid)):
        await read_car(_car(blocks))


async def test_wrong_block_under_a_cid_is_refused():
    blocks = _blocks()
    blocks[1] = (blocks[1][0], blocks[0][1])
    with pytest.raises(BlockHashMismatch):
        await read_car(_car(blocks))


@pytest.mark.parametrize("cut", [1, 5, -1, -50])
async def test_truncated_stream_is_refused(cut):
    data = _car(_blocks())
    with pytest.raises(TruncatedContent):
        await read_car(data[:cut])


async def test_stream_cap_and_hostile_lengths():
    data = _car(_blocks())
    with pytest.raises(ContentTooLarge):
        await read_car(data, max_bytes=len(data) - 10)
    header = encode_header([_blocks()[0][0]])
    huge_section = encode_varint(len(header)) + header + encode_varint(1 << 40)
    with pytest.raises(MalformedBlock, match="out of range"):
        await read_car(huge_section)
    with pytest.raises(MalformedBlock, match="header length"):
        await read_car(encode_varint(1 << 30) + b"x")
    with pytest.raises(MalformedBlock):  # a section whose CID is garbage
        await read_car(encode_varint(len(header)) + header + encode_varint(4) + b"\x07\x07\x07\x07")


async def test_header_must_be_carv1_with_cid_roots():
    v2 = b"\xa1\x67version\x02"
    with pytest.raises(UnsupportedContent, match="CARv2"):
        await read_car(encode_varint(len(v2)) + v2)
    not_map = b"\x83\x01\x02\x03"
    with pytest.raises(MalformedBlock):
        await read_car(encode_varint(len(not_map)) + not_map)
    no_roots = b"\xa1\x67version\x01"
    with pytest.raises(MalformedBlock, match="roots"):
        await read_car(encode_varint(len(no_roots)) + no_roots)


async def test_reader_streams_block_by_block():
    blocks = _blocks()
    reader = CarReader(bytes_reader(_car(blocks)))
    assert await reader.roots() == [blocks[0][0]]
    seen = [cid async for cid, _ in reader.blocks()]
    assert seen == [c for c, _ in blocks]
    assert car_section(*blocks[0]).endswith(blocks[0][1])
