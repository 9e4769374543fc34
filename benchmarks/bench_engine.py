"""Multi-LoRA engine benchmark (`make bench-engine`; `--quick` for a smaller run).

SmolLM2-135M with random PEFT adapters in two shapes, all measured in one run:
  A = rank 16 on q,k,v,o (the common shape); B = rank 16 on all seven linear modules.

Figures (ratios compare peers measured in this same run; the machines are noisy):
- hetero_vs_base (A): decode tokens/s of 16 concurrent requests on 16 different adapters
  / the same engine serving the same 16 requests with no adapter.
- hetero_vs_bound (A and B; the key holds the worse): hetero_vs_base / memory-traffic bound,
  bound = base_bytes / (base_bytes + distinct_adapters * adapter_bytes), from the actual tensors
  (base: every parameter tensor once, tied embeddings once; adapter: its loaded A and B tensors).
- vs_peft_mixed (A): our end-to-end tokens/s on the 16 heterogeneous requests / PEFT's own
  mixed-adapter batch (`generate(adapter_names=...)`, KV cache) on the same requests.
- vs_hf_generate_base: our no-adapter end-to-end tokens/s / transformers `generate` on the same
  padded batch.
- cold_load_ms_p50 / _p99 (B): registered adapter -> ready in a slot (through the tiers: the
  loader thread reads the packed copy written at registration, checking the identity the store
  kept when it wrote the file (or its SHA-256 when that changed: cold_hashed_loads counts those),
  the slot copies, the hand-off), host tier cold; cold_read_verify_ms_p50 / cold_slot_copy_ms_p50
  split it.
- decode_profile (base, A, B): a few decode steps of the 16 rows under torch.profiler: ms and
  operator calls per step and the top operators by self time (where a step's time goes).
  In the hetero runs the rows happen to sit in slot order (request i's adapter was loaded i-th),
  so the layers take their in-order path (inference.lora).
- zipf_1000_vs_single (A): 1,000 registered adapters, Zipf(1.1) request mix, 32 slots, 256 in
  host memory; tokens/s / the same load on one adapter, run right after it. Three reps (one with
  --quick), each on 1,000 fresh ids and its own draw, so each starts cold; the median of the
  per-rep ratios. The 1,000 ids point at the distinct
  shape-A folders (disk space: 1,000 x 7 MB); the engine treats every id as its own adapter
  (own host entry, own slot load, own eviction).
Order: the throughput phase runs our base, A and B batches and the two peers (HF generate,
PEFT) interleaved, five reps (two with --quick); every ratio is the median of its per-rep ratios
(`ratios_per_rep`), each rep's two sides measured next to each other, and every tokens/s figure
the median over the reps. Then the cold loads (200 samples, 12 with --quick), the Zipf phase, and
last the decode profile (torch.profiler).
Ends with one line: RESULT {json}.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.adapter_factory import make_random_adapter
from inference.adapters import load_adapter_weights
from inference.base_model import load_base_model
from inference.engine import Engine, EngineConfig
from inference.requests import GenerationRequest, SamplingParams

QKVO = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL7 = QKVO + ("gate_proj", "up_proj", "down_proj")
TOPICS = [
    "the sea",
    "a city at night",
    "mountains",
    "a robot",
    "bread",
    "rain",
    "chess",
    "a violin",
    "the moon",
    "a library",
    "trains",
    "winter",
    "a garden",
    "coffee",
    "bees",
    "an old map",
]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def prompts(n: int) -> list[str]:
    return [f"Write a short story about {TOPICS[i % len(TOPICS)]} (#{i}):" for i in range(n)]


def base_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter tensor the forward reads, each storage once (tied lm_head)."""
    seen, total = set(), 0
    for p in model.parameters():
        key = p.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += p.numel() * p.element_size()
    return total


def run_engine(engine: Engine, reqs: list[GenerationRequest]) -> dict:
    """Submit all at once (one heterogeneous batch), wait; end-to-end and decode-only tokens/s."""
    s0 = engine.stats()
    with engine.scheduler.paused():
        handles = [engine.submit(r) for r in reqs]
        t0 = time.perf_counter()
    results = [h.result_sync(3600) for h in handles]
    wall = time.perf_counter() - t0
    s1 = engine.stats()
    tokens = sum(r.completion_tokens for r in results)
    dec_tok = s1["decode_tokens"] - s0["decode_tokens"]
    dec_s = s1["decode_seconds"] - s0["decode_seconds"]
    return {"tokens": tokens, "wall_s": wall, "e2e_tps": tokens / wall, "decode_tps": dec_tok / dec_s}


def warm(engine: Engine, adapter_ids: list[str]) -> None:
    """Make adapters resident (one 1-token request each) so loads are not timed as decode."""
    hs = [engine.submit(GenerationRequest(f"warm-{a}", a, prompt="hi", params=SamplingParams(max_tokens=1))) for a in adapter_ids]
    for h in hs:
        h.result_sync(3600)


def reqs_for(adapters: list[str | None], texts: list[str], n_tok: int, tag: str) -> list[GenerationRequest]:
    p = SamplingParams(max_tokens=n_tok, temperature=0.0, ignore_eos=True)
    return [GenerationRequest(f"{tag}-{i}", a, prompt=t, params=p) for i, (a, t) in enumerate(zip(adapters, texts, strict=True))]


def profile_decode(engine: Engine, adapters: list[str | None], texts: list[str], steps: int = 3) -> dict:
    """Where a decode step's time goes: `steps` decode steps of the 16 rows driven synchronously
    under torch.profiler (so the scheduler thread's ops are the ones recorded): ms per step, ops
    per step, and the top operators by self time per step."""
    from torch.profiler import ProfilerActivity, profile

    with engine.scheduler.paused():
        handles = [engine.submit(r) for r in reqs_for(adapters, texts, steps + 2, "prof")]
        engine.scheduler.step()  # admit + prefill + first decode
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                engine.scheduler.step()
            wall = time.perf_counter() - t0
    for h in handles:
        h.result_sync(600)
    ev = prof.key_averages()
    top = sorted(ev, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    return {
        "ms_per_step": round(1000 * wall / steps, 2),
        "ops_per_step": sum(e.count for e in ev) // steps,
        "top_self_ms_per_step": {e.key: round(e.self_cpu_time_total / 1000 / steps, 2) for e in top},
    }


def hf_generate_tps(model, tok, texts: list[str], n_tok: int, peft_names: list[str] | None = None) -> float:
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    enc = tok(texts, return_tensors="pt", padding=True)
    kw = dict(max_new_tokens=n_tok, min_new_tokens=n_tok, do_sample=False, pad_token_id=tok.pad_token_id)
    if peft_names is not None:
        kw["adapter_names"] = peft_names
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model.generate(**enc, **kw)
        wall = time.perf_counter() - t0
    generated = (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
    return generated / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer tokens, adapters and requests")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's, one per core); on a machine whose cores are busy "
        "with other work, 1 avoids parallel ops waiting for descheduled threads",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    n_tok = 16 if quick else 48
    n_adapters = 64  # per shape (the issue's minimum)
    concurrent = 16
    zipf_requests = 48 if quick else 160
    cold_samples = 12 if quick else 200
    reps = 2 if quick else 5
    zipf_reps = 1 if quick else 3
    torch.manual_seed(0)

    base = load_base_model(device="cpu")
    tok = base.tokenizer
    pristine = copy.deepcopy(base.model)  # the plain model for the HF / PEFT peers
    root = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    log(f"writing {n_adapters} adapters of shape A and {n_adapters} of shape B under {root}")
    folders_a = [make_random_adapter(root / f"A{i}", base, rank=16, target_modules=QKVO, seed=i) for i in range(n_adapters)]
    folders_b = [
        make_random_adapter(root / f"B{i}", base, rank=16, target_modules=ALL7, seed=10_000 + i) for i in range(n_adapters)
    ]

    cfg = EngineConfig(
        num_slots=32,
        host_cache_size=256,
        max_rank=16,
        max_batch_size=concurrent,
        max_model_len=128,
        max_new_tokens=n_tok,
        max_queue=4096,
        target_modules=ALL7,
    )
    own = dataclasses.replace(base, model=copy.deepcopy(pristine))
    engine = Engine(cfg, base=own).start()
    for i, f in enumerate(folders_a):
        engine.register_adapter(f"A{i}", f)
    for i, f in enumerate(folders_b):
        engine.register_adapter(f"B{i}", f)
    dtype = engine.dtype
    bytes_base = base_bytes(pristine)
    spec_a, spec_b = engine.tiers.spec("A0"), engine.tiers.spec("B0")
    bytes_a = load_adapter_weights(folders_a[0], spec_a, dtype=dtype).nbytes
    bytes_b = load_adapter_weights(folders_b[0], spec_b, dtype=dtype).nbytes
    texts = prompts(concurrent)
    res: dict = {
        "quick": quick,
        "device": str(engine.device),
        "dtype": str(dtype),
        "new_tokens": n_tok,
        "concurrent": concurrent,
        "torch_threads": torch.get_num_threads(),
    }

    # --- hetero vs base (A and B) ---------------------------------------------------------
    ids_a = [f"A{i}" for i in range(concurrent)]
    ids_b = [f"B{i}" for i in range(concurrent)]
    warm(engine, ids_a + ids_b)  # 32 slots: all 32 stay resident, no loads while timing
    run_engine(engine, reqs_for([None] * concurrent, texts, 4, "warmup"))  # first-call effects
    runs: dict[str, list[dict]] = {"base": [], "A": [], "B": []}
    kinds = {"base": [None] * concurrent, "A": ids_a, "B": ids_b}
    # the peers: HF generate on the plain model, PEFT's mixed-adapter batch on a copy with A0..A15
    from peft import PeftModel

    peft = PeftModel.from_pretrained(copy.deepcopy(pristine), str(folders_a[0]), adapter_name="A0")
    for i in range(1, concurrent):
        peft.load_adapter(str(folders_a[i]), adapter_name=f"A{i}")
    peft.eval()
    hf_generate_tps(pristine, tok, texts, 2)  # the peers' first-call effects, as the engine's warm-up above
    hf_generate_tps(peft, tok, texts, 2, peft_names=ids_a)
    peer_runs: dict[str, list[float]] = {"hf": [], "peft": []}
    # Each rep runs every kind once, each ratio's two sides next to each other (HF generate | base,
    # base | B, A | PEFT; A and base one run apart), and every ratio below is the median of its
    # per-rep ratios: the machine's speed drifts within a run (a third, rep to rep, in one full
    # run), so a ratio of two medians could set one side's fast rep against the other's slow one.
    for rep in range(reps):
        peer_runs["hf"].append(hf_generate_tps(pristine, tok, texts, n_tok))
        for kind in ("base", "B", "A"):
            r = run_engine(engine, reqs_for(kinds[kind], texts, n_tok, f"{kind}{rep}"))
            runs[kind].append(r)
            log(f"rep {rep} {kind}: decode {r['decode_tps']:.1f} tok/s, e2e {r['e2e_tps']:.1f} tok/s")
        peer_runs["peft"].append(hf_generate_tps(peft, tok, texts, n_tok, peft_names=ids_a))
        log(f"rep {rep} hf generate base {peer_runs['hf'][-1]:.1f} tok/s, peft mixed {peer_runs['peft'][-1]:.1f} tok/s")
    del peft
    assert engine.stats()["adapters"]["loads_in_flight"] == 0

    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[kind])

    def per_rep(num: list[float], den: list[float]) -> list[float]:
        return [a / b for a, b in zip(num, den, strict=True)]

    def decode(kind: str) -> list[float]:
        return [r["decode_tps"] for r in runs[kind]]

    def e2e(kind: str) -> list[float]:
        return [r["e2e_tps"] for r in runs[kind]]

    bound_a = bytes_base / (bytes_base + concurrent * bytes_a)
    bound_b = bytes_base / (bytes_base + concurrent * bytes_b)
    reps_of = {
        "hetero_vs_base": per_rep(decode("A"), decode("base")),
        "hetero_vs_base_B": per_rep(decode("B"), decode("base")),
        "vs_hf_generate_base": per_rep(e2e("base"), peer_runs["hf"]),
        "vs_peft_mixed": per_rep(e2e("A"), peer_runs["peft"]),
    }
    ratio = {k: statistics.median(v) for k, v in reps_of.items()}
    res.update(
        {
            "hetero_vs_base": ratio["hetero_vs_base"],
            "hetero_vs_base_B": ratio["hetero_vs_base_B"],
            "hetero_vs_bound_A": ratio["hetero_vs_base"] / bound_a,
            "hetero_vs_bound_B": ratio["hetero_vs_base_B"] / bound_b,
            "hetero_vs_bound": min(ratio["hetero_vs_base"] / bound_a, ratio["hetero_vs_base_B"] / bound_b),
            "bound_A": bound_a,
            "bound_B": bound_b,
            "base_bytes": bytes_base,
            "adapter_bytes_A": bytes_a,
            "adapter_bytes_B": bytes_b,
            "decode_tps_base": med("base", "decode_tps"),
            "decode_tps_hetero_A": med("A", "decode_tps"),
            "decode_tps_hetero_B": med("B", "decode_tps"),
            "e2e_tps_base": med("base", "e2e_tps"),
            "e2e_tps_hetero_A": med("A", "e2e_tps"),
            "hf_generate_base_tps": statistics.median(peer_runs["hf"]),
            "vs_hf_generate_base": ratio["vs_hf_generate_base"],
            "peft_mixed_tps": statistics.median(peer_runs["peft"]),
            "vs_peft_mixed": ratio["vs_peft_mixed"],
            "ratios_per_rep": {k: [round(x, 4) for x in v] for k, v in reps_of.items()},
        }
    )

    # --- cold loads (B): disk folder -> ready in a slot ---------------------------------------
    # Ids of their own (as the Zipf phase below) on the B folders not in the throughput batch: each is
    # a separate adapter to the engine, so cold in the host tier, and there can be more samples than
    # folders. 200 make the p99 the 3rd worst sample; with 40 it was the worst one.
    spare = range(concurrent, n_adapters)
    cold_ids = [f"C{k}" for k in range(cold_samples)]
    for k, aid in enumerate(cold_ids):
        b = spare[k % len(spare)]
        engine.tiers.register(aid, folders_b[b], engine.tiers.spec(f"B{b}"))
    lat = []
    c = engine.tiers.counters
    n_read, n_copy = len(c.read_seconds), len(c.copy_seconds)
    hashed0 = engine.packed.hashed_loads
    with engine.scheduler.paused():  # we drive the tiers ourselves; nothing else runs
        for aid in cold_ids:
            assert not engine.tiers.in_host(aid)
            t0 = time.perf_counter()
            slot = engine.tiers.acquire(aid)
            while slot is None:
                # woken by the loader thread (no sleep-poll); a CUDA copy's event has no callback
                engine.tiers.wait(0.0005 if engine.device.type == "cuda" else 1.0)
                engine.tiers.poll()
                slot = engine.tiers.acquire(aid)
            lat.append((time.perf_counter() - t0) * 1000)
            engine.tiers.release(slot)
    lat.sort()
    res["cold_load_ms_p50"] = statistics.median(lat)
    res["cold_load_ms_p99"] = lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))]
    log("cold load ms", [round(x, 1) for x in lat])
    # where a cold load's time goes: the loader thread (read + SHA-256 of the packed file) and
    # the slot copies; the rest is the hand-off between threads
    res["cold_read_verify_ms_p50"] = 1000 * statistics.median(c.read_seconds[n_read:] or [0.0])
    res["cold_slot_copy_ms_p50"] = 1000 * statistics.median(c.copy_seconds[n_copy:] or [0.0])
    res["cold_hashed_loads"] = engine.packed.hashed_loads - hashed0  # the rest checked the write-time identity

    # --- Zipf over 1,000 adapters vs one adapter (A) ------------------------------------------
    # Each rep registers 1,000 fresh ids, so every rep meets its adapters cold as the first did
    # (loaded from their packed files, none resident), and runs the single-adapter side right
    # after it; the ratio is the median of the per-rep ratios, like the throughput phase's.
    weights = torch.tensor([1.0 / (k**1.1) for k in range(1, 1001)])
    ztexts = prompts(zipf_requests)
    zreps: list[dict] = []
    for rep in range(zipf_reps):
        for i in range(1000):  # same folder -> same validation result: reuse it instead of re-reading 7 GB
            engine.tiers.register(f"Z{rep}-{i}", folders_a[i % n_adapters], engine.tiers.spec(f"A{i % n_adapters}"))
        gen = torch.Generator().manual_seed(1 + rep)
        picks = torch.multinomial(weights, zipf_requests, replacement=True, generator=gen).tolist()
        s0 = engine.stats()["adapters"]
        zipf = run_engine(engine, reqs_for([f"Z{rep}-{k}" for k in picks], ztexts, n_tok, f"zipf{rep}"))
        s1 = engine.stats()["adapters"]
        log("zipf", rep, zipf, "distinct adapters", len(set(picks)))
        warm(engine, ["A0"])
        single = run_engine(engine, reqs_for(["A0"] * zipf_requests, ztexts, n_tok, f"single{rep}"))
        log("single", rep, single)
        zreps.append(
            {
                "ratio": zipf["e2e_tps"] / single["e2e_tps"],
                "zipf_tps": zipf["e2e_tps"],
                "single_tps": single["e2e_tps"],
                "distinct": len(set(picks)),
                "slot_loads": s1["slot_loads"] - s0["slot_loads"],
                "disk_loads": s1["disk_loads"] - s0["disk_loads"],
            }
        )
    res["ratios_per_rep"]["zipf_1000_vs_single"] = [round(z["ratio"], 4) for z in zreps]
    res.update(
        {
            "zipf_1000_vs_single": statistics.median(z["ratio"] for z in zreps),
            "zipf_tps": statistics.median(z["zipf_tps"] for z in zreps),
            "single_tps": statistics.median(z["single_tps"] for z in zreps),
            "zipf_requests": zipf_requests,
            "zipf_reps": zipf_reps,
            "zipf_distinct_adapters": [z["distinct"] for z in zreps],
            "zipf_slot_loads": [z["slot_loads"] for z in zreps],
            "zipf_disk_loads": [z["disk_loads"] for z in zreps],
        }
    )
    # --- last: the profiler, which leaves hooks behind
    warm(engine, ids_a + ids_b)  # resident again after the Zipf phase: no loads in the profiled steps
    res["decode_profile"] = {kind: profile_decode(engine, adapters, texts) for kind, adapters in kinds.items()}
    log("decode profile", json.dumps(res["decode_profile"]))

    engine.close()
    print("RESULT " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}))


if __name__ == "__main__":
    main()
