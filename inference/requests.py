"""What a caller hands the engine and what it gets back: requests, sampling parameters,
streamed token events, final results, and the handle that bridges the scheduler thread to
asyncio (or to a blocking caller)."""

from __future__ import annotations

import asyncio
import math
import threading
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Literal

from inference.errors import EngineError, InvalidRequest, RequestCancelled

FinishReason = Literal["stop", "length", "cancelled", "error"]

MAX_STOP_STRINGS = 8
MAX_STOP_CHARS = 256
MAX_SEED = 2**63 - 1
MAX_MESSAGES = 1024


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding parameters (validated on construction)."""

    max_tokens: int | None = None
    """Most tokens to generate; None = up to the engine's max_new_tokens cap / max_model_len."""
    temperature: float = 1.0
    """0 = greedy (argmax); otherwise logits are divided by it before sampling."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 = no limit."""
    seed: int | None = None
    """Seed of this request's own torch.Generator: same seed + same prompt = same sample."""
    stop: tuple[str, ...] = ()
    """Stop strings: generation ends when one appears; it is not included in the output."""
    ignore_eos: bool = False
    """Keep generating past EOS until max_tokens (benchmarks: every row produces the same count)."""

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif isinstance(self.stop, list):
            object.__setattr__(self, "stop", tuple(self.stop))
        if self.max_tokens is not None and (
            isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1
        ):
            raise InvalidRequest(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not _is_number(self.temperature) or not (0.0 <= self.temperature <= 100.0):
            raise InvalidRequest(f"temperature must be a finite number in [0, 100], got {self.temperature!r}")
        if not _is_number(self.top_p) or not (0.0 < self.top_p <= 1.0):
            raise InvalidRequest(f"top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise InvalidRequest(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or not (0 <= self.seed <= MAX_SEED)
        ):
            raise InvalidRequest(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if not isinstance(self.ignore_eos, bool):
            raise InvalidRequest("ignore_eos must be a boolean")
        if not isinstance(self.stop, tuple) or len(self.stop) > MAX_STOP_STRINGS:
            raise InvalidRequest(f"stop must be a list of at most {MAX_STOP_STRINGS} strings")
        for s in self.stop:
            if not isinstance(s, str) or not s or len(s) > MAX_STOP_CHARS:
                raise InvalidRequest(f"each stop string must be a non-empty string of at most {MAX_STOP_CHARS} chars")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class GenerationRequest:
    """One completion request: exactly one of `prompt` (raw text) or `messages` (chat, rendered
    by the tokenizer's chat template); `adapter_id` None = the base model."""

    request_id: str
    adapter_id: str | None = None
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    params: SamplingParams = field(default_factory=SamplingParams)

    def __post_init__(self) -> None:
        if not isinstance(self.request_id, str) or not self.request_id or len(self.request_id) > 256:
            raise InvalidRequest("request_id must be a non-empty string of at most 256 chars")
        if self.adapter_id is not None and (not isinstance(self.adapter_id, str) or not self.adapter_id):
            raise InvalidRequest("adapter_id must be a non-empty string or None")
        if (self.prompt is None) == (self.messages is None):
            raise InvalidRequest("give exactly one of prompt or messages")
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise InvalidRequest("prompt must be a string")
        if self.messages is not None:
            if not isinstance(self.messages, list) or not self.messages:
                raise InvalidRequest("messages must be a non-empty list")
            if len(self.messages) > MAX_MESSAGES:
                raise InvalidRequest(f"at most {MAX_MESSAGES} messages per request")
            for m in self.messages:
                if (
                    not isinstance(m, dict)
                    or m.get("role") not in ("system", "user", "assistant")
                    or not isinstance(m.get("content"), str)
                ):
                    raise InvalidRequest("each message must be {'role': 'system'|'user'|'assistant', 'content': str}")
        if not isinstance(self.params, SamplingParams):
            raise InvalidRequest("params must be a SamplingParams")


@dataclass(frozen=True)
class TokenEvent:
    """One streamed step: `text` is the newly released text (may be empty while a possible stop
    string is held back); `token_id` None marks the final flush of held-back text."""

    text: str
    token_id: int | None


@dataclass(frozen=True)
class GenerationResult:
    """Final outcome. `completion_tokens` counts every sampled token (including a final EOS,
    which costs a decode step); `token_ids` omits that EOS."""

    request_id: str
    text: str
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason


_END = object()


class RequestHandle:
    """The caller's side of a submitted request. Thread-safe: the scheduler thread pushes events;
    one asyncio consumer may `stream()`, any number may await `result()`, a blocking caller may
    `result_sync()`. Events produced before `stream()` attaches are buffered, never lost."""

    def __init__(self, request: GenerationRequest, prompt_tokens: int, canceller):
        self.request = request
        self.request_id = request.request_id
        self.prompt_tokens = prompt_tokens
        self._cancel_cb = canceller
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._backlog: list[TokenEvent] = []
        self._sink: tuple[asyncio.AbstractEventLoop, asyncio.Queue] | None = None
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._result: GenerationResult | None = None
        self._error: BaseException | None = None
        self._streamed = False

    # --- producer side (scheduler thread) ---

    def _push(self, ev: TokenEvent) -> None:
        with self._lock:
            if self._sink is None:
                self._backlog.append(ev)
                return
            loop, q = self._sink
        _call_soon(loop, q.put_nowait, ev)

    def _finish(self, result: GenerationResult | None, error: BaseException | None = None) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self._result, self._error = result, error
            self._done.set()
            sink, waiters = self._sink, list(self._waiters)
            self._waiters.clear()
        if sink is not None:
            _call_soon(sink[0], sink[1].put_nowait, _END)
        for loop, fut in waiters:
            _call_soon(loop, _resolve, fut)

    # --- consumer side ---

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """Cancel: the scheduler frees the row and its KV cache before its next step."""
        if not self._done.is_set():
            self._cancel_cb(self)

    async def stream(self) -> AsyncIterator[TokenEvent]:
        """Yield TokenEvents as they are produced; ends when the request finishes. Leaving the
        loop early (client gone) cancels the request."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        with self._lock:
            if self._streamed:
                raise EngineError("stream() may be consumed only once per request")
            self._streamed = True
            for ev in self._backlog:
                q.put_nowait(ev)
            self._backlog.clear()
            if self._done.is_set():
                q.put_nowait(_END)
            else:
                self._sink = (loop, q)
        finished = False
        try:
            while True:
                ev = await q.get()
                if ev is _END:
                    finished = True
                    return
                yield ev
        finally:
            if not finished:
                self.cancel()

    async def result(self) -> GenerationResult:
        """The final result; raises RequestCancelled (with `.partial`) or the engine's error."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._done.is_set():
                fut = loop.create_future()
                self._waiters.append((loop, fut))
            else:
                fut = None
        if fut is not None:
            await fut
        return self._outcome()

    def result_sync(self, timeout: float | None = None) -> GenerationResult:
        """Blocking variant of `result()` for threads and scripts."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.request_id} not finished after {timeout} s")
        return self._outcome()

    def _outcome(self) -> GenerationResult:
        if self._error is not None:
            raise self._error
        assert self._result is not None
        if self._result.finish_reason == "cancelled":
            raise RequestCancelled(f"request {self.request_id} was cancelled", partial=self._result)
        return self._result


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def _call_soon(loop: asyncio.AbstractEventLoop, fn, *args) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the consumer's loop is closed: nobody is listening any more
        pass
