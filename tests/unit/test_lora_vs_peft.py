"""One heterogeneous batch on the real base model (SmolLM2-135M, fp32, CPU) against PEFT.

Eight adapters of different ranks (4..32), alphas, target sets (rsLoRA and rank_pattern
included) plus no-adapter rows run in the SAME forward through our multi-LoRA layers; every
row's logits must match PEFT's single-adapter model for that adapter, and greedy generations
(HF DynamicCache, prefill then decode steps) must match token for token. Eviction and reload
into another slot must give identical outputs.
"""

from __future__ import annotations

import copy

import pytest
import torch

from inference.adapter_factory import make_random_adapter
from inference.adapters import load_adapter_weights, validate_adapter
from inference.lora import inject_multi_lora

QKVO = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL = QKVO + ("gate_proj", "up_proj", "down_proj")
# (rank, alpha, targets, extra factory kwargs)
ADAPTERS = [
    (4, 8, QKVO, {}),
    (8, 4, ALL, {}),
    (16, 32, ("q_proj", "v_proj"), {}),
    (32, 16, QKVO, {}),
    (4, 1, ("down_proj", "up_proj"), {}),
    (8, 16, ALL, {"use_rslora": True}),
    (16, 8, QKVO, {"rank_pattern": {"k_proj": 4}, "alpha_pattern": {"k_proj": 2}}),
    (32, 64, ("gate_proj", "o_proj"), {}),
]
ROW_ADAPTERS = [0, None, 1, 2, 3, 4, None, 5, 6, 7]  # rows of the batch: adapter index or none
SLOT_OF = {i: (7 * i + 3) % 10 for i in range(len(ADAPTERS))}  # scattered slots
PROMPT_LEN, NEW_TOKENS = 6, 4
# fp32; batch of 10 vs PEFT's batch of 1: MKL blocks the base GEMMs differently by batch size,
# which alone moves logits by up to ~5e-4 over 30 layers (no-adapter rows included)
ATOL, RTOL = 1e-3, 1e-4


@pytest.fixture(scope="module")
def setup(base_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    cfg = base_model.model.config
    folders, specs = [], []
    for i, (rank, alpha, targets, extra) in enumerate(ADAPTERS):
        folder = make_random_adapter(root / f"a{i}", base_model, rank, targets, alpha=alpha, seed=100 + i, **extra)
        folders.append(folder)
        specs.append(validate_adapter(folder, cfg, base_model_id=base_model.model_id, max_rank=32))

    from peft import PeftModel

    peft = PeftModel.from_pretrained(copy.deepcopy(base_model.model), str(folders[0]), adapter_name="a0").eval()
    for i in range(1, len(folders)):
        peft.load_adapter(str(folders[i]), adapter_name=f"a{i}")

    ours = copy.deepcopy(base_model.model).eval()
    bank = inject_multi_lora(ours, ALL, num_slots=10, max_rank=32)
    weights = [load_adapter_weights(f, s) for f, s in zip(folders, specs, strict=True)]
    for i, w in enumerate(weights):
        bank.load_slot(SLOT_OF[i], w)
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(200, 40000, (len(ROW_ADAPTERS), PROMPT_LEN), generator=gen)  # [B, L]
    return peft, ours, bank, weights, ids


def peft_greedy(peft, adapter, ids):
    """Reference: PEFT with only this adapter active (or disabled), batch of one, KV cache."""
    from transformers import DynamicCache

    ctx = peft.disable_adapter() if adapter is None else _nullctx()
    if adapter is not None:
        peft.set_adapter(f"a{adapter}")
    with ctx, torch.no_grad():
        cache = DynamicCache()
        out = peft(ids, past_key_values=cache, use_cache=True)
        prefill_logits = out.logits[0]  # [L, V]
        tokens, last = [], out.logits[0, -1]
        for _ in range(NEW_TOKENS):
            nxt = int(last.argmax())
            tokens.append(nxt)
            out = peft(torch.tensor([[nxt]]), past_key_values=cache, use_cache=True)
            last = out.logits[0, -1]
    return prefill_logits, tokens, last


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def ours_greedy(model, bank, ids):
    """The whole heterogeneous batch in one forward per step."""
    from transformers import DynamicCache

    slots = [SLOT_OF[a] if a is not None else -1 for a in ROW_ADAPTERS]
    with torch.no_grad():
        cache = DynamicCache()
        bank.set_row_routing(slots, ids.shape[1])
        out = model(ids, past_key_values=cache, use_cache=True)
        prefill_logits = out.logits  # [B, L, V]
        bank.set_routing(slots)  # decode: one token per row
        tokens, last = [], out.logits[:, -1]
        for _ in range(NEW_TOKENS):
            nxt = last.argmax(-1)  # [B]
            tokens.append(nxt)
            out = model(nxt[:, None], past_key_values=cache, use_cache=True)
            last = out.logits[:, -1]
        bank.set_routing(None)
    return prefill_logits, torch.stack(tokens, 1).tolist(), last


def test_mixed_batch_matches_peft_per_row(setup):
    peft, ours, bank, _, ids = setup
    logits, tokens, last = ours_greedy(ours, bank, ids)
    with torch.no_grad():
        base_logits = ours(ids).logits  # no routing: the base model alone
    for row, adapter in enumerate(ROW_ADAPTERS):
        ref_logits, ref_tokens, ref_last = peft_greedy(peft, adapter, ids[row : row + 1])
        torch.testing.assert_close(
            logits[row],
            ref_logits,
            atol=ATOL,
            rtol=RTOL,
            msg=lambda m, row=row, adapter=adapter: f"row {row} (adapter {adapter}) prefill: {m}",
        )
        assert tokens[row] == ref_tokens, f"row {row} (adapter {adapter}) greedy tokens differ"
        torch.testing.assert_close(last[row], ref_last, atol=ATOL, rtol=RTOL)
        if adapter is not None:  # not vacuous: every adapter really changes the outputs
            assert (ref_logits - base_logits[row]).abs().max() > 100 * ATOL, f"adapter {adapter} is a no-op"


def test_same_batch_shape_as_peft_mixed_batch_tight(setup):
    """PEFT's own mixed-adapter forward (`adapter_names=`) has the same batch shape as ours, so
    the base matmuls round identically and only the LoRA arithmetic differs: tight tolerance."""
    peft, ours, bank, _, ids = setup
    names = [f"a{a}" if a is not None else "__base__" for a in ROW_ADAPTERS]
    slots = [SLOT_OF[a] if a is not None else -1 for a in ROW_ADAPTERS]
    with torch.no_grad():
        ref = peft(ids, adapter_names=names).logits
        with bank.routing([s for s in slots for _ in range(PROMPT_LEN)]):
            got = ours(ids).logits
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-5)


def test_eviction_and_reload_into_another_slot(setup):
    peft, ours, bank, weights, ids = setup
    slots = [SLOT_OF[a] if a is not None else -1 for a in ROW_ADAPTERS]
    with torch.no_grad(), bank.routing([s for s in slots for _ in range(PROMPT_LEN)]):
        before = ours(ids).logits  # [B, L, V]
    old, spare = SLOT_OF[3], next(s for s in range(10) if s not in SLOT_OF.values())
    try:
        bank.clear_slot(old)  # evict adapter 3, put adapter 4 where it was
        bank.load_slot(old, weights[4])
        bank.load_slot(spare, weights[3])  # reload adapter 3 elsewhere
        moved = [spare if s == old else s for s in slots]
        with torch.no_grad(), bank.routing([s for s in moved for _ in range(PROMPT_LEN)]):
            after = ours(ids).logits
        row = ROW_ADAPTERS.index(3)
        torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(after[row], before[ROW_ADAPTERS.index(4)])
    finally:  # restore the module fixture's slots
        bank.clear_slot(spare)
        bank.load_slot(old, weights[3])
