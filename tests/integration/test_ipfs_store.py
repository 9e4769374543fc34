"""Embedded store, verified export and the content-addressed cache, including hostile DAGs
built by hand (entries named `..`, `a/b`, `/etc`, symlink nodes, lying sizes)."""

from __future__ import annotations

import filecmp
import os
import random
from pathlib import Path

import pytest

from node.ipfs import (
    AllBackendsFailed,
    BlockHashMismatch,
    CID,
    ContentCache,
    ContentNotFound,
    ContentTooLarge,
    EmbeddedStore,
    MalformedBlock,
    UnsafeEntry,
    cid_of_path,
    fetch_verified,
)
from node.ipfs.cid import CODEC_DAG_PB, CODEC_RAW
from node.ipfs.dagpb import T_DIRECTORY, T_FILE, T_SYMLINK, encode_link, encode_node, unixfs_data


def make_adapter(root: Path, weights: int = 700_000) -> Path:
    rng = random.Random(weights)
    root.mkdir(parents=True)
    (root / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16}\n')
    (root / "adapter_model.safetensors").write_bytes(rng.randbytes(weights))
    (root / "extra").mkdir()
    (root / "extra" / "README.md").write_text("notes\n")
    return root


def assert_same_tree(a: Path, b: Path) -> None:
    cmp = filecmp.dircmp(a, b)
    assert not (cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files)
    for f in cmp.common_files:
        assert filecmp.cmp(a / f, b / f, shallow=False)
    for d in cmp.common_dirs:
        assert_same_tree(a / d, b / d)


def leftovers(cache: ContentCache) -> list[str]:
    return sorted(os.listdir(cache.entries_dir)) + sorted(os.listdir(cache.tmp_dir))


@pytest.fixture
def store(tmp_path) -> EmbeddedStore:
    return EmbeddedStore(tmp_path / "store")


@pytest.fixture
def cache(tmp_path) -> ContentCache:
    return ContentCache(tmp_path / "cache", max_bytes=50_000_000)


@pytest.mark.parametrize("version", [0, 1])
async def test_add_then_fetch_round_trips_a_folder(tmp_path, store, version):
    src = make_adapter(tmp_path / "adapter")
    cid = await store.add_path(src, version=version)
    assert cid == cid_of_path(src, version)
    out = await store.fetch(cid, tmp_path / "out", max_bytes=10**7)
    assert out == tmp_path / "out" / cid
    assert_same_tree(src, out)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


async def test_single_file_and_pin(tmp_path, store):
    f = tmp_path / "w.bin"
    f.write_bytes(random.Random(1).randbytes(600_000))
    cid = await store.add_path(f)
    await store.pin(cid)
    assert cid in store.pinned()
    out = await store.fetch(cid, tmp_path / "o", 10**7)
    assert out.read_bytes() == f.read_bytes()
    with pytest.raises(ContentNotFound):
        await store.pin(str(CID.of(1, CODEC_RAW, b"never added")))


async def test_fetch_verified_caches_and_serves_hits(tmp_path, store, cache):
    src = make_adapter(tmp_path / "a")
    cid = await store.add_path(src)
    seen = []
    path = await fetch_verified([store], cid, 10**7, cache, progress=seen.append)
    assert path == cache.entries_dir / cid and sum(seen) == 700_000 + 27 + 6
    assert_same_tree(src, path)
    again = await fetch_verified([EmbeddedStore(tmp_path / "empty")], cid, 10**7, cache)
    assert again == path  # a hit asks no backend
    assert os.listdir(cache.tmp_dir) == []


async def test_concurrent_fetches_of_one_cid_share_one_entry(tmp_path, store, cache):
    import asyncio

    cid = await store.add_path(make_adapter(tmp_path / "a"))
    paths = await asyncio.gather(*(fetch_verified([store], cid, 10**7, cache) for _ in range(4)))
    assert len(set(paths)) == 1 and os.listdir(cache.entries_dir) == [cid]
    assert os.listdir(cache.tmp_dir) == []
    # Two fetches that finish at the same time: the second rename finds the entry already there.
    cache.remove(cid)
    with cache.workdir() as w1, cache.workdir() as w2:
        a = await store.fetch(cid, w1, 10**7)
        b = await store.fetch(cid, w2, 10**7)
        assert cache.commit(cid, a) == cache.commit(cid, b) == cache.entries_dir / cid
    assert os.listdir(cache.entries_dir) == [cid] and os.listdir(cache.tmp_dir) == []


async def test_a_rotten_block_on_disk_is_refused_and_the_next_backend_used(tmp_path, store, cache):
    src = make_adapter(tmp_path / "a")
    cid = await store.add_path(src)
    good = EmbeddedStore(tmp_path / "good")
    await good.add_path(src)
    leaf = next(c for c, _ in store.iter_dag(CID.parse(cid)) if c.codec == CODEC_RAW)
    p = store._block_path(leaf)
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 1
    p.write_bytes(bytes(data))
    with pytest.raises(AllBackendsFailed, match="BlockHashMismatch"):
        await fetch_verified([store], cid, 10**7, cache)
    assert leftovers(cache) == []
    path = await fetch_verified([store, good], cid, 10**7, cache)
    assert_same_tree(src, path)


async def test_oversized_content_is_refused_before_writing(tmp_path, store, cache):
    src = make_adapter(tmp_path / "a")
    cid = await store.add_path(src)
    with pytest.raises(AllBackendsFailed, match="ContentTooLarge"):
        await fetch_verified([store], cid, max_bytes=500_000, cache=cache)
    assert leftovers(cache) == []
    with pytest.raises(ContentTooLarge):
        await store.fetch(cid, tmp_path / "o", max_bytes=500_000)
    assert list((tmp_path / "o").iterdir()) == []


# --- hostile DAGs, made by hand -------------------------------------------------------------


def put(store: EmbeddedStore, block: bytes, codec: int = CODEC_DAG_PB) -> CID:
    cid = CID.of(1, codec, block)
    store.put_block(cid, block)
    return cid


def folder(store: EmbeddedStore, entries: list[tuple[str, CID]]) -> CID:
    links = [encode_link(c.to_bytes(), name.encode(), 10) for name, c in entries]
    return put(store, encode_node(links, unixfs_data(T_DIRECTORY)))


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "/etc", "..\\x", "nul\0"])
async def test_unsafe_entry_names_are_refused(tmp_path, store, cache, name):
    payload = put(store, b"owned", CODEC_RAW)
    evil = folder(store, [("ok.txt", payload), (name, payload)])
    with pytest.raises(AllBackendsFailed, match="UnsafeEntry"):
        await fetch_verified([store], str(evil), 10**6, cache)
    assert leftovers(cache) == []
    assert not (tmp_path / "owned").exists() and not (tmp_path / "etc").exists()


async def test_nested_traversal_and_symlink_nodes_are_refused(tmp_path, store):
    payload = put(store, b"x", CODEC_RAW)
    inner = folder(store, [("..", payload)])
    with pytest.raises(UnsafeEntry):
        await store.fetch(str(folder(store, [("sub", inner)])), tmp_path / "o", 10**6)
    link = put(store, encode_node([], unixfs_data(T_SYMLINK, data=b"/etc/passwd")))
    with pytest.raises(UnsafeEntry, match="symlink"):
        await store.fetch(str(folder(store, [("passwd", link)])), tmp_path / "o", 10**6)
    dup = folder(store, [("a", payload), ("a", payload)])
    with pytest.raises(UnsafeEntry, match="duplicate"):
        await store.fetch(str(dup), tmp_path / "o", 10**6)
    assert list((tmp_path / "o").iterdir()) == []


async def test_file_nodes_that_lie_about_sizes_are_refused(tmp_path, store):
    leaf = put(store, b"a" * 100, CODEC_RAW)
    lying = put(store, encode_node([encode_link(leaf.to_bytes(), b"", 100)], unixfs_data(T_FILE, filesize=100, blocksizes=[99])))
    with pytest.raises(MalformedBlock, match="declares"):
        await store.fetch(str(lying), tmp_path / "o", 10**6)
    # A small declared size cannot sneak a huge body past the cap either.
    big_leaf = put(store, b"b" * 5000, CODEC_RAW)
    sneaky = put(
        store, encode_node([encode_link(big_leaf.to_bytes(), b"", 10)], unixfs_data(T_FILE, filesize=10, blocksizes=[10]))
    )
    with pytest.raises((ContentTooLarge, MalformedBlock)):
        await store.fetch(str(sneaky), tmp_path / "o", max_bytes=1000)
    assert list((tmp_path / "o").iterdir()) == []


async def test_put_block_refuses_a_block_under_the_wrong_cid(store):
    with pytest.raises(BlockHashMismatch):
        store.put_block(CID.of(1, CODEC_RAW, b"one"), b"two")


# --- cache eviction -------------------------------------------------------------------------


async def test_eviction_by_size_keeps_pinned_and_recent_entries(tmp_path, store):
    cache = ContentCache(tmp_path / "c", max_bytes=2_500_000)
    cids = []
    for i in range(4):
        f = tmp_path / f"f{i}"
        f.write_bytes(random.Random(i).randbytes(1_000_000))
        cids.append(await store.add_path(f))
    await fetch_verified([store], cids[0], 10**7, cache)
    cache.pin(cids[0])
    await fetch_verified([store], cids[1], 10**7, cache)
    await fetch_verified([store], cids[2], 10**7, cache)  # 3 MB > 2.5 MB: evicts 1 (0 is pinned)
    assert cache.path_of(cids[1]) is None and cache.path_of(cids[0]) and cache.path_of(cids[2])
    await fetch_verified([store], cids[3], 10**7, cache)  # evicts 2; the pinned one stays
    assert {name for name, _, _ in cache.entries()} == {cids[0], cids[3]}
    assert cache.total_bytes() <= 2_500_000
    cache.unpin(cids[0])
    assert cache.evict() == [] and not cache.is_pinned(cids[0])


# --- HAMT-sharded folders -------------------------------------------------------------------


async def test_hamt_sharded_folder_round_trips(tmp_path, store):
    src = tmp_path / "big-folder"
    src.mkdir()
    for i in range(1400):
        (src / (f"{i:04d}-" + "s" * 200)).write_bytes(str(i).encode())
    cid = await store.add_path(src)
    out = await store.fetch(cid, tmp_path / "o", 10**7)
    assert len(os.listdir(out)) == 1400
    assert cid_of_path(out) == cid


def shard(store: EmbeddedStore, links: list[tuple[str, CID]]) -> CID:
    from node.ipfs.hamt import shard_data

    encoded = [encode_link(c.to_bytes(), name.encode(), 1) for name, c in links]
    return put(store, encode_node(encoded, shard_data(0b11)))


@pytest.mark.parametrize(
    ("links", "error"),
    [
        ([("00..", "file")], UnsafeEntry),
        ([("00a", "file"), ("01a", "file")], UnsafeEntry),  # duplicate across slots
        ([("zz-no-slot", "file")], MalformedBlock),
        ([("01", "file")], MalformedBlock),  # a sub-shard link that points to a file
    ],
)
async def test_hostile_hamt_entries_are_refused(tmp_path, store, links, error):
    payload = put(store, b"x", CODEC_RAW)
    evil = shard(store, [(name, payload) for name, _ in links])
    with pytest.raises(error):
        await store.fetch(str(evil), tmp_path / "o", 10**6)
    assert list((tmp_path / "o").iterdir()) == []
