"""Adapter tiers (slots <- host LRU <- disk) on a tiny real Llama model and real PEFT folders.

The model is a randomly initialised 2-layer `LlamaForCausalLM` (the real transformers class at
toy size) so the bank's buffers and the adapter files are small and the tests fast; the code
under test is the same that serves SmolLM2.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from inference.adapter_factory import make_random_adapter
from inference.adapters import load_adapter_weights, validate_adapter
from inference.errors import SlotsExhausted, UnknownAdapter
from inference.lora import inject_multi_lora
from inference.tiers import AdapterTiers

MODEL_ID = "tiny-llama"
ALL7 = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture
def setup(tiny, tmp_path):
    """(tiers, folders) with 3 slots, host LRU of 2, five registered adapters."""
    folders = {
        f"ad{i}": make_random_adapter(
            tmp_path / f"ad{i}", tiny, rank=2 + i, target_modules=ALL7[: 2 + i], seed=i, base_model_id=MODEL_ID
        )
        for i in range(5)
    }
    bank = inject_multi_lora(tiny, ALL7, num_slots=3, max_rank=8)
    tiers = AdapterTiers(bank, host_cache_size=2, loader=load_adapter_weights)
    for aid, f in folders.items():
        tiers.register(aid, f, validate_adapter(f, tiny.config, base_model_id=MODEL_ID, max_rank=8))
    yield tiers, folders
    tiers.close()


def wait_slot(tiers, aid, protect=frozenset(), timeout=20):
    t = time.monotonic()
    while True:
        tiers.poll()
        s = tiers.acquire(aid, protect)
        if s is not None:
            return s
        assert time.monotonic() - t < timeout, f"{aid} never became resident"
        time.sleep(0.002)


def assert_slot_holds(tiers, slot, key, pair):
    """The layer's delta for a token routed to `slot` is x @ A.T @ B.T of these weights."""
    layer = tiers.bank.layers[key]
    x = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), tiers.bank.routing([slot] * 3):
        delta = layer(x) - layer.base_layer(x)
    torch.testing.assert_close(delta, x @ pair.a.T @ pair.b.T, atol=1e-5, rtol=1e-4)


def test_first_use_loads_in_background_then_hits(setup):
    tiers, folders = setup
    assert tiers.acquire("ad0") is None  # started a disk load, did not block
    s = wait_slot(tiers, "ad0")
    st = tiers.stats()
    assert st["disk_loads"] == 1 and st["slot_loads"] == 1 and st["host_resident"] == 1
    # the slot holds exactly the adapter's (scaled) weights
    w = load_adapter_weights(folders["ad0"], tiers.spec("ad0"))
    (layer, module), pair = next(iter(w.pairs.items()))
    assert_slot_holds(tiers, s, (layer, module), pair)
    tiers.release(s)
    assert tiers.acquire("ad0") == s
    assert tiers.stats()["slot_hit_rate"] == pytest.approx(2 / 3)  # hits: wait_slot's + this; 1 miss


def test_slots_in_use_are_never_evicted_and_waiters_just_wait(setup):
    tiers, _ = setup
    held = [wait_slot(tiers, f"ad{i}") for i in range(3)]  # all 3 slots busy (refcount 1)
    for _ in range(20):
        tiers.poll()
        assert tiers.acquire("ad3") is None
        time.sleep(0.002)
    assert tiers.stats()["slot_evictions"] == 0
    assert sorted(tiers.stats()["resident_adapters"]) == ["ad0", "ad1", "ad2"]
    tiers.release(held[1])  # ad1 done: its slot is the only candidate
    s = wait_slot(tiers, "ad3")
    assert s == held[1] and tiers.slot_of("ad1") is None
    assert tiers.stats()["slot_evictions"] == 1


def test_lru_eviction_respects_protect(setup):
    tiers, _ = setup
    for i in range(3):
        tiers.release(wait_slot(tiers, f"ad{i}"))
        time.sleep(0.002)
    # ad0 is least recently used, but a waiting request wants it: ad1 goes instead
    tiers.release(wait_slot(tiers, "ad3", protect={"ad0"}))
    assert tiers.slot_of("ad0") is not None and tiers.slot_of("ad1") is None


def test_host_tier_is_an_lru_of_bounded_size(setup):
    tiers, _ = setup
    for i in range(3):
        tiers.release(wait_slot(tiers, f"ad{i}"))
    st = tiers.stats()
    assert st["host_resident"] == 2 and st["host_evictions"] == 1
    assert not tiers.in_host("ad0") and tiers.in_host("ad2")
    # ad3 evicts ad0's slot; ad0 comes back from disk (host miss), ad2 would be a host hit
    tiers.release(wait_slot(tiers, "ad3"))
    tiers.release(wait_slot(tiers, "ad0"))
    st = tiers.stats()
    assert st["disk_loads"] == 5 and st["host_hit_rate"] == 0.0


def test_pinned_adapter_loads_by_itself_and_stays(setup):
    tiers, _ = setup
    tiers.pin("ad4")
    t = time.monotonic()
    while tiers.slot_of("ad4") is None:
        tiers.poll()
        assert time.monotonic() - t < 20
        time.sleep(0.002)
    for i in range(4):  # churn the two other slots
        tiers.release(wait_slot(tiers, f"ad{i}"))
    assert tiers.slot_of("ad4") is not None and tiers.in_host("ad4")
    tiers.pin("ad0")
    with pytest.raises(SlotsExhausted, match="must stay free"):
        tiers.pin("ad1")
    tiers.unpin("ad4")
    tiers.unpin("ad0")
    with pytest.raises(UnknownAdapter):
        tiers.pin("nope")


def test_reregistering_never_reuses_stale_weights(setup, tiny, tmp_path):
    tiers, _ = setup
    s = wait_slot(tiers, "ad1")
    tiers.release(s)
    new = make_random_adapter(tmp_path / "new", tiny, rank=3, target_modules=ALL7[:3], seed=99, base_model_id=MODEL_ID)
    tiers.register("ad1", new, validate_adapter(new, tiny.config, base_model_id=MODEL_ID, max_rank=8))
    assert tiers.slot_of("ad1") is None and not tiers.in_host("ad1")
    s2 = wait_slot(tiers, "ad1")
    w = load_adapter_weights(new, tiers.spec("ad1"))
    for key, pair in w.pairs.items():
        assert_slot_holds(tiers, s2, key, pair)


def test_a_file_broken_after_validation_is_reported_not_loaded(setup):
    tiers, folders = setup
    (folders["ad2"] / "adapter_model.safetensors").write_bytes(b"\x00" * 16)
    tiers.acquire("ad2")
    t = time.monotonic()
    failed = []
    while not failed:
        failed = tiers.poll()
        assert time.monotonic() - t < 20
        time.sleep(0.002)
    assert failed[0][0] == "ad2" and "safetensors" in failed[0][1]
    st = tiers.stats()
    assert st["load_failures"] == 1 and st["slots_resident"] == 0
    assert tiers.failure("ad2")


def test_disk_reads_run_on_another_thread(setup):
    """The owner thread keeps going while a (slow) disk read is in flight."""
    tiers, _ = setup
    gate = threading.Event()
    real = tiers._loader
    seen = []

    def slow_loader(folder, spec):
        seen.append(threading.current_thread().name)
        gate.wait(10)
        return real(folder, spec)

    tiers._loader = slow_loader
    t0 = time.monotonic()
    assert tiers.acquire("ad3") is None
    for _ in range(5):
        assert tiers.poll() == [] and tiers.acquire("ad3") is None
    assert time.monotonic() - t0 < 1.0 and tiers.pending
    gate.set()
    wait_slot(tiers, "ad3")
    assert seen and seen[0].startswith("adapter-loader") and seen[0] != threading.current_thread().name


def test_wait_returns_when_the_loader_hands_off(setup):
    """`wait` blocks on the loader's hand-off (no sleep-and-poll): False while the read is held
    back, True as soon as it lands; the next poll then makes the slot ready. The split of a
    load's time is recorded (loader read, slot copy)."""
    tiers, _ = setup
    gate = threading.Event()
    real = tiers._loader
    tiers._loader = lambda folder, spec: (gate.wait(10), real(folder, spec))[1]
    assert tiers.acquire("ad1") is None
    assert tiers.wait(0.05) is False  # nothing landed: it timed out
    threading.Timer(0.05, gate.set).start()
    t0 = time.monotonic()
    assert tiers.wait(10) is True and time.monotonic() - t0 < 5
    tiers.poll()
    assert tiers.acquire("ad1") is not None
    c = tiers.counters
    assert len(c.read_seconds) == 1 and c.read_seconds[0] >= 0.05 and len(c.copy_seconds) == 1


def test_unregister(setup):
    tiers, _ = setup
    tiers.unregister("ad0")
    with pytest.raises(UnknownAdapter):
        tiers.acquire("ad0")
    with pytest.raises(UnknownAdapter):
        tiers.unregister("ad0")
    assert tiers.stats()["registered"] == 4
