"""The base model's linear layers as oneDNN products on prepacked weights, for CPU inference.

A decode step multiplies a few rows (one per running request) by every weight matrix of the
model. `F.linear` hands that to the BLAS as a plain GEMM on the row-major weight, and for so few
rows it runs far from the machine's memory bandwidth. oneDNN's inner product on a weight
reordered once into its blocked layout (`torch.ops.mkldnn._reorder_linear_weight`, what
PyTorch's own CPU compiler uses for frozen linears) does the same product much faster.

Measured here (SmolLM2-135M fp32, 2 threads, AMD EPYC, 16 rows): all 211 linears of one step
60 ms with `F.linear`, 24 ms prepacked (the lm_head alone 11.8 -> 5.3 ms); through the engine,
decode tokens/s of 16 requests without adapter 183 -> 384, on 16 distinct adapters of rank 16 on
q,k,v,o 161 -> 295, on all seven modules 148 -> 245 (median of three rounds each).
Outputs differ from `F.linear` only by float rounding (summation order: ~1e-6 relative).

`pack_linears(engine parts)` swaps each decoder-layer linear (the base layer inside a multi-LoRA
layer, or a plain untargeted one) and the runner's lm_head for a `PackedLinear`. The unpacked
weights of the decoder layers are released (the packed copy replaces them); the lm_head's is
kept, tied to the input embedding. Memory: the packed copies are process memory (~the weights'
size: the engine's resident set here grew by ~1.2 GB with them against ~0.2 GB without, of which
~0.5 GB are the loaded file's pages read while packing, clean and reclaimable, kept mapped
because the embedding still maps that file). Inference only: the product has no autograd.
Used only where `packed_linear_works(dtype)` confirmed on this machine that the ops exist and
agree with `F.linear`; otherwise the model is left as it was.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from inference.lora import MODULE_PARENT

log = logging.getLogger(__name__)


def _ops() -> tuple[Any, Any] | None:
    mk = getattr(torch.ops, "mkldnn", None)
    if mk is None or not torch.backends.mkldnn.is_available():
        return None
    try:
        return mk._reorder_linear_weight, mk._linear_pointwise
    except (AttributeError, RuntimeError):  # a build without these ops
        return None


def packed_linear_works(dtype: torch.dtype) -> bool:
    """Whether prepacked oneDNN linears run here for `dtype` and agree with F.linear (a small
    product in 2-D and 3-D, with and without bias)."""
    ops = _ops()
    if ops is None:
        return False
    try:
        g = torch.Generator().manual_seed(0)
        w = torch.randn(24, 40, generator=g).to(dtype)  # [out, in]
        b = torch.randn(24, generator=g).to(dtype)
        for x in (torch.randn(5, 40, generator=g).to(dtype), torch.randn(1, 7, 40, generator=g).to(dtype)):
            for bias in (None, b):
                got = PackedLinear.from_weight(w, bias, batch_hint=8)(x)
                want = F.linear(x, w, bias)
                tol = 1e-4 if dtype == torch.float32 else 5e-2
                if got.shape != want.shape or got.dtype != want.dtype or not torch.allclose(got, want, rtol=tol, atol=tol):
                    return False
        return True
    except (RuntimeError, TypeError, ValueError) as e:  # unsupported dtype or CPU: keep F.linear
        log.info("prepacked CPU linears unavailable (%s)", e)
        return False


class PackedLinear(nn.Module):
    """y = x @ W.T + b with W held in oneDNN's blocked layout (inference only, CPU)."""

    def __init__(self, packed: torch.Tensor, bias: torch.Tensor | None, in_features: int, out_features: int):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.packed = packed  # opaque blocked layout: only the oneDNN product reads it
        self.bias = bias

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None, batch_hint: int) -> "PackedLinear":
        """`weight` [out, in]; `batch_hint`: the rows a typical call has (oneDNN picks its blocking for it)."""
        ops = _ops()
        if ops is None:
            raise RuntimeError("oneDNN linear ops are not available in this torch build")
        reorder, _ = ops
        out_features, in_features = weight.shape
        with torch.no_grad():
            packed = reorder(weight.detach().contiguous(), batch_hint)
        return cls(packed, None if bias is None else bias.detach(), in_features, out_features)

    @classmethod
    def of(cls, linear: nn.Linear, batch_hint: int) -> "PackedLinear":
        return cls.from_weight(linear.weight, linear.bias, batch_hint)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [..., in] -> [..., out]
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}, prepacked"


def pack_linears(runner: Any, batch_hint: int) -> int:
    """Swap every linear of the runner's decoder layers (attention and MLP; a multi-LoRA layer keeps
    its delta and gets a packed base) and `runner.lm_head` for PackedLinears. Returns how many."""
    count = 0
    parents = sorted(set(MODULE_PARENT.values()))
    for layer in runner.layers:
        for parent_name in parents:
            parent = getattr(layer, parent_name, None)
            if parent is None:
                continue
            for name, child in list(parent.named_children()):
                base = getattr(child, "base_layer", None)  # a MultiLoraLinear
                if isinstance(base, nn.Linear):
                    child.base_layer = PackedLinear.of(base, batch_hint)
                    count += 1
                elif isinstance(child, nn.Linear):
                    setattr(parent, name, PackedLinear.of(child, batch_hint))
                    count += 1
    if isinstance(runner.lm_head, nn.Linear):
        runner.lm_head = PackedLinear.of(runner.lm_head, batch_hint)
        count += 1
    return count
