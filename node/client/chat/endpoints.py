"""Endpoints and other strings read from chain (or from a node) are untrusted: anyone can register a
node with any endpoint. They are validated before use and cleaned before they reach a terminal
(`node.services.terminal_text`)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from node.services.terminal_text import shown

MAX_ENDPOINT_CHARS = 256
_PRINTABLE_URL = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: no spaces, controls or look-alike Unicode


class BadEndpoint(ValueError):
    """An endpoint that must not be contacted; the message says why (the endpoint itself is shown cleaned)."""


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
