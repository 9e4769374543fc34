"""Adapter lifecycle with real parts: registries on anvil → watcher → embedded IPFS store →
verified cache → PEFT validation → the real engine on the embedded base model.

Covers: good adapters loaded and served; a tampered one, one declaring another base model in its
PEFT config, one registered for another base model and an oversized one each end in a clear state
with a reason while the others keep serving; deprecation unloads; a new version replaces the old;
a restart (fresh lifecycle) brings `loaded` and crash-interrupted `fetching` rows back; on-demand
loading when prefetch is off."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from inference.adapter_factory import make_random_adapter
from inference.base_model import EMBEDDED_MODEL_ID, load_base_model
from inference.engine import Engine, EngineConfig
from inference.requests import GenerationRequest, SamplingParams
from node.db import Adapter, AdapterState, make_session_factory, migrate
from node.ipfs import ContentCache, EmbeddedStore
from node.daemon.lifecycle import AdapterLifecycle
from node.daemon.sync import registry_watcher

BASE = EMBEDDED_MODEL_ID


@pytest.fixture(scope="module")
def engine():
    # Our own base model instance: the engine injects multi-LoRA layers into it in place.
    base = load_base_model(device="cpu")
    eng = Engine(EngineConfig(num_slots=2, max_rank=16, max_batch_size=2, max_model_len=128, max_new_tokens=8), base=base).start()
    yield eng
    eng.close()


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path / 'node.db'}"
    migrate(url)
    f = make_session_factory(url)
    yield f
    f.kw["bind"].dispose()


def states(db) -> dict[int, tuple[str, str | None]]:
    with db() as s:
        return {a.id: (a.state, a.failure_reason) for a in s.scalars(select(Adapter).order_by(Adapter.id))}


def corrupt_one_block(store: EmbeddedStore, min_size: int = 1000) -> None:
    """A hostile store: one stored block's bytes no longer hash to its CID."""
    blocks = sorted((p for p in store.blocks_dir.rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size)
    victim = blocks[0]
    assert victim.stat().st_size >= min_size
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))


async def test_lifecycle_end_to_end(registries, db, engine, tmp_path):
    r = registries
    for a in list(engine.adapters()):
        engine.unregister_adapter(a)
    base = engine.base
    store = EmbeddedStore(tmp_path / "ipfs")
    hostile = EmbeddedStore(tmp_path / "hostile")
    cache = ContentCache(tmp_path / "cache", 1 << 30)

    async def publish(folder: Path, st: EmbeddedStore = store) -> str:
        return await st.add_path(folder)

    cid_good1 = await publish(make_random_adapter(tmp_path / "a1", base, rank=4, seed=1))
    cid_good2 = await publish(make_random_adapter(tmp_path / "a2", base, rank=8, seed=2))
    cid_wrong_cfg = await publish(
        make_random_adapter(tmp_path / "a3", base, rank=4, seed=3, base_model_id="meta-llama/Llama-3-8B")
    )
    cid_tampered = await publish(make_random_adapter(tmp_path / "a4", base, rank=4, seed=4), hostile)
    corrupt_one_block(hostile)
    cid_big = await publish(
        make_random_adapter(
            tmp_path / "a5",
            base,
            rank=16,
            seed=5,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        )
    )
    cid_v2 = await publish(make_random_adapter(tmp_path / "a1v2", base, rank=4, seed=11))
    big_bytes = sum(p.stat().st_size for p in (tmp_path / "a5").iterdir())
    small_bytes = sum(p.stat().st_size for p in (tmp_path / "a2").iterdir())
    assert small_bytes < big_bytes
    max_bytes = (small_bytes + big_bytes) // 2

    def reg(base_id, cid):
        return r.send("AdapterRegistry", "register", base_id, cid, 4, 10, 10_000, [], [], key_index=3)

    reg(BASE, cid_good1)  # 1
    reg(BASE, cid_good2)  # 2
    reg(BASE, cid_wrong_cfg)  # 3: PEFT config names another base model
    reg(BASE, cid_tampered)  # 4: bytes on IPFS don't match the CID
    reg("other/model", cid_good1)  # 5: registered for a base model this node does not serve
    reg(BASE, cid_big)  # 6: larger than adapter_max_bytes
    reg(BASE, "../../etc/passwd")  # 7: not a CID at all (anyone can register any string)

    watcher = registry_watcher(r.w3, db, r, confirmations=0)
    lc = AdapterLifecycle(
        db, engine, [store, hostile], cache, base_model_id=BASE, max_adapter_bytes=max_bytes, max_attempts=1, fetch_timeout_s=60
    )
    await watcher.sync_until_caught_up()
    await lc.run_once()
    await lc.drain()
    st = states(db)
    assert st[1] == ("loaded", None) and st[2] == ("loaded", None)
    assert st[3][0] == "failed" and "base model" in st[3][1]
    assert st[4][0] == "failed" and "BlockHashMismatch" in st[4][1], st[4]
    assert st[5][0] == "ignored" and "other/model" in st[5][1]
    assert st[6][0] == "failed" and "ContentTooLarge" in st[6][1], st[6]
    assert st[7][0] == "failed" and "InvalidCID" in st[7][1], st[7]
    assert sorted(engine.adapters()) == ["adapter-1", "adapter-2"]
    # failures are final (max_attempts=1): another pass changes nothing
    await lc.run_once()
    await lc.drain()
    assert states(db) == st
    # the loaded adapters serve
    for name in ("adapter-1", "adapter-2"):
        res = engine.generate(
            GenerationRequest(f"r-{name}", name, prompt="Hello", params=SamplingParams(max_tokens=2, temperature=0)), timeout=60
        )
        assert res.completion_tokens >= 1

    # deprecation unloads; a new version replaces the old weights
    r.send("AdapterRegistry", "deprecate", 2, key_index=3)
    r.send("AdapterRegistry", "publishVersion", 1, cid_v2, 4, 20, key_index=3)
    await watcher.sync_until_caught_up()
    await lc.run_once()
    await lc.drain()
    st = states(db)
    assert st[2] == ("deprecated", "deprecated on chain")
    assert st[1] == ("loaded", None)
    assert engine.adapters() == ["adapter-1"]
    assert lc._loaded == {1: cid_v2}
    assert cache.is_pinned(cid_v2) and not cache.is_pinned(cid_good2)

    # a reorg (confirmations = 0 here, so it reaches the DB) removes a loaded adapter's registration
    # (the last block): the engine must follow the canonical chain
    r.send("AdapterRegistry", "register", BASE, cid_good2, 4, 10, 10_000, [], [], key_index=3)  # 8
    await watcher.sync_until_caught_up()
    await lc.run_once()
    await lc.drain()
    assert sorted(engine.adapters()) == ["adapter-1", "adapter-8"]
    r.w3.provider.make_request("anvil_reorg", [1, []])
    await watcher.sync_until_caught_up()
    await lc.run_once()
    await lc.drain()
    assert watcher.reorgs == 1 and 8 not in states(db)
    assert engine.adapters() == ["adapter-1"]

    # restart: a fresh engine registry and lifecycle; a crash had left adapter 1 in `fetching`
    for a in list(engine.adapters()):
        engine.unregister_adapter(a)
    with db.begin() as s:
        s.get(Adapter, 1).state = AdapterState.FETCHING.value
    lc2 = AdapterLifecycle(db, engine, [], cache, base_model_id=BASE, max_adapter_bytes=max_bytes)
    await lc2.run_once()  # no backends at all: it must come from the verified cache
    await lc2.drain()
    assert states(db)[1] == ("loaded", None) and engine.adapters() == ["adapter-1"]


async def test_on_demand_loading_without_prefetch(registries, db, engine, tmp_path):
    r = registries
    for a in list(engine.adapters()):
        engine.unregister_adapter(a)
    store = EmbeddedStore(tmp_path / "ipfs")
    cid = await store.add_path(make_random_adapter(tmp_path / "a", engine.base, rank=4, seed=7))
    r.send("AdapterRegistry", "register", BASE, cid, 4, 10, 10_000, [], [], key_index=3)
    watcher = registry_watcher(r.w3, db, r, confirmations=0)
    await watcher.sync_until_caught_up()
    lc = AdapterLifecycle(
        db,
        engine,
        [store],
        ContentCache(tmp_path / "cache", 1 << 30),
        base_model_id=BASE,
        max_adapter_bytes=1 << 26,
        prefetch=False,
    )
    await lc.run_once()
    await lc.drain()
    assert states(db)[1][0] == "registered" and engine.adapters() == []
    status = await lc.ensure_loaded(1, timeout=60)
    assert status.state == "loaded" and status.model == "adapter-1"
    assert engine.adapters() == ["adapter-1"]
    assert await lc.ensure_loaded(99) is None
