"""`/v1/chat/completions` and `/v1/completions`: parse → resolve model → admit payment → generate
→ meter → sign receipt. Thin: each step lives in its own module."""

from __future__ import annotations

import asyncio
import json
import logging
import time

from aiohttp import web

from inference.errors import (
    EngineOverloaded,
    EngineStopped,
    InvalidRequest,
    PromptTooLong,
    RequestCancelled,
    UnknownAdapter,
)
from inference.requests import GenerationRequest, GenerationResult, SamplingParams
from node.api import keys as K
from node.api.catalog import Target
from node.api.errors import ApiError, BadRequest, ModelNotFound, Overloaded, Unavailable
from node.api.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    check_limits,
    parse_model,
    read_json,
)
from node.metering import Cost, Price, cost_for
from node.daemon.payments.receipts import Issued, new_request_id

log = logging.getLogger(__name__)

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _prompt_token_bound(req) -> int:
    """Cheap upper bound of prompt tokens for the escrow check before tokenizing: a byte-level BPE
    token is at least one byte; chat templates add a few tokens per message."""
    if isinstance(req, ChatCompletionRequest):
        return sum(len(m.text().encode()) + 8 for m in req.messages) + 8
    return len(req.prompt_text().encode()) + 8


def _sampling(req, max_tokens: int) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=req.top_k or 0,
        seed=req.seed,
        stop=tuple(req.stop_list()),
    )


def _generation_request(req, target: Target, request_id: str, max_tokens: int) -> GenerationRequest:
    try:
        params = _sampling(req, max_tokens)
        if isinstance(req, ChatCompletionRequest):
            msgs = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
            return GenerationRequest(request_id, target.engine_adapter, messages=msgs, params=params)
        return GenerationRequest(request_id, target.engine_adapter, prompt=req.prompt_text(), params=params)
    except InvalidRequest as e:
        raise BadRequest(str(e)) from e


def _submit(engine, gen: GenerationRequest):
    try:
        return engine.submit(gen)
    except EngineOverloaded as e:
        raise Overloaded("the node is at capacity; retry shortly", retry_after=1) from e
    except UnknownAdapter as e:
        raise ModelNotFound(f"adapter {gen.adapter_id} is not loaded in the engine", param="model") from e
    except PromptTooLong as e:
        raise BadRequest(str(e), param="messages", code="context_length_exceeded") from e
    except InvalidRequest as e:
        raise BadRequest(str(e)) from e
    except EngineStopped as e:
        raise Unavailable("the engine is not running") from e


async def _await_result(handle) -> GenerationResult:
    try:
        return await handle.result()
    except RequestCancelled as e:
        return e.partial
    except EngineStopped as e:  # builtin engine stopped, or the vLLM server serving it failed
        raise Unavailable(f"the engine could not finish the request: {e}", headers={"Retry-After": "1"}) from e
    except (PromptTooLong, InvalidRequest) as e:
        raise BadRequest(str(e)) from e


class _Served:
    """Everything that happens after generation: cost, receipt, metrics."""

    def __init__(self, app: web.Application, authz, target: Target) -> None:
        self.app, self.authz, self.target = app, authz, target

    async def finish(self, request_id: bytes, result: GenerationResult) -> tuple[Cost, Issued]:
        cost = cost_for(result.prompt_tokens, result.completion_tokens, self.authz.price)
        gate = self.app[K.GATE]
        op_voucher = None
        if gate.mode == "operator-funded":
            lane = self.authz.lane
            op_voucher = lambda c, a: gate.operator_voucher(lane, c, a)  # noqa: E731  (a one-line closure, set in one mode only)
        issuer = self.app[K.ISSUER]
        # Span matching (when the adapter has an index), signing and the DB write run in worker
        # threads, one transaction per group of requests finishing together; this returns once the
        # receipt committed (before any response is sent).
        issued = await issuer.issue_async(
            request_id=request_id,
            lane=self.authz.lane,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            cost=cost,
            text=result.text,
            token_ids=result.token_ids,
            operator_voucher=op_voucher,
        )
        metrics = self.app[K.METRICS]
        metrics.tokens.labels("prompt").inc(result.prompt_tokens)
        metrics.tokens.labels("completion").inc(result.completion_tokens)
        metrics.receipts_signed.inc()
        return cost, issued


def _usage(result: GenerationResult) -> dict:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def _finish_reason(result: GenerationResult) -> str:
    return result.finish_reason if result.finish_reason in ("stop", "length") else "stop"


async def _handle(request: web.Request, chat: bool) -> web.StreamResponse:
    app = request.app
    limits = app[K.LIMITS]
    body = await read_json(request, limits)
    req: ChatCompletionRequest | CompletionRequest = (
        parse_model(ChatCompletionRequest, body) if chat else parse_model(CompletionRequest, body)
    )
    max_tokens = check_limits(req, limits)
    target = app[K.CATALOG].resolve(req.model)
    price = Price(app[K.CONFIG].compute_price_per_1k, target.adapter_price_per_1k)
    max_cost = cost_for(_prompt_token_bound(req), max_tokens, price)
    authz = await app[K.GATE].admit(request.headers, target.adapter_id, price, max_cost)
    try:
        rid = new_request_id()
        prefix = "chatcmpl-" if chat else "cmpl-"
        api_id = prefix + rid.hex()
        gen = _generation_request(req, target, rid.hex(), max_tokens)
        served = _Served(app, authz, target)
        t0 = time.monotonic()
        handle = _submit(app[K.ENGINE], gen)
        if req.stream:
            return await _stream(request, handle, served, rid, api_id, req.model, chat, t0)
        result = await _await_result(handle)
        cost, issued = await served.finish(rid, result)
        created = int(time.time())
        if chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": _finish_reason(result),
                "logprobs": None,
            }
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": result.text, "finish_reason": _finish_reason(result), "logprobs": None}
            obj = "text_completion"
        return web.json_response(
            {
                "id": api_id,
                "object": obj,
                "created": created,
                "model": req.model,
                "choices": [choice],
                "usage": _usage(result),
                "cost": cost.as_dict(),
                "receipt": issued.to_json(),
            }
        )
    finally:
        authz.release()


def _sse(obj: dict | str) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


async def _stream(
    request, handle, served: _Served, rid: bytes, api_id: str, model: str, chat: bool, t0: float
) -> web.StreamResponse:
    created = int(time.time())
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(text: str | None, finish: str | None = None, first: bool = False) -> dict:
        if chat:
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text is not None else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
        return {"id": api_id, "object": obj, "created": created, "model": model, "choices": [choice]}

    resp = web.StreamResponse(status=200, headers=_SSE_HEADERS)
    metrics = request.app[K.METRICS]
    first_token = True
    try:
        await resp.prepare(request)
        if chat:
            await resp.write(_sse(chunk(None, first=True)))
        async for ev in handle.stream():
            if not ev.text:
                continue
            if first_token:
                metrics.ttft.observe(time.monotonic() - t0)
                first_token = False
            await resp.write(_sse(chunk(ev.text)))
    except (ConnectionResetError, asyncio.CancelledError) as e:
        # the client left: cancel the generation, still meter and sign what was generated (the node
        # did that work; the client can fetch the receipt by the stream's id), then stop quietly
        handle.cancel()
        try:
            result = await asyncio.shield(_await_result(handle))
            await asyncio.shield(served.finish(rid, result))
        except Exception:
            log.exception("could not meter the partial result of a dropped stream %s", api_id)
        if isinstance(e, asyncio.CancelledError):
            raise
        return resp
    try:
        result = await _await_result(handle)
    except ApiError as e:  # headers are sent: report in-band, as OpenAI does, then end the stream
        await resp.write(_sse(e.body()))
        await resp.write_eof()
        return resp
    cost, issued = await served.finish(rid, result)
    final = chunk(None, finish=_finish_reason(result))
    final.update({"usage": _usage(result), "cost": cost.as_dict(), "receipt": issued.to_json()})
    try:
        await resp.write(_sse(final))
        await resp.write(_sse("[DONE]"))
        await resp.write_eof()
    except ConnectionResetError:  # metered and signed already; the receipt is at /v1/receipts/{id}
        pass
    return resp


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _handle(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _handle(request, chat=False)
