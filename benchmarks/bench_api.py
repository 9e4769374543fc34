"""`make bench-api`: the node's HTTP API under N concurrent streaming clients, against the engine
driven directly with the same load.

Setup (all real): anvil + the contracts; 16 tiny LoRA adapters published on chain, their folders
in the node's embedded IPFS store; 16 funded payers. The daemon (`loranode node run`, its own
process) discovers, fetches, verifies and loads the adapters. Then, for N = 1, 8, 64, 256
concurrent clients (client i: adapter i % 16, payer i // 16, so every client has its own lane),
each client streams chat completions with signed cumulative vouchers over loopback.

The clients run in `--client-procs` processes of their own (default 2, payers split between
them; each keeps its payers' wallets for the whole run), so the figures measure the node and not
one Python process signing vouchers, checking receipts and parsing SSE for 256 streams.

Requests per level (`level_requests`, the same plan for both sides): at least 64 (`--quick`: 16)
and at least one per client, but at most 16 (`--quick`: 4) in a row per client, so 16, 64, 64, 256
requests at N = 1, 8, 64, 256 (8 clients ran 2 requests each before: a ~5 s level a side). A full
run on 2 shared CPU cores: ~3.5 min a round, ~12 min with the default three rounds.

Peer: the same engine configuration in this process (built from the node's TOML, so the node's
scheduling policy too, e.g. `engine_idle_batch_ms`; `--idle-batch-ms` sets it for both sides), the
same adapters, prompts, max_tokens and concurrency, submitted straight to `Engine.submit` and
streamed from the handle. Both sides run back to back at each level (alternating order over
`--rounds`, 3 in a full run; the best round of each side counts), so drifting background load on
a shared machine hits both alike.

Figures per N: requests/s, tokens/s, p50/p99 time to first token, p50/p99 inter-token latency,
errors (must be 0); `cpu_s`, the CPU seconds the side used (API: the node's `node_cpu_s` plus the
load generator's `loadgen_cpu_s`, which signs vouchers, checks receipts and parses SSE on the same
cores; engine: this process); `engine_steps`, the engine steps the side's level took (decode-only,
prefill, mixed; from the node's /metrics and from `Engine.stats()`): equal counts mean both sides
batched the same work alike, so a gap in tokens/s is time per step (CPU taken from the engine, or
the machine's speed moving); `overhead_ratio` = API tokens/s ÷ engine tokens/s (target ≥ 0.9).
Ends with one line `RESULT {json}`. `benchmarks/profile_api_path.py` times the node's own steps
per request (voucher recovery, voucher and receipt writes, signing, SSE framing) in isolation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chain.protocol import TOTAL_BPS, adapter_model_name  # noqa: E402 - importable once ROOT is on sys.path

N_ADAPTERS = 16
MIN_REQUESTS = 64  # per level (full run): fewer make a level of a few seconds, dominated by its ramp and tail
MAX_PER_CLIENT = 16
PROMPTS = [
    "Tell me a short fact about the sea.",
    "What is the capital of Italy?",
    "Name a primary color.",
    "Say something kind.",
    "What do bees make?",
    "Count to five.",
]


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def summarize(n: int, wall: float, results: list[dict]) -> dict:
    ok = [r for r in results if r["ok"]]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    itl = [g for r in ok for g in r["gaps"]]
    tokens = sum(r["tokens"] for r in ok)
    return {
        "clients": n,
        "requests": len(results),
        "errors": len(results) - len(ok),
        "wall_s": round(wall, 3),
        "req_per_s": round(len(ok) / wall, 3),
        "tok_per_s": round(tokens / wall, 2),
        "ttft_p50_ms": _ms(pct(ttft, 0.5)),
        "ttft_p99_ms": _ms(pct(ttft, 0.99)),
        "itl_p50_ms": _ms(pct(itl, 0.5)),
        "itl_p99_ms": _ms(pct(itl, 0.99)),
    }


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 2)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process so far (Linux /proc; 0 where unavailable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    except (OSError, ValueError, IndexError):
        return 0.0


STEP_KEYS = ("decode_steps", "mixed_steps", "prefill_steps")


def engine_steps(stats: dict) -> dict[str, int]:
    """The engine's step counters from `Engine.stats()` (the steps a level took, by kind)."""
    return {k: int(stats[k]) for k in STEP_KEYS}


def node_steps(url: str) -> dict[str, int]:
    """The same counters from the node's Prometheus endpoint (loranode_engine_<key>_total)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:  # noqa: S310 - our own node, on loopback
        text = r.read().decode()
    out = {}
    for k in STEP_KEYS:
        m = re.search(rf"^loranode_engine_{k}_total ([0-9.e+]+)$", text, re.M)
        if m is None:
            raise RuntimeError(f"the node's /metrics has no loranode_engine_{k}_total")
        out[k] = int(float(m.group(1)))
    return out


def steps_taken(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    d = {k: after[k] - before[k] for k in STEP_KEYS}
    d["steps"] = d["decode_steps"] + d["prefill_steps"]  # every step decodes, prefills, or both (mixed)
    return d


def level_requests(n: int, quick: bool) -> int:
    """Requests a level of `n` clients runs (API and engine alike): at least MIN_REQUESTS and one per
    client, at most MAX_PER_CLIENT per client (one client's requests run one after another: 16 take
    ~10 s on 2 CPU cores)."""
    least, most_each = (16, 4) if quick else (MIN_REQUESTS, MAX_PER_CLIENT)
    return max(n, min(least, most_each * n))


def _plan(n: int, per_level: int) -> list[list[tuple[int, str]]]:
    """Work per client: (adapter id, prompt) pairs; the same plan drives the API and the engine."""
    per_client = max(1, -(-per_level // n))
    return [[(1 + (i % N_ADAPTERS), PROMPTS[(i + k) % len(PROMPTS)]) for k in range(per_client)] for i in range(n)]


# ---- load through the API -------------------------------------------------------------------------


def mark_token(res: dict, t0: float, last: float | None) -> float:
    """Record a token's arrival in `res`: the time to the first token (from t0, perf_counter at
    send), else the gap since the previous one; returns the arrival time. Both sides use it."""
    now = time.perf_counter()
    if last is None:
        res["ttft"] = now - t0
    else:
        res["gaps"].append(now - last)
    return now


async def timed_chat_stream(response, t0: float, res: dict) -> tuple[dict | None, str]:
    """Read an OpenAI chat-completions SSE stream (aiohttp response): the time to the first token
    and the gaps between tokens go into `res` ("ttft", "gaps"); returns the last event that carries
    `usage` (the node's also carries the receipt) and the streamed text. t0: perf_counter at send."""
    last, final, text = None, None, []
    async for raw in response.content:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        ev = json.loads(line[6:])
        if ev.get("usage"):
            final = ev
        piece = ev["choices"][0]["delta"].get("content") if ev.get("choices") else None
        if piece:
            last = mark_token(res, t0, last)
            text.append(piece)
    return final, "".join(text)


async def api_clients(
    url: str, wallets: dict, clients: list[int], n: int, per_level: int, max_tokens: int, start_at: float | None = None
) -> tuple[list[dict], float, float]:
    """Run the given clients (indices into the level's plan) to completion; returns their results
    and the monotonic start/end times. `wallets[payer index]` must hold every payer they use."""
    import aiohttp

    plan = _plan(n, per_level)
    results: list[dict] = []

    async def client(i: int, session):
        wallet = wallets[i // N_ADAPTERS]
        for aid, prompt in plan[i]:
            body = {
                "model": adapter_model_name(aid),
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "stream": True,
            }
            t0 = time.perf_counter()
            res = {"ok": False, "ttft": None, "gaps": [], "tokens": 0}
            try:
                async with session.post(url + "/v1/chat/completions", json=body, headers=wallet.header(aid)) as r:
                    if r.status != 200:
                        res["error"] = f"HTTP {r.status}: {(await r.text())[:200]}"
                        results.append(res)
                        continue
                    final, text = await timed_chat_stream(r, t0, res)
                    if final is None or "receipt" not in final:
                        res["error"] = "stream ended without the final usage/receipt event"
                    else:
                        wallet.record(aid, final, text)  # checks cost, receipt signature, output hash
                        res["tokens"] = final["usage"]["completion_tokens"]
                        res["ok"] = True
            except Exception as e:  # noqa: BLE001 - every failure is counted as an error
                res["error"] = repr(e)
            results.append(res)

    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=600)) as session:
        if start_at is not None:  # every client process starts at the same moment
            await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        t0 = time.monotonic()
        await asyncio.gather(*(client(i, session) for i in clients))
        t1 = time.monotonic()
    return results, t0, t1


def _client_process(conn, url: str, payer_keys: list[str], quote_json: dict, mine: list[int]) -> None:
    """A load-generator process: owns the wallets of payers `mine` (so their cumulative voucher
    totals live in one place for the whole run) and runs their clients when told."""
    from node.client.payer import NodeQuote, VoucherWallet

    quote = NodeQuote.from_json(quote_json)
    wallets = {p: VoucherWallet(payer_keys[p], quote) for p in mine}
    while True:
        msg = conn.recv()
        if msg is None:
            return
        n, per_level, max_tokens, start_at = msg
        clients = [i for i in range(n) if i // N_ADAPTERS in wallets]
        cpu0 = time.process_time()
        results, t0, t1 = asyncio.run(api_clients(url, wallets, clients, n, per_level, max_tokens, start_at))
        conn.send((results, t0, t1, time.process_time() - cpu0))


class LoadGenerator:
    """The API's clients, in `procs` processes of their own (payers split between them), so the
    benchmark measures the node and not one Python process signing vouchers, verifying receipts
    and parsing SSE for 256 streams."""

    def __init__(self, url: str, payer_keys: list[str], quote_json: dict, procs: int):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        procs = max(1, min(procs, len(payer_keys)))
        self.workers = []
        for w in range(procs):
            parent, child = ctx.Pipe()
            mine = [p for p in range(len(payer_keys)) if p % procs == w]
            proc = ctx.Process(target=_client_process, args=(child, url, payer_keys, quote_json, mine), daemon=True)
            proc.start()
            self.workers.append((proc, parent))

    def level(self, n: int, per_level: int, max_tokens: int) -> dict:
        start_at = time.monotonic() + 0.5  # all processes start together
        for _, conn in self.workers:
            conn.send((n, per_level, max_tokens, start_at))
        results, t0s, t1s, cpu = [], [], [], 0.0
        for _, conn in self.workers:
            res, t0, t1, cpu_s = conn.recv()
            cpu += cpu_s
            if res:
                results += res
                t0s.append(t0)
                t1s.append(t1)
        out = summarize(n, max(t1s) - min(t0s), results)
        out["loadgen_cpu_s"] = round(cpu, 2)
        errs = [r.get("error") for r in results if not r["ok"]]
        if errs:
            out["first_error"] = errs[0]
        return out

    def close(self) -> None:
        for proc, conn in self.workers:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            proc.join(30)
            if proc.is_alive():
                proc.kill()


# ---- the same load on the engine directly ------------------------------------------------------


async def engine_level(engine, n: int, per_level: int, max_tokens: int) -> dict:
    from inference.requests import GenerationRequest, SamplingParams

    plan = _plan(n, per_level)
    results: list[dict] = []
    counter = [0]

    async def client(i: int):
        for aid, prompt in plan[i]:
            counter[0] += 1
            req = GenerationRequest(
                f"bench-{counter[0]}",
                adapter_model_name(aid),
                messages=[{"role": "user", "content": prompt}],
                params=SamplingParams(max_tokens=max_tokens, temperature=0.0),
            )
            t0 = time.perf_counter()
            res = {"ok": False, "ttft": None, "gaps": [], "tokens": 0}
            try:
                h = engine.submit(req)
                last = None
                async for ev in h.stream():
                    if ev.text:
                        last = mark_token(res, t0, last)
                result = await h.result()
                res["tokens"], res["ok"] = result.completion_tokens, True
            except Exception as e:  # noqa: BLE001 - every failure is counted as an error
                res["error"] = repr(e)
            results.append(res)

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(n)))
    return summarize(n, time.perf_counter() - t0, results)


# ---- setup ------------------------------------------------------------------------------------------


def publish(c, accounts, store_dir: Path, work: Path) -> dict[int, Path]:
    from transformers import AutoConfig

    from inference.adapter_factory import make_random_adapter
    from inference.base_model import EMBEDDED_MODEL_ID, resolve_model_folder
    from node.ipfs import EmbeddedStore

    base_cfg = AutoConfig.from_pretrained(resolve_model_folder(None))
    store = EmbeddedStore(store_dir)
    folders = {}
    for aid in range(1, N_ADAPTERS + 1):
        folder = make_random_adapter(work / f"a{aid}", base_cfg, rank=4, seed=aid, base_model_id=EMBEDDED_MODEL_ID)
        cid = asyncio.run(store.add_path(folder))
        c.adapters.register(accounts["owner"], EMBEDDED_MODEL_ID, cid, 4, 1000 + aid, TOTAL_BPS, [], [])
        folders[aid] = folder
    return folders


def wait_models(url: str, want: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url + "/v1/models", timeout=10) as r:  # noqa: S310 - our own node, on loopback
            if len(json.loads(r.read())["data"]) >= want + 1:
                return
        time.sleep(0.5)
    raise SystemExit(f"the node did not load {want} adapters within {timeout}s")


def start_node(toml: Path) -> tuple[subprocess.Popen, str]:
    """`loranode node run --config toml` in its own process; returns it and its URL once it listens
    (its output is drained from then on). ROOT leads the daemon's import path, as it does this
    process's (the peer): a `.venv` shared between checkouts (git worktrees linking one venv) would
    otherwise run the code of the checkout it was installed from."""
    import threading

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/loranode"), "node", "run", "--config", str(toml)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "listening on" in line:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # keep the pipe drained
            return proc, line.split("listening on")[1].strip()
    proc.wait()
    raise SystemExit("the node daemon exited before listening")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests, fewer tokens, N up to 64")
    ap.add_argument("--levels", default=None, help="comma-separated client counts (default 1,8,64,256)")
    ap.add_argument("--idle-batch-ms", type=float, default=None, help="engine_idle_batch_ms for both sides (default: the node's)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per level and side (default 3, --quick 1; best counts)")
    ap.add_argument(
        "--client-procs",
        type=int,
        default=2,
        help="processes running the API's clients (default 2; payers are split between them)",
    )
    args = ap.parse_args()
    levels = [int(x) for x in (args.levels or ("1,8,64" if args.quick else "1,8,64,256")).split(",")]
    # three rounds a side: one level of one round moved ±10 % with the machine (ITL 111-141 ms for
    # the same work), enough to decide a 0.9 ratio by noise alone; with two, the same N = 64 work
    # (17 engine steps each side) ran at 24-34 tok/s from run to run, so one slow round in each
    # ordering could still decide it
    args.rounds = args.rounds or (1 if args.quick else 3)
    max_tokens = 6 if args.quick else 8

    from eth_account import Account
    from web3 import Web3

    from chain.contracts import Contracts
    from chain.deploy import deploy
    from chain.devchain import DEV_PRIVATE_KEYS, Anvil
    from node.client.payer import NodeQuote
    from node.dev.devnet import fund_escrow

    n_payers = max(1, -(-max(levels) // N_ADAPTERS))
    payer_keys = ["0x" + os.urandom(32).hex() for _ in range(n_payers)]
    result: dict = {"levels": {}, "max_tokens": max_tokens, "adapters": N_ADAPTERS, "quick": args.quick}
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp, Anvil() as anvil:
        tmp = Path(tmp)
        w3 = Web3(Web3.HTTPProvider(anvil.url))
        dep = deploy(anvil.url, DEV_PRIVATE_KEYS[0], out_dir=None, w3=w3)
        dep_path = dep.save(tmp / "deployment.json")
        c = Contracts(w3, dep)
        owner = Account.from_key(DEV_PRIVATE_KEYS[2])
        data = tmp / "node"
        store_dir = data / "ipfs"
        folders = publish(c, {"owner": owner}, store_dir, tmp / "adapters")
        for key in payer_keys:  # fresh payers, gas money from a dev account
            w3.eth.send_transaction(
                {"from": Account.from_key(DEV_PRIVATE_KEYS[3]).address, "to": Account.from_key(key).address, "value": 10**18}
            )
            fund_escrow(w3, dep, DEV_PRIVATE_KEYS[0], key, 10**15, Account.from_key(DEV_PRIVATE_KEYS[1]).address)
        toml = tmp / "node.toml"
        toml.write_text(
            f'data_dir = "{data}"\ndeployment = "{dep_path}"\nrpc_url = "{anvil.url}"\ndev_mode = true\n'
            f'dev_key_index = 1\nlisten_port = 0\nconfirmations = 0\nwatcher_poll_s = 0.5\n'
            f'compute_price_per_1k = 1000\nmax_tokens_limit = 64\nengine_gpu_slots = {N_ADAPTERS}\n'
            f'engine_max_batch = 32\nengine_max_queue = 1024\nlog_level = "WARNING"\n'
            + ("" if args.idle_batch_ms is None else f"engine_idle_batch_ms = {args.idle_batch_ms}\n")
        )
        print(f"bench-api: starting the node daemon ({len(folders)} adapters on chain)", flush=True)
        proc, url = start_node(toml)
        try:
            wait_models(url, N_ADAPTERS, 300)
            with urllib.request.urlopen(url + "/v1/node", timeout=10) as r:  # noqa: S310 - our own node, on loopback
                quote_json = json.loads(r.read())
            NodeQuote.from_json(quote_json)  # parsed here to fail early; the client processes parse their own copy
            gen = LoadGenerator(url, payer_keys, quote_json, args.client_procs)
            # the peer: the same engine configuration in this process, idle while the API runs
            from inference.engine import Engine
            from node.config import load_config
            from node.daemon.engine_factory import engine_config

            engine = Engine(engine_config(load_config(toml, environ={}))).start()
            try:
                for aid, folder in folders.items():
                    engine.register_adapter(adapter_model_name(aid), folder)
                gen.level(1, 2, 2)  # warm-up (first adapter loads, allocator)
                asyncio.run(engine_level(engine, 1, 2, 2))
                # API and engine back to back at each level (and in alternating order over rounds),
                # so a change in background load hits both sides alike; best of the rounds per side
                for n in levels:
                    runs: dict[str, list[dict]] = {"api": [], "engine": []}
                    for k in range(args.rounds):
                        order = ("api", "engine") if k % 2 == 0 else ("engine", "api")
                        for side in order:
                            if side == "api":
                                node_cpu0, steps0 = process_cpu_s(proc.pid), node_steps(url)
                                res = gen.level(n, level_requests(n, args.quick), max_tokens)
                                res["node_cpu_s"] = round(process_cpu_s(proc.pid) - node_cpu0, 2)
                                res["engine_steps"] = steps_taken(steps0, node_steps(url))
                                res["cpu_s"] = round(res["node_cpu_s"] + res["loadgen_cpu_s"], 2)
                            else:
                                cpu0, steps0 = time.process_time(), engine_steps(engine.stats())
                                res = asyncio.run(engine_level(engine, n, level_requests(n, args.quick), max_tokens))
                                res["cpu_s"] = round(time.process_time() - cpu0, 2)
                                res["engine_steps"] = steps_taken(steps0, engine_steps(engine.stats()))
                            runs[side].append(res)
                            print(f"{side:6s} N={n:4d} {res}", flush=True)
                    result["levels"][str(n)] = {
                        side: max(rs, key=lambda r: r["tok_per_s"]) | {"errors": sum(r["errors"] for r in rs)}
                        for side, rs in runs.items()
                    }
            finally:
                gen.close()
                engine.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    ratios = {}
    for n, lv in result["levels"].items():
        if lv["engine"]["tok_per_s"]:
            ratios[n] = round(lv["api"]["tok_per_s"] / lv["engine"]["tok_per_s"], 3)
    result["overhead_ratio"] = ratios
    result["errors"] = sum(lv["api"]["errors"] + lv["engine"]["errors"] for lv in result["levels"].values())
    result["min_overhead_ratio"] = min(ratios.values()) if ratios else None
    result["target_met"] = bool(ratios) and result["errors"] == 0 and min(ratios.values()) >= 0.9
    print("RESULT " + json.dumps(result, separators=(",", ":")), flush=True)
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
