"""Multi-LoRA layers against a per-token reference, on a tiny randomly initialised Llama (the
real transformers class, 2 layers, so every kernel strategy is exercised in milliseconds).
The real base model against PEFT is tests/unit/test_lora_vs_peft.py."""

from __future__ import annotations

import math

import pytest
import torch

from inference.adapter_factory import random_lora_tensors
from inference.adapters import AdapterSpec, AdapterWeights, LoraPair, ModuleShape, base_linear_shapes
from inference.errors import LoraSlotError
from inference.lora import MultiLoraLinear, inject_multi_lora

ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


def weights(cfg, rank, targets, seed, alpha=None):
    """AdapterWeights straight from random tensors (the folder path is tested in test_adapters)."""
    shapes = base_linear_shapes(cfg)
    raw = random_lora_tensors(cfg, rank, targets, seed=seed, init_scale=0.3)
    scaling = (alpha or 2 * rank) / rank
    pairs, mods = {}, []
    for key, a in raw.items():
        if ".lora_A." not in key:
            continue
        parts = key.split(".")
        layer, module = int(parts[4]), parts[6]
        b = raw[key.replace("lora_A", "lora_B")]
        pairs[(layer, module)] = LoraPair(a, b * scaling)
        mods.append(ModuleShape(layer, module, rank, *shapes[module], alpha or 2 * rank, scaling))
    spec = AdapterSpec(
        folder=None,
        base_model="tiny",
        rank=rank,
        alpha=alpha or 2 * rank,
        scaling=scaling,
        use_rslora=False,
        target_modules=tuple(targets),
        modules=tuple(mods),
        weights_bytes=0,
    )
    return AdapterWeights(spec=spec, pairs=pairs, dtype=torch.float32)


def reference(layer: MultiLoraLinear, x, token_slots, loaded):
    """Per-token loop: base + x_t @ A.T @ B.T with the adapter's own (unpadded) tensors."""
    x2 = x.reshape(-1, layer.in_features)  # [T, in]
    y = layer.base_layer(x2)  # [T, out]
    for t, s in enumerate(token_slots):
        if s >= 0 and loaded.get(s) is not None:
            pair = loaded[s].pairs.get(next(k for k, v in layer.bank.layers.items() if v is layer))
            if pair is not None:
                y[t] += (x2[t] @ pair.a.T) @ pair.b.T
    return y.view(*x.shape[:-1], layer.out_features)


@pytest.fixture
def bank_setup(tiny):
    bank = inject_multi_lora(tiny, ALL, num_slots=6, max_rank=8)
    loaded = {
        0: weights(tiny.config, 2, ("q_proj", "v_proj"), seed=1),
        2: weights(tiny.config, 8, ALL, seed=2, alpha=3),
        3: weights(tiny.config, 4, ("q_proj", "k_proj", "v_proj", "o_proj"), seed=3),
        5: weights(tiny.config, 1, ("down_proj",), seed=4),
    }
    for slot, w in loaded.items():
        bank.load_slot(slot, w)
    return tiny, bank, loaded


@pytest.mark.parametrize(
    "token_slots, strategy",
    [
        ([0, 2, 3, 5, -1, 1], "bmm"),  # decode: one token per row; q's slots 0, 2, 3 leave a hole: gathered
        ([5, 5, 0, 0, 2, 2, -1, -1], "bmm"),  # balanced groups of 2
        ([0, 2, 2, 3, 3, 3, -1, 5], "bmm"),  # unbalanced but little padding
        ([2] * 9 + [0, 3, -1], "bmm"),  # unbalanced, but a small padded layout beats a loop
        ([2] * 100 + [0, 3, -1], "loop"),  # prefill of very different lengths: per-adapter loop
        ([5, 0], "bmm"),  # q: slot 0 alone (slot 5 has down_proj only), a window of one
        ([2, 3], "bmm-in-order"),  # decode, rows already in slot order: no gather, delta added in place
        ([2, 2, 3, 3], "bmm-in-order"),
        ([2, 3, -1], "bmm"),  # a row without adapter: not in order
        ([3, 2], "bmm"),  # consecutive slots, rows in the other order
    ],
)
def test_layers_match_per_token_reference(bank_setup, token_slots, strategy):
    model, bank, loaded = bank_setup
    torch.manual_seed(1)
    bank.set_routing(token_slots)
    g = bank.grouping("q_proj")
    assert (g.strategy + ("-in-order" if g.in_order and g.pad_pos is None else "")) == strategy
    for layer in bank.layers.values():
        xin = torch.randn(len(token_slots), layer.in_features)
        with torch.no_grad():
            got = layer(xin)
            want = reference(layer, xin, token_slots, loaded)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("token_slots", [[0, 2, 3, 5, -1, 1], [5, 5, 0, 0, 2, 2, -1, -1], [0, 2, 2, 3, 3, 3, -1, 5]])
def test_a_window_with_holes_matches_reference(bank_setup, token_slots):
    """The same layouts read as a window of slots with holes (a view; the holes' rows are zero)
    where the bank is told to prefer windows: the path the default gathers in these cases."""
    model, bank, loaded = bank_setup
    bank.window_factor = 2.5
    bank.set_routing(token_slots)
    g = bank.grouping("q_proj")
    assert g.window is not None and g.window[1] - g.window[0] > len(g.slots) and g.pad_pos is not None
    for layer in bank.layers.values():
        xin = torch.randn(len(token_slots), layer.in_features)
        with torch.no_grad():
            torch.testing.assert_close(layer(xin), reference(layer, xin, token_slots, loaded), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("token_slots", [[0, 2, 3, 5, -1, 1], [2] * 9 + [0, 3, -1], [5, -1, 5, 0]])
def test_grouped_mm_path_on_cpu(bank_setup, token_slots):
    """The CUDA kernel's code path (grouped GEMM over all slots with offsets, rank rounded up to a
    multiple of 8) runs on CPU too: torch._grouped_mm has a CPU implementation for fp32."""
    model, bank, loaded = bank_setup
    bank.use_grouped_mm = True
    bank.set_routing(token_slots)
    assert bank.grouping("q_proj").strategy == "grouped"
    for layer in bank.layers.values():
        xin = torch.randn(len(token_slots), layer.in_features)
        with torch.no_grad():
            torch.testing.assert_close(layer(xin), reference(layer, xin, token_slots, loaded), atol=1e-5, rtol=1e-5)


def test_3d_input_and_row_routing(bank_setup):
    model, bank, loaded = bank_setup
    ids = torch.randint(0, 97, (3, 5))  # [B, L]
    with torch.no_grad():
        bank.set_row_routing([2, -1, 0], 5)
        out = model(ids).logits  # [3, 5, V]
        for row, slot in enumerate([2, -1, 0]):
            bank.set_routing([slot] * 5)
            alone = model(ids[row : row + 1]).logits
            torch.testing.assert_close(out[row], alone[0], atol=1e-5, rtol=1e-5)


def test_no_adapter_batches_are_the_base_model_exactly(tiny):
    ids = torch.randint(0, 97, (2, 4))
    with torch.no_grad():
        before = tiny(ids).logits
        bank = inject_multi_lora(tiny, ALL, num_slots=2, max_rank=4)
        bank.load_slot(1, weights(tiny.config, 4, ALL, seed=1))
        assert torch.equal(tiny(ids).logits, before)  # no routing: base only
        with bank.routing([-1] * 8):
            assert bank.grouping("q_proj") is None  # the delta is skipped entirely
            assert torch.equal(tiny(ids).logits, before)
        with bank.routing([0] * 8):  # slot 0 is empty: same as no adapter
            assert torch.equal(tiny(ids).logits, before)


def test_grouping_is_computed_once_per_forward(bank_setup, monkeypatch):
    model, bank, _ = bank_setup
    calls = []
    original = bank._build_grouping
    monkeypatch.setattr(bank, "_build_grouping", lambda m: calls.append(m) or original(m))
    bank.set_row_routing([0, 2, 3], 4)
    with torch.no_grad():
        model(torch.randint(0, 97, (3, 4)))
    assert sorted(calls) == sorted(ALL)  # once per module kind, not once per layer (2 layers here)


def test_reload_into_another_slot_and_smaller_rank_over_larger(bank_setup):
    model, bank, loaded = bank_setup
    ids = torch.randint(0, 97, (1, 6))
    with torch.no_grad():
        bank.set_routing([3] * 6)
        want = model(ids).logits
        bank.clear_slot(3)
        assert bank.slot_rank(3) == 0
        cleared = model(ids).logits
        bank.set_routing(None)
        assert torch.equal(cleared, model(ids).logits)  # a cleared slot is "no adapter"
        bank.load_slot(2, loaded[0])  # rank 2 on q,v over the rank-8 all-module adapter
        bank.load_slot(4, loaded[3])
        bank.set_routing([4] * 6)
        torch.testing.assert_close(model(ids).logits, want, atol=0, rtol=0)
        for layer in bank.layers.values():  # nothing of the rank-8 occupant is left in slot 2
            pair = loaded[0].pairs.get(next(k for k, v in bank.layers.items() if v is layer))
            r = pair.rank if pair is not None else 0
            assert not layer.lora_a[2, r:].any() and not layer.lora_b[2, r:].any()
        assert bank.slot_rank(2) == 2


def test_misuse_is_refused(bank_setup, tiny):
    model, bank, loaded = bank_setup
    with pytest.raises(LoraSlotError, match="out of range"):
        bank.load_slot(6, loaded[0])
    with pytest.raises(LoraSlotError, match="outside"):
        bank.set_routing([0, 7])
    bank.set_routing([0, 2, 3])
    with pytest.raises(LoraSlotError, match="routing has 3 tokens but the batch has 4"), torch.no_grad():
        model(torch.randint(0, 97, (1, 4)))
    with pytest.raises(LoraSlotError, match="max_rank"):
        bank.load_slot(1, weights(tiny.config, 16, ("q_proj",), seed=0))
    with pytest.raises(LoraSlotError, match="already has multi-LoRA"):
        inject_multi_lora(tiny, ALL)
    with pytest.raises(LoraSlotError, match="cannot target"):
        inject_multi_lora(tiny, ("lm_head",))


def test_weights_for_modules_the_bank_lacks(tiny):
    bank = inject_multi_lora(tiny, ("q_proj",), num_slots=2, max_rank=4)
    with pytest.raises(LoraSlotError, match="only covers"):
        bank.load_slot(0, weights(tiny.config, 2, ("q_proj", "down_proj"), seed=0))


def test_buffers_are_preallocated_and_not_in_state_dict(tiny):
    keys_before = set(tiny.state_dict())
    bank = inject_multi_lora(tiny, ("q_proj", "o_proj"), num_slots=3, max_rank=4)
    layer = bank.layers[(1, "q_proj")]
    assert layer.lora_a.shape == (3, 4, 32) and layer.lora_b.shape == (3, 4, 32)
    ptr = layer.lora_a.data_ptr()
    bank.load_slot(1, weights(tiny.config, 3, ("q_proj",), seed=0))
    assert layer.lora_a.data_ptr() == ptr  # loaded in place
    assert {k.replace(".base_layer", "") for k in tiny.state_dict()} == keys_before
    assert math.isclose(bank.slot_rank(1), 3)


def test_a_small_delta_runs_on_one_thread_and_the_pool_size_is_restored(bank_setup, monkeypatch):
    """CPU: the delta of a forward with few tokens runs its ops on one thread (fork/join of the pool
    per tiny op cost more than it saved); the caller's thread count is back afterwards, also when
    the delta raises. A forward with more tokens keeps the pool."""
    model, bank, loaded = bank_setup
    layer = bank.layers[next(iter(bank.layers))]
    seen: list[int] = []
    real = MultiLoraLinear._add_delta

    def spy(self, x, y, g):
        seen.append(torch.get_num_threads())
        return real(self, x, y, g)

    monkeypatch.setattr(MultiLoraLinear, "_add_delta", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        bank.set_routing([0, 2, 3, 5])
        layer(torch.randn(4, layer.in_features))
        assert seen == [1] and torch.get_num_threads() == 2
        many = [2] * (bank.one_thread_max_tokens + 1)
        bank.set_routing(many)
        layer(torch.randn(len(many), layer.in_features))
        assert seen == [1, 2]

        def boom(self, x, y, g):
            raise RuntimeError("delta failed")

        monkeypatch.setattr(MultiLoraLinear, "_add_delta", boom)
        bank.set_routing([0, 2])
        with pytest.raises(RuntimeError, match="delta failed"):
            layer(torch.randn(2, layer.in_features))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
