"""Continuous batching: one background thread owns the model and runs steps.

Each step:
1. apply cancellations (the row and its KV cache are freed before any more compute);
2. finish background adapter loads (`AdapterTiers.poll`);
3. admit waiting requests, FIFO but skipping those whose adapter is still loading (they wait,
   everyone else proceeds), up to `max_batch_size` rows and `max_prefill_tokens` prompt tokens;
4. one forward for the step (`ModelRunner.step`): a decode token of every running row (rows of
   different adapters together; the bank routes each token to its slot) and the admitted prompts,
   packed; sample each row's next token and each prompt's first, detokenize, check stops, stream.

Why prompts ride in the decode forward (vLLM's chunked prefill does the same): on a memory-bound
device every forward reads all weights, so a separate prefill forward costs about a decode step.
Requests that arrive a few milliseconds apart (as through the HTTP API) would otherwise cost one
extra weight pass each. A newly admitted row decodes its second token in the next step.

Running requests always occupy KV-cache rows 0..B-1 (see kv_cache.py), so the decode batch is
the cache's prefix. When the engine is idle the thread sleeps on a condition variable.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field

import torch

from inference.detokenize import IncrementalText
from inference.errors import EngineError, EngineOverloaded, EngineStopped, UnknownAdapter
from inference.kv_cache import KVCache
from inference.requests import FinishReason, GenerationResult, RequestHandle, SamplingParams, TokenEvent
from inference.runner import ModelRunner
from inference.sampling import SamplingBatch, make_generator, sample_next
from inference.tiers import AdapterTiers

log = logging.getLogger(__name__)

NO_SLOT = -1
RETURN_HORIZON_S = 0.25
"""A request within this long after the engine went idle counts as a finisher's client coming back
(an HTTP round trip is tens of ms); later ones start a cold batch (see _gather_after_idle)."""
RETURN_WAIT_STEPS = 0.5
"""Finishers' clients are waited for up to this fraction of the step that finished them (at least
the configured window): leaving one out costs the group a whole step (see _gather_after_idle)."""


@dataclass(eq=False)
class Sequence:
    """Scheduler-side state of one request."""

    handle: RequestHandle
    prompt_ids: list[int]
    params: SamplingParams
    adapter_id: str | None
    max_new: int  # tokens this request may generate (max_tokens, model length, engine cap)
    generator: torch.Generator | None
    text: IncrementalText
    slot: int = NO_SLOT
    out_ids: list[int] = field(default_factory=list)
    sampled: int = 0  # tokens sampled, incl. a final EOS
    last_token: int = -1  # sampled but not yet in the KV cache
    cancelled: bool = False
    submitted_at: float = 0.0


class Scheduler:
    def __init__(
        self,
        runner: ModelRunner,
        tiers: AdapterTiers,
        *,
        max_batch_size: int,
        max_queue: int,
        max_model_len: int,
        max_prefill_tokens: int,
        eos_ids: set[int],
        idle_batch_window_s: float = 0.0,
    ):
        self.runner = runner
        self.tiers = tiers
        self.bank = tiers.bank
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.max_model_len = max_model_len
        self.max_prefill_tokens = max_prefill_tokens
        self.idle_batch_window_s = idle_batch_window_s
        self._last_burst = 0  # rows the step that left the engine idle finished (see _gather_after_idle)
        self._idle_since = 0.0
        self._waiting_at_idle = 0
        self._idle_step_s = 0.0  # how long that step took
        self.eos_ids = eos_ids
        self.cache: KVCache = runner.new_cache(max_rows=max_batch_size, max_len=max_model_len)
        self.device = runner.embed.weight.device
        self._cv = threading.Condition()
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._cancel: list[Sequence] = []
        self.running: list[Sequence] = []
        self._by_handle: dict[int, Sequence] = {}
        self._thread: threading.Thread | None = None
        self._step_lock = threading.Lock()  # held for the whole of each step
        self._stop = False
        # every key exists from the start: stats() copies the dict from other threads, and a
        # dict that never grows can be copied while the scheduler updates it
        self.counters: dict[str, float] = dict.fromkeys(
            (
                "submitted",
                "rejected_overloaded",
                "finished_stop",
                "finished_length",
                "finished_cancelled",
                "finished_error",
                "generated_tokens",
                "prefill_tokens",
                "decode_steps",
                "decode_tokens",
                "mixed_steps",
                "prefill_steps",
            ),
            0,
        )
        self.counters["decode_seconds"] = 0.0
        self._tok_window: collections.deque[tuple[float, int]] = collections.deque()
        self._tok_lock = threading.Lock()
        tiers.on_load_done = self._wake

    # ------------------------------------------------------------ caller side (any thread)

    def add(self, seq: Sequence) -> None:
        with self._cv:
            if self._thread is None or self._stop:
                raise EngineStopped("engine is not running: call start() first")
            if len(self._waiting) >= self.max_queue:
                self.counters["rejected_overloaded"] += 1
                raise EngineOverloaded(
                    f"engine overloaded: {len(self._waiting)} requests already waiting (max_queue={self.max_queue}); retry later"
                )
            seq.submitted_at = time.monotonic()
            self._waiting.append(seq)
            self._by_handle[id(seq.handle)] = seq
            self.counters["submitted"] += 1
            self._cv.notify()

    def cancel(self, handle: RequestHandle) -> None:
        with self._cv:
            seq = self._by_handle.get(id(handle))
            if seq is not None and not seq.cancelled:
                seq.cancelled = True
                self._cancel.append(seq)
                self._cv.notify()

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify()

    def start(self) -> None:
        with self._cv:
            if self._thread is not None:
                return
            self._stop = False
            self._thread = threading.Thread(target=self._loop, name="engine-scheduler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cv:
            t = self._thread
            self._stop = True
            self._cv.notify()
        if t is not None:
            t.join()
        with self._cv:
            self._thread = None
            pending = list(self._waiting) + self.running
            self._waiting.clear()
            self._by_handle.clear()
        for seq in pending:
            seq.handle._finish(None, EngineStopped("engine stopped before the request finished"))
        self.running = []

    @contextlib.contextmanager
    def paused(self):
        """Hold the scheduler between steps (tests and benchmarks drive the model meanwhile;
        submits still queue up and run once the block exits)."""
        with self._step_lock:
            yield

    def queue_depth(self) -> int:
        return len(self._waiting)

    def tokens_per_second(self, window: float = 10.0) -> float:
        now = time.monotonic()
        with self._tok_lock:
            items = [(t, n) for t, n in self._tok_window if now - t <= window]
        if not items:
            return 0.0
        span = max(now - items[0][0], 1e-3)
        return sum(n for _, n in items) / span

    # ------------------------------------------------------------ the thread

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._cv:
                while not self._stop and not self.running and not self._cancel and not (self._waiting and not self.tiers.pending):
                    # nothing runnable: sleep until a submit/cancel/load completes (poll loads
                    # now and then in case a wake-up was missed)
                    self._cv.wait(timeout=0.05 if self.tiers.pending else 1.0)
                    if self.tiers.pending or self._waiting:
                        break
                if self._stop:
                    return
                self._gather_after_idle()
            try:
                with self._step_lock:
                    busy = self.step()
                if not busy:  # only waiting requests, none admissible yet: don't spin
                    with self._cv:
                        self._cv.wait(timeout=0.005)
            except Exception as e:  # a bug or device error: fail the affected requests, keep serving
                log.exception("engine step failed")
                self._fail_all_running(EngineError(f"engine step failed: {type(e).__name__}: {e}"))

    def _gather_after_idle(self) -> None:
        """Dynamic batching after a burst (caller holds self._cv). When the last step finished
        several rows together and left the engine idle, their clients tend to come back together
        (closed-loop workers: evaluation jobs, agents, load generators) after their HTTP round
        trips. Starting on the first returner would prefill it alone and put the others a step
        behind for good; so it waits until as many are waiting as finished (plus those already
        waiting). It waits at most `idle_batch_window_s` or RETURN_WAIT_STEPS of the step that
        finished them, whichever is longer (within RETURN_HORIZON_S), from its arrival or from the
        idle moment if it was already waiting: the round trips cost node CPU, so they stretch as
        steps do (through the API on 2 slow cores they came back 30-72 ms after a 250 ms step,
        measured), and a returner left out costs the group a step. That includes a single
        finisher whose group came back while it ran its last step (a straggler one step behind):
        the group waits for it, so it rejoins them instead of trailing them by a step for good
        (without a moment of idle the engine never regroups them). On a cold start (the engine
        idle longer than RETURN_HORIZON_S, e.g. a burst of new clients after a pause) the first
        request waits `idle_batch_window_s` for whoever comes. A lone client coming straight back
        is never held: it is all that is expected."""
        burst, self._last_burst = self._last_burst, 0
        if not self.idle_batch_window_s or self.running or not self._waiting:
            return
        first = max(self._waiting[0].submitted_at, self._idle_since)  # one back before the idle waits from then
        returning = first - self._idle_since <= RETURN_HORIZON_S  # else the finishers are not coming back now
        if returning and burst:
            expected = min(self._waiting_at_idle + burst, self.max_batch_size)  # those already back count too
            wait = max(self.idle_batch_window_s, min(RETURN_WAIT_STEPS * self._idle_step_s, RETURN_HORIZON_S))
        else:  # a cold start (nobody finished just now): whoever comes in the window
            expected, first = self.max_batch_size, self._waiting[0].submitted_at
            wait = self.idle_batch_window_s
        deadline = first + wait
        while not self._stop and not self._cancel and len(self._waiting) < expected:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cv.wait(left)

    def step(self) -> bool:
        """One scheduling step; returns whether it ran the model (public for tests and benchmarks
        that drive it synchronously)."""
        with torch.inference_mode():
            self._apply_cancellations()
            for adapter_id, reason in self.tiers.poll():
                self._fail_waiting(adapter_id, EngineError(f"adapter {adapter_id!r} could not be loaded: {reason}"))
            admitted = self._admit()
            if admitted or self.running:
                self._forward(admitted)
            return bool(admitted or self.running)

    def _apply_cancellations(self) -> None:
        with self._cv:
            todo, self._cancel = self._cancel, []
            for seq in todo:
                if seq in self._waiting:
                    self._waiting.remove(seq)
                    self._by_handle.pop(id(seq.handle), None)
                    self._finish(seq, "cancelled")
        rows = [i for i, s in enumerate(self.running) if s.cancelled]
        for i in rows:
            self._finish(self.running[i], "cancelled")
        self._remove_rows(rows)

    def _admit(self) -> list[Sequence]:
        free = self.max_batch_size - len(self.running)
        if free <= 0:
            return []
        admitted: list[Sequence] = []
        budget = self.max_prefill_tokens
        with self._cv:
            waiting = list(self._waiting)
        protect = {s.adapter_id for s in waiting if s.adapter_id is not None}
        protect.update(s.adapter_id for s in self.running if s.adapter_id is not None)
        for seq in waiting:
            if len(admitted) >= free:
                break
            if admitted and len(seq.prompt_ids) > budget:
                break  # keep FIFO order for large prompts: they go first next step
            if seq.adapter_id is not None:
                try:
                    slot = self.tiers.acquire(seq.adapter_id, protect)
                except UnknownAdapter as e:
                    self._drop_waiting(seq)
                    self._finish(seq, "error", UnknownAdapter(f"{e} (unregistered while the request waited)"))
                    continue
                if slot is None:
                    continue  # loading: this request waits, the others proceed
                seq.slot = slot
            self._drop_waiting(seq)
            admitted.append(seq)
            budget -= len(seq.prompt_ids)
        return admitted

    def _drop_waiting(self, seq: Sequence) -> None:
        with self._cv:
            try:
                self._waiting.remove(seq)
            except ValueError:
                pass

    def _forward(self, admitted: list[Sequence]) -> None:
        """Decode every running row and prefill the admitted prompts in one forward. Counters:
        decode_* cover the steps without prompts (a clean decode rate), mixed_steps the others."""
        old = len(self.running)
        rows = list(range(old, old + len(admitted)))
        self.running.extend(admitted)  # before sampling: a finished row's hole is filled from the end
        seqs = list(self.running)
        tokens = torch.tensor([s.last_token for s in seqs[:old]], dtype=torch.long, device=self.device) if old else None  # [B]
        token_slots = [s.slot for s in seqs[:old]] + [s.slot for s in admitted for _ in s.prompt_ids]  # [B + sum T]
        t0 = time.perf_counter()
        self._route(token_slots)
        logits = self.runner.step(self.cache, tokens, [s.prompt_ids for s in admitted], rows)  # [B + N, V]
        self.counters["prefill_tokens"] += len(token_slots) - old
        self._sample_and_emit(seqs, logits)
        if not self.running:
            self._last_burst, self._idle_since, self._waiting_at_idle = len(seqs), time.monotonic(), len(self._waiting)
            self._idle_step_s = time.perf_counter() - t0
        if admitted:
            self.counters["prefill_steps"] += 1
        if admitted and old:
            self.counters["mixed_steps"] += 1
        elif old:
            self.counters["decode_steps"] += 1
            self.counters["decode_tokens"] += old
            self.counters["decode_seconds"] += time.perf_counter() - t0

    def _route(self, slots: list[int]) -> None:
        self.bank.set_routing(None if all(s == NO_SLOT for s in slots) else slots)

    def _sample_and_emit(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        """logits [N, V] for rows 0..N-1 == seqs, every running row."""
        if all(s.params.greedy for s in seqs):
            next_ids = logits.argmax(dim=-1)
        else:
            batch = SamplingBatch.build([s.params for s in seqs], [s.generator for s in seqs], self.device)
            next_ids = sample_next(logits, batch)
        ids = next_ids.tolist()
        now = time.monotonic()
        with self._tok_lock:
            self._tok_window.append((now, len(ids)))
            while self._tok_window and now - self._tok_window[0][0] > 30.0:
                self._tok_window.popleft()
        self.counters["generated_tokens"] += len(ids)
        done_rows: list[int] = []
        for i, (seq, tok) in enumerate(zip(seqs, ids, strict=True)):
            seq.sampled += 1
            seq.last_token = tok
            reason: FinishReason | None = None
            if tok in self.eos_ids and not seq.params.ignore_eos:
                reason = "stop"
            else:
                seq.out_ids.append(tok)
                delta = seq.text.add(tok)
                if delta or not seq.text.stopped:
                    seq.handle._push(TokenEvent(delta, tok))
                if seq.text.stopped:
                    reason = "stop"
                elif seq.sampled >= seq.max_new or len(seq.prompt_ids) + seq.sampled >= self.max_model_len:
                    reason = "length"
            if reason is not None:
                self._finish(seq, reason)
                done_rows.append(i)
        self._remove_rows(done_rows)

    def _finish(self, seq: Sequence, reason: FinishReason, error: BaseException | None = None) -> None:
        tail = seq.text.flush() if reason != "cancelled" and error is None else ""
        if tail:
            seq.handle._push(TokenEvent(tail, None))
        result = GenerationResult(
            request_id=seq.handle.request_id,
            text=seq.text.text,
            token_ids=list(seq.out_ids),
            prompt_tokens=len(seq.prompt_ids),
            completion_tokens=seq.sampled,
            finish_reason=reason if error is None else "error",
        )
        self.counters[f"finished_{result.finish_reason}"] += 1
        seq.handle._finish(result, error)
        with self._cv:
            self._by_handle.pop(id(seq.handle), None)

    def _remove_rows(self, rows: list[int]) -> None:
        """Free finished rows at once; the last row moves into each hole (rows stay a prefix)."""
        for r in sorted(rows, reverse=True):
            seq = self.running[r]
            if seq.slot != NO_SLOT:
                self.tiers.release(seq.slot)
            last = len(self.running) - 1
            if r != last:
                self.cache.move_row(last, r)
                self.running[r] = self.running[last]
            else:
                self.cache.free_row(r)
            self.running.pop()

    def _fail_waiting(self, adapter_id: str, error: BaseException) -> None:
        with self._cv:
            victims = [s for s in self._waiting if s.adapter_id == adapter_id]
            for s in victims:
                self._waiting.remove(s)
        for s in victims:
            self._finish(s, "error", error)

    def _fail_all_running(self, error: BaseException) -> None:
        rows = list(range(len(self.running)))
        for s in self.running:
            self._finish(s, "error", error)
        self._remove_rows(rows)


def make_sequence(
    handle: RequestHandle, prompt_ids: list[int], params: SamplingParams, adapter_id, max_new: int, tokenizer, device
) -> Sequence:
    gen = None if params.greedy else make_generator(params.seed, device)
    return Sequence(
        handle=handle,
        prompt_ids=prompt_ids,
        params=params,
        adapter_id=adapter_id,
        max_new=max_new,
        generator=gen,
        text=IncrementalText(tokenizer, params.stop),
    )
