"""Request models of the OpenAI-compatible endpoints, with hard limits.

Strict types: `"max_tokens": "10"` is a 400, not a silent coercion. Limits that the operator
configures (max_tokens cap, message counts and sizes) are applied after parsing in `check_limits`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from node.api.errors import BadRequest, PayloadTooLarge


@dataclass(frozen=True)
class ApiLimits:
    max_body_bytes: int = 1 << 20
    max_tokens_cap: int = 1024
    default_max_tokens: int = 64
    max_messages: int = 128
    max_message_chars: int = 32_000
    max_prompt_chars: int = 64_000
    max_stop: int = 4
    max_stop_chars: int = 64


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Common(_Strict):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    n: Literal[1] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: Annotated[str, Field(max_length=256)] | None = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_Common):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Common):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    echo: Literal[False] = False
    logprobs: None = None
    suffix: None = None

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


def _loc(err: ErrorDetails) -> str:
    return ".".join(str(p) for p in err.get("loc", ()) if not str(p).startswith(("function-", "union[")))


_M = TypeVar("_M", bound=_Strict)


def parse_model(cls: type[_M], data: object) -> _M:
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object", code="invalid_json")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        param = _loc(first) or None
        raise BadRequest(f"invalid field {param or '(body)'}: {first['msg']}", param=param, code="invalid_field") from e


async def read_json(request: web.Request, limits: ApiLimits) -> object:
    """Read and parse the body, with the size cap enforced before parsing."""
    if request.content_length is not None and request.content_length > limits.max_body_bytes:
        raise PayloadTooLarge(f"request body is {request.content_length} bytes; the limit is {limits.max_body_bytes}")
    raw = await request.read()  # aiohttp enforces client_max_size while reading chunked bodies
    if len(raw) > limits.max_body_bytes:
        raise PayloadTooLarge(f"request body is over {limits.max_body_bytes} bytes")
    if not raw:
        raise BadRequest("empty request body; expected a JSON object", code="invalid_json")
    try:
        return json.loads(raw.decode("utf-8"))  # decode first: json.loads(bytes) would guess UTF-16/32
    except UnicodeDecodeError as e:
        raise BadRequest("request body is not UTF-8", code="invalid_json") from e
    except json.JSONDecodeError as e:
        raise BadRequest(f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}", code="invalid_json") from e
    except RecursionError as e:
        raise BadRequest("JSON nested too deeply", code="invalid_json") from e


def check_limits(req: ChatCompletionRequest | CompletionRequest, limits: ApiLimits) -> int:
    """Apply the operator's caps; returns the effective max_tokens."""
    max_tokens = req.requested_max_tokens() or limits.default_max_tokens
    if max_tokens > limits.max_tokens_cap:
        raise BadRequest(
            f"max_tokens {max_tokens} is over this node's cap of {limits.max_tokens_cap}",
            param="max_tokens",
            code="max_tokens_too_large",
        )
    stops = req.stop_list()
    if len(stops) > limits.max_stop or any(len(s) > limits.max_stop_chars or not s for s in stops):
        raise BadRequest(
            f"stop: at most {limits.max_stop} non-empty sequences of at most {limits.max_stop_chars} characters",
            param="stop",
        )
    if isinstance(req, ChatCompletionRequest):
        if len(req.messages) > limits.max_messages:
            raise BadRequest(f"at most {limits.max_messages} messages", param="messages", code="too_many_messages")
        for i, m in enumerate(req.messages):
            if len(m.text()) > limits.max_message_chars:
                raise BadRequest(
                    f"messages[{i}] is over {limits.max_message_chars} characters",
                    param=f"messages.{i}.content",
                    code="message_too_long",
                )
    elif isinstance(req, CompletionRequest) and len(req.prompt_text()) > limits.max_prompt_chars:
        raise BadRequest(f"prompt is over {limits.max_prompt_chars} characters", param="prompt", code="prompt_too_long")
    return max_tokens
