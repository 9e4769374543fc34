"""inference.cpu_gemm: the base model's linears as oneDNN products on prepacked weights (CPU).

The engine's own equality tests (test_engine.py against HF generate and PEFT) run with them on;
here: the product against F.linear on the model's real shapes, what it refuses, and that the
engine swaps every base linear (and only on CPU when asked)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from inference.cpu_gemm import PackedLinear, pack_linears, packed_linear_works
from inference.engine import Engine, EngineConfig
from inference.lora import MultiLoraLinear

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")


def test_works_for_the_cpu_dtypes_here():
    assert packed_linear_works(torch.float32)
    assert packed_linear_works(torch.bfloat16)


@pytest.mark.parametrize("shape", [(576, 576), (576, 192), (576, 1536), (1536, 576), (576, 49152)])
@pytest.mark.parametrize("rows", [1, 16, 300])
def test_matches_f_linear_on_the_models_shapes(shape, rows):
    """Decode (1 and 16 rows) and a prefill-sized call (300), as [rows, in] and [1, rows, in]."""
    g = torch.Generator().manual_seed(rows)
    n_in, n_out = shape
    w = torch.randn(n_out, n_in, generator=g) / n_in**0.5  # [out, in], activations of order 1
    lin = nn.Linear(n_in, n_out, bias=False)
    lin.weight.data = w
    packed = PackedLinear.of(lin, batch_hint=16)
    x = torch.randn(rows, n_in, generator=g)
    with torch.inference_mode():
        for xi in (x, x[None]):
            got, want = packed(xi), F.linear(xi, w)
            assert got.shape == want.shape and got.is_contiguous()
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # only the summation order differs


def test_bias_is_applied():
    lin = nn.Linear(40, 24, bias=True)
    x = torch.randn(3, 40)
    with torch.inference_mode():
        torch.testing.assert_close(PackedLinear.of(lin, 8)(x), lin(x), rtol=1e-5, atol=1e-5)


def test_wrong_input_width_is_refused():
    packed = PackedLinear.of(nn.Linear(40, 24), 8)
    with torch.inference_mode(), pytest.raises(RuntimeError):
        packed(torch.randn(3, 41))


def test_pack_linears_swaps_plain_and_lora_base_layers(base_model):
    """Targeted modules keep their LoRA layer with a packed base; untargeted ones are swapped
    whole; the lm_head is swapped in the runner only (the model's stays tied to the embedding)."""
    own = dataclasses.replace(base_model, model=copy.deepcopy(base_model.model))
    cfg = EngineConfig(num_slots=2, max_rank=8, max_batch_size=4, max_model_len=64, target_modules=("q_proj", "v_proj"))
    eng = Engine(cfg, base=own)
    try:
        layers = eng.runner.layers
        assert eng.packed_linears == 7 * len(layers) + 1 == eng.stats()["cpu_packed_linears"]
        att, mlp = layers[0].self_attn, layers[0].mlp
        assert isinstance(att.q_proj, MultiLoraLinear) and isinstance(att.q_proj.base_layer, PackedLinear)
        assert isinstance(att.k_proj, PackedLinear) and isinstance(mlp.down_proj, PackedLinear)
        assert isinstance(eng.runner.lm_head, PackedLinear)
        assert own.model.lm_head.weight is own.model.model.embed_tokens.weight
        assert pack_linears(eng.runner, 4) == 0  # nothing left to pack
    finally:
        eng.close()


def test_switched_off_keeps_f_linear(base_model):
    own = dataclasses.replace(base_model, model=copy.deepcopy(base_model.model))
    cfg = EngineConfig(num_slots=2, max_rank=8, max_batch_size=4, max_model_len=64, cpu_packed_linears=False)
    eng = Engine(cfg, base=own)
    try:
        assert eng.packed_linears == 0
        assert isinstance(eng.runner.layers[0].self_attn.q_proj.base_layer, nn.Linear)
        assert isinstance(eng.runner.lm_head, nn.Linear)
    finally:
        eng.close()
