"""OpenAI-style JSON errors and the one middleware that produces them.

Every error leaves the node as `{"error": {"message", "type", "param", "code", ...}}`. Client
mistakes map to 4xx with a clear message; only a genuine bug in the node becomes a 500, and its
details stay in the log, never in the response. The daemon's parts raise domain errors and never
HTTP ones: `DOMAIN_ERRORS` is the one table that turns them into responses.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

from aiohttp import web

from node.daemon.payments.errors import InvalidApiKey, PaymentCheckUnavailable, PaymentRejected
from node.wire import VOUCHER_HEADER

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error the API reports to the client as-is."""

    status = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.extra = extra or {}
        self.headers = headers or {}

    def body(self) -> dict:
        err = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        err.update(self.extra)
        return {"error": err}


class BadRequest(ApiError):
    status = 400
    code = "invalid_request"


class Unauthorized(ApiError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PaymentRequired(ApiError):
    """HTTP 402: the voucher is missing, invalid or does not cover what the lane owes."""

    status = 402
    type = "payment_required"
    code = "payment_required"


class NotFound(ApiError):
    status = 404
    type = "not_found_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(ApiError):
    status = 405
    code = "method_not_allowed"


class PayloadTooLarge(ApiError):
    status = 413
    code = "request_too_large"


class Overloaded(ApiError):
    status = 503
    type = "server_overloaded"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after: int = 1, **kw):
        super().__init__(message, headers={"Retry-After": str(retry_after)}, **kw)


class Unavailable(ApiError):
    status = 503
    type = "service_unavailable"
    code = "unavailable"


# The request-scoped key under which error_middleware leaves a 402's reason for the metrics
PAYMENT_REJECTION = "loranode.payment_rejection"

# Each domain error the API reports, and the HTTP error it becomes (first match wins).
DOMAIN_ERRORS: tuple[tuple[type[Exception], Callable[[Any], ApiError]], ...] = (
    (PaymentRejected, lambda e: PaymentRequired(e.message, code=e.code, param=VOUCHER_HEADER, extra=e.details)),
    (InvalidApiKey, lambda e: Unauthorized(e.message, code=e.code)),
    (PaymentCheckUnavailable, lambda e: Unavailable(e.message, code=e.code, headers={"Retry-After": str(e.retry_after_s)})),
)


def api_error_for(exc: Exception) -> ApiError | None:
    """The HTTP error of a domain error, or None when the API has no answer for it (a bug: 500)."""
    for kind, to_api in DOMAIN_ERRORS:
        if isinstance(exc, kind):
            return to_api(exc)
    return None


def error_response(err: ApiError) -> web.Response:
    return web.json_response(err.body(), status=err.status, headers=err.headers)


def _from_http_exception(exc: web.HTTPException) -> ApiError:
    """aiohttp's own exceptions (no route, wrong method, body too large) in our JSON shape."""
    if exc.status == 404:
        return NotFound(f"no such endpoint: {exc.reason}")
    if exc.status == 405:
        return MethodNotAllowed("method not allowed on this endpoint")
    if exc.status == 413:
        return PayloadTooLarge(exc.text or "request body too large")
    err = ApiError(exc.reason or "HTTP error", code=f"http_{exc.status}")
    err.status = exc.status
    err.type = "invalid_request_error" if exc.status < 500 else "server_error"
    return err


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error_response(_from_http_exception(e))
    except json.JSONDecodeError as e:  # defensive: handlers parse with parse_json_body
        return error_response(BadRequest(f"malformed JSON: {e.msg}", code="invalid_json"))
    except Exception as e:
        mapped = api_error_for(e)
        if mapped is not None:
            if isinstance(e, PaymentRejected):  # counted by reason in the metrics middleware
                request[PAYMENT_REJECTION] = mapped.code
            return error_response(mapped)
        log.exception("unhandled error in %s %s", request.method, request.path)
        err = ApiError("internal error in the node", code="internal_error")
        err.status = 500
        err.type = "server_error"
        return error_response(err)
