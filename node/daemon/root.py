"""`loranode node run`: the node operator daemon. One aiohttp app owns every lifecycle (DB,
chain, engine, watcher, adapter lifecycle, settlement); SIGINT/SIGTERM stop it gracefully:
the listener closes, in-flight requests finish, loops stop, the engine stops, the DB closes."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Callable

from aiohttp import web

from node.config import NodeConfig

log = logging.getLogger("loranode.daemon")


async def serve(
    config: NodeConfig,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[str, web.Application], None] | None = None,
    handle_signals: bool = True,
    **app_kwargs,
) -> None:
    """Run the node until `stop` is set (or SIGINT/SIGTERM). `on_ready(url, app)` is called once
    the app has started and the socket listens (with the real port when `listen_port` is 0)."""
    from node.api import init_app

    stop = stop or asyncio.Event()
    app = init_app(config, **app_kwargs)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=30.0)
    await runner.setup()  # runs the cleanup_ctx startups: DB migrations, chain check, engine, loops
    loop = asyncio.get_running_loop()
    installed = []
    try:
        site = web.TCPSite(runner, config.listen_host, config.listen_port)
        await site.start()
        host, port = runner.addresses[0][:2]
        url = f"http://{host}:{port}"
        log.info("serving %s on %s (node %s, payment mode %s)", config.base_model_id, url,
                 app[_chain_key()].node_address, config.payment_mode)
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
        if on_ready is not None:
            on_ready(url, app)
        await stop.wait()
        log.info("stopping: finishing in-flight requests, then the loops and the engine")
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await runner.cleanup()


def _chain_key():
    from node.api.keys import CHAIN

    return CHAIN


def run(config: NodeConfig) -> int:
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # migration chatter at every start

    def ready(url: str, _app) -> None:
        print(f"loranode node: listening on {url}", flush=True)

    asyncio.run(serve(config, on_ready=ready))
    return 0
