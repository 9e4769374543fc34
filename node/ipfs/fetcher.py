"""Fetch a CID through a list of backends into the verified cache.

Backends are tried in order; wrong content from one (an `IntegrityError`) is discarded and the
next is asked, since honesty is per source. Nothing enters the cache until every block verified.
A failed fetch is restartable: it starts again from nothing (no half-trusted state is kept).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from node.ipfs.backend import ContentBackend
from node.ipfs.cache import ContentCache
from node.ipfs.errors import AllBackendsFailed, IpfsError
from node.ipfs.exporter import Progress

DEFAULT_CACHE_BYTES = 20 * 1024**3


def default_cache_root() -> Path:
    """`$LORANODE_CACHE_DIR/ipfs`, else `$XDG_CACHE_HOME/loranode/ipfs`, else `~/.cache/loranode/ipfs`."""
    env = os.environ.get("LORANODE_CACHE_DIR")
    if env:
        return Path(env) / "ipfs"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "loranode" / "ipfs"


async def fetch_verified(
    backends: Sequence[ContentBackend],
    cid: str,
    max_bytes: int,
    cache: ContentCache | None = None,
    progress: Progress | None = None,
) -> Path:
    """The local path of verified content `cid` (a file or a folder), fetching it if needed."""
    if cache is None:
        cache = ContentCache(default_cache_root() / "cache", DEFAULT_CACHE_BYTES)
    key = ContentCache.key(cid)
    hit = cache.path_of(key)
    if hit is not None:
        return hit
    errors: list[tuple[str, Exception]] = []
    for backend in backends:
        with cache.workdir() as work:
            try:
                got = await backend.fetch(key, work, max_bytes, progress)
            except IpfsError as e:
                errors.append((getattr(backend, "name", type(backend).__name__), e))
                continue
            return cache.commit(key, got)
    raise AllBackendsFailed(key, errors)
