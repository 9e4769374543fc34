"""Where the CLI and the demo read content by CID: the embedded store's default folder (the
daemon's too), the backends tried in order, and the verified cache."""

from __future__ import annotations

import os
from pathlib import Path


def store_root(store: Path | None) -> Path:
    """The daemon's default too (`<data_dir>/ipfs`), so what the CLI adds is served by `loranode node run`."""
    if store is not None:
        return store
    from node.config import DEFAULT_DATA_DIR

    data_dir = os.environ.get("LORANODE_DATA_DIR")
    return (Path(data_dir) if data_dir else DEFAULT_DATA_DIR).expanduser() / "ipfs"


def read_backends(store: Path | None, kubo_url: str | None, gateways: list[str] | None) -> list:
    """The embedded store first, then Kubo, then the trustless gateways."""
    from node.ipfs import EmbeddedStore, GatewayClient, KuboClient

    out: list = [EmbeddedStore(store_root(store))]
    if kubo_url:
        out.append(KuboClient(kubo_url))
    if gateways:
        out.append(GatewayClient(list(gateways)))
    return out


def fetch_cache():
    """The verified content cache the node uses too (`<cache>/ipfs/cache`)."""
    from node.ipfs import ContentCache
    from node.ipfs.fetcher import DEFAULT_CACHE_BYTES, default_cache_root

    return ContentCache(default_cache_root() / "cache", DEFAULT_CACHE_BYTES)
