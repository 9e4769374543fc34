"""Multi-LoRA linear layers over preallocated slot buffers: many adapters in one forward pass.

`inject_multi_lora(model, ...)` replaces each targeted `nn.Linear` of a Llama-family model by a
`MultiLoraLinear` and returns the `LoraSlotBank` that owns the slots. Each layer holds stacked
buffers for all slots:

    A: [num_slots, max_rank, in_features]     B: [num_slots, max_rank, out_features]

They are views of one store per module kind, [layers, num_slots, max_rank, features]: a layer's
block is contiguous (what its kernels read) and a slot across all layers is one strided copy, so
loading a packed adapter (inference.packed) is two copies per module kind instead of two per
(layer, module).

(B is stored transposed, one [r, out] row-major matrix per slot: batched matmuls with a thin
inner dimension r run ~2.5x faster on CPU in this layout, and it is the grouped GEMM's natural
right operand.) An adapter of rank r < max_rank occupies A[s, :r] and B[s, :r]; the rest of the slot is zero,
so padding contributes exactly zero, and the layers slice to the largest rank in the batch so
that padding costs no compute either. B holds the adapter's scaling folded in
(see inference.adapters), so a token routed to slot s gets

    y = x @ W.T + (x @ A[s].T) @ B[s]

Routing: before each forward the engine calls `bank.set_routing(token_slots)` with one slot per
token (-1 = no adapter), in the order of the flattened hidden states `x.reshape(-1, in)`
(for a padded [batch, seq] forward, `set_row_routing(row_slots, seq_len)` expands per row).
The bank sorts the tokens by slot once per forward and shares that grouping with every layer;
a layer computes the base matmul once for the whole batch, then one delta per *distinct*
adapter (never per token, and no per-token weight copies):

- CPU, balanced groups (decode: one token per row): two batched matmuls over
  [groups, tokens-per-group] (fastest measured on CPU: one op per layer instead of one per
  adapter). When the batch's slots lie in a window with few holes, the window is a view of the
  slot buffers (no weight copy); otherwise the active slots' weights are gathered. When every
  token has an adapter and the tokens already are in slot order (rows admitted in the order
  their adapters were loaded), the batch is its own layout: no gather of x, no scatter of the
  delta, one bmm and one baddbmm that accumulates into the base output (2 ops a layer, not 4).
- CPU, unbalanced groups: the same padded bmm while the padded layout is small (at most
  `max_free_padded_rows`, e.g. decode rows sharing popular adapters) or wastes at most half its
  rows; otherwise (prefill of very different lengths) a loop over the distinct adapters with
  views into the slot buffers (cost grows with adapters, not tokens).
- CUDA: `torch._grouped_mm` over the whole slot buffers with per-slot offsets (no weight copy),
  where the build supports it for the dtype (checked once); else the CPU strategies.

A batch with no adapter token skips the delta entirely.

Concurrency: `load_slot`/`clear_slot` may run on a loader thread while a forward runs, as long
as that slot is not routed in the forward. (The window path may read such a slot as a "hole";
its rows of activations are zero, so whatever is half-copied there contributes exactly zero.)

Measured on CPU (SmolLM2-135M fp32, 1 thread, 16 rows decoding, 16 distinct rank-16 adapters on
q,k,v,o): a step costs ~0.8-0.95x the no-adapter step when the adapters sit in consecutive slots
(window view) and ~0.75x when scattered over 32 slots; the memory-traffic bound for this shape
is ~0.82. An engine that keeps a batch's adapters in consecutive slots gets the faster path.
Rows in slot order (the in-order path above), same setup, steps interleaved in one process on a
shared, overloaded 2-core machine, two runs: in order 0.98x / 0.79x base, with the gather and
scatter 0.93x / 0.80x, rows shuffled 0.85x / 0.76x: the saving of two small ops per layer is
within this machine's noise; it is kept because it does strictly less work. A decode step's
profile per kind is in bench-engine's RESULT (`decode_profile`): at 1 thread the delta's bmm +
baddbmm are ~5% of a step and the base `mm` 70-80%, so at 1 thread the hetero step is at the
memory-traffic bound (hetero_vs_bound 1.09 for A, 1.40 for B in the quick run).
Since the base linears run prepacked on CPU (inference.cpu_gemm, a base step ~2x faster), the delta
is a larger share of a step: bench-engine full run, base 44 ms a step, 16 distinct q,k,v,o
adapters in scattered slots 62-68 ms through a window (bmm 13 ms of it) and 56-59 ms gathered
(index_select 5.7, bmm 2.3 ms) since window_factor is 1.25; all seven modules 89-92 ms windowed,
73-75 ms gathered (index_select 13, bmm 4.7 ms); A and B at 0.94-0.98 and 1.01-1.03 of the
memory-traffic bound (their throughput batches sit in consecutive slots).
Keeping a gathered layout across the decode steps of one batch (instead of gathering scattered
slots every step) was tried and measured without gain: in an interleaved A/B over three Zipf runs
(160 requests over 1,000 ids) 235.3 tok/s with the reuse, 235.6 without; the gather's cost is
reading the slots from memory, which the bmm then does from cache, and a kept copy must be read
from memory by the bmm instead. A Zipf batch's step costs ~1.4x a single-adapter step here:
~10 distinct adapters' weights (~55 us of a ~85 us delta per module call, at one thread) plus
the layout ops.
The GPU path (grouped GEMM) is unchanged by the per-kind stores (each layer's [S, R, *] block
is still contiguous); it was not re-measured here (no GPU in this session).
Threads: with 2 OpenMP threads on a machine whose cores are busy with other work, every
parallel op waits for a descheduled thread (a 20 MB slot copy took 140-990 ms instead of
4-16 ms at 1 thread), so figures from a shared machine are taken at 1 thread.
On CPU a delta over at most `one_thread_max_tokens` (1,024) tokens runs on one thread, the base
matmul keeps the pool (torch.set_num_threads around the delta; the setting is process-wide, and
in the engine only the scheduler thread runs model ops: the loader thread maps and hashes files,
other threads' torch ops would merely run on one thread meanwhile). A decode delta is ~7 ops on
[16, r] operands per module and layer, and at 2 threads each op's fork/join cost more than the
split saved. Measured (SmolLM2-135M fp32, 2
threads, quiet 2-core machine, median of 12 steps, two rounds): one decode step of 16 rows, base
108-115 ms; 16 distinct adapters in scattered slots 190-194 ms before, 146-164 ms after; a Zipf-like
mix (10 adapters, up to 4 rows each) 243 ms before, 135-156 ms after (at 1 thread for the whole
step: 159 / 149-159 ms against a 125 ms base). The prefill of 16 short prompts on 16 adapters:
449-478 ms with the pool, 373-420 ms on one thread.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch
from torch import nn

from inference.adapters import SUPPORTED_MODULES, AdapterWeights, ModuleKey
from inference.errors import LoraSlotError
from inference.packed import PackedAdapter

log = logging.getLogger(__name__)

NO_ADAPTER = -1
# where each supported linear sits in a Llama-family decoder layer
MODULE_PARENT = {
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}


def grouped_mm_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether `torch._grouped_mm` runs here for this dtype (checked with a tiny product)."""
    fn = getattr(torch, "_grouped_mm", None)
    if fn is None:
        return False
    try:
        x = torch.zeros(16, 32, device=device, dtype=dtype)  # [tokens, in]
        w = torch.zeros(2, 16, 32, device=device, dtype=dtype).transpose(1, 2)  # [groups, in, r]
        offs = torch.tensor([8, 16], device=device, dtype=torch.int32)
        fn(x, w, offs=offs)
        return True
    except Exception:  # noqa: BLE001 - unsupported device/dtype/arch: the feature check's whole point
        return False


@dataclass(frozen=True)
class _Grouping:
    """Tokens of one forward grouped by adapter slot (computed once, shared by all layers of a
    module kind). Python values drive the choice of kernel; tensors live on the bank's device."""

    num_tokens: int  # all tokens of the batch, with and without adapter
    perm: torch.Tensor  # [Ta] long: token indices of adapter tokens, sorted by slot
    slots: tuple[int, ...]  # distinct slots, ascending
    counts: tuple[int, ...]  # tokens per distinct slot
    rank: int  # largest true rank among these slots for this module kind (padding beyond is zero)
    strategy: str  # "grouped" (CUDA grouped GEMM), "bmm" (padded batched GEMM) or "loop" (per adapter)
    # bmm layout: NG groups of L tokens each; group j uses slot window[0] + j (window) or slot_index[j]
    window: tuple[int, int] | None  # (lo, hi): slots lo..hi-1 used as a view, no weight copy
    slot_index: torch.Tensor | None  # [NG] long: gathered slots when no window
    max_count: int  # L
    pad_pos: torch.Tensor | None  # [Ta] long: row of each sorted token in the [NG * L] layout (None: identity)
    offs: torch.Tensor | None  # [num_slots] int32: cumulative token counts per slot (grouped GEMM)
    in_order: bool = False  # every token has an adapter and they already are sorted by slot (perm = arange)
    delta_one_thread: bool = False  # run the delta's ops on one CPU thread (few tokens; see LoraSlotBank)


class LoraSlotBank:
    """The slots shared by all `MultiLoraLinear` layers of one model, and the per-forward routing."""

    def __init__(
        self,
        layers: dict[ModuleKey, "MultiLoraLinear"],
        num_slots: int,
        max_rank: int,
        dtype: torch.dtype,
        device: torch.device,
        stores: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ):
        self.layers = layers
        # module kind -> (A [L, S, R, in], B^T [L, S, R, out]); every layer's buffers are views
        self.stores = stores or {}
        self.num_slots = num_slots
        self.max_rank = max_rank
        self.dtype = dtype
        self.device = device
        self.target_modules = tuple(m for m in SUPPORTED_MODULES if any(k[1] == m for k in layers))
        # per slot: module kind -> largest rank loaded there (absent = no weights for that kind)
        self._slot_ranks: list[dict[str, int]] = [{} for _ in range(num_slots)]
        self._token_slots: torch.Tensor | None = None  # [T] long, on CPU
        self._groupings: dict[str, _Grouping | None] = {}
        # grouped GEMM kernels need 16-byte aligned rows: ranks are rounded up to a multiple of 8
        # (zero padding), so max_rank and every feature size must be multiples of 8
        aligned = max_rank % 8 == 0 and all(lin.in_features % 8 == 0 and lin.out_features % 8 == 0 for lin in layers.values())
        self.use_grouped_mm = device.type == "cuda" and aligned and grouped_mm_available(device, dtype)
        # CPU bmm strategy only when padding wastes at most this share of the compute
        self.max_padding_waste = 0.5
        # bmm over a window of consecutive slots (a view) when window <= factor * distinct slots.
        # A window reads all its W slots from memory; a gather reads the G used ones, and its copy
        # (~0.8 MB for 11 rank-16 q adapters) is still in cache when the bmm reads it, so the gather
        # costs about G reads: gather once a quarter of the window would be holes. Measured here
        # (fp32, prepacked base, interleaved, 3 runs each): 16 adapters in every other slot 261 ->
        # 290 tok/s and a Zipf mix over 1,000 ids 240 -> 261 tok/s with 1.25 instead of 2.5
        # (1.0 and 1.6 within noise of 1.25).
        self.window_factor = 1.25
        # tokens already in slot order need no gather of x nor scatter of the delta (see forward)
        self.skip_sort = True
        # CPU: a delta over at most this many tokens runs on one thread (decode's ops are tiny, and
        # a fork/join of the OpenMP pool per op cost more than the split saved; see the docstring)
        self.one_thread_max_tokens = 1024 if device.type == "cpu" else 0
        # a padded bmm layout of at most this many rows is used whatever its padding: its extra rows
        # cost less than the loop's two ops per adapter (decode with repeated adapters)
        self.max_free_padded_rows = 256

    # ----------------------------------------------------------------- slots

    def _check_slot(self, slot: int) -> None:
        if not isinstance(slot, int) or not 0 <= slot < self.num_slots:
            raise LoraSlotError(f"slot {slot!r} out of range [0, {self.num_slots})")

    def slot_rank(self, slot: int) -> int:
        """Largest rank of the adapter in `slot`; 0 when the slot is empty."""
        self._check_slot(slot)
        return max(self._slot_ranks[slot].values(), default=0)

    def load_slot(
        self,
        slot: int,
        weights: AdapterWeights | PackedAdapter,
        *,
        copy_stream: "torch.cuda.Stream | None" = None,
        non_blocking: bool = True,
    ):
        """Copy an adapter's weights into `slot` in place (no reallocation).

        On CUDA the copies are queued on `copy_stream` (default: the current stream) and an event
        recorded after them is returned: the caller must not route tokens to the slot before it
        completes (`event.synchronize()` or `stream.wait_event`). Non-blocking copies need pinned
        host tensors to overlap. On CPU returns None. The slot must not be in use by a running
        forward.
        """
        self._check_slot(slot)
        packed = weights if isinstance(weights, PackedAdapter) else None
        pairs = {} if isinstance(weights, PackedAdapter) else weights.pairs
        targeted = set(packed.kinds) if packed is not None else {m for (_, m) in pairs}
        unknown = targeted - set(self.target_modules)
        if unknown:
            raise LoraSlotError(f"adapter targets {sorted(unknown)}, but the bank only covers {list(self.target_modules)}")
        previous = self._slot_ranks[slot]
        ranks: dict[str, int] = {}
        ctx = (
            torch.cuda.stream(copy_stream)
            if (copy_stream is not None and self.device.type == "cuda")
            else contextlib.nullcontext()
        )
        nb = non_blocking and self.device.type == "cuda"
        with torch.no_grad(), ctx:
            if packed is not None:
                ranks = self._load_packed(slot, packed, previous, nb)
            for key, layer in ({} if packed is not None else self.layers).items():
                pair = pairs.get(key)
                module = key[1]
                old_r = previous.get(module, 0)
                if pair is None:
                    if old_r:
                        layer.lora_a[slot, :old_r].zero_()
                        layer.lora_b[slot, :old_r].zero_()
                    continue
                r = pair.rank
                if r > self.max_rank:
                    raise LoraSlotError(f"adapter rank {r} at {key} exceeds the bank's max_rank {self.max_rank}")
                if tuple(pair.a.shape) != (r, layer.in_features) or tuple(pair.b.shape) != (layer.out_features, r):
                    raise LoraSlotError(f"shapes at {key} do not fit the layer: A {list(pair.a.shape)}, B {list(pair.b.shape)}")
                layer.lora_a[slot, :r].copy_(pair.a, non_blocking=nb)  # [r, in]
                layer.lora_b[slot, :r].copy_(pair.b.T, non_blocking=nb)  # [r, out] <- [out, r]
                if old_r > r:  # the previous occupant's larger rank left weights in the tail
                    layer.lora_a[slot, r:old_r].zero_()
                    layer.lora_b[slot, r:old_r].zero_()
                ranks[module] = max(ranks.get(module, 0), r)
            event = None
            if self.device.type == "cuda":
                event = torch.cuda.Event()
                event.record()
        self._slot_ranks[slot] = ranks
        self._groupings.clear()
        return event

    def _load_packed(self, slot: int, weights: "PackedAdapter", previous: dict[str, int], nb: bool) -> dict[str, int]:
        """Two strided copies per module kind (each [L, r, *] into the kind's store)."""
        ranks: dict[str, int] = {}
        for module, (store_a, store_b) in self.stores.items():
            n_layers = store_a.shape[0]
            old_r = previous.get(module, 0)
            pk = weights.kinds.get(module)
            if pk is None:
                if old_r:
                    store_a[:, slot, :old_r].zero_()
                    store_b[:, slot, :old_r].zero_()
                continue
            r, n = pk.rank, pk.a.shape[0]
            if r > self.max_rank:
                raise LoraSlotError(f"adapter rank {r} on {module} exceeds the bank's max_rank {self.max_rank}")
            if (pk.a.shape[2], pk.bt.shape[2]) != (store_a.shape[3], store_b.shape[3]) or pk.bt.shape[:2] != (n, r):
                raise LoraSlotError(
                    f"packed {module} tensors do not fit the layers: A {list(pk.a.shape)}, B^T {list(pk.bt.shape)}"
                )
            layer_ids = pk.layers.tolist()
            if n == n_layers and layer_ids == list(range(n_layers)):
                store_a[:, slot, :r].copy_(pk.a, non_blocking=nb)  # [L, r, in]
                store_b[:, slot, :r].copy_(pk.bt, non_blocking=nb)  # [L, r, out]
                if old_r > r:  # the previous occupant's larger rank left weights in the tail
                    store_a[:, slot, r:old_r].zero_()
                    store_b[:, slot, r:old_r].zero_()
            else:  # some layers only (layers_to_transform): the others must hold zeros
                if any(not 0 <= li < n_layers for li in layer_ids):
                    raise LoraSlotError(f"packed {module} names layers outside [0, {n_layers})")
                clear = max(r, old_r)
                store_a[:, slot, :clear].zero_()
                store_b[:, slot, :clear].zero_()
                for j, layer in enumerate(layer_ids):
                    store_a[layer, slot, :r].copy_(pk.a[j], non_blocking=nb)
                    store_b[layer, slot, :r].copy_(pk.bt[j], non_blocking=nb)
            ranks[module] = r
        return ranks

    def clear_slot(self, slot: int) -> None:
        """Zero `slot` in every layer: it then behaves as "no adapter"."""
        self._check_slot(slot)
        with torch.no_grad():
            for module, (store_a, store_b) in self.stores.items():
                r = self._slot_ranks[slot].get(module, 0)
                if r:
                    store_a[:, slot, :r].zero_()
                    store_b[:, slot, :r].zero_()
        self._slot_ranks[slot] = {}
        self._groupings.clear()

    # --------------------------------------------------------------- routing

    def set_routing(self, token_slots: torch.Tensor | Sequence[int] | None) -> None:
        """Route each token of the next forward(s) to a slot (-1 = no adapter); None = base only.

        token_slots: [num_tokens], in the order of the flattened hidden states. Give it on the
        CPU (a list or CPU tensor): grouping needs the values on the host, and the engine knows
        them there anyway.
        """
        self._groupings = {}
        if token_slots is None:
            self._token_slots = None
            return
        t = torch.as_tensor(token_slots, dtype=torch.long).reshape(-1).cpu()  # [T]
        if t.numel() and (int(t.min()) < NO_ADAPTER or int(t.max()) >= self.num_slots):
            raise LoraSlotError(f"routing names slots outside [-1, {self.num_slots})")
        self._token_slots = t

    def set_row_routing(self, row_slots: Sequence[int] | torch.Tensor, seq_len: int) -> None:
        """Routing for a padded [batch, seq_len] forward: every token of row i goes to row_slots[i]."""
        rows = torch.as_tensor(row_slots, dtype=torch.long).reshape(-1).cpu()  # [B]
        self.set_routing(rows.repeat_interleave(seq_len))  # [B * seq_len]

    @contextlib.contextmanager
    def routing(self, token_slots: torch.Tensor | Sequence[int] | None) -> Iterator[None]:
        """`with bank.routing(slots): model(...)`; the routing is cleared afterwards."""
        self.set_routing(token_slots)
        try:
            yield
        finally:
            self.set_routing(None)

    def disable_grouped_mm(self, why: str) -> None:
        """Fall back to the bmm/loop kernels for good (a grouped GEMM call failed at run time)."""
        if self.use_grouped_mm:
            log.warning("torch._grouped_mm failed (%s); using batched matmuls instead", why)
        self.use_grouped_mm = False
        self._groupings.clear()

    def grouping(self, module: str) -> _Grouping | None:
        """The current forward's grouping for one module kind (None: no token needs a delta)."""
        if self._token_slots is None:
            return None
        # one lookup, not `in` then []: load_slot may clear the cache from a loader thread meanwhile
        try:
            return self._groupings[module]
        except KeyError:
            g = self._build_grouping(module)
            self._groupings[module] = g
            return g

    def _build_grouping(self, module: str) -> _Grouping | None:
        t = self._token_slots  # [T] long, CPU
        if t is None:
            return None
        ranks = torch.tensor([r.get(module, 0) for r in self._slot_ranks] + [0], dtype=torch.long)  # [S + 1]
        # tokens whose slot holds nothing for this module kind need no delta
        eff = torch.where(t >= 0, t, torch.full_like(t, self.num_slots))  # [T], no adapter -> S
        has = ranks[eff] > 0  # [T] bool
        if not bool(has.any()):
            return None
        key = eff.masked_fill(~has, self.num_slots)  # [T]
        order = torch.argsort(key, stable=True)  # [T]
        counts_all = torch.bincount(key, minlength=self.num_slots + 1)[: self.num_slots]  # [S]
        ta = int(counts_all.sum())
        perm = order[:ta]  # [Ta] adapter tokens, sorted by slot
        slot_index = torch.nonzero(counts_all).squeeze(1)  # [G]
        counts = counts_all[slot_index]  # [G]
        slots = tuple(slot_index.tolist())
        count_list = tuple(counts.tolist())
        rank = int(ranks[slot_index].max())
        n_groups, max_count = len(slots), max(count_list)
        dev = self.device
        in_order = self.skip_sort and ta == t.numel() and bool(torch.equal(perm, torch.arange(ta)))
        common = dict(
            delta_one_thread=ta <= self.one_thread_max_tokens,
            num_tokens=t.numel(),
            perm=perm.to(dev, non_blocking=True),
            slots=slots,
            counts=count_list,
            rank=rank,
            max_count=max_count,
            in_order=in_order,
        )
        if self.use_grouped_mm:
            offs = torch.cumsum(counts_all, 0).to(torch.int32).to(dev, non_blocking=True)  # [S]
            common["rank"] = min(self.max_rank, -(-rank // 8) * 8)  # aligned; the padding is zero
            return _Grouping(strategy="grouped", window=None, slot_index=None, pad_pos=None, offs=offs, **common)
        # bmm over a window of consecutive slots when it has few holes: a view, no weight copy
        lo, hi = slots[0], slots[-1] + 1
        use_window = hi - lo <= self.window_factor * n_groups
        n_layout = hi - lo if use_window else n_groups
        waste = 1.0 - ta / (n_layout * max_count)
        if waste > self.max_padding_waste and n_layout * max_count > self.max_free_padded_rows:
            return _Grouping(strategy="loop", window=None, slot_index=None, pad_pos=None, offs=None, **common)
        pad_pos = None
        if not (use_window and hi - lo == n_groups and min(count_list) == max_count):
            # row of each sorted token in the [NG, L] padded layout: its group starts at j * L
            starts = torch.cumsum(counts, 0) - counts  # [G]
            layout_group = (slot_index - lo) if use_window else torch.arange(n_groups)  # [G]
            group_of = torch.repeat_interleave(torch.arange(n_groups), counts)  # [Ta]
            within = torch.arange(ta) - starts[group_of]  # [Ta]
            pad_pos = (layout_group[group_of] * max_count + within).to(dev)  # [Ta]
        return _Grouping(
            strategy="bmm",
            window=(lo, hi) if use_window else None,
            slot_index=None if use_window else slot_index.to(dev, non_blocking=True),
            pad_pos=pad_pos,
            offs=None,
            **common,
        )


class MultiLoraLinear(nn.Module):
    """An `nn.Linear` plus a per-token LoRA delta from the bank's slot buffers."""

    lora_a: torch.Tensor  # buffers (registered below), declared for the type checker
    lora_b: torch.Tensor

    def __init__(self, base: nn.Linear, module: str, lora_a: torch.Tensor, lora_b: torch.Tensor):
        super().__init__()
        self.base_layer = base
        self.module = module
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.bank: LoraSlotBank | None = None  # set by inject_multi_lora (not a submodule)
        # non-persistent: slots are runtime state, not part of the model's checkpoint. Both are
        # contiguous views of the bank's per-kind store (one layer's [S, R, *] block of it)
        self.register_buffer("lora_a", lora_a, persistent=False)  # [S, R, in]
        self.register_buffer("lora_b", lora_b, persistent=False)  # [S, R, out]: B transposed

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [..., in]
        y = self.base_layer(x)  # [..., out]: the base matmul, once for the whole batch
        g = self.bank.grouping(self.module) if self.bank is not None else None
        if g is None:
            return y
        threads = torch.get_num_threads() if g.delta_one_thread else 1
        if threads > 1:  # the delta's ops are tiny: splitting them over the pool costs more than it saves
            torch.set_num_threads(1)  # process-wide: only the scheduler thread runs model ops
        try:
            return self._add_delta(x, y, g)
        finally:
            if threads > 1:
                torch.set_num_threads(threads)

    def _add_delta(self, x: torch.Tensor, y: torch.Tensor, g: _Grouping) -> torch.Tensor:  # y += delta(x)
        x2 = x.reshape(-1, self.in_features)  # [T, in]
        if x2.shape[0] != g.num_tokens:
            raise LoraSlotError(f"routing has {g.num_tokens} tokens but the batch has {x2.shape[0]}")
        y2 = y.view(-1, self.out_features)  # [T, out]
        if g.in_order and g.strategy == "bmm" and g.pad_pos is None and y2.dtype == self.lora_b.dtype:
            # the batch is its own [NG, L] layout: one bmm, then one baddbmm accumulating into y
            a, b = self._bmm_weights(g)  # [NG, r, in], [NG, r, out]
            h = torch.bmm(x2.view(a.shape[0], g.max_count, self.in_features), a.transpose(1, 2))  # [NG, L, r]
            y2.view(a.shape[0], g.max_count, self.out_features).baddbmm_(h, b)
            return y
        xs = x2.index_select(0, g.perm)  # [Ta, in] adapter tokens sorted by slot
        delta = self._delta(xs, g)  # [Ta, out]
        y2.index_add_(0, g.perm, delta.to(y2.dtype))
        return y

    def _delta(self, xs: torch.Tensor, g: _Grouping) -> torch.Tensor:  # xs: [Ta, in] sorted by slot
        r = g.rank
        if g.strategy == "grouped":
            # grouped GEMM over all slots (empty groups cost nothing), weights not copied
            a_t = self.lora_a[:, :r].transpose(1, 2)  # [S, in, r]
            b_t = self.lora_b[:, :r]  # [S, r, out]
            try:
                h = torch._grouped_mm(xs, a_t, offs=g.offs)  # [Ta, r]
                return torch._grouped_mm(h, b_t, offs=g.offs)  # [Ta, out]
            except RuntimeError as e:  # a layout this build's kernel refuses: same sort, other kernel
                bank = self.bank
                if bank is None:  # only a bank's grouping routes tokens here
                    raise
                bank.disable_grouped_mm(str(e)[:200])
                regrouped = bank.grouping(self.module)
                if regrouped is None:  # the routing was cleared meanwhile
                    raise
                return self._delta(xs, regrouped)
        if g.strategy == "bmm":
            a, b = self._bmm_weights(g)
            n_layout = a.shape[0]
            if g.pad_pos is None:
                xg = xs  # [NG * L, in]: sorted order is already the layout
            else:
                xg = xs.new_zeros(n_layout * g.max_count, self.in_features)  # [NG * L, in]
                xg.index_copy_(0, g.pad_pos, xs)
            xg = xg.view(n_layout, g.max_count, self.in_features)  # [NG, L, in]
            h = torch.bmm(xg, a.transpose(1, 2))  # [NG, L, r]
            d = torch.bmm(h, b).view(-1, self.out_features)  # [NG * L, out]
            return d if g.pad_pos is None else d.index_select(0, g.pad_pos)  # [Ta, out]
        # unbalanced: one pair of matmuls per distinct adapter, on views of its slot
        out = xs.new_empty(xs.shape[0], self.out_features)  # [Ta, out]
        start = 0
        for slot, count in zip(g.slots, g.counts, strict=True):
            x_s = xs[start : start + count]  # [n, in]
            h = x_s @ self.lora_a[slot, :r].T  # [n, r]
            torch.mm(h, self.lora_b[slot, :r], out=out[start : start + count])  # [n, out]
            start += count
        return out

    def _bmm_weights(self, g: _Grouping) -> tuple[torch.Tensor, torch.Tensor]:
        """A [NG, r, in] and B^T [NG, r, out] of the bmm layout's groups."""
        r = g.rank
        if g.window is not None:
            lo, hi = g.window
            return self.lora_a[lo:hi, :r], self.lora_b[lo:hi, :r]  # views, no copy
        if g.slot_index is None:
            raise LoraSlotError("a bmm grouping has neither a slot window nor a slot index")
        return (
            self.lora_a[:, :r].index_select(0, g.slot_index),  # gathered copies
            self.lora_b[:, :r].index_select(0, g.slot_index),
        )

    def extra_repr(self) -> str:
        s, r, _ = self.lora_a.shape
        return f"module={self.module}, in={self.in_features}, out={self.out_features}, slots={s}, max_rank={r}"


def _decoder_layers(model: nn.Module) -> Sequence[nn.Module]:
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise LoraSlotError("not a Llama-family causal LM: no model.layers")
    return layers


def inject_multi_lora(
    model: nn.Module,
    target_modules: Iterable[str] = SUPPORTED_MODULES,
    num_slots: int = 8,
    max_rank: int = 64,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> LoraSlotBank:
    """Replace the targeted linear modules of every decoder layer by `MultiLoraLinear` (in place)
    and return the bank owning their slot buffers. dtype/device default to the model's."""
    targets = tuple(target_modules)
    bad = [m for m in targets if m not in SUPPORTED_MODULES]
    if bad:
        raise LoraSlotError(f"cannot target {bad}: supported modules are {list(SUPPORTED_MODULES)}")
    if num_slots < 1 or max_rank < 1:
        raise LoraSlotError("num_slots and max_rank must be positive")
    first = next(model.parameters())
    dtype = dtype or first.dtype
    device = torch.device(device) if device is not None else first.device
    blocks = _decoder_layers(model)
    bases: dict[ModuleKey, tuple[nn.Module, nn.Linear]] = {}
    for i, block in enumerate(blocks):
        for module in targets:
            parent = getattr(block, MODULE_PARENT[module])
            base = getattr(parent, module)
            if isinstance(base, MultiLoraLinear):
                raise LoraSlotError("model already has multi-LoRA layers")
            if not isinstance(base, nn.Linear):
                raise LoraSlotError(f"layer {i} {module} is {type(base).__name__}, not nn.Linear")
            bases[(i, module)] = (parent, base)
    # one store per module kind, layer-major: a layer's [S, R, *] block is contiguous (what its
    # kernels read) and a slot's [L, r, *] across layers is one strided copy (what a load writes)
    stores: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module in targets:
        base = bases[(0, module)][1]
        stores[module] = (
            torch.zeros(len(blocks), num_slots, max_rank, base.in_features, dtype=dtype, device=device),  # [L, S, R, in]
            torch.zeros(len(blocks), num_slots, max_rank, base.out_features, dtype=dtype, device=device),  # [L, S, R, out]
        )
    layers: dict[ModuleKey, MultiLoraLinear] = {}
    for (i, module), (parent, base) in bases.items():
        store_a, store_b = stores[module]
        if (base.in_features, base.out_features) != (store_a.shape[-1], store_b.shape[-1]):
            raise LoraSlotError(f"layer {i} {module} has another shape than layer 0's")
        wrapped = MultiLoraLinear(base, module, store_a[i], store_b[i])
        setattr(parent, module, wrapped)
        layers[(i, module)] = wrapped
    bank = LoraSlotBank(layers, num_slots, max_rank, dtype, device, stores=stores)
    for layer in layers.values():
        layer.bank = bank
    return bank
