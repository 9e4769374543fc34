"""Kubo-compatible CIDs, cross-checked against two implementations this code does not use:
Debian's `ipfs_cid` (Rust; prints Kubo-default CIDv0) and PyPI `aleph-cid` (Rust crate)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import aleph_cid
import pytest

from node.ipfs import CID, InvalidCID, UnsupportedContent, cid_of_bytes, cid_of_path
from node.ipfs.cid import CODEC_DAG_PB, CODEC_RAW, b58decode, b58encode
from node.ipfs.dagpb import T_DIRECTORY, T_FILE, T_HAMT, decode_node, decode_unixfs
from node.ipfs.importer import CHUNK_SIZE, MAX_LINKS, ImportParams, import_path

IPFS_CID = shutil.which("ipfs_cid")
needs_ipfs_cid = pytest.mark.skipif(IPFS_CID is None, reason="Debian package ipfs-cid not installed (make install adds it)")

SIZES = [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 10 * 1024 * 1024]


def ipfs_cid(path: Path) -> dict:
    out = subprocess.run([IPFS_CID, str(path)], capture_output=True, text=True, check=True).stdout
    return json.loads(out[: out.index("}") + 1])


def aleph_file(data: bytes, v1: bool) -> str:
    h = aleph_cid.CidHasher.for_ipfs_v1_raw_leaves() if v1 else aleph_cid.CidHasher.for_ipfs()
    h.update(data)
    return h.finalize()


def random_sizes() -> list[int]:
    rng = random.Random(5)
    return [rng.randrange(2, 3 * CHUNK_SIZE) for _ in range(4)] + [rng.randrange(3 * CHUNK_SIZE, 4 * 1024 * 1024)]


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- known vectors (from Kubo's own docs and outputs) --------------------------------------


def test_known_vectors(tmp_path):
    assert cid_of_path(write(tmp_path / "hw", b"hello world\n"), 0) == "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
    assert cid_of_path(write(tmp_path / "empty", b""), 0) == "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
    assert cid_of_path(write(tmp_path / "empty", b""), 1) == "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    (tmp_path / "emptydir").mkdir()
    assert cid_of_path(tmp_path / "emptydir", 0) == "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"
    assert cid_of_path(tmp_path / "emptydir", 1) == "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"


# --- files against both references ----------------------------------------------------------


@pytest.mark.parametrize("size", SIZES + random_sizes())
def test_file_cids_match_aleph_cid(tmp_path, size):
    data = random.Random(size).randbytes(size)
    path = write(tmp_path / "f", data)
    assert cid_of_path(path, 0) == aleph_file(data, v1=False)
    assert cid_of_path(path, 1) == aleph_file(data, v1=True)
    assert cid_of_bytes(data, 1) == cid_of_path(path, 1)


@needs_ipfs_cid
@pytest.mark.parametrize("size", SIZES + random_sizes())
def test_file_cids_match_debian_ipfs_cid(tmp_path, size):
    path = write(tmp_path / "f", random.Random(size).randbytes(size))
    ref = ipfs_cid(path)
    assert cid_of_path(path, 0) == ref["CIDv0"]
    # ipfs_cid's "CIDv1" is its CIDv0 root re-spelled as v1 (dag-pb leaves), not what
    # `ipfs add --cid-version=1` makes (raw leaves); pin that down so nobody compares the wrong thing.
    assert str(CID.parse(ref["CIDv0"]).to_v1()) == ref["CIDv1"]


@needs_ipfs_cid
def test_balanced_layout_past_one_node_of_links(tmp_path):
    """174 chunks fit one node; the 175th makes a second level (Kubo's balanced layout)."""
    for extra in (0, 1):
        path = tmp_path / f"z{extra}"
        with open(path, "wb") as f:
            f.truncate(MAX_LINKS * CHUNK_SIZE + extra)  # zeros: cheap to make, same layout rules
        assert cid_of_path(path, 0) == ipfs_cid(path)["CIDv0"]
    assert cid_of_path(path, 1) == aleph_file(path.read_bytes(), v1=True)
    root = import_path(path, ImportParams(version=0))
    assert root.size == MAX_LINKS * CHUNK_SIZE + 1


def test_single_chunk_v1_is_a_raw_block_and_larger_files_are_dag_pb(tmp_path):
    small = CID.parse(cid_of_path(write(tmp_path / "s", b"x" * CHUNK_SIZE), 1))
    big = CID.parse(cid_of_path(write(tmp_path / "b", b"x" * (CHUNK_SIZE + 1)), 1))
    assert (small.codec, big.codec) == (CODEC_RAW, CODEC_DAG_PB)


# --- folders --------------------------------------------------------------------------------


def make_tree(root: Path) -> Path:
    rng = random.Random(7)
    write(root / "adapter_config.json", b'{"r": 8}\n')
    write(root / "adapter_model.safetensors", rng.randbytes(CHUNK_SIZE * 2 + 17))
    write(root / "sub" / "deeper" / "a.bin", rng.randbytes(1000))
    write(root / "sub" / "B", b"")  # upper case sorts before lower case, as bytes
    write(root / "sub" / "é-ünïcode.txt", b"names are UTF-8\n")
    write(root / "sub" / "z" / "one", b"1")
    return root


@pytest.mark.parametrize("version", [0, 1])
def test_folder_cids_match_aleph_cid(tmp_path, version):
    root = make_tree(tmp_path / "model")
    assert cid_of_path(root, version) == aleph_cid.hash_folder(root, cid_version=version)


def test_hidden_entries_are_skipped_like_kubo_add_r(tmp_path):
    root = make_tree(tmp_path / "m")
    before = cid_of_path(root)
    write(root / ".git" / "HEAD", b"ref\n")
    write(root / ".hidden", b"x")
    assert cid_of_path(root) == before
    assert cid_of_path(root, include_hidden=True) != before


def test_symlinks_and_specials_are_refused(tmp_path):
    root = make_tree(tmp_path / "m")
    os.symlink("/etc/passwd", root / "link")
    with pytest.raises(UnsupportedContent, match="symlink"):
        cid_of_path(root)
    with pytest.raises(UnsupportedContent, match="symlink"):
        cid_of_path(root / "link")


def _many(root: Path, n: int, name_len: int, longer_first: int = 0) -> Path:
    root.mkdir()
    for i in range(n):
        (root / f"{i:05d}".ljust(name_len + (longer_first if i == 0 else 0), "n")).write_bytes(str(i % 7).encode())
    return root


@pytest.mark.parametrize("version", [0, 1])
def test_large_folders_are_hamt_sharded_like_kubo(tmp_path, version):
    """Past 256 KiB of link data (name + CID bytes) Kubo shards the folder (HAMT, fanout 256)."""
    root = _many(tmp_path / "many", 1500, 200)
    (root / "sub").mkdir()
    (root / "sub" / "x").write_bytes(b"x")
    cid = cid_of_path(root, version)
    assert cid == aleph_cid.hash_folder(root, cid_version=version)
    blocks = {}
    import_path(root, ImportParams(version), sink=lambda c, b: blocks.__setitem__(c, b))
    fs = decode_unixfs(decode_node(blocks[CID.parse(cid)]).data)
    assert (fs.kind, fs.fanout) == (T_HAMT, 256)


def test_hamt_switch_point(tmp_path):
    """1024 names of 220 bytes + 36-byte CIDv1 = exactly 262144 bytes: current Kubo (boxo's
    `estimatedSize > threshold`) keeps a basic folder; aleph-cid follows the older `>=`.
    One byte more and both shard."""
    at = _many(tmp_path / "at", 1024, 220)
    fs = decode_unixfs(_root_block(at).data)
    assert fs.kind == T_DIRECTORY
    over = _many(tmp_path / "over", 1024, 220, longer_first=1)
    assert cid_of_path(over) == aleph_cid.hash_folder(over, cid_version=1)
    assert decode_unixfs(_root_block(over).data).kind == T_HAMT


def _root_block(path: Path):
    blocks = {}
    root = import_path(path, ImportParams(1), sink=lambda c, b: blocks.__setitem__(c, b)).cid
    return decode_node(blocks[root])


def test_murmur3_matches_published_values():
    from node.ipfs.hamt import murmur3_64

    # MurmurHash3_x64_128(seed 0), first 64 bits (as Go's murmur3.Sum64 and Python's mmh3.hash64).
    assert murmur3_64(b"") == 0
    assert murmur3_64(b"hello") == 0xCBD8A7B341BD9B02


# --- the codec itself -----------------------------------------------------------------------


def test_root_node_decodes_to_what_was_encoded(tmp_path):
    blocks = {}
    path = write(tmp_path / "f", bytes(3 * CHUNK_SIZE + 5))
    root = import_path(path, ImportParams(version=1), sink=lambda c, b: blocks.__setitem__(c, b))
    node = decode_node(blocks[root.cid])
    fs = decode_unixfs(node.data)
    assert fs.kind == T_FILE and fs.filesize == 3 * CHUNK_SIZE + 5
    assert fs.blocksizes == [CHUNK_SIZE] * 3 + [5]
    assert [link.name for link in node.links] == [""] * 4
    assert sum(link.tsize for link in node.links) == 3 * CHUNK_SIZE + 5  # raw leaves: Tsize = bytes
    for cid, block in blocks.items():
        cid.verify(block)


def test_cid_parsing_round_trips_and_refuses_garbage():
    v0 = CID.parse("QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o")
    v1 = v0.to_v1()
    assert str(v1) == "bafybeicg2rebjoofv4kbyovkw7af3rpiitvnl6i7ckcywaq6xjcxnc2mby"
    assert CID.parse(str(v1)) == v1
    assert CID.parse("z" + b58encode(v1.to_bytes())) == v1
    assert b58decode(b58encode(b"\0\0abc")) == b"\0\0abc"
    for bad in ["", "hello", "Qm" + "1" * 44, "bafy!!!", "x" + str(v1)[1:], str(v1)[:-4], "f01701220" + "00" * 32]:
        with pytest.raises(InvalidCID):
            CID.parse(bad)
    raw = bytes([1, 0x70, 0x11, 20]) + bytes(20)  # a sha1 multihash: not accepted
    from node.ipfs.cid import b32encode

    with pytest.raises(InvalidCID, match="sha2-256"):
        CID.parse("b" + b32encode(raw))
