"""The daemon's background loops, owned by the API app (see node.api.app `_background_ctx`):
chain watcher → adapter lifecycle (fetch, verify, load into the engine) → settlement.

Each loop runs `run(stop_event)` and survives RPC/IPFS outages itself; serving never waits on them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from node.api import keys as K

log = logging.getLogger(__name__)

COMPONENTS = web.AppKey("components", dict)  # name -> watcher / lifecycle / settlement object


@dataclass
class Background:
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: dict[str, asyncio.Task] = field(default_factory=dict)
    closers: list[Any] = field(default_factory=list)

    async def stop(self, timeout: float = 15.0) -> None:
        """Ask every loop to stop, wait for them, then cancel the stragglers."""
        self.stop_event.set()
        if self.tasks:
            done, pending = await asyncio.wait(list(self.tasks.values()), timeout=timeout)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for close in self.closers:
            try:
                await close()
            except Exception:  # noqa: BLE001 - best effort at shutdown
                log.warning("closing %r failed", close, exc_info=True)


def ipfs_backends(config) -> list[Any]:
    """The configured content backends, embedded store first (it is also where receipts files go)."""
    from node.ipfs import EmbeddedStore, GatewayClient, KuboClient

    backends: list[Any] = [EmbeddedStore(config.ipfs_store_dir)]
    if config.ipfs_kubo_url:
        backends.append(KuboClient(config.ipfs_kubo_url, timeout=config.ipfs_fetch_timeout_s))
    if config.ipfs_gateways:
        backends.append(GatewayClient(config.ipfs_gateways, timeout=config.ipfs_fetch_timeout_s))
    return backends


async def start_background(app: web.Application) -> Background:
    from node.ipfs import ContentCache
    from node.daemon.lifecycle import AdapterLifecycle
    from node.daemon.sync import registry_watcher

    config, chain, engine = app[K.CONFIG], app[K.CHAIN], app[K.ENGINE]
    sessions = app[K.SESSIONS]
    bg = Background()
    backends = ipfs_backends(config)
    bg.closers += [b.close for b in backends if hasattr(b, "close")]
    components: dict[str, Any] = {}

    cache = ContentCache(config.adapter_cache_dir, config.cache_max_bytes)
    lifecycle = AdapterLifecycle(
        sessions, engine, backends, cache,
        base_model_id=config.base_model_id, max_adapter_bytes=config.adapter_max_bytes,
        prefetch=config.prefetch, fetch_timeout_s=config.ipfs_fetch_timeout_s,
    )
    watcher = registry_watcher(
        chain.w3, sessions, chain.deployment, confirmations=config.confirmations,
        max_window=config.getlogs_max_blocks, ring_size=config.block_ring_size, poll_s=config.watcher_poll_s,
    )
    watcher.add_listener(lifecycle.notify)
    components["watcher"], components["lifecycle"] = watcher, lifecycle
    app[K.METRICS].bind_stats("adapters", lambda: {
        "loads": lifecycle.loads, "unloads": lifecycle.unloads, "failures": lifecycle.failures})
    if config.settlement_enabled:
        from node.daemon.settlement.settler import settlement_from_config

        components["settlement"] = await asyncio.to_thread(
            settlement_from_config, config, sessions, chain.w3, chain.operator, chain.contracts, backends[0])
    for name, comp in components.items():
        bg.tasks[name] = asyncio.create_task(_supervised(name, comp, bg.stop_event), name=f"loranode-{name}")
    app[COMPONENTS] = components
    return bg


async def _supervised(name: str, comp, stop: asyncio.Event) -> None:
    """Run a loop; if it crashes (a bug), log it and restart it after a pause instead of dying silently."""
    while not stop.is_set():
        try:
            await comp.run(stop)
            return
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            log.exception("%s loop crashed; restarting in 5 s", name)
            try:
                await asyncio.wait_for(stop.wait(), 5.0)
            except asyncio.TimeoutError:
                pass
