"""Exceptions of `node.ipfs`, grouped by what a caller can do about them.

- `IntegrityError`: the content is wrong (hash mismatch, malformed block, hostile entry, too big).
  Never retry the same source; another backend may still serve honest content.
- `BackendError`: the source failed (network, HTTP error, Kubo error). Retrying or another
  backend may help.
- `InvalidCID` / `UnsupportedContent`: the request itself cannot be served by this code.
"""

from __future__ import annotations

from node.errors import NodeError


class IpfsError(NodeError):
    """Root of every error raised by `node.ipfs`."""


class InvalidCID(IpfsError, ValueError):
    """A CID string or byte form could not be parsed, or uses an unsupported hash/codec."""


class UnsupportedContent(IpfsError):
    """Valid content this implementation does not handle (e.g. HAMT-sharded directories)."""


class IntegrityError(IpfsError):
    """Fetched content does not match what was asked for; it was refused and not kept."""


class BlockHashMismatch(IntegrityError):
    """A block's bytes do not hash to its CID."""


class MalformedBlock(IntegrityError):
    """A block or CAR stream could not be decoded."""


class TruncatedContent(IntegrityError):
    """A stream ended early or a block of the DAG is missing."""


class ContentTooLarge(IntegrityError):
    """The content exceeds the size cap given by the caller."""


class UnsafeEntry(IntegrityError):
    """A folder entry would escape the destination: `..`, absolute path, separator, symlink."""


class BackendError(IpfsError):
    """A backend (Kubo, gateway, store) failed to answer; another try or backend may work."""


class KuboError(BackendError):
    """Kubo answered with an error body (`{"Message", "Code", "Type": "error"}`)."""

    def __init__(self, message: str, code: int | None = None, status: int | None = None):
        super().__init__(f"Kubo error (HTTP {status}, code {code}): {message}")
        self.kubo_message = message
        self.code = code
        self.status = status


class ContentNotFound(BackendError):
    """The backend does not have the content."""


class OperationNotSupported(IpfsError):
    """The backend cannot do this (e.g. adding through a read-only gateway)."""


class AllBackendsFailed(IpfsError):
    """No backend delivered verified content; `errors` holds each backend's failure."""

    def __init__(self, cid: str, errors: list[tuple[str, Exception]]):
        detail = "; ".join(f"{name}: {type(e).__name__}: {e}" for name, e in errors) or "no backends"
        super().__init__(f"could not fetch {cid}: {detail}")
        self.cid = cid
        self.errors = errors
