"""Why the payment gate did not admit a request, as domain errors; the HTTP API alone turns them
into responses (node.api.errors). `code` is the machine-readable reason clients see."""

from __future__ import annotations

from typing import Any

from node.errors import NodeError


class PaymentError(NodeError):
    """Root of the gate's refusals."""

    code = "payment_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class PaymentRejected(PaymentError):
    """The voucher is missing, malformed, for another lane, or does not cover what the lane owes;
    or the payer's escrow cannot cover the request. `details`: the amounts the payer needs."""

    code = "payment_required"

    def __init__(self, message: str, *, code: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, code=code)
        self.details = details or {}


class InvalidApiKey(PaymentError):
    """operator-funded mode: the request carries no API key, or an unknown one."""

    code = "invalid_api_key"


class PaymentCheckUnavailable(PaymentError):
    """The payment cannot be checked now; the client may retry after `retry_after_s` seconds."""

    retry_after_s = 1

    def __init__(self, message: str, *, code: str | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(message, code=code)
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s


class PaymentChecksThrottled(PaymentCheckUnavailable):
    """Too many chain reads for unknown payers or signers at once (unauthenticated work is bounded)."""

    code = "rate_limited"
    retry_after_s = 1


class ChainUnavailable(PaymentCheckUnavailable):
    """The chain cannot be read and nothing is known about this payer yet."""

    code = "chain_unavailable"
    retry_after_s = 5
