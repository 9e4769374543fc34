"""The engine end to end on the real embedded model (CPU, fp32), against transformers and PEFT.

References: HF `generate(do_sample=False)` for the base model and PEFT's own LoRA layers
(`PeftModel` with one adapter active at a time) for every adapter. Adapters are random but
valid PEFT folders (inference.adapter_factory) of different ranks and target modules, large
enough to change the model's greedy output.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import time

import pytest
import torch

from inference.adapter_factory import make_random_adapter
from inference.engine import Engine, EngineConfig
from inference.errors import (
    EngineOverloaded,
    InvalidRequest,
    PromptTooLong,
    RequestCancelled,
    UnknownAdapter,
)
from inference.requests import GenerationRequest, SamplingParams

QKVO = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL7 = QKVO + ("gate_proj", "up_proj", "down_proj")
# (rank, targets): 8 adapters, ranks differ, two module sets (slots hold mixed ranks per module)
ADAPTERS = {
    "a0": (2, QKVO),
    "a1": (4, ALL7),
    "a2": (8, QKVO),
    "a3": (16, QKVO),
    "a4": (4, ("q_proj", "v_proj")),
    "a5": (8, ALL7),
    "a6": (16, ALL7),
    "a7": (12, QKVO),
}
EXTRA = {"x0": (8, QKVO), "x1": (4, ALL7), "x2": (16, QKVO)}  # to force evictions
PROMPTS = ["The capital of France is", "Write a haiku about the sea:", "def fib(n):", "Once upon a time"]
N_TOK = 5
GREEDY = SamplingParams(max_tokens=N_TOK, temperature=0.0)


@pytest.fixture(scope="module")
def folders(base_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    out = {}
    for i, (aid, (rank, targets)) in enumerate({**ADAPTERS, **EXTRA}.items()):
        out[aid] = make_random_adapter(root / aid, base_model, rank=rank, target_modules=targets, seed=100 + i, init_scale=0.12)
    return out


@pytest.fixture(scope="module")
def engine(base_model, folders):
    own = dataclasses.replace(base_model, model=copy.deepcopy(base_model.model))
    cfg = EngineConfig(
        num_slots=10, max_rank=16, max_batch_size=12, max_model_len=160, max_new_tokens=64, max_queue=16, host_cache_size=4
    )
    eng = Engine(cfg, base=own)
    for aid, folder in folders.items():
        eng.register_adapter(aid, folder)
    eng.start()
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def peft_ref(base_model, folders):
    """One PeftModel on a private copy of the base, every adapter loaded under its id."""
    from peft import PeftModel

    names = list(folders)
    pm = PeftModel.from_pretrained(copy.deepcopy(base_model.model), str(folders[names[0]]), adapter_name=names[0])
    for aid in names[1:]:
        pm.load_adapter(str(folders[aid]), adapter_name=aid)
    pm.eval()
    return pm


def _ref_tokens(peft_ref, tokenizer, adapter, prompt, n=N_TOK):
    """PEFT greedy tokens for one adapter (None = adapters disabled), without a trailing EOS."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        if adapter is None:
            with peft_ref.disable_adapter():
                out = peft_ref.generate(input_ids=ids, max_new_tokens=n, do_sample=False)
        else:
            peft_ref.set_adapter(adapter)
            out = peft_ref.generate(input_ids=ids, max_new_tokens=n, do_sample=False)
    toks = out[0, ids.shape[1] :].tolist()
    return toks[:-1] if toks and toks[-1] == tokenizer.eos_token_id else toks


_REF_CACHE: dict = {}


def ref(peft_ref, tokenizer, adapter, prompt):
    key = (adapter, prompt)
    if key not in _REF_CACHE:
        _REF_CACHE[key] = _ref_tokens(peft_ref, tokenizer, adapter, prompt)
    return _REF_CACHE[key]


def _req(rid, adapter, prompt, params=GREEDY):
    return GenerationRequest(rid, adapter, prompt=prompt, params=params)


def _wait_idle(engine, timeout=60):
    t = time.monotonic()
    while engine.stats()["running"] or engine.stats()["queue_depth"]:
        assert time.monotonic() - t < timeout, "engine did not drain"
        time.sleep(0.02)


def test_no_adapter_greedy_equals_hf_generate(engine, base_model):
    tok = base_model.tokenizer
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = base_model.model.generate(**enc, max_new_tokens=8, do_sample=False)
    expected = out[0, enc["input_ids"].shape[1] :].tolist()
    res = engine.generate(
        GenerationRequest("chat", None, messages=msgs, params=SamplingParams(max_tokens=8, temperature=0)), timeout=120
    )
    assert res.token_ids == [t for t in expected if t != tok.eos_token_id][: len(res.token_ids)]
    assert res.completion_tokens == len(expected)
    assert res.prompt_tokens == enc["input_ids"].shape[1]
    assert res.text == tok.decode(res.token_ids, skip_special_tokens=True)
    assert "Paris" in res.text


def test_mixed_batch_logits_match_peft(engine, peft_ref, base_model):
    """One packed prefill + one decode step for rows of 8 adapters (ranks 2..16) and 2 base rows:
    every row's logits equal PEFT's single-adapter forward (fp32 allclose: the differences are
    float rounding of batched vs single matmuls through 30 layers, ~1e-3 on logits of size ~30)."""
    tok = base_model.tokenizer
    rows = [None, *ADAPTERS, None]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(rows))]
    ids = [tok(p).input_ids for p in prompts]
    sched = engine.scheduler
    with sched.paused():
        slots = [-1 if a is None else _resident_slot(engine, a) for a in rows]
        try:
            engine.bank.set_routing([s for s, p in zip(slots, ids, strict=True) for _ in p])
            pre = engine.runner.prefill(sched.cache, ids, list(range(len(rows))))  # [N, V]
            nxt = pre.argmax(-1)
            engine.bank.set_routing(slots)
            dec = engine.runner.decode(sched.cache, nxt)  # [N, V]
        finally:
            engine.bank.set_routing(None)
            for r in range(len(rows)):
                sched.cache.free_row(r)
            for s in slots:
                if s >= 0:
                    engine.tiers.release(s)
    for i, (a, p) in enumerate(zip(rows, ids, strict=True)):
        full = torch.tensor([p + [int(nxt[i])]])
        with torch.inference_mode():
            if a is None:
                with peft_ref.disable_adapter():
                    ref_logits = peft_ref(input_ids=full).logits[0]
            else:
                peft_ref.set_adapter(a)
                ref_logits = peft_ref(input_ids=full).logits[0]
        torch.testing.assert_close(pre[i], ref_logits[-2], atol=5e-3, rtol=1e-4, msg=f"prefill row {i} ({a})")
        torch.testing.assert_close(dec[i], ref_logits[-1], atol=5e-3, rtol=1e-4, msg=f"decode row {i} ({a})")
        assert int(dec[i].argmax()) == int(ref_logits[-1].argmax())


def _resident_slot(engine, adapter, timeout=60):
    """Drive the tiers by hand (scheduler paused) until the adapter sits in a slot."""
    t = time.monotonic()
    while True:
        engine.tiers.poll()
        slot = engine.tiers.acquire(adapter)
        if slot is not None:
            return slot
        assert time.monotonic() - t < timeout
        time.sleep(0.01)


def test_mixed_batch_greedy_matches_peft_token_for_token(engine, peft_ref, base_model):
    tok = base_model.tokenizer
    rows = [None, *ADAPTERS, None]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(rows))]
    # all requests enter the queue before the scheduler runs again: one heterogeneous batch
    with engine.scheduler.paused():
        handles = [engine.submit(_req(f"m{i}", a, p)) for i, (a, p) in enumerate(zip(rows, prompts, strict=True))]
    results = [h.result_sync(300) for h in handles]
    expected = [ref(peft_ref, tok, a, p) for a, p in zip(rows, prompts, strict=True)]
    for a, got, exp in zip(rows, results, expected, strict=True):
        assert got.token_ids == exp, f"adapter {a}"
    # the adapters really change the output (otherwise the comparison proves nothing)
    base_out = {p: ref(peft_ref, tok, None, p) for p in PROMPTS}
    assert sum(e != base_out[p] for a, p, e in zip(rows, prompts, expected, strict=True) if a) >= 6


def test_request_joining_mid_flight_gets_same_tokens(engine, peft_ref, base_model):
    tok = base_model.tokenizer
    long = engine.submit(_req("long", "a5", PROMPTS[1], SamplingParams(max_tokens=24, temperature=0)))
    t = time.monotonic()
    while engine.stats()["decode_steps"] == 0 or not engine.scheduler.running:
        assert time.monotonic() - t < 60
        time.sleep(0.01)
    steps = engine.stats()["decode_steps"]
    while engine.stats()["decode_steps"] < steps + 3:
        time.sleep(0.01)
    mixed = engine.stats()["mixed_steps"]
    late = [engine.submit(_req(f"late{i}", a, PROMPTS[i])) for i, a in enumerate(["a3", None, "a1"])]
    assert not long.done
    for h, a, p in zip(late, ["a3", None, "a1"], PROMPTS, strict=False):  # the first three of the four prompts
        assert h.result_sync(120).token_ids == ref(peft_ref, tok, a, p)
    long_res = long.result_sync(120)
    assert long_res.token_ids == _ref_tokens(peft_ref, tok, "a5", PROMPTS[1], n=24)[: len(long_res.token_ids)]
    assert engine.stats()["mixed_steps"] > mixed  # the late prompts rode in the running row's decode forward


def test_more_adapters_than_slots_all_complete_and_reload_is_identical(engine, peft_ref, base_model):
    """11 distinct adapters on 10 slots: requests wait for a slot instead of failing; an adapter
    evicted (from its slot and from the 4-entry host tier) and reloaded gives the same tokens."""
    tok = base_model.tokenizer
    before = engine.stats()["adapters"]
    ids = [*ADAPTERS, *EXTRA]
    handles = [engine.submit(_req(f"e{i}", a, PROMPTS[0])) for i, a in enumerate(ids)]
    results = [h.result_sync(300) for h in handles]
    for a, r in zip(ids, results, strict=True):
        assert r.token_ids == ref(peft_ref, tok, a, PROMPTS[0]), a
    _wait_idle(engine)
    after = engine.stats()["adapters"]
    assert after["slot_evictions"] > before["slot_evictions"]
    assert after["host_evictions"] > before["host_evictions"]
    assert after["host_resident"] <= 4 and after["slots_resident"] <= 10
    evicted = [a for a in ids if engine.tiers.slot_of(a) is None]
    assert evicted, "with 11 adapters on 10 slots at least one must have been evicted"
    a = evicted[0]
    again = engine.generate(_req("reload", a, PROMPTS[0]), timeout=120)
    assert again.token_ids == results[ids.index(a)].token_ids
    assert engine.stats()["adapters"]["slot_loads"] > after["slot_loads"]


def test_cancel_frees_the_row_at_once(engine):
    h = engine.submit(_req("cancel-me", "a2", PROMPTS[3], SamplingParams(max_tokens=60, temperature=0)))
    t = time.monotonic()
    while not engine.scheduler.running:
        assert time.monotonic() - t < 60
        time.sleep(0.01)
    h.cancel()
    with pytest.raises(RequestCancelled) as e:
        h.result_sync(60)
    assert e.value.partial.finish_reason == "cancelled"
    assert e.value.partial.completion_tokens < 60
    _wait_idle(engine)
    assert engine.scheduler.cache.lengths == [0] * engine.config.max_batch_size
    assert engine.stats()["requests"]["finished_cancelled"] >= 1
    # a waiting (never admitted) request can be cancelled too
    with engine.scheduler.paused():
        w = engine.submit(_req("cancel-waiting", None, PROMPTS[0]))
        w.cancel()
    with pytest.raises(RequestCancelled):
        w.result_sync(60)


def test_stop_string_cuts_output_and_is_never_streamed(engine, base_model):
    full = engine.generate(_req("nostop", None, PROMPTS[0], SamplingParams(max_tokens=12, temperature=0)))
    assert len(full.text) > 6
    stop = full.text[4:7]  # a string that appears mid-output
    cut = full.text.index(stop)

    async def run():
        h = engine.submit(_req("stop", None, PROMPTS[0], SamplingParams(max_tokens=12, temperature=0, stop=[stop, "zzzz-never"])))
        streamed = "".join([ev.text async for ev in h.stream()])
        return streamed, await h.result()

    streamed, res = asyncio.run(run())
    assert res.finish_reason == "stop"
    assert res.text == full.text[:cut]
    assert streamed == res.text and stop not in streamed
    assert res.completion_tokens < 12


async def test_stream_and_result_over_asyncio(engine):
    h = engine.submit(_req("async", "a6", PROMPTS[2], SamplingParams(max_tokens=6, temperature=0)))
    events = [ev async for ev in h.stream()]
    res = await h.result()
    assert "".join(e.text for e in events) == res.text
    assert [e.token_id for e in events if e.token_id is not None] == res.token_ids
    assert res.finish_reason in ("stop", "length") and res.prompt_tokens > 0


def test_seeded_sampling_is_reproducible(engine):
    p = SamplingParams(max_tokens=8, temperature=0.9, top_p=0.95, top_k=50, seed=1234)
    first = engine.generate(_req("s1", "a1", PROMPTS[3], p), timeout=120)
    # same seed again, this time sharing the batch with other requests
    with engine.scheduler.paused():
        hs = [
            engine.submit(_req("s2", "a1", PROMPTS[3], p)),
            engine.submit(_req("s3", "a2", PROMPTS[1], SamplingParams(max_tokens=8, temperature=1.0, seed=7))),
        ]
    assert hs[0].result_sync(120).token_ids == first.token_ids
    hs[1].result_sync(120)
    others = {
        tuple(engine.generate(_req(f"s{seed}", "a1", PROMPTS[3], dataclasses.replace(p, seed=seed))).token_ids)
        for seed in (1, 2, 3)
    }
    assert len(others | {tuple(first.token_ids)}) > 1, "different seeds should sample differently"


def test_full_queue_is_refused_with_overloaded(engine):
    with engine.scheduler.paused():
        hs = [
            engine.submit(_req(f"q{i}", None, PROMPTS[0], SamplingParams(max_tokens=1)))
            for i in range(engine.config.max_queue - engine.stats()["queue_depth"])
        ]
        with pytest.raises(EngineOverloaded, match="overloaded.*max_queue=16"):
            engine.submit(_req("one-too-many", None, PROMPTS[0]))
        assert engine.stats()["requests"]["rejected_overloaded"] >= 1
    for h in hs:
        assert h.result_sync(120).completion_tokens == 1


def test_bad_requests_are_refused_clearly(engine):
    with pytest.raises(UnknownAdapter, match="not registered"):
        engine.submit(_req("u", "no-such-adapter", "hi"))
    with pytest.raises(PromptTooLong, match="max_model_len"):
        engine.submit(_req("long", None, "word " * 400))
    with pytest.raises(PromptTooLong, match="characters"):
        engine.submit(_req("huge", None, "x" * 10_000_000))
    with pytest.raises(InvalidRequest, match="max_tokens"):
        engine.submit(_req("cap", None, "hi", SamplingParams(max_tokens=10_000)))
    for bad in (
        dict(temperature=-1),
        dict(top_p=0),
        dict(top_k=-2),
        dict(max_tokens=0),
        dict(seed=-5),
        dict(stop=[""]),
        dict(temperature=float("nan")),
    ):
        with pytest.raises(InvalidRequest):
            SamplingParams(**bad)
    with pytest.raises(InvalidRequest, match="exactly one"):
        GenerationRequest("r", None, prompt="a", messages=[{"role": "user", "content": "b"}])
    with pytest.raises(InvalidRequest, match="role"):
        GenerationRequest("r", None, messages=[{"role": "hacker", "content": "b"}])
    with pytest.raises(InvalidRequest, match="at most 1024 messages"):
        GenerationRequest("r", None, messages=[{"role": "user", "content": "x"}] * 2000)
    with pytest.raises(InvalidRequest, match="empty"):
        engine.submit(_req("empty", None, ""))
    with pytest.raises(InvalidRequest, match="GenerationRequest"):
        engine.submit({"prompt": "hi"})


def test_stats_counters_move(engine):
    s0 = engine.stats()
    engine.generate(_req("st", "a0", PROMPTS[1], SamplingParams(max_tokens=3, temperature=0)))
    s1 = engine.stats()
    assert s1["requests"]["submitted"] == s0["requests"]["submitted"] + 1
    assert s1["generated_tokens"] > s0["generated_tokens"]
    assert s1["decode_steps"] > s0["decode_steps"]
    assert s1["prefill_tokens"] > s0["prefill_tokens"]
    assert s1["tokens_per_second"] > 0
    a = s1["adapters"]
    assert a["registered"] == len(ADAPTERS) + len(EXTRA)
    assert 0 <= a["slot_hit_rate"] <= 1 and 0 <= a["host_hit_rate"] <= 1
    assert a["disk_loads"] >= len(ADAPTERS) and a["load_failures"] == 0


def test_pin_keeps_an_adapter_resident_and_unregister(engine):
    engine.pin("x0")
    t = time.monotonic()
    while engine.tiers.slot_of("x0") is None:
        assert time.monotonic() - t < 60
        time.sleep(0.02)
    # churn through every other adapter: x0 must stay in its slot
    hs = [engine.submit(_req(f"p{i}", a, PROMPTS[2], SamplingParams(max_tokens=1))) for i, a in enumerate(ADAPTERS)]
    for h in hs:
        h.result_sync(120)
    assert engine.tiers.slot_of("x0") is not None and engine.stats()["adapters"]["pinned"] == 1
    engine.unpin("x0")
    engine.unregister_adapter("x2")
    with pytest.raises(UnknownAdapter):
        engine.submit(_req("gone", "x2", "hi"))
