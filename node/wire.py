"""The voucher's wire format, shared by the payer client and the node: the header that carries a
signed voucher with a request, and its encoding (JSON, optionally base64) in both directions.

It lives outside the daemon so that the client never imports the node's payment gate.
"""

from __future__ import annotations

import base64
import binascii
import json

from chain.eip712 import SignedVoucher, TypedDataError

VOUCHER_HEADER = "X-Payment-Voucher"
MAX_HEADER_BYTES = 4096


class MalformedVoucher(ValueError):
    """The voucher header cannot be decoded into a signed voucher; the message says why."""


def _uint_str(v: object) -> object:
    """Accept JSON numbers too (the strict eip712 JSON wants decimal strings)."""
    return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


def parse_voucher_header(raw: str) -> SignedVoucher:
    """`X-Payment-Voucher`: JSON `{"voucher": {...}, "signature": "0x…"}` (or the flat
    `SignedVoucher.to_json()` form), optionally base64-encoded. Amounts: decimal strings or ints."""
    if len(raw) > MAX_HEADER_BYTES:
        raise MalformedVoucher("voucher header too long")
    text = raw.strip()
    if not text.startswith("{"):
        try:
            alt = b"-_" if ("-" in text or "_" in text) else None
            text = base64.b64decode(text + "=" * (-len(text) % 4), altchars=alt, validate=True).decode()
        except (binascii.Error, ValueError, UnicodeDecodeError) as e:
            raise MalformedVoucher("voucher header is neither JSON nor base64 of JSON") from e
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise MalformedVoucher(f"voucher header is not valid JSON: {e}") from e
    if isinstance(obj, dict) and isinstance(obj.get("voucher"), dict):
        obj = {**obj["voucher"], "signature": obj.get("signature")}
    if not isinstance(obj, dict):
        raise MalformedVoucher('voucher header must be {"voucher": {...}, "signature": "0x…"}')
    obj = {k: _uint_str(v) for k, v in obj.items()}
    try:
        return SignedVoucher.from_json(obj)
    except TypedDataError as e:
        raise MalformedVoucher(f"malformed voucher: {e}") from e


def voucher_header_json(v: SignedVoucher) -> dict:
    return {"voucher": v.voucher.to_json(), "signature": "0x" + v.signature.hex()}


def encode_voucher_header(v: SignedVoucher) -> str:
    """Base64 of the JSON form (header-safe)."""
    return base64.b64encode(json.dumps(voucher_header_json(v), separators=(",", ":")).encode()).decode()
