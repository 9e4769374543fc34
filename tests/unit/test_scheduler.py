"""Scheduler, KV cache, runner and incremental text on a tiny real Llama model.

The model is a randomly initialised 2-layer `LlamaForCausalLM` with the embedded tokenizer's
vocabulary (the real transformers class at toy width), so many steps run in little time; the
reference for its outputs is transformers' own forward / generate.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from inference.adapter_factory import make_random_adapter
from inference.base_model import LoadedBaseModel, resolve_model_folder
from inference.detokenize import IncrementalText
from inference.engine import Engine, EngineConfig
from inference.requests import GenerationRequest, SamplingParams
from inference.runner import ModelRunner

MODEL_ID = "tiny-llama"


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(resolve_model_folder(None)), local_files_only=True)


def tiny_model(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        max_position_embeddings=256,
        eos_token_id=2,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture
def tiny_base(tokenizer, tmp_path):
    model = tiny_model(len(tokenizer))
    return LoadedBaseModel(
        model=model, tokenizer=tokenizer, model_id=MODEL_ID, folder=tmp_path, dtype=torch.float32, device=torch.device("cpu")
    )


# ---------------------------------------------------------------- incremental text


def test_incremental_text_equals_full_decode_with_multibyte_chars(tokenizer):
    text = "Héllo wörld 🙂 — 日本語 ünïcödé ✓ end"
    ids = tokenizer(text).input_ids
    inc = IncrementalText(tokenizer)
    out = "".join(inc.add(t) for t in ids) + inc.flush()
    assert out == tokenizer.decode(ids, skip_special_tokens=True)
    assert "\ufffd" not in out


@pytest.mark.parametrize("stop", ["wörld", "🙂", "語 ü", "end"])
def test_stop_strings_cut_before_and_never_leak(tokenizer, stop):
    text = "Héllo wörld 🙂 — 日本語 ünïcödé ✓ end"
    ids = tokenizer(text).input_ids
    inc = IncrementalText(tokenizer, (stop, "never-there"))
    released = ""
    for t in ids:
        released += inc.add(t)
        assert stop not in released
        if inc.stopped:
            break
    released += inc.flush()
    assert inc.stopped and released == text[: text.index(stop)] == inc.text


def test_earliest_stop_wins_and_partial_prefix_is_released_at_the_end(tokenizer):
    ids = tokenizer("one two three four").input_ids
    inc = IncrementalText(tokenizer, ("four", "two"))
    out = "".join(inc.add(t) for t in ids)  # adds after the stop are ignored
    assert inc.stopped and out + inc.flush() == "one "
    inc = IncrementalText(tokenizer, ("fourteen",))
    out = "".join(inc.add(t) for t in ids)
    assert not out.endswith("four")  # could still become "fourteen": held back
    assert out + inc.flush() == "one two three four"


# ---------------------------------------------------------------- runner + KV cache


def test_ragged_rows_and_compaction_match_transformers(tokenizer):
    model = tiny_model(len(tokenizer))
    runner = ModelRunner(model)
    cache = runner.new_cache(max_rows=4, max_len=64)
    prompts = [tokenizer(p).input_ids for p in ["a b c d e f g", "hello", "the quick brown fox"]]
    logits = runner.prefill(cache, prompts, [0, 1, 2])  # packed, three lengths
    seqs = [list(p) + [int(t)] for p, t in zip(prompts, logits.argmax(-1), strict=True)]
    # row 1 leaves after prefill: row 2 moves into its place
    cache.move_row(2, 1)
    seqs = [seqs[0], seqs[2]]
    for _ in range(4):
        out = runner.decode(cache, torch.tensor([s[-1] for s in seqs]))
        for s, t in zip(seqs, out.argmax(-1).tolist(), strict=True):
            s.append(t)
    for s, p in zip(seqs, [prompts[0], prompts[2]], strict=True):
        with torch.inference_mode():
            ref = model.generate(torch.tensor([p]), max_new_tokens=5, do_sample=False, eos_token_id=None)[0].tolist()
        assert s == ref
    assert cache.lengths[:3] == [len(prompts[0]) + 4, len(prompts[2]) + 4, 0]


def test_a_step_that_decodes_and_prefills_together_matches_transformers(tokenizer):
    """`ModelRunner.step` with running rows and new prompts in one forward: every row, old and new,
    continues exactly as transformers' greedy generate, and the cache lengths follow."""
    model = tiny_model(len(tokenizer))
    runner = ModelRunner(model)
    cache = runner.new_cache(max_rows=4, max_len=64)
    first = [tokenizer(p).input_ids for p in ["a b c d e f g", "hello"]]
    late = [tokenizer(p).input_ids for p in ["the quick brown fox", "one"]]
    seqs = [list(p) + [int(t)] for p, t in zip(first, runner.prefill(cache, first, [0, 1]).argmax(-1), strict=True)]
    out = runner.decode(cache, torch.tensor([s[-1] for s in seqs]))
    for s, t in zip(seqs, out.argmax(-1).tolist(), strict=True):
        s.append(t)
    # one forward: rows 0-1 decode, two new prompts fill rows 2-3
    logits = runner.step(cache, torch.tensor([s[-1] for s in seqs]), late, [2, 3])  # [2 + 2, V]
    assert logits.shape[0] == 4
    nxt = logits.argmax(-1).tolist()
    seqs[0].append(nxt[0])
    seqs[1].append(nxt[1])
    seqs += [list(p) + [t] for p, t in zip(late, nxt[2:], strict=True)]
    assert cache.lengths[:4] == [len(first[0]) + 2, len(first[1]) + 2, len(late[0]), len(late[1])]
    for _ in range(3):
        out = runner.decode(cache, torch.tensor([s[-1] for s in seqs]))
        for s, t in zip(seqs, out.argmax(-1).tolist(), strict=True):
            s.append(t)
    for s, p in zip(seqs, first + late, strict=True):
        with torch.inference_mode():
            ref = model.generate(torch.tensor([p]), max_new_tokens=len(s) - len(p), do_sample=False, eos_token_id=None)[0]
        assert s == ref.tolist()


# ---------------------------------------------------------------- scheduler through the engine


def _engine(base, **kw) -> Engine:
    cfg = dict(num_slots=2, max_rank=8, max_batch_size=2, max_model_len=48, max_new_tokens=32, max_queue=32, host_cache_size=2)
    cfg.update(kw)
    return Engine(EngineConfig(**cfg), base=base).start()


def test_more_requests_than_rows_all_finish_and_rows_are_freed(tiny_base):
    eng = _engine(tiny_base)
    try:
        p = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
        hs = [eng.submit(GenerationRequest(f"r{i}", None, prompt=f"item {i} is", params=p)) for i in range(7)]
        res = [h.result_sync(60) for h in hs]
        assert all(r.completion_tokens == 6 and r.finish_reason == "length" for r in res)
        # the last result is delivered inside its step, before that step frees the rows: wait for its end
        with eng.scheduler.paused():
            pass
        assert eng.scheduler.cache.lengths == [0, 0] and not eng.scheduler.running
        # identical prompts give identical greedy outputs whichever row/batch they ran in
        again = eng.generate(GenerationRequest("again", None, prompt="item 3 is", params=p), timeout=60)
        assert again.token_ids == res[3].token_ids
    finally:
        eng.close()


def test_generation_stops_at_max_model_len(tiny_base):
    eng = _engine(tiny_base)
    try:
        prompt = "w " * 40
        n = len(eng.encode(GenerationRequest("x", None, prompt=prompt)))
        assert n < 48
        r = eng.generate(
            GenerationRequest("edge", None, prompt=prompt, params=SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)),
            60,
        )
        assert r.finish_reason == "length" and r.completion_tokens == 48 - n
    finally:
        eng.close()


def test_waiting_for_an_adapter_load_never_stalls_other_requests(tiny_base, tmp_path):
    folder = make_random_adapter(tmp_path / "slow", tiny_base.model, rank=4, base_model_id=MODEL_ID)
    eng = _engine(tiny_base)
    try:
        eng.register_adapter("slow", folder)
        gate = threading.Event()
        real = eng.tiers._loader

        def gated(f, spec):
            gate.wait(30)
            return real(f, spec)

        eng.tiers._loader = gated
        p = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
        waiting = eng.submit(GenerationRequest("w", "slow", prompt="hello", params=p))
        # a base request submitted after it runs to completion while the load is blocked
        other = eng.generate(GenerationRequest("o", None, prompt="hello", params=p), timeout=60)
        assert other.completion_tokens == 8
        assert not waiting.done and eng.stats()["queue_depth"] == 1
        gate.set()
        r = waiting.result_sync(60)
        assert r.completion_tokens == 8
        s = eng.stats()
        assert s["adapters"]["disk_loads"] == 1 and s["queue_depth"] == 0
    finally:
        gate.set()
        eng.close()


def test_failed_adapter_load_fails_its_requests_with_the_reason(tiny_base, tmp_path):
    folder = make_random_adapter(tmp_path / "bad", tiny_base.model, rank=4, base_model_id=MODEL_ID)
    eng = _engine(tiny_base)
    try:
        eng.register_adapter("bad", folder)
        # the source changed after validation and the packed copy is gone: the rebuild re-reads
        # the source and fails (a source change alone is harmless: the verified packed copy serves)
        (folder / "adapter_model.safetensors").write_bytes(b"garbage")
        for f in eng.packed.root.glob("*.safetensors"):
            f.write_bytes(b"tampered")
        h = eng.submit(GenerationRequest("b", "bad", prompt="hello", params=SamplingParams(max_tokens=2)))
        from inference.errors import EngineError

        with pytest.raises(EngineError, match="could not be loaded"):
            h.result_sync(60)
        assert eng.stats()["requests"]["finished_error"] == 1
    finally:
        eng.close()


def test_stop_fails_pending_requests_and_submit_after_stop_is_refused(tiny_base):
    from inference.errors import EngineStopped

    eng = _engine(tiny_base)
    with eng.scheduler.paused():
        h = eng.submit(GenerationRequest("p", None, prompt="hi", params=SamplingParams(max_tokens=4)))
    eng.close()
    with pytest.raises(EngineStopped):
        h.result_sync(10)
    with pytest.raises(EngineStopped, match="start"):
        eng.submit(GenerationRequest("late", None, prompt="hi"))


def test_result_sync_timeout(tiny_base):
    eng = _engine(tiny_base)
    try:
        with eng.scheduler.paused():
            h = eng.submit(GenerationRequest("t", None, prompt="hi", params=SamplingParams(max_tokens=2)))
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                h.result_sync(0.05)
            assert time.monotonic() - t0 < 5
        h.result_sync(30)
    finally:
        eng.close()


def test_registration_writes_a_packed_copy_that_goes_with_the_adapter(tiny_base, tmp_path):
    """Registration (verification time) writes the engine-native copy; re-registering the same
    unchanged content keeps that one file, unregistering deletes it, close removes the engine's
    private folder."""
    folder = make_random_adapter(tmp_path / "p", tiny_base.model, rank=4, base_model_id=MODEL_ID)
    eng = _engine(tiny_base)
    root = eng.packed.root
    try:
        assert root.stat().st_mode & 0o077 == 0  # private to the node's user
        eng.register_adapter("p", folder)
        first = list(root.glob("*.safetensors"))
        eng.register_adapter("p", folder)
        second = list(root.glob("*.safetensors"))
        assert len(first) == 1 and first == second
        r = eng.generate(GenerationRequest("g", "p", prompt="hi", params=SamplingParams(max_tokens=2)), 60)
        assert r.completion_tokens == 2 and eng.packed.rebuilds == 0
        eng.unregister_adapter("p")
        assert not list(root.glob("*.safetensors"))
    finally:
        eng.close()
    assert not root.exists()


# ---------------------------------------------------------------- dynamic batching after a burst


def _burst_then_idle(eng, n: int) -> None:
    """n requests admitted in one step and finished in the same step, leaving the engine idle.
    Returns once that step has ended: results are delivered inside it, before it records the idle
    moment and counts its prefill, so a caller that went on at once could race both (on a slow
    CI machine it did, and the idle moment it set up was overwritten)."""
    p = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)
    with eng.scheduler.paused():
        hs = [eng.submit(GenerationRequest(f"burst{i}", None, prompt=f"burst {i}", params=p)) for i in range(n)]
    for h in hs:
        h.result_sync(60)
    with eng.scheduler.paused():  # the step that delivered them is over
        pass


def _returners(eng, n: int, gap_s: float) -> list:
    p = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)
    hs = []
    for i in range(n):
        if i:
            time.sleep(gap_s)
        hs.append(eng.submit(GenerationRequest(f"back{i}", None, prompt=f"back {i}", params=p)))
    return hs


@pytest.mark.parametrize(("window_ms", "prefills"), [(1000.0, 1), (0.0, 3)])
def test_clients_returning_after_a_burst_share_one_prefill(tiny_base, window_ms, prefills):
    """Three rows finish together; their clients come back 0.2 s apart: with the window they are
    prefilled in one step (in step from then on), without it each alone."""
    eng = _engine(tiny_base, idle_batch_window_ms=window_ms, max_batch_size=4)
    try:
        _burst_then_idle(eng, 3)
        before = eng.stats()["prefill_steps"]
        hs = _returners(eng, 3, 0.2)
        assert all(h.result_sync(60).completion_tokens == 2 for h in hs)
        assert eng.stats()["prefill_steps"] - before == prefills
    finally:
        eng.close()


def test_a_lone_client_coming_straight_back_is_not_held(tiny_base):
    eng = _engine(tiny_base, idle_batch_window_ms=1000.0, max_batch_size=4)
    try:
        _burst_then_idle(eng, 1)  # one row finished: nobody else is expected
        t0 = time.monotonic()
        _returners(eng, 1, 0)[0].result_sync(60)
        assert time.monotonic() - t0 < 0.9
    finally:
        eng.close()


def _as_if_idle_after(eng, *, finished: int, waiting: int, step_s: float) -> None:
    """Record an idle moment as the scheduler does after a step of `step_s` seconds that finished
    `finished` rows with `waiting` requests queued (a tiny model's steps are too short to time
    HTTP-like returns into them)."""
    sched = eng.scheduler
    with sched._cv:
        sched._last_burst, sched._idle_since, sched._waiting_at_idle = finished, time.monotonic(), waiting
        sched._idle_step_s = step_s


def test_returners_are_waited_for_half_a_slow_step(tiny_base):
    """After a 1 s step finished 3 rows, their clients come back 0.05 s apart (past the 20 ms
    window, within half the step): they still share one prefill, since leaving one out would
    cost the group a whole step. Half the step is capped at RETURN_HORIZON_S (0.25 s), counted
    from the first returner: the last one, 0.1 s after it, has 0.15 s to spare for a slow machine
    (at 0.1 s apart it had 45 ms, and a loaded CI machine can lose that between two submits)."""
    eng = _engine(tiny_base, idle_batch_window_ms=20.0, max_batch_size=4)
    try:
        _burst_then_idle(eng, 1)
        before = eng.stats()["prefill_steps"]
        _as_if_idle_after(eng, finished=3, waiting=0, step_s=1.0)
        hs = _returners(eng, 3, 0.05)
        assert all(h.result_sync(60).completion_tokens == 2 for h in hs)
        assert eng.stats()["prefill_steps"] - before == 1
    finally:
        eng.close()


def test_a_straggler_one_step_behind_rejoins_its_group(tiny_base):
    """Two rows finished and their clients came back while a third row ran its last step alone;
    when it finishes (the engine idle, 1 finisher, 2 waiting), the two wait for its client, and
    all three share one prefill. Without that they start without it, and it trails them by a step
    for good. The idle moment is set up the way the scheduler records it after such a step (a
    tiny model's steps are too short to time HTTP-like returns into one)."""
    eng = _engine(tiny_base, idle_batch_window_ms=1000.0, max_batch_size=4)
    try:
        _burst_then_idle(eng, 1)  # warm: the next prefill is not a first-call outlier
        with eng.scheduler.paused():
            before = eng.stats()["prefill_steps"]
            _as_if_idle_after(eng, finished=1, waiting=2, step_s=0.001)  # the straggler's step just ended
            group = _returners(eng, 2, 0)
        t0 = time.monotonic()
        time.sleep(0.2)
        straggler = _returners(eng, 1, 0)
        assert all(h.result_sync(60).completion_tokens == 2 for h in group + straggler)
        assert eng.stats()["prefill_steps"] - before == 1
        assert time.monotonic() - t0 < 0.9  # started when it came, not at the window's end
    finally:
        eng.close()


def test_a_cold_start_gathers_whoever_comes_in_the_window(tiny_base):
    """After a pause longer than RETURN_HORIZON_S, new clients 0.1 s apart share one prefill."""
    eng = _engine(tiny_base, idle_batch_window_ms=1000.0, max_batch_size=4)
    try:
        _burst_then_idle(eng, 1)
        time.sleep(0.5)
        before = eng.stats()["prefill_steps"]
        hs = _returners(eng, 3, 0.1)
        assert all(h.result_sync(60).completion_tokens == 2 for h in hs)
        assert eng.stats()["prefill_steps"] - before == 1
    finally:
        eng.close()
