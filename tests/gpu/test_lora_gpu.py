"""Multi-LoRA layers on CUDA: the grouped-GEMM path (bf16, torch._grouped_mm where the build and
GPU support it) and the batched-matmul path (fp32), against PEFT on the real base model.
Skipped where CUDA is absent (the same arithmetic is tested on CPU in tests/unit)."""

from __future__ import annotations

import copy

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

QKVO = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL = QKVO + ("gate_proj", "up_proj", "down_proj")
ADAPTERS = [(4, 8, QKVO), (8, 16, ALL), (16, 32, ("q_proj", "v_proj")), (32, 16, ALL), (16, 8, ("down_proj",))]
ROWS = [0, None, 1, 2, 3, None, 4, 1]  # adapter index per row (adapter 1 twice: a group of 2)
PROMPT_LEN = 7


@pytest.fixture(scope="module")
def cpu_base():
    from inference.base_model import load_base_model

    return load_base_model(device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def folders(cpu_base, tmp_path_factory):
    from inference.adapter_factory import make_random_adapter

    root = tmp_path_factory.mktemp("gpu-adapters")
    return [make_random_adapter(root / f"a{i}", cpu_base, r, t, alpha=a, seed=50 + i) for i, (r, a, t) in enumerate(ADAPTERS)]


def build(cpu_base, folders, dtype):
    """Our model on CUDA with every adapter in a slot, and PEFT's with the same adapters."""
    from peft import PeftModel

    from inference.adapters import load_adapter_weights, validate_adapter
    from inference.lora import inject_multi_lora

    dev = torch.device("cuda")
    ours = copy.deepcopy(cpu_base.model).to(dev, dtype).eval()
    bank = inject_multi_lora(ours, ALL, num_slots=8, max_rank=32)
    stream = torch.cuda.Stream()
    for i, f in enumerate(folders):
        spec = validate_adapter(f, cpu_base.model.config, base_model_id=cpu_base.model_id, max_rank=32)
        w = load_adapter_weights(f, spec, dtype)
        pinned = {k: type(p)(p.a.pin_memory(), p.b.pin_memory()) for k, p in w.pairs.items()}
        event = bank.load_slot(i + 2, type(w)(spec=w.spec, pairs=pinned, dtype=dtype), copy_stream=stream)
        event.synchronize()
    peft = PeftModel.from_pretrained(copy.deepcopy(cpu_base.model), str(folders[0]), adapter_name="a0")
    for i in range(1, len(folders)):
        peft.load_adapter(str(folders[i]), adapter_name=f"a{i}")
    peft = peft.to(dev, dtype).eval()
    return ours, bank, peft


def run_both(ours, bank, peft, ids):
    names = [f"a{a}" if a is not None else "__base__" for a in ROWS]
    slots = [a + 2 if a is not None else -1 for a in ROWS]
    with torch.no_grad():
        ref = peft(ids, adapter_names=names).logits.float()  # [B, L, V]
        with peft.disable_adapter():
            base = peft(ids).logits.float()
        bank.set_row_routing(slots, ids.shape[1])
        got = ours(ids).logits.float()
        bank.set_routing(None)
    return got, ref, base


@pytest.fixture(scope="module")
def ids(cpu_base):
    gen = torch.Generator().manual_seed(3)
    return torch.randint(200, 40000, (len(ROWS), PROMPT_LEN), generator=gen).cuda()


def test_fp32_matches_peft(cpu_base, folders, ids):
    ours, bank, peft = build(cpu_base, folders, torch.float32)
    got, ref, base = run_both(ours, bank, peft, ids)
    torch.testing.assert_close(got, ref, atol=2e-3, rtol=1e-3)
    for row, a in enumerate(ROWS):
        if a is not None:
            assert (ref[row] - base[row]).abs().max() > 0.1  # every adapter changes the outputs


def test_bf16_matches_peft(cpu_base, folders, ids):
    """bf16 rounds differently in every kernel: compare the adapters' effect instead of exact
    logits: our delta over the base must be PEFT's delta up to a small relative error."""
    from inference.lora import grouped_mm_available

    ours, bank, peft = build(cpu_base, folders, torch.bfloat16)
    if grouped_mm_available(torch.device("cuda"), torch.bfloat16):
        assert bank.use_grouped_mm
    got, ref, base = run_both(ours, bank, peft, ids)
    for row, a in enumerate(ROWS):
        if a is None:
            torch.testing.assert_close(got[row], ref[row], atol=0.15, rtol=0.05)
            continue
        err = (got[row] - ref[row]).norm() / (ref[row] - base[row]).norm()
        assert err < 0.15, f"row {row}: relative error of the adapter delta {err:.3f}"
        assert (got[row].argmax(-1) == ref[row].argmax(-1)).float().mean() > 0.8


def test_layer_kernels_agree_on_cuda():
    """One MultiLoraLinear, every strategy (grouped / bmm window / gathered bmm / loop) against an
    fp32 per-token reference."""
    from inference.adapters import AdapterSpec, AdapterWeights, LoraPair
    from inference.lora import inject_multi_lora

    torch.manual_seed(0)
    dev = torch.device("cuda")
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
        model = torch.nn.Module()
        block = torch.nn.Module()
        block.self_attn = torch.nn.Module()
        block.self_attn.q_proj = torch.nn.Linear(64, 96, bias=False)
        model.layers = torch.nn.ModuleList([block])
        model = model.to(dev, dtype)
        bank = inject_multi_lora(model, ("q_proj",), num_slots=6, max_rank=16, dtype=dtype, device=dev)
        spec = AdapterSpec(None, "t", 16, 1.0, 1.0, False, ("q_proj",), (), 0)
        pairs = {}
        for slot, r in ((0, 4), (1, 16), (3, 8), (5, 12)):
            a, b = torch.randn(r, 64) * 0.3, torch.randn(96, r) * 0.3
            pairs[slot] = (a, b)
            bank.load_slot(slot, AdapterWeights(spec, {(0, "q_proj"): LoraPair(a.to(dtype), b.to(dtype))}, dtype))
        layer = bank.layers[(0, "q_proj")]
        w = layer.base_layer.weight.float().cpu()
        for grouped in (True, False):
            bank.use_grouped_mm = grouped and bank.use_grouped_mm
            for slots in ([0, 1, 3, 5, -1], [1] * 6 + [0, 5], [5, 0]):
                bank.set_routing(slots)
                x = torch.randn(len(slots), 64)
                with torch.no_grad():
                    got = layer(x.to(dev, dtype)).float().cpu()
                want = x.to(dtype).float() @ w.T
                for t, s in enumerate(slots):
                    if s >= 0:
                        a, b = pairs[s]
                        want[t] += (x[t].to(dtype).float() @ a.to(dtype).float().T) @ b.to(dtype).float().T
                torch.testing.assert_close(got, want, atol=tol * 10, rtol=tol)
