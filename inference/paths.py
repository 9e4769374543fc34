"""Where the engine keeps its caches. One root, overridable by $LORANODE_CACHE_DIR."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of LoRA Node's caches: $LORANODE_CACHE_DIR, else $XDG_CACHE_HOME/loranode, else ~/.cache/loranode."""
    env = os.environ.get("LORANODE_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "loranode"
