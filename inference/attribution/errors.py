"""Errors of the attribution index, grouped by what the caller can do about them."""

from __future__ import annotations

from inference.errors import InferenceError


class AttributionError(InferenceError):
    """Root of every error raised by `inference.attribution`."""


class ContributionError(AttributionError):
    """A contribution's content cannot be indexed (skip it; retrying the same bytes fails again)."""

    def __init__(self, cid: str, reason: str):
        super().__init__(f"contribution {cid}: {reason}")
        self.cid = cid
        self.reason = reason


class EmptyContributionError(ContributionError):
    """The contribution holds no text (zero bytes, or nothing that tokenizes)."""


class NotUtf8Error(ContributionError):
    """The contribution's bytes are not valid UTF-8 text."""


class CidMismatchError(ContributionError):
    """The bytes handed in do not hash to the contribution's CID (IndexStore.verify_cid)."""


class ContributionTooLargeError(ContributionError):
    """The contribution is over the configured byte or token cap."""


class IndexCacheError(AttributionError):
    """A cached index file is unreadable, tampered or belongs to other content (it gets rebuilt)."""


class UnknownContributionError(AttributionError, KeyError):
    """An operation named a contribution that is not in the attributor."""
