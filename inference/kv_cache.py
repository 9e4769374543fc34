"""The KV cache: one preallocated tensor pair for every row the engine can run at once.

Layout: k, v = [layers, rows, kv_heads, max_len, head_dim], plus `lengths[rows]` (tokens stored per
row). Why this layout rather than transformers' cache classes: rows are ragged (each request has
its own length and joins or leaves between steps), and HF's caches assume one shared length per
batch. With a fixed per-row buffer a decode step writes one position per row with a single
index_put per layer and reads `k[layer, :B, :, :L]` as a view (no gather, no copy), masked by
`position < length`. Running requests always occupy rows 0..B-1: when a row leaves, the last
row's cache moves into the hole once (`move_row`), so the decode batch stays a contiguous prefix.

Memory is bounded up front: 2 * layers * rows * kv_heads * max_len * head_dim * dtype bytes.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(
        self,
        *,
        num_layers: int,
        max_rows: int,
        num_kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        shape = (num_layers, max_rows, num_kv_heads, max_len, head_dim)
        # zeros, not empty: masked positions get probability 0, and 0 * NaN garbage would be NaN
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_rows = max_rows
        self.max_len = max_len
        # host-side lengths: the scheduler needs them as ints (slicing, limits) without a device sync
        self.lengths = [0] * max_rows

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2

    def move_row(self, src: int, dst: int) -> None:
        """Move row src's cache into row dst (compaction after dst's request left)."""
        n = self.lengths[src]
        if src != dst and n:
            self.k[:, dst, :, :n] = self.k[:, src, :, :n]  # [layers, kvh, n, hd]
            self.v[:, dst, :, :n] = self.v[:, src, :, :n]
        self.lengths[dst] = n
        self.lengths[src] = 0

    def free_row(self, row: int) -> None:
        self.lengths[row] = 0
