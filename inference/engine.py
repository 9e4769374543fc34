"""The engine: one base model, many LoRA adapters, heterogeneous continuous batching.

    engine = Engine(EngineConfig(num_slots=8))
    engine.start()
    engine.register_adapter("adapter-7", folder)          # validated now, loaded on demand
    h = engine.submit(GenerationRequest("r1", "adapter-7", messages=[...], params=SamplingParams(max_tokens=64)))
    async for ev in h.stream(): ...                        # TokenEvent(text, token_id)
    result = await h.result()                              # GenerationResult(... finish_reason)
    engine.stop()

Wiring: base model (inference.base_model) -> multi-LoRA layers injected in place
(inference.lora) -> adapter tiers (inference.tiers) -> KV cache + runner (kv_cache, runner) ->
scheduler thread (inference.scheduler). Tokenization and request validation happen in the
caller's thread inside `submit`, so bad input raises there, synchronously.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from inference.adapters import SUPPORTED_MODULES, AdapterSpec, load_adapter_weights, validate_adapter
from inference.base_model import LoadedBaseModel, load_base_model
from inference.cpu_gemm import pack_linears, packed_linear_works
from inference.errors import EngineError, InvalidRequest, PromptTooLong, UnknownAdapter
from inference.lora import inject_multi_lora
from inference.packed import PackedStore
from inference.requests import GenerationRequest, RequestHandle
from inference.runner import ModelRunner
from inference.scheduler import Scheduler, make_sequence
from inference.tiers import AdapterTiers

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# a token is at least one character for every tokenizer we serve; this bounds the work a hostile
# multi-megabyte prompt can cause before its token count is known
_MAX_CHARS_PER_TOKEN = 32


class EngineConfig(BaseModel):
    """Engine settings. Memory is bounded by them up front: KV cache =
    2 x layers x max_batch_size x kv_heads x max_model_len x head_dim x dtype bytes; slot buffers =
    num_slots x max_rank x (in + out) of every targeted module; host tier = host_cache_size adapters."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    base_model: str | None = None
    """Local model folder (config.json + *.safetensors) or a .gguf file; None = the embedded
    SmolLM2-135M-Instruct."""
    model_id: str | None = None
    """Name adapters must declare as their base model; None = the loader's id (the embedded model's hub id)."""
    device: str | None = None
    """"cpu", "cuda", "cuda:1"...; None = CUDA when available, else CPU."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights and activations; "auto" = fp32 on CPU, bf16 on GPUs that support it, else fp16."""
    num_slots: int = Field(8, ge=1, le=4096)
    """Adapters resident on the device at once (LoRA slot buffers). Distinct adapters in one batch <= this."""
    host_cache_size: int = Field(64, ge=0, le=1_000_000)
    """Adapters kept in host memory (LRU; pinned memory on CUDA) for fast slot activation."""
    max_rank: int = Field(64, ge=1, le=1024)
    """Largest LoRA rank accepted; adapters above it are refused at registration."""
    max_batch_size: int = Field(16, ge=1, le=1024)
    """Requests decoded together (KV-cache rows)."""
    max_queue: int = Field(256, ge=1, le=1_000_000)
    """Requests allowed to wait; beyond it submit raises EngineOverloaded (back-pressure)."""
    max_model_len: int = Field(1024, ge=8, le=1_048_576)
    """Prompt + completion tokens per request (KV-cache row length)."""
    max_new_tokens: int = Field(512, ge=1)
    """Cap on a request's max_tokens; a request asking for more is refused."""
    max_prefill_tokens: int = Field(2048, ge=1)
    """Prompt tokens prefilled per scheduler step (bounds the pause a burst of new prompts causes)."""
    idle_batch_window_ms: float = Field(0.0, ge=0.0, le=1000.0)
    """After a step that finished rows and left the engine idle: how long the first returning
    request waits for as many others to share its prefill (at least half that step: see
    Scheduler._gather_after_idle), and after a pause how long the first request waits for whoever
    comes (a dynamic-batching delay, as Triton's max_queue_delay); 0 = never wait."""
    target_modules: tuple[str, ...] = SUPPORTED_MODULES
    """Linear modules that get multi-LoRA slots; adapters targeting others are refused."""
    loader_threads: int = Field(1, ge=1, le=64)
    """Background threads reading adapters from disk into host memory."""
    cpu_packed_linears: bool = True
    """On CPU, run the base model's linears as oneDNN products on prepacked weights
    (inference.cpu_gemm: a decode step ~2x faster here) where this machine's torch supports
    them; False = plain `F.linear`."""
    packed_dir: str | None = None
    """Folder for the engine-native packed copies of registered adapters (derived; checked on load
    by SHA-256, or by file identity while unchanged since written or hashed if the folder is
    private, see inference.packed);
    None = a private temporary folder removed when the engine closes."""

    @field_validator("target_modules")
    @classmethod
    def _known_modules(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [m for m in v if m not in SUPPORTED_MODULES]
        if bad or not v:
            raise ValueError(f"target_modules must be a non-empty subset of {list(SUPPORTED_MODULES)}, got {bad or v}")
        return v


class Engine:
    def __init__(self, config: EngineConfig | None = None, base: LoadedBaseModel | None = None):
        """Load (or take) the base model and build the engine; `start()` launches the scheduler.
        A `base` passed in is owned by the engine from now on: its model gets multi-LoRA layers
        injected in place (pass a copy if you still need the plain model)."""
        self.config = cfg = config or EngineConfig()
        if base is None:
            dtype = None if cfg.dtype == "auto" else _DTYPES[cfg.dtype]
            base = load_base_model(cfg.base_model, device=cfg.device, dtype=dtype, model_id=cfg.model_id)
        self.base = base
        self.model_id: str = cfg.model_id or base.model_id
        self.tokenizer = base.tokenizer
        self.device = base.device
        self.dtype = base.dtype
        model_len = getattr(base.model.config, "max_position_embeddings", None)
        if model_len is not None and cfg.max_model_len > model_len:
            raise EngineError(f"max_model_len {cfg.max_model_len} exceeds the model's {model_len} positions")
        self.bank = inject_multi_lora(base.model, cfg.target_modules, num_slots=cfg.num_slots, max_rank=cfg.max_rank)
        self.runner = ModelRunner(base.model)
        self.packed_linears = 0  # base linears running prepacked (inference.cpu_gemm)
        if cfg.cpu_packed_linears and self.device.type == "cpu" and packed_linear_works(self.dtype):
            self.packed_linears = pack_linears(self.runner, batch_hint=cfg.max_batch_size)
        # engine-native packed copies, written at registration, verified on every cold load
        self.packed = PackedStore(self.dtype, cfg.packed_dir)
        self._registered: dict[str, tuple[Path, AdapterSpec]] = {}  # adapter id -> its packed store key
        self.tiers = AdapterTiers(
            self.bank,
            host_cache_size=cfg.host_cache_size,
            loader=self.packed.load,
            pin_memory=self.device.type == "cuda",
            loader_threads=cfg.loader_threads,
        )
        self.scheduler = Scheduler(
            self.runner,
            self.tiers,
            max_batch_size=cfg.max_batch_size,
            max_queue=cfg.max_queue,
            max_model_len=cfg.max_model_len,
            max_prefill_tokens=max(cfg.max_prefill_tokens, 1),
            eos_ids=_eos_ids(base),
            idle_batch_window_s=cfg.idle_batch_window_ms / 1000,
        )
        self._lock = threading.Lock()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> "Engine":
        self.scheduler.start()
        return self

    def stop(self) -> None:
        """Stop the scheduler; requests still pending finish with EngineStopped."""
        self.scheduler.stop()

    def close(self) -> None:
        self.stop()
        self.tiers.close()
        self.packed.close()

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ adapters

    def register_adapter(self, adapter_id: str, folder: str | os.PathLike):
        """Validate a local (already verified) PEFT folder against the base model and make it
        servable; its weights load on first use. Raises AdapterValidationError with the reason."""
        if not isinstance(adapter_id, str) or not adapter_id or len(adapter_id) > 256:
            raise InvalidRequest("adapter_id must be a non-empty string of at most 256 chars")
        spec = validate_adapter(
            Path(folder),
            self.base.model.config,
            base_model_id=self.model_id,
            max_rank=self.config.max_rank,
            allowed_targets=self.config.target_modules,
        )
        weights = load_adapter_weights(Path(folder), spec, dtype=self.dtype)
        with self._lock:
            self.packed.register(Path(folder), spec, weights)
            self.tiers.register(adapter_id, Path(folder), spec)
            old = self._registered.get(adapter_id)
            self._registered[adapter_id] = (Path(folder), spec)
            if old is not None:
                self.packed.release(*old)
        return spec

    def unregister_adapter(self, adapter_id: str) -> None:
        """Forget an adapter; running requests on it finish, waiting ones fail with UnknownAdapter."""
        with self._lock:
            self.tiers.unregister(adapter_id)
            old = self._registered.pop(adapter_id, None)
            if old is not None:
                self.packed.release(*old)

    def pin(self, adapter_id: str) -> None:
        """Keep an adapter resident in a slot (loaded in the background if needed)."""
        self.tiers.pin(adapter_id)
        self.scheduler._wake()

    def unpin(self, adapter_id: str) -> None:
        self.tiers.unpin(adapter_id)

    def adapters(self) -> list[str]:
        return self.tiers.registered()

    # ------------------------------------------------------------ requests

    def encode(self, request: GenerationRequest) -> list[int]:
        """Prompt token ids: raw text for `prompt`, the tokenizer's chat template for `messages`."""
        return encode_prompt(self.tokenizer, request, self.config.max_model_len)

    def submit(self, request: GenerationRequest) -> RequestHandle:
        """Queue a request; returns at once. Raises InvalidRequest/PromptTooLong/UnknownAdapter for
        bad input and EngineOverloaded when the waiting queue is full."""
        if not isinstance(request, GenerationRequest):
            raise InvalidRequest("submit() takes a GenerationRequest")
        cfg = self.config
        if request.adapter_id is not None and not self.tiers.is_registered(request.adapter_id):
            raise UnknownAdapter(f"adapter {request.adapter_id!r} is not registered with this engine")
        p = request.params
        if p.max_tokens is not None and p.max_tokens > cfg.max_new_tokens:
            raise InvalidRequest(f"max_tokens {p.max_tokens} exceeds this engine's limit of {cfg.max_new_tokens}")
        ids = self.encode(request)
        if not ids:
            raise InvalidRequest("the prompt is empty after tokenization")
        if len(ids) >= cfg.max_model_len:
            raise PromptTooLong(
                f"prompt has {len(ids)} tokens; max_model_len is {cfg.max_model_len} (prompt + at least one new token)"
            )
        room = cfg.max_model_len - len(ids)
        max_new = min(p.max_tokens or cfg.max_new_tokens, cfg.max_new_tokens, room)
        handle = RequestHandle(request, len(ids), canceller=self.scheduler.cancel)
        seq = make_sequence(handle, ids, p, request.adapter_id, max_new, self.tokenizer, self.device)
        self.scheduler.add(seq)
        return handle

    def generate(self, request: GenerationRequest, timeout: float | None = None):
        """Blocking convenience: submit and wait for the result."""
        return self.submit(request).result_sync(timeout)

    # ------------------------------------------------------------ stats

    def stats(self) -> dict:
        s = self.scheduler
        c = dict(s.counters)
        return {
            "model_id": self.model_id,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "queue_depth": s.queue_depth(),
            "running": len(s.running),
            "max_batch_size": self.config.max_batch_size,
            "cpu_packed_linears": self.packed_linears,
            "tokens_per_second": s.tokens_per_second(),
            "requests": {
                k: c.get(k, 0)
                for k in (
                    "submitted",
                    "rejected_overloaded",
                    "finished_stop",
                    "finished_length",
                    "finished_cancelled",
                    "finished_error",
                )
            },
            "generated_tokens": c.get("generated_tokens", 0),
            "prefill_tokens": c.get("prefill_tokens", 0),
            "decode_steps": c.get("decode_steps", 0),
            "decode_tokens": c.get("decode_tokens", 0),
            "decode_seconds": float(c.get("decode_seconds", 0.0)),
            "mixed_steps": c.get("mixed_steps", 0),
            "prefill_steps": c.get("prefill_steps", 0),
            "kv_cache_bytes": s.cache.nbytes,
            "adapters": self.tiers.stats(),
        }


def encode_prompt(tokenizer, request: GenerationRequest, max_model_len: int) -> list[int]:
    """Prompt token ids of a request: raw text for `prompt`, the tokenizer's chat template for
    `messages` (shared by the builtin engine and the vLLM gateway, which sends these ids)."""
    limit = max_model_len * _MAX_CHARS_PER_TOKEN
    chars = len(request.prompt) if request.prompt is not None else sum(len(m["content"]) for m in request.messages or ())
    if chars > limit:
        raise PromptTooLong(f"prompt of {chars} characters cannot fit in max_model_len={max_model_len} tokens")
    if request.prompt is not None:
        ids = tokenizer(request.prompt).input_ids
    else:
        try:
            ids = tokenizer.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=True)
        except Exception as e:  # template errors (e.g. roles out of order) are the caller's input
            raise InvalidRequest(f"messages rejected by the chat template: {e}") from e
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    return list(ids)


def eos_ids_of(generation_config, tokenizer) -> set[int]:
    """Every token id that ends a generation: the model's generation config's and the tokenizer's."""
    ids: set[int] = set()
    gen = generation_config
    for v in (getattr(gen, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    return ids


def _eos_ids(base: LoadedBaseModel) -> set[int]:
    return eos_ids_of(getattr(base.model, "generation_config", None), base.tokenizer)
