"""Batched forward passes over a Llama-family decoder using the engine's own KV cache.

The runner reuses the loaded transformers model's modules (embeddings, norms, projections, MLP,
rotary embedding, lm_head) but drives them itself, because the engine's batch is ragged: every
row has its own length. Two entry points:

- `step(tokens, prompts, rows)`: one forward for a decode token of each running row 0..B-1 and
  the prompts of newly admitted requests together, packed into one sequence [1, B + sum T]: the
  projections and MLPs read their weights once for both. Attention is split: each decode row
  attends over its cached prefix masked by its own length; the prompts attend over themselves
  with a block-diagonal causal mask. One index_copy per layer writes all new K/V into their rows.
  Logits only for each decode row and each prompt's last token (lm_head on B + N positions).
- `prefill(prompts, rows)` and `decode(tokens)`: the step with only one of the two.

Projections are called as modules, so multi-LoRA layers injected by `inference.lora` apply the
per-token adapter deltas (the caller sets the routing before each call). Supported: Llama,
Mistral (full attention; sliding windows are wider than typical max_model_len), Qwen2 (qkv
bias lives in the Linear), Qwen3 (q_norm / k_norm).
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F

from inference.errors import BaseModelError
from inference.kv_cache import KVCache


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class ModelRunner:
    def __init__(self, model: torch.nn.Module):
        inner = getattr(model, "model", None)
        layers = getattr(inner, "layers", None)
        if inner is None or layers is None or not hasattr(model, "lm_head"):
            raise BaseModelError(f"{type(model).__name__}: not a Llama-family causal LM (model.model.layers)")
        for i, layer in enumerate(layers):
            att = getattr(layer, "self_attn", None)
            if att is None or not all(hasattr(att, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
                raise BaseModelError(f"layer {i}: attention without q/k/v/o projections is not supported")
        cfg: Any = model.config  # a transformers config: its fields depend on the architecture
        self.model = model
        self.embed = inner.embed_tokens
        self.layers = list(layers)
        self.norm = inner.norm
        self.rotary = inner.rotary_emb
        self.lm_head = cast(torch.nn.Module, model.lm_head)
        self.num_layers = len(self.layers)
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scaling = getattr(self.layers[0].self_attn, "scaling", self.head_dim**-0.5)
        self.gqa = self.num_heads != self.num_kv_heads

    def new_cache(self, *, max_rows: int, max_len: int) -> KVCache:
        p = self.embed.weight
        return KVCache(
            num_layers=self.num_layers,
            max_rows=max_rows,
            num_kv_heads=self.num_kv_heads,
            max_len=max_len,
            head_dim=self.head_dim,
            dtype=p.dtype,
            device=p.device,
        )

    def _qkv(self, att, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """h [B, T, H] -> q [B, nh, T, hd], k/v [B, kvh, T, hd] with rotary applied."""
        B, T, _ = h.shape
        q = att.q_proj(h).view(B, T, -1, self.head_dim)
        k = att.k_proj(h).view(B, T, -1, self.head_dim)
        v = att.v_proj(h).view(B, T, -1, self.head_dim).transpose(1, 2)
        if hasattr(att, "q_norm"):  # Qwen3
            q, k = att.q_norm(q), att.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        c, s = cos.unsqueeze(1), sin.unsqueeze(1)  # [B, 1, T, hd]
        return q * c + _rotate_half(q) * s, k * c + _rotate_half(k) * s, v

    def _flat_index(self, cache: KVCache, rows: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Row index into a layer's cache viewed as [rows * kvh * max_len, hd] for each
        (token, kv head): ((row * kvh + h) * max_len + pos). Computed once per forward; writes then
        are one index_copy_ per layer (advanced-index assignment is several times slower on CPU)."""
        heads = torch.arange(self.num_kv_heads, device=rows.device)  # [kvh]
        return ((rows[:, None] * self.num_kv_heads + heads[None, :]) * cache.max_len + pos[:, None]).reshape(-1)

    def _write(self, cache: KVCache, layer: int, idx: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v [N, kvh, hd] -> cache positions idx [N * kvh]."""
        hd = self.head_dim
        cache.k[layer].view(-1, hd).index_copy_(0, idx, k.reshape(-1, hd))
        cache.v[layer].view(-1, hd).index_copy_(0, idx, v.reshape(-1, hd))

    @torch.inference_mode()
    def prefill(self, cache: KVCache, prompts: list[list[int]], rows: list[int]) -> torch.Tensor:
        """Run the prompts of new requests (packed), fill their cache rows, set their lengths.
        Returns logits [N, V] at each prompt's last token."""
        return self.step(cache, None, prompts, rows)

    @torch.inference_mode()
    def decode(self, cache: KVCache, tokens: torch.Tensor) -> torch.Tensor:
        """One step for rows 0..B-1: tokens [B] (the last sampled token of each row).
        Appends their K/V at each row's length; returns logits [B, V]."""
        return self.step(cache, tokens, [], [])

    @torch.inference_mode()
    def step(self, cache: KVCache, tokens: torch.Tensor | None, prompts: list[list[int]], rows: list[int]) -> torch.Tensor:
        """One forward for a decode token of each running row 0..B-1 (tokens [B], or None) and the
        packed prompts of newly admitted requests (their cache rows `rows`), together: every
        projection and MLP reads its weights once for both, which is what a step costs on a
        memory-bound device. Only attention is split: decode rows attend over their cached prefix,
        prompts over themselves (block-diagonal causal). Returns logits [B + N, V]: the decode rows',
        then each prompt's last token's."""
        dev = self.embed.weight.device
        B = 0 if tokens is None else tokens.shape[0]
        lens = [len(p) for p in prompts]
        S, N = sum(lens), len(prompts)
        lengths = cache.lengths[:B]
        L = max(lengths, default=0) + 1  # decode attention span (longest row incl. the new token)
        if B and L > cache.max_len:
            raise RuntimeError("KV cache row overflow: the scheduler must stop rows at max_model_len")
        # decode rows first, then the prompts' tokens: T = B + S tokens in one packed sequence
        none = torch.empty(0, dtype=torch.long, device=dev)  # a side with no tokens
        pos_d = torch.tensor(lengths, dtype=torch.long, device=dev)  # [B] position of each new token
        pos_p = torch.cat([torch.arange(n, device=dev) for n in lens]) if N else none  # [S]
        seg = torch.repeat_interleave(
            torch.arange(N, device=dev), torch.tensor(lens, dtype=torch.long, device=dev)
        )  # [S] prompt of each token
        row_of_tok = torch.cat([torch.arange(B, device=dev), torch.tensor(rows, dtype=torch.long, device=dev)[seg]])  # [T]
        pos = torch.cat([pos_d, pos_p])  # [T]
        slot_idx = self._flat_index(cache, row_of_tok, pos)  # [T * kvh]
        ids = torch.cat(
            [tokens if tokens is not None else none, torch.tensor([t for p in prompts for t in p], dtype=torch.long, device=dev)]
        )  # [T]
        x = self.embed(ids)[None]  # [1, T, H]
        cos, sin = self.rotary(x, pos[None])  # [1, T, hd]
        if B:  # additive mask built once per step, shared by all layers: row b sees positions <= pos[b]
            valid = torch.arange(L, device=dev)[None, :] <= pos_d[:, None]  # [B, L]
            dmask = torch.zeros(B, 1, 1, L, dtype=cache.k.dtype, device=dev).masked_fill_(~valid[:, None, None, :], float("-inf"))
        pmask, causal = None, N == 1
        if N > 1:  # block-diagonal causal: prompt token i sees token j iff same prompt and j <= i
            pmask = ((seg[:, None] == seg[None, :]) & (pos_p[None, :] <= pos_p[:, None]))[None, None]  # [1, 1, S, S]
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer.self_attn, layer.input_layernorm(x), cos, sin)  # [1, h, T, hd]
            self._write(cache, i, slot_idx, k[0].transpose(0, 1), v[0].transpose(0, 1))  # [T, kvh, hd]
            parts = []
            if B:
                ck, cv = cache.k[i], cache.v[i]  # [rows, kvh, max_len, hd]
                qd = q[0, :, :B].transpose(0, 1)[:, :, None]  # [B, nh, 1, hd]
                ad = F.scaled_dot_product_attention(
                    qd, ck[:B, :, :L], cv[:B, :, :L], attn_mask=dmask, scale=self.scaling, enable_gqa=self.gqa
                )  # [B, nh, 1, hd]
                parts.append(ad[:, :, 0].reshape(B, -1))  # [B, nh * hd]
            if N:
                ap = F.scaled_dot_product_attention(
                    q[:, :, B:],
                    k[:, :, B:],
                    v[:, :, B:],
                    attn_mask=pmask,
                    is_causal=causal,
                    scale=self.scaling,
                    enable_gqa=self.gqa,
                )  # [1, nh, S, hd]
                parts.append(ap[0].transpose(0, 1).reshape(S, -1))  # [S, nh * hd]
            attn = (parts[0] if len(parts) == 1 else torch.cat(parts))[None]  # [1, T, nh * hd]
            x = x + layer.self_attn.o_proj(attn)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        last = B + torch.tensor(lens, dtype=torch.long, device=dev).cumsum(0) - 1  # [N] each prompt's last token
        out = torch.cat([torch.arange(B, device=dev), last])  # [B + N]
        for b in range(B):
            cache.lengths[b] += 1
        for r, n in zip(rows, lens, strict=True):
            cache.lengths[r] = n
        return self.lm_head(self.norm(x[0, out])).float()  # [B + N, V]
