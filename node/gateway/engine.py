"""`VllmEngine`: the engine interface of `inference.engine.Engine`, served by vLLM servers.

    engine = VllmEngine(["http://127.0.0.1:8000"], model_folder=..., model_id=..., cache_dir=...).start()
    engine.register_adapter("adapter-7", folder)   # validated here, loaded on every server in rotation
    h = engine.submit(GenerationRequest(...))      # same RequestHandle as the builtin engine
    async for ev in h.stream(): ...
    engine.close()

Like the builtin engine's scheduler thread, the gateway runs on its own thread with its own
event loop and HTTP session; handles bridge to the caller's loop. The node renders the prompt
itself (chat template included) and sends token ids, so vLLM runs exactly the prompt the node
counted and both backends bill the same prompt. Every request is streamed from vLLM, streaming or
not for the client: the read timeout then bounds silence, not the length of a generation.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import Future
from contextlib import aclosing
from pathlib import Path

import aiohttp

from chain.protocol import parse_adapter_model_name
from inference.adapters import SUPPORTED_MODULES, validate_adapter
from inference.engine import encode_prompt, eos_ids_of
from inference.errors import (
    AdapterValidationError,
    EngineOverloaded,
    EngineStopped,
    InvalidRequest,
    PromptTooLong,
    UnknownAdapter,
)
from inference.requests import FinishReason, GenerationRequest, GenerationResult, RequestHandle, TokenEvent
from node.errors import ConfigError
from node.gateway import vllm_http as V
from node.gateway.upstream import Router, Upstream
from node.gateway.usage import meter

log = logging.getLogger(__name__)

PROBE_ADAPTER = "loranode-cache-probe"
_ADMIN_TIMEOUT_S = 120.0  # loading an adapter on a busy server can take a while
_COMPLETE_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length"}  # vLLM answers that completed


class UpstreamUnavailable(EngineStopped):
    """No vLLM server could serve the request (none in rotation, or the one serving it failed)."""


class _Answer:
    """What vLLM streamed back for one request so far."""

    def __init__(self, max_new: int) -> None:
        self.max_new = max_new
        self.text: list[str] = []
        self.token_ids: list[int] = []
        self.ids_ok = True  # every text chunk came with its token ids
        self.usage: dict | None = None
        self.finish: str | None = None

    def add(self, chunk: dict) -> list[TokenEvent]:
        """Take one SSE chunk; returns the events to stream to the client."""
        events = []
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("text") if isinstance(choice.get("text"), str) else ""
            new_ids = choice.get("token_ids")
            if isinstance(new_ids, list):
                self.token_ids.extend(new_ids)
                if len(self.token_ids) > self.max_new:  # bounded memory; the node never bills past max_tokens
                    raise V.ServerFailed(f"vLLM sent more than max_tokens={self.max_new} tokens")
            elif delta:
                self.ids_ok = False
            if isinstance(choice.get("finish_reason"), str):
                self.finish = choice["finish_reason"]
            if delta:
                self.text.append(delta)
                if len(self.text) > self.max_new:  # one chunk carries at least one token
                    raise V.ServerFailed(f"vLLM sent more than max_tokens={self.max_new} chunks")
                last = new_ids[-1] if isinstance(new_ids, list) and new_ids else None
                events.append(TokenEvent(delta, last if isinstance(last, int) and not isinstance(last, bool) else None))
        return events


class _GatewayConfig:
    """What the lifecycle's validator reads of an engine (`engine.config.max_rank`, `.target_modules`)."""

    def __init__(self, max_rank: int, max_model_len: int, max_new_tokens: int, max_queue: int):
        self.max_rank = max_rank
        self.target_modules = SUPPORTED_MODULES
        self.max_model_len = max_model_len
        self.max_new_tokens = max_new_tokens
        self.max_queue = max_queue


class VllmEngine:
    def __init__(
        self,
        urls: list[str],
        *,
        model_folder: str | Path,
        model_id: str,
        cache_dir: str | Path,
        max_rank: int = 64,
        max_model_len: int = 2048,
        max_new_tokens: int = 512,
        max_queue: int = 256,
        timeout_s: float = 60.0,
        probe_s: float = 2.0,
    ):
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        if not urls:
            raise ConfigError("vllm_urls: at least one vLLM server is needed")
        folder = Path(model_folder)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            self.hf_config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
            try:
                gen = GenerationConfig.from_pretrained(str(folder), local_files_only=True)
            except OSError:
                gen = None
        except Exception as e:  # transformers raises many types for a bad folder
            raise ConfigError(f"base_model_path: cannot read the tokenizer/config of {folder}: {e}") from e
        self.model_folder = folder
        self.model_id = model_id
        self.cache_dir = Path(cache_dir)
        self.config = _GatewayConfig(max_rank, max_model_len, max_new_tokens, max_queue)
        self.eos_ids = eos_ids_of(gen, self.tokenizer)
        self.timeout_s = timeout_s
        self.probe_s = probe_s
        self.router = Router([Upstream(u) for u in urls])
        self._adapters: dict[str, Path] = {}  # registered name -> verified folder (what every server should hold)
        self._tasks: dict[RequestHandle, asyncio.Task] = {}
        self._outstanding = 0
        self._count_lock = threading.Lock()
        # names: requests_* and *_failures/*loads are exported as Prometheus counters (node.metrics)
        self.counters = {
            "requests_submitted": 0,
            "requests_failed_upstream": 0,
            "requests_failed_over": 0,
            "requests_usage_mismatch": 0,
            "server_failures": 0,
            "adapter_loads": 0,
            "adapter_unloads": 0,
        }
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._session: aiohttp.ClientSession | None = None
        self._stop: asyncio.Event | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> "VllmEngine":
        """Start the gateway thread, bring up every reachable server (cache check, adapters) and
        the prober. A server that answers but cannot read the adapter cache, or serves another
        base model, is a configuration error; an unreachable one is left to the prober."""
        ready: Future = Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="loranode-vllm-gateway", daemon=True)
        self._thread.start()
        ready.result()
        errors = self._call(self._bring_up_all(), timeout=None)
        if errors:
            self.close()
            raise ConfigError("vllm_urls: " + "; ".join(errors))
        return self

    def _run(self, ready: Future) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def main():
            session = self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
            stop = self._stop = asyncio.Event()
            ready.set_result(None)
            try:
                await self._probe_loop(stop)
            finally:
                for task in list(self._tasks.values()):
                    task.cancel()
                await asyncio.gather(*self._tasks.values(), return_exceptions=True)
                await session.close()

        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    def _call(self, coro, timeout: float | None = _ADMIN_TIMEOUT_S):
        """Run a coroutine on the gateway loop from another thread and wait for it."""
        if self._loop is None or not self.running:
            coro.close()
            raise EngineStopped("the vLLM gateway is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def _http(self) -> aiohttp.ClientSession:
        """The gateway loop's HTTP session; it exists while that loop runs."""
        if self._session is None:
            raise EngineStopped("the vLLM gateway is not running")
        return self._session

    def stop(self) -> None:
        loop, thread, stop = self._loop, self._thread, self._stop
        if loop is not None and thread is not None and stop is not None and thread.is_alive():
            loop.call_soon_threadsafe(stop.set)
            thread.join(30)

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> "VllmEngine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ servers

    async def _bring_up_all(self) -> list[str]:
        """Try every server out of rotation; returns configuration errors (not outages)."""
        out = [s for s in self.router.servers if not s.in_rotation]
        results = await asyncio.gather(*(self._bring_up(s) for s in out))
        return [e for e in results if e]

    async def _bring_up(self, server: Upstream) -> str | None:
        """Health, base model, cache readability, every registered adapter; then into rotation.
        Returns a configuration error (the server stays out), None otherwise."""
        async with server.lock:
            try:
                await V.health(self._http, server.url, min(self.timeout_s, 10.0))
                base, max_len, _ = await V.models(self._http, server.url, min(self.timeout_s, 10.0))
                if base != self.model_id:
                    msg = (
                        f"{server.url} serves base model {base!r}, this node serves {self.model_id!r} "
                        f"(start vLLM with --served-model-name {self.model_id})"
                    )
                    server.take_out(msg)
                    return msg
                server.max_model_len = max_len
                err = await self._check_cache_readable(server)
                if err:
                    server.take_out(err)
                    return err
                await self._reconcile_locked(server)
            except V.UpstreamError as e:
                if server.in_rotation or server.last_error is None:
                    log.warning("vLLM server %s is out of rotation: %s", server.url, e)
                server.take_out(str(e))
                return None
            server.in_rotation, server.last_error, server.out_since = True, None, None
        log.info("vLLM server %s in rotation (%d adapters)", server.url, len(server.loaded))
        return None

    async def _reconcile_locked(self, server: Upstream) -> None:
        """Make the server hold exactly this node's adapters, each from its verified folder:
        load what it lacks (it restarted), replace what it holds from another path (an older
        version), unload this node's names it should no longer hold (deprecated while it was out)."""
        _, _, held = await V.models(self._http, server.url, min(self.timeout_s, 10.0))
        wanted = dict(self._adapters)
        server.loaded = {n for n, root in held.items() if n in wanted and root == str(wanted[n])}
        for name in held:
            if name in server.loaded or parse_adapter_model_name(name) is None:  # not a name this node gives
                continue
            await V.unload_lora(self._http, server.url, name, _ADMIN_TIMEOUT_S)
            self.counters["adapter_unloads"] += 1
        for name, folder in wanted.items():
            if name not in server.loaded and name in self._adapters:
                await self._load_on(server, name, folder)

    async def _check_cache_readable(self, server: Upstream) -> str | None:
        """Load a tiny adapter written into the node's adapter cache: the server must read the
        cache by the same path (same machine or a shared filesystem mounted at the same path)."""
        folder = await asyncio.to_thread(self._probe_adapter)
        try:
            await V.load_lora(self._http, server.url, PROBE_ADAPTER, str(folder), _ADMIN_TIMEOUT_S)
            await V.unload_lora(self._http, server.url, PROBE_ADAPTER, _ADMIN_TIMEOUT_S)
        except (V.Refused, V.AdapterMissing) as e:
            return (
                f"{server.url} cannot load adapters from the node's adapter cache {self.cache_dir} ({e}). "
                "The cache must be on a filesystem the vLLM server reads at the same path, and the server "
                "must run with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (docs/vllm.md)"
            )
        return None

    def _probe_adapter(self) -> Path:
        from inference.adapter_factory import make_random_adapter

        folder = self.cache_dir / "vllm-probe"
        if not (folder / "adapter_model.safetensors").is_file():
            make_random_adapter(folder, self.hf_config, rank=1, target_modules=("q_proj",), base_model_id=self.model_id)
        return folder

    async def _load_on(self, server: Upstream, name: str, folder: Path) -> None:
        await V.load_lora(self._http, server.url, name, str(folder), _ADMIN_TIMEOUT_S)
        server.loaded.add(name)
        self.counters["adapter_loads"] += 1

    def _server_failed(self, server: Upstream, reason: str) -> None:
        if server.in_rotation:
            log.warning("vLLM server %s taken out of rotation: %s", server.url, reason)
            self.counters["server_failures"] += 1
        server.take_out(reason)

    async def _probe_loop(self, stop: asyncio.Event) -> None:
        """Every probe_s: servers out of rotation are tried again; servers in rotation are checked
        for adapters they lost (a restart between two requests) and reloaded."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.probe_s)
                return
            except asyncio.TimeoutError:
                pass
            await asyncio.gather(*(self._probe(s) for s in self.router.servers))

    async def _probe(self, server: Upstream) -> None:
        try:
            if not server.in_rotation:
                await self._bring_up(server)
                return
            async with server.lock:
                await self._reconcile_locked(server)
        except V.UpstreamError as e:
            self._server_failed(server, str(e))
        except Exception:  # a bug in one probe must not end the prober
            log.exception("probing vLLM server %s failed", server.url)

    # ------------------------------------------------------------ adapters

    def validate_adapter(self, folder) -> object:
        """`inference.adapters.validate_adapter` against the served base model (the lifecycle's check)."""
        return validate_adapter(
            Path(folder),
            self.hf_config,
            base_model_id=self.model_id,
            max_rank=self.config.max_rank,
            allowed_targets=self.config.target_modules,
        )

    def register_adapter(self, adapter_id: str, folder):
        """Validate a verified PEFT folder against the base model, then load it on every server in
        rotation (servers out of rotation get it when they come back). A server refusing it makes
        it refused everywhere. Called from a worker thread (the lifecycle's)."""
        if not isinstance(adapter_id, str) or not adapter_id or len(adapter_id) > 256 or adapter_id == PROBE_ADAPTER:
            raise InvalidRequest("adapter_id must be a non-empty string of at most 256 chars")
        folder = Path(folder).resolve()
        spec = self.validate_adapter(folder)
        self._call(self._register(adapter_id, folder))
        return spec

    async def _register(self, name: str, folder: Path) -> None:
        self._adapters[name] = folder
        refused: V.Refused | None = None
        for server in self.router.candidates(None):
            async with server.lock:
                try:
                    await self._load_on(server, name, folder)
                except V.Refused as e:
                    refused = e
                except V.UpstreamError as e:
                    self._server_failed(server, str(e))
            if refused is not None:
                break
        if refused is not None:  # refused by one: unloaded from those that took it, refused everywhere
            await self._unregister(name)
            raise AdapterValidationError(f"vLLM refused it: {refused}")

    def unregister_adapter(self, adapter_id: str) -> None:
        """Forget an adapter (deprecated, replaced) at once, and unload it from every server in
        the background: the lifecycle calls this on the node's event loop, which must not wait on
        a vLLM server. A later register of the same name waits for the unloads (per-server locks)."""
        if adapter_id in self._adapters and self._loop is not None and self.running:
            self._adapters.pop(adapter_id, None)
            asyncio.run_coroutine_threadsafe(self._unregister(adapter_id), self._loop)

    async def _unregister(self, name: str) -> None:
        self._adapters.pop(name, None)
        self.router.forget(name)
        for server in self.router.servers:
            async with server.lock:
                if name not in server.loaded or name in self._adapters:  # re-registered meanwhile
                    continue
                server.loaded.discard(name)
                try:
                    await V.unload_lora(self._http, server.url, name, _ADMIN_TIMEOUT_S)
                    self.counters["adapter_unloads"] += 1
                except V.UpstreamError as e:  # a failed server forgets everything anyway
                    self._server_failed(server, str(e))

    def adapters(self) -> list[str]:
        return list(self._adapters)

    # ------------------------------------------------------------ requests

    def submit(self, request: GenerationRequest) -> RequestHandle:
        """Queue a request on the gateway; returns at once. Raises like the builtin engine:
        InvalidRequest/PromptTooLong/UnknownAdapter for bad input, EngineOverloaded when the
        queue is full or no server in rotation can serve the adapter (retry later)."""
        if not isinstance(request, GenerationRequest):
            raise InvalidRequest("submit() takes a GenerationRequest")
        loop = self._loop
        if loop is None or not self.running:
            raise EngineStopped("the vLLM gateway is not running")
        cfg = self.config
        if request.adapter_id is not None and request.adapter_id not in self._adapters:
            raise UnknownAdapter(f"adapter {request.adapter_id!r} is not registered with this engine")
        p = request.params
        if p.max_tokens is not None and p.max_tokens > cfg.max_new_tokens:
            raise InvalidRequest(f"max_tokens {p.max_tokens} exceeds this engine's limit of {cfg.max_new_tokens}")
        model_len = min([cfg.max_model_len] + [s.max_model_len for s in self.router.servers if s.max_model_len])
        ids = encode_prompt(self.tokenizer, request, model_len)
        if not ids:
            raise InvalidRequest("the prompt is empty after tokenization")
        if len(ids) >= model_len:
            raise PromptTooLong(f"prompt has {len(ids)} tokens; max_model_len is {model_len} (prompt + at least one new token)")
        if not self.router.candidates(request.adapter_id):
            raise EngineOverloaded("no vLLM server in rotation holds this model right now")
        max_new = min(p.max_tokens or cfg.max_new_tokens, cfg.max_new_tokens, model_len - len(ids))
        with self._count_lock:
            if self._outstanding >= cfg.max_queue:
                raise EngineOverloaded(f"{self._outstanding} requests outstanding (engine_max_queue)")
            self._outstanding += 1
        handle = RequestHandle(request, len(ids), canceller=self._cancel)
        try:
            loop.call_soon_threadsafe(self._start_request, handle, ids, max_new)
        except RuntimeError as e:  # the loop closed between the check and now
            self._done_counting()
            raise EngineStopped("the vLLM gateway is not running") from e
        return handle

    def _done_counting(self) -> None:
        with self._count_lock:
            self._outstanding -= 1

    def _start_request(self, handle: RequestHandle, ids: list[int], max_new: int) -> None:
        self._tasks[handle] = asyncio.create_task(self._serve(handle, ids, max_new))

    def _cancel(self, handle: RequestHandle) -> None:
        def cancel():
            task = self._tasks.get(handle)
            if task is not None:
                task.cancel()

        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(cancel)
            except RuntimeError:
                pass

    def _payload(self, handle: RequestHandle, ids: list[int], max_new: int) -> dict:
        req, p = handle.request, handle.request.params
        body = {
            "model": req.adapter_id or self.model_id,
            "prompt": ids,
            "max_tokens": max_new,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "stop": list(p.stop),
            "ignore_eos": p.ignore_eos,
            "stream": True,
            "stream_options": {"include_usage": True},
            "return_token_ids": True,
            "skip_special_tokens": True,
        }
        if p.top_k:
            body["top_k"] = p.top_k
        if p.seed is not None:
            body["seed"] = p.seed
        return body

    async def _serve(self, handle: RequestHandle, ids: list[int], max_new: int) -> None:
        """Route, stream, meter; fail over while nothing was sent to the client yet."""
        adapter = handle.request.adapter_id
        payload = self._payload(handle, ids, max_new)
        answer = _Answer(max_new)
        tried: set[str] = set()
        self.counters["requests_submitted"] += 1
        try:
            while True:
                server = self.router.pick(adapter, tried)
                if server is None:
                    self.counters["requests_failed_upstream"] += 1
                    handle._finish(
                        None,
                        UpstreamUnavailable(
                            "no vLLM server in rotation could serve the request"
                            + (f" (last: {self._last_error(tried)})" if tried else "")
                        ),
                    )
                    return
                server.outstanding += 1
                server.requests += 1
                try:
                    async with aclosing(V.stream_completion(self._http, server.url, payload, self.timeout_s)) as chunks:
                        async for chunk in chunks:
                            for event in answer.add(chunk):
                                handle._push(event)
                    break
                except V.AdapterMissing as e:  # the server restarted between two probes: reload, go elsewhere
                    server.loaded.discard(adapter)
                    tried.add(server.url)
                    server.last_error = str(e)
                    if adapter in self._adapters:
                        asyncio.create_task(self._reload(server, adapter))
                except V.ServerFailed as e:
                    self._server_failed(server, str(e))
                    tried.add(server.url)
                    if answer.text or answer.token_ids:  # the client has tokens already: a clean error, nothing billed
                        self.counters["requests_failed_upstream"] += 1
                        handle._finish(None, UpstreamUnavailable(f"the vLLM server failed mid-answer: {e}"))
                        return
                except V.Refused as e:
                    handle._finish(None, InvalidRequest(f"vLLM refused the request: {e}"))
                    return
                finally:
                    server.outstanding -= 1
                self.counters["requests_failed_over"] += 1
            finish = _COMPLETE_FINISH.get(answer.finish or "")
            if finish is None:
                self.counters["requests_failed_upstream"] += 1
                handle._finish(None, UpstreamUnavailable(f"vLLM ended the request with {answer.finish!r}"))
                return
            handle._finish(self._metered(handle, ids, answer, finish, max_new))
        except asyncio.CancelledError:  # the client left: meter what it received, as the builtin engine does
            handle._finish(self._metered(handle, ids, answer, "cancelled", max_new, check_usage=False))
        except Exception as e:  # a bug must not leave the client hanging
            log.exception("vLLM gateway request %s failed", handle.request_id)
            handle._finish(None, UpstreamUnavailable(f"gateway error: {type(e).__name__}"))
        finally:
            self._tasks.pop(handle, None)
            self._done_counting()

    def _last_error(self, tried: set[str]) -> str:
        for s in self.router.servers:
            if s.url in tried and s.last_error:
                return s.last_error[:300]
        return "unknown"

    async def _reload(self, server: Upstream, name: str) -> None:
        try:
            async with server.lock:
                if name not in server.loaded:
                    await self._load_on(server, name, self._adapters[name])
        except (V.UpstreamError, KeyError) as e:
            log.warning("reloading %s on %s failed: %s", name, server.url, e)

    def _metered(
        self,
        handle: RequestHandle,
        ids: list[int],
        answer: "_Answer",
        finish: FinishReason,
        max_new: int,
        check_usage: bool = True,
    ) -> GenerationResult:
        text = "".join(answer.text)
        m = meter(
            self.tokenizer,
            self.eos_ids,
            ids,
            text,
            answer.token_ids if answer.ids_ok else None,
            finish,
            answer.usage,
            max_new,
            stop=handle.request.params.stop,
            check_usage=check_usage,
        )
        if m.mismatches:
            self.counters["requests_usage_mismatch"] += 1
            log.warning("request %s: usage cross-check: %s (the node's count bills)", handle.request_id, "; ".join(m.mismatches))
        return GenerationResult(handle.request_id, text, m.token_ids, m.prompt_tokens, m.completion_tokens, finish)

    # ------------------------------------------------------------ stats

    def health(self) -> dict:
        return {
            "backend": "vllm",
            "servers_in_rotation": self.router.in_rotation(),
            "servers": [s.health() for s in self.router.servers],
        }

    def stats(self) -> dict:
        servers = self.router.servers
        return {
            "model_id": self.model_id,
            "backend": "vllm",
            "outstanding": self._outstanding,
            "servers": len(servers),
            "servers_in_rotation": self.router.in_rotation(),
            "adapters_registered": len(self._adapters),
            **dict(self.counters),
        }


def build_vllm_engine(config) -> VllmEngine:
    """The gateway for a node config with engine_backend = "vllm" (started: servers probed)."""
    from inference.base_model import resolve_model_folder
    from node.daemon.engine_factory import engine_config

    ec = engine_config(config)
    folder = resolve_model_folder(config.base_model_path)
    return VllmEngine(
        config.vllm_urls,
        model_folder=folder,
        model_id=config.base_model_id,
        cache_dir=config.adapter_cache_dir,
        max_rank=config.engine_max_rank,
        max_model_len=ec.max_model_len,
        max_new_tokens=ec.max_new_tokens,
        max_queue=config.engine_max_queue,
        timeout_s=config.vllm_timeout_s,
        probe_s=config.vllm_probe_s,
    ).start()
