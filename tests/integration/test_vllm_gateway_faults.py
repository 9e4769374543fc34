"""The vLLM gateway against servers that misbehave in ways a real vLLM server cannot be made to on
demand: one that lies about usage or pads token ids, streams past max_tokens, cannot read the
node's adapter cache (the same machine, as root, can read every path), serves another base model,
refuses an adapter, answers 500, forgets its adapters (a restart between two probes).

Test double: `FakeVllm`, a small aiohttp server speaking the subset of vLLM's HTTP API the
gateway uses (the same paths, bodies and SSE framing as vLLM 0.32's OpenAI server); the real
server is tests/integration/test_vllm_gateway.py. The node's tokenizer, the adapter validation
and the gateway code are the real ones.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from aiohttp import web

from inference.adapter_factory import make_random_adapter
from inference.base_model import EMBEDDED_MODEL_ID, resolve_model_folder
from inference.errors import AdapterValidationError, EngineOverloaded
from inference.requests import GenerationRequest, SamplingParams
from node.errors import ConfigError
from node.gateway import VllmEngine
from node.gateway.engine import UpstreamUnavailable


class FakeVllm:
    def __init__(self, tokenizer, served: str = EMBEDDED_MODEL_ID):
        self.tok = tokenizer
        self.served = served
        self.loras: dict[str, str] = {}
        self.answer = "The capital of France is Paris."
        self.usage_inflation = 0  # extra tokens claimed in usage
        self.pad_ids = 0  # extra ids sent after the answer's
        self.cannot_read = False
        self.refuse = set()  # adapter names refused with 400
        self.fail_completions = False  # the engine died: 500 on /v1/completions and /health
        self.completions = 0
        self.delay_s = 0.0  # silence before the first chunk (a queued request)
        self.hang = False  # the engine hangs mid-stream; /health fails with it
        self.loads = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/load_lora_adapter", self.load)
        app.router.add_post("/v1/unload_lora_adapter", self.unload)
        app.router.add_post("/v1/completions", self.complete)
        return app

    async def health(self, request):  # vLLM's /health checks its engine: a dead engine answers 500
        return self._err("engine dead", 500) if self.fail_completions or self.hang else web.Response(text="")

    async def models(self, request):
        data = [{"id": self.served, "object": "model", "parent": None, "max_model_len": 1024}]
        data += [{"id": n, "object": "model", "parent": self.served, "root": p} for n, p in self.loras.items()]
        return web.json_response({"object": "list", "data": data})

    @staticmethod
    def _err(msg: str, status: int):
        return web.json_response({"error": {"message": msg, "type": "x", "code": status}}, status=status)

    async def load(self, request):
        body = await request.json()
        name, path = body["lora_name"], body["lora_path"]
        if self.cannot_read:
            return self._err(f"Loading lora {name} failed: No adapter found for {path}", 404)
        if name in self.refuse:
            return self._err(f"LoRA rank 64 is greater than max_lora_rank 16 ({name})", 400)
        if name in self.loras:
            return self._err(f"The lora adapter '{name}' has already been loaded.", 400)
        self.loras[name] = path
        self.loads += 1
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def unload(self, request):
        name = (await request.json())["lora_name"]
        if self.loras.pop(name, None) is None:
            return self._err(f"The lora adapter '{name}' cannot be found.", 404)
        return web.Response(text="Success")

    async def complete(self, request):
        self.completions += 1
        body = await request.json()
        if self.fail_completions:
            return self._err("engine dead", 500)
        if body["model"] not in (self.served, *self.loras):
            return self._err(f"The model `{body['model']}` does not exist.", 404)
        answer = self.tok(self.answer, add_special_tokens=False).input_ids
        ids = answer + answer[:1] * self.pad_ids + [self.tok.eos_token_id]  # padding: ids without text
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(self.delay_s)
        for i, t in enumerate(ids):
            if self.hang and i == 2:
                await asyncio.sleep(3600)
            last = i == len(ids) - 1
            text = self.tok.decode([t]) if i < len(answer) else ""
            chunk = {
                "id": "cmpl-x",
                "object": "text_completion",
                "choices": [{"index": 0, "text": text, "token_ids": [t], "finish_reason": "stop" if last else None}],
            }
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        usage = {
            "prompt_tokens": len(body["prompt"]) + self.usage_inflation,
            "completion_tokens": len(ids) + self.usage_inflation,
        }
        await resp.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp


class Servers:
    """Fake servers on one background loop (the gateway blocks its caller while it probes them)."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def start(self, fake: FakeVllm) -> FakeVllm:
        async def go():
            fake.runner = web.AppRunner(fake.app(), shutdown_timeout=1.0)
            await fake.runner.setup()
            site = web.TCPSite(fake.runner, "127.0.0.1", 0)
            await site.start()
            fake.url = f"http://127.0.0.1:{fake.runner.addresses[0][1]}"

        asyncio.run_coroutine_threadsafe(go(), self.loop).result(30)
        return fake

    def stop(self, fake: FakeVllm) -> None:
        asyncio.run_coroutine_threadsafe(fake.runner.cleanup(), self.loop).result(30)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(resolve_model_folder(None)), local_files_only=True)


@pytest.fixture(scope="module")
def servers():
    s = Servers()
    yield s
    s.close()


@pytest.fixture(scope="module")
def adapter_folder(tmp_path_factory):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(resolve_model_folder(None), local_files_only=True)
    return make_random_adapter(tmp_path_factory.mktemp("a") / "a1", cfg, rank=4, base_model_id=EMBEDDED_MODEL_ID)


def _engine(urls, tmp_path, timeout_s=5.0, **kw) -> VllmEngine:
    return VllmEngine(
        urls,
        model_folder=resolve_model_folder(None),
        model_id=EMBEDDED_MODEL_ID,
        cache_dir=tmp_path / "cache",
        max_new_tokens=32,
        timeout_s=timeout_s,
        probe_s=0.2,
        **kw,
    )


def _ask(engine, adapter=None, max_tokens=32):
    async def go():
        h = engine.submit(
            GenerationRequest(
                f"r{time.monotonic_ns()}",
                adapter,
                messages=[{"role": "user", "content": "Capital of France?"}],
                params=SamplingParams(max_tokens=max_tokens, temperature=0),
            )
        )
        return await h.result()

    return asyncio.run(go())


def test_a_server_that_cannot_read_the_cache_or_serves_another_model_refuses_start(servers, tok, tmp_path):
    blind = servers.start(FakeVllm(tok))
    blind.cannot_read = True
    with pytest.raises(ConfigError, match="cannot load adapters from the node's adapter cache.*docs/vllm.md"):
        _engine([blind.url], tmp_path).start()
    other = servers.start(FakeVllm(tok, served="meta-llama/Llama-3.1-8B"))
    with pytest.raises(ConfigError, match="--served-model-name"):
        _engine([other.url], tmp_path).start()
    servers.stop(blind)
    servers.stop(other)


def test_lying_usage_and_padded_ids_bill_the_nodes_count(servers, tok, tmp_path):
    fake = servers.start(FakeVllm(tok))
    engine = _engine([fake.url], tmp_path).start()
    try:
        honest = _ask(engine)
        n = len(tok(fake.answer, add_special_tokens=False).input_ids)
        assert honest.text == fake.answer and honest.completion_tokens == n + 1  # + the EOS, as the builtin bills
        assert engine.stats()["requests_usage_mismatch"] == 0
        fake.usage_inflation, fake.pad_ids = 1000, 20
        lied = _ask(engine)
        # ids that do not spell the text: the node re-encodes the text it returns; the unverifiable
        # EOS is not billed either (a lying server earns less, never more)
        assert lied.text == fake.answer and lied.completion_tokens == n
        assert lied.prompt_tokens == honest.prompt_tokens
        assert engine.stats()["requests_usage_mismatch"] == 1
        fake.usage_inflation, fake.pad_ids = 0, 40  # streams past max_tokens: cut off, nothing billed
        with pytest.raises(UpstreamUnavailable, match="more than max_tokens"):
            _ask(engine, max_tokens=16)
    finally:
        engine.close()
        servers.stop(fake)


def test_refused_adapter_failover_probe_back_and_reload_after_restart(servers, tok, tmp_path, adapter_folder):
    a, b = servers.start(FakeVllm(tok)), servers.start(FakeVllm(tok))
    engine = _engine([a.url, b.url], tmp_path).start()
    try:
        a.refuse.add("adapter-9")
        with pytest.raises(AdapterValidationError, match="vLLM refused it.*max_lora_rank"):
            engine.register_adapter("adapter-9", adapter_folder)
        assert "adapter-9" not in engine.adapters() and "adapter-9" not in b.loras  # unloaded where it loaded
        engine.register_adapter("adapter-1", adapter_folder)
        assert set(a.loras) == set(b.loras) == {"adapter-1"}
        # a fails: the request fails over to b, a leaves rotation and /healthz says why
        a.fail_completions = True
        for _ in range(4):
            assert _ask(engine, "adapter-1").text == a.answer
        health = {s["url"]: s for s in engine.health()["servers"]}
        assert not health[a.url]["in_rotation"] and "500" in health[a.url]["last_error"]
        assert engine.stats()["server_failures"] >= 1
        # a restarts empty: the prober puts it back with its adapters
        a.fail_completions, a.loras = False, {}
        deadline = time.monotonic() + 20
        while not engine.health()["servers"][0]["in_rotation"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert engine.health()["servers_in_rotation"] == 2 and "adapter-1" in a.loras
        # b restarts between two probes (forgets adapters, stays up): reloaded by the next probe
        b.loras = {}
        deadline = time.monotonic() + 20
        while "adapter-1" not in b.loras and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "adapter-1" in b.loras
        # deprecation: refused at once, unloaded everywhere in the background
        engine.unregister_adapter("adapter-1")
        assert "adapter-1" not in engine.adapters()
        deadline = time.monotonic() + 20
        while (a.loras or b.loras) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert a.loras == {} and b.loras == {}
        # a stale adapter a server still holds from an older path is replaced by the verified one
        engine.register_adapter("adapter-2", adapter_folder)
        b.loras["adapter-2"] = "/somewhere/else"
        b.loras["adapter-77"] = "/deprecated/while/out"  # this node's name, no longer registered
        deadline = time.monotonic() + 20
        while (
            b.loras.get("adapter-2") != str(adapter_folder.resolve()) or "adapter-77" in b.loras
        ) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b.loras == {"adapter-2": str(adapter_folder.resolve())}
        # both down: no server in rotation → EngineOverloaded (503 + Retry-After at the API)
        servers.stop(a)
        servers.stop(b)
        with pytest.raises((UpstreamUnavailable, EngineOverloaded)):
            _ask(engine)
        deadline = time.monotonic() + 20
        while engine.health()["servers_in_rotation"] and time.monotonic() < deadline:
            time.sleep(0.1)
        with pytest.raises(EngineOverloaded):
            _ask(engine)
    finally:
        engine.close()


def test_a_busy_server_keeps_its_requests_a_hung_one_leaves_rotation(servers, tok, tmp_path):
    fake = servers.start(FakeVllm(tok))
    engine = _engine([fake.url], tmp_path, timeout_s=0.5).start()
    try:
        fake.delay_s = 2.0  # four timeouts of silence, /health fine: the request waits and is served
        assert _ask(engine).text == fake.answer
        assert engine.health()["servers_in_rotation"] == 1 and engine.stats()["server_failures"] == 0
        fake.delay_s, fake.hang = 0.0, True  # tokens, then silence with a failing /health
        t0 = time.monotonic()
        with pytest.raises(UpstreamUnavailable, match="failed mid-answer.*/health fails"):
            _ask(engine)
        assert time.monotonic() - t0 < 10
        srv = engine.health()["servers"][0]
        assert not srv["in_rotation"] and "/health" in srv["last_error"]
    finally:
        engine.close()
        servers.stop(fake)
