"""KuboClient against a Kubo-RPC-wire-compatible server (Kubo cannot be installed here; the
server in kubo_wire_server.py follows Kubo's RPC reference and computes with the real CID code)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from node.ipfs import (
    AllBackendsFailed,
    BackendError,
    CID,
    ContentCache,
    ContentTooLarge,
    EmbeddedStore,
    IntegrityError,
    KuboClient,
    KuboError,
    cid_of_path,
    fetch_verified,
)


import kubo_wire_server as wire  # tests/integration is on pytest's pythonpath


@pytest.fixture
async def kubo(tmp_path):
    app = wire.make_kubo_app(EmbeddedStore(tmp_path / "kubo-repo"))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    client = KuboClient(f"http://127.0.0.1:{server.port}", retries=2, backoff=0.01)
    yield client, app[wire.STATE]
    await client.close()
    await server.close()


def make_tree(root: Path) -> Path:
    rng = random.Random(11)
    for rel, size in (
        ("adapter_config.json", 40),
        ("adapter_model.safetensors", 900_000),
        ("docs/a b.txt", 3),
        ("docs/ü/deep", 1),
    ):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(size))
    return root


async def test_version(kubo):
    client, _ = kubo
    v = await client.version()
    assert v["Version"] and "System" in v


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("wrap", [False, True])
async def test_add_folder_and_file_returns_the_kubo_cid(tmp_path, kubo, version, wrap):
    client, state = kubo
    src = make_tree(tmp_path / "adapter")
    cid = await client.add_path(src, version=version, wrap=wrap)
    assert cid == cid_of_path(src, version, wrap=wrap)
    single = src / "adapter_model.safetensors"
    assert await client.add_path(single, version=version) == cid_of_path(single, version)
    assert state.store.pinned()  # pin=true by default


async def test_add_speaks_kubos_wire_format(tmp_path, kubo):
    """Pins down what the client assumes of Kubo's RPC: POST, these query flags, multipart parts
    named with URL-escaped relative paths, each folder's part before its contents."""
    client, state = kubo
    src = make_tree(tmp_path / "adapter")
    await client.add_path(src)
    assert state.calls[-1] == "add"
    assert state.queries[-1] == {
        "cid-version": "1",
        "raw-leaves": "true",
        "wrap-with-directory": "false",
        "pin": "true",
        "progress": "false",
    }
    assert state.part_names == [
        "adapter",
        "adapter%2Fadapter_config.json",
        "adapter%2Fadapter_model.safetensors",
        "adapter%2Fdocs",
        "adapter%2Fdocs%2Fa%20b.txt",
        "adapter%2Fdocs%2F%C3%BC",
        "adapter%2Fdocs%2F%C3%BC%2Fdeep",
    ]
    await client.add_path(src, version=0, wrap=True, pin=False)
    assert state.queries[-1]["cid-version"] == "0" and state.queries[-1]["raw-leaves"] == "false"
    assert state.queries[-1]["wrap-with-directory"] == "true" and state.queries[-1]["pin"] == "false"


async def test_cat_ls_pin_and_verified_fetch(tmp_path, kubo):
    client, _ = kubo
    src = make_tree(tmp_path / "adapter")
    cid = await client.add_path(src)
    links = {link["Name"]: link for link in await client.ls(cid)}
    assert set(links) == {"adapter_config.json", "adapter_model.safetensors", "docs"}
    assert links["docs"]["Type"] == 1 and links["adapter_model.safetensors"]["Size"] == 900_000
    weights = links["adapter_model.safetensors"]["Hash"]
    assert await client.cat(weights, max_bytes=10**6) == (src / "adapter_model.safetensors").read_bytes()
    await client.pin(cid)
    cache = ContentCache(tmp_path / "cache", 10**8)
    path = await fetch_verified([client], cid, 10**7, cache)
    assert (path / "docs" / "ü" / "deep").read_bytes() == (src / "docs" / "ü" / "deep").read_bytes()
    assert cid_of_path(path) == cid


async def test_kubo_error_bodies_become_clear_errors(tmp_path, kubo):
    client, _ = kubo
    folder_cid = await client.add_path(make_tree(tmp_path / "adapter"))
    with pytest.raises(KuboError, match="this dag node is a directory") as err:
        await client.cat(folder_cid, 10**6)
    assert err.value.code == 0 and err.value.status == 500
    with pytest.raises(KuboError, match="block was not found"):
        await client.ls(str(CID.of(1, 0x70, b"unknown")))
    with pytest.raises(KuboError, match="invalid path"):
        await client._json("ls", {"arg": "not-a-cid"})


async def test_retries_transient_failures_then_gives_a_clear_error(kubo):
    client, state = kubo
    state.fail_next = [503, 502]
    assert (await client.version())["Version"]
    state.fail_next = [503, 503, 503, 503]
    with pytest.raises(BackendError, match="after 3 tries"):
        await client.version()


async def test_a_stalled_kubo_times_out_with_a_clear_error(kubo):
    client, state = kubo
    state.delay = 2.0
    async with KuboClient(client.url, timeout=0.2, retries=1, backoff=0.01) as quick:
        with pytest.raises(BackendError, match="Timeout.*after 2 tries"):
            await quick.version()


async def test_unreachable_kubo_is_a_backend_error():
    from chain.devchain import free_port

    async with KuboClient(f"http://127.0.0.1:{free_port()}", retries=1, backoff=0.01, timeout=2) as client:
        with pytest.raises(BackendError, match="ClientConnectorError"):
            await client.version()


async def test_tampered_blocks_from_kubo_are_refused_and_nothing_is_cached(tmp_path, kubo):
    client, state = kubo
    src = make_tree(tmp_path / "adapter")
    cid = await client.add_path(src)
    cache = ContentCache(tmp_path / "cache", 10**8)

    def flip(c: CID, block: bytes) -> bytes:
        return block[:-1] + bytes([block[-1] ^ 1]) if c.codec == 0x55 and len(block) > 1000 else block

    state.tamper_block = flip
    with pytest.raises(AllBackendsFailed, match="BlockHashMismatch"):
        await fetch_verified([client], cid, 10**7, cache)
    assert os.listdir(cache.entries_dir) == [] and os.listdir(cache.tmp_dir) == []
    file_cid = cid_of_path(src / "adapter_model.safetensors")
    state.tamper_cat = lambda body: body[:-1]  # one byte short
    with pytest.raises(IntegrityError, match="do not hash"):
        await client.cat(file_cid, 10**7)
    with pytest.raises(ContentTooLarge):
        await client.cat(file_cid, 1000)


async def test_add_refuses_a_cid_kubo_made_with_other_settings(tmp_path, kubo, monkeypatch):
    """If the daemon's answer differs from the local computation, add_path says so."""
    client, _ = kubo
    f = tmp_path / "f"
    f.write_bytes(b"data")
    import node.ipfs.kubo as kubo_mod

    monkeypatch.setattr(kubo_mod, "cid_of_path", lambda *a, **k: "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o")
    with pytest.raises(IntegrityError, match="hashes to"):
        await client.add_path(f)
