"""Endpoints and other strings read from chain (or from a node) are untrusted: anyone can register a
node with any endpoint. They are validated before use and cleaned before they reach a terminal."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

MAX_ENDPOINT_CHARS = 256
_PRINTABLE_URL = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: no spaces, controls or look-alike Unicode
# C0/C1 controls and ANSI escape sequences (ESC, CSI) that could rewrite the user's terminal.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class BadEndpoint(ValueError):
    """An endpoint that must not be contacted; the message says why (the endpoint itself is shown cleaned)."""


def shown(text: object, limit: int = 120) -> str:
    """An untrusted string as safe terminal text: controls removed, length bounded, quoted by repr."""
    s = _CONTROL.sub("?", str(text))
    return repr(s[:limit] + ("…" if len(s) > limit else ""))


def clean_output(text: str) -> str:
    """Model output for the terminal: newlines and tabs kept, other control characters (escape
    sequences included) replaced, so a node cannot move the cursor or rewrite what was printed."""
    return _CONTROL.sub("\ufffd", text)


def validate_endpoint(endpoint: object) -> str:
    """The endpoint as a base URL (no trailing slash), or BadEndpoint."""
    if not isinstance(endpoint, str) or not endpoint:
        raise BadEndpoint("empty endpoint")
    if len(endpoint) > MAX_ENDPOINT_CHARS:
        raise BadEndpoint(f"endpoint longer than {MAX_ENDPOINT_CHARS} characters")
    if not _PRINTABLE_URL.match(endpoint):
        raise BadEndpoint(f"endpoint {shown(endpoint)} has spaces, control or non-ASCII characters")
    try:
        parts = urlsplit(endpoint)
        port = parts.port  # raises on a malformed port
    except ValueError:
        raise BadEndpoint(f"endpoint {shown(endpoint)} is not a URL") from None
    if parts.scheme not in ("http", "https"):
        raise BadEndpoint(f"endpoint {shown(endpoint)} is not http(s)")
    if not parts.hostname:
        raise BadEndpoint(f"endpoint {shown(endpoint)} has no host")
    if "@" in parts.netloc:
        raise BadEndpoint(f"endpoint {shown(endpoint)} carries credentials")
    if parts.query or parts.fragment:
        raise BadEndpoint(f"endpoint {shown(endpoint)} has a query or fragment")
    if port == 0:
        raise BadEndpoint(f"endpoint {shown(endpoint)} has port 0")
    return endpoint.rstrip("/")
