"""GatewayClient against a local trustless gateway serving real blocks and CARs from an
embedded store, honest and hostile (flipped byte, wrong block, truncated stream, missing
block, oversized content, wrong root, a gateway that is not trustless)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from node.ipfs import (
    AllBackendsFailed,
    BackendError,
    BlockHashMismatch,
    ContentCache,
    ContentTooLarge,
    EmbeddedStore,
    GatewayClient,
    MalformedBlock,
    OperationNotSupported,
    TruncatedContent,
    cid_of_path,
    fetch_verified,
)


import ipfs_gateway_server as gw  # tests/integration is on pytest's pythonpath


async def _start(store: EmbeddedStore):
    app = gw.make_gateway_app(store)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server, app[gw.STATE], f"http://127.0.0.1:{server.port}"


@pytest.fixture
async def gateway(tmp_path):
    store = EmbeddedStore(tmp_path / "gw-store")
    server, state, url = await _start(store)
    yield state, url
    await server.close()


@pytest.fixture
def cache(tmp_path) -> ContentCache:
    return ContentCache(tmp_path / "cache", 10**8)


def make_tree(root: Path) -> Path:
    rng = random.Random(21)
    for rel, size in (("adapter_config.json", 50), ("adapter_model.safetensors", 800_000), ("sub/tokens.txt", 10)):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(size))
    return root


def nothing_left(cache: ContentCache) -> bool:
    return os.listdir(cache.entries_dir) == [] and os.listdir(cache.tmp_dir) == []


@pytest.mark.parametrize("use_car", [True, False])
@pytest.mark.parametrize("version", [0, 1])
async def test_fetches_and_verifies_a_folder(tmp_path, gateway, cache, use_car, version):
    state, url = gateway
    src = make_tree(tmp_path / "adapter")
    cid = await state.store.add_path(src, version=version)
    async with GatewayClient([url], use_car=use_car) as client:
        path = await fetch_verified([client], cid, 10**7, cache)
    assert cid_of_path(path, version) == cid
    assert (path / "adapter_model.safetensors").read_bytes() == (src / "adapter_model.safetensors").read_bytes()
    fmt = "format=car" if use_car else "format=raw"
    assert all(fmt in r for r in state.requests)


async def test_falls_back_to_raw_blocks_when_car_is_refused(tmp_path, gateway, cache):
    state, url = gateway
    cid = await state.store.add_path(make_tree(tmp_path / "a"))
    state.tamper = "no_car"
    async with GatewayClient(url) as client:
        await fetch_verified([client], cid, 10**7, cache)
    assert "format=car" in state.requests[0] and "format=raw" in state.requests[-1]


@pytest.mark.parametrize(
    ("tamper", "error"),
    [
        ("flip", BlockHashMismatch),
        ("wrong_block", BlockHashMismatch),
        ("truncate", TruncatedContent),
        ("abort", TruncatedContent),
        ("missing", TruncatedContent),
        ("wrong_root", MalformedBlock),
        ("not_car", BackendError),
    ],
)
async def test_hostile_gateways_are_refused_and_nothing_is_cached(tmp_path, gateway, cache, tamper, error):
    state, url = gateway
    cid = await state.store.add_path(make_tree(tmp_path / "a"))
    state.tamper = tamper
    async with GatewayClient(url, retries=0) as client:
        with pytest.raises(AllBackendsFailed) as info:
            await fetch_verified([client], cid, 10**7, cache)
        assert isinstance(info.value.errors[0][1], error), info.value
        with pytest.raises(error):
            await client.fetch(cid, tmp_path / "direct", 10**7)
    assert nothing_left(cache)
    assert list((tmp_path / "direct").iterdir()) == []


async def test_flipped_raw_block_is_refused_in_block_mode(tmp_path, gateway, cache):
    state, url = gateway
    cid = await state.store.add_path(make_tree(tmp_path / "a"))
    state.tamper = "flip"
    async with GatewayClient(url, use_car=False) as client:
        with pytest.raises(BlockHashMismatch):
            await client.fetch(cid, tmp_path / "o", 10**7)


async def test_oversized_content_is_refused(tmp_path, gateway, cache):
    state, url = gateway
    cid = await state.store.add_path(make_tree(tmp_path / "a"))
    async with GatewayClient(url) as client:
        with pytest.raises(ContentTooLarge):
            await client.fetch(cid, tmp_path / "o", max_bytes=100_000)
    assert list((tmp_path / "o").iterdir()) == []


async def test_gateways_are_tried_in_order_until_one_serves_verified_content(tmp_path, cache):
    src = make_tree(tmp_path / "a")
    bad_store, good_store = EmbeddedStore(tmp_path / "bad"), EmbeddedStore(tmp_path / "good")
    cid = await bad_store.add_path(src)
    await good_store.add_path(src)
    bad, bad_state, bad_url = await _start(bad_store)
    good, good_state, good_url = await _start(good_store)
    bad_state.tamper = "flip"
    try:
        from chain.devchain import free_port

        dead_url = f"http://127.0.0.1:{free_port()}"
        async with GatewayClient([dead_url, bad_url, good_url], retries=0, timeout=2) as client:
            path = await fetch_verified([client], cid, 10**7, cache)
        assert cid_of_path(path) == cid
        assert bad_state.requests and good_state.requests
    finally:
        await bad.close()
        await good.close()


async def test_gateways_are_read_only():
    client = GatewayClient(["http://127.0.0.1:9"])
    with pytest.raises(OperationNotSupported):
        await client.add_path("x")
    with pytest.raises(OperationNotSupported):
        await client.pin("QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o")
    with pytest.raises(ValueError):
        GatewayClient([])
