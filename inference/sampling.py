"""Batched next-token selection with per-row parameters.

Every row may have its own temperature, top-k, top-p and seed. The whole batch is handled by a
few tensor ops: greedy rows take an argmax; sampled rows are sorted once, truncated by top-k and
top-p with masks, and sampled by inverse CDF from one uniform number per row. The uniform comes
from the request's own torch.Generator, so a seeded request draws the same sample whatever else
is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SamplingBatch:
    """Per-row parameters for one step, as tensors on the logits' device."""

    temperature: torch.Tensor  # [B] float, 0 = greedy
    top_p: torch.Tensor  # [B] float in (0, 1]
    top_k: torch.Tensor  # [B] long, 0 = off
    uniform: torch.Tensor  # [B] float in [0, 1): one draw per row from the row's generator

    @staticmethod
    def build(params: list, generators: list[torch.Generator | None], device: torch.device) -> "SamplingBatch":
        """params: SamplingParams per row; generators: the row's generator (None for greedy rows)."""
        u = [float(torch.rand((), generator=g)) if g is not None else 0.0 for g in generators]
        return SamplingBatch(
            temperature=torch.tensor([p.temperature for p in params], dtype=torch.float32, device=device),
            top_p=torch.tensor([p.top_p for p in params], dtype=torch.float32, device=device),
            top_k=torch.tensor([p.top_k for p in params], dtype=torch.long, device=device),
            uniform=torch.tensor(u, dtype=torch.float32, device=device),
        )


def sample_next(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """logits [B, V] -> next token ids [B] (long)."""
    logits = logits.float()
    out = logits.argmax(dim=-1)  # [B] greedy for every row; sampled rows overwrite below
    sampled = (batch.temperature > 0).nonzero().flatten()  # [S]
    if sampled.numel() == 0:
        return out
    lg = logits.index_select(0, sampled) / batch.temperature[sampled, None]  # [S, V]
    top_k = batch.top_k[sampled]  # [S]
    vocab = lg.shape[-1]
    if bool((top_k > 0).all()):
        # every row has a top-k: a partial sort of the largest k is enough
        vals, idx = lg.topk(int(top_k.max().clamp(max=vocab)), dim=-1)  # [S, K]
    else:
        vals, idx = lg.sort(dim=-1, descending=True)  # [S, V]
    k_eff = torch.where(top_k > 0, top_k, torch.full_like(top_k, vals.shape[-1]))  # [S]
    pos = torch.arange(vals.shape[-1], device=vals.device)  # [K]
    vals = vals.masked_fill(pos[None, :] >= k_eff[:, None], float("-inf"))
    probs = torch.softmax(vals, dim=-1)  # [S, K]
    # top-p: drop a token once the mass before it already reaches top_p (the first always stays)
    before = probs.cumsum(dim=-1) - probs
    probs = probs.masked_fill(before >= batch.top_p[sampled, None], 0.0)
    cdf = probs.cumsum(dim=-1)  # [S, K], unnormalised
    target = batch.uniform[sampled, None] * cdf[:, -1:]  # [S, 1]
    choice = torch.searchsorted(cdf, target, right=True)  # [S, 1]
    # kept tokens form a prefix (values are sorted); rounding at the top must not step past it
    last_kept = (probs > 0).sum(dim=-1, keepdim=True) - 1  # [S, 1]
    choice = torch.minimum(choice, last_kept)
    out[sampled] = idx.gather(1, choice).flatten()
    return out


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A request's own generator. Unseeded requests get a fresh nondeterministic seed."""
    g = torch.Generator(device="cpu")  # uniforms are drawn on CPU: identical across devices
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g
