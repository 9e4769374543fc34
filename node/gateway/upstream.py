"""One vLLM server as the gateway sees it, and the router that picks one per request.

Routing: among servers in rotation that have the adapter loaded, prefer the one that served it
last (its LoRA is likely still in a GPU slot: vLLM swaps adapters in and out of `--max-loras`
slots) unless that server has `AFFINITY_SLACK` more requests outstanding than the least loaded
one; otherwise the least loaded wins and becomes the adapter's affine server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

# extra outstanding requests tolerated on an adapter's affine server before spreading its load
AFFINITY_SLACK = 4


@dataclass
class Upstream:
    url: str
    in_rotation: bool = False
    outstanding: int = 0
    loaded: set[str] = field(default_factory=set)  # adapter names the server holds (as far as we know)
    last_error: str | None = None
    out_since: float | None = None
    failures: int = 0
    requests: int = 0
    max_model_len: int | None = None
    # serialises adapter loads/unloads on this server (an unload and a reload of the same name
    # must not interleave); requests never take it
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False, compare=False)

    def take_out(self, reason: str) -> None:
        """Out of rotation until a probe brings it back; what it had loaded is forgotten (a
        restarted server has nothing loaded; the probe reloads everything)."""
        if self.in_rotation or self.out_since is None:
            self.out_since = time.time()
        self.in_rotation = False
        self.last_error = reason[:500]
        self.failures += 1
        self.loaded.clear()

    def health(self) -> dict:
        return {
            "url": self.url,
            "in_rotation": self.in_rotation,
            "outstanding": self.outstanding,
            "adapters_loaded": len(self.loaded),
            "failures": self.failures,
            "last_error": self.last_error,
            "out_for_s": None if self.in_rotation or self.out_since is None else round(time.time() - self.out_since, 1),
        }


class Router:
    def __init__(self, servers: list[Upstream]):
        self.servers = servers
        self._affine: dict[str | None, Upstream] = {}

    def candidates(self, adapter: str | None, exclude: AbstractSet[str] = frozenset()) -> list[Upstream]:
        return [s for s in self.servers if s.in_rotation and s.url not in exclude and (adapter is None or adapter in s.loaded)]

    def pick(self, adapter: str | None, exclude: AbstractSet[str] = frozenset()) -> Upstream | None:
        """The server for one request (None: no server in rotation holds the adapter)."""
        cands = self.candidates(adapter, exclude)
        if not cands:
            return None
        least = min(cands, key=lambda s: (s.outstanding, s.requests))
        affine = self._affine.get(adapter)
        if affine in cands and affine.outstanding <= least.outstanding + AFFINITY_SLACK:
            return affine
        self._affine[adapter] = least
        return least

    def forget(self, adapter: str) -> None:
        self._affine.pop(adapter, None)

    def in_rotation(self) -> int:
        return sum(s.in_rotation for s in self.servers)
