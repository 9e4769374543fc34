"""The node's aiohttp application: `create_http_app()` adds the middlewares and routes; the parts it
serves from (DB, chain, engine, payment gate, receipt issuer, loops) are built and wired by the
composition root, node.daemon.root.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator, Callable, Sequence

from aiohttp import web

from node.api import keys as K
from node.api.completions import chat_completions, completions
from node.api.errors import PAYMENT_REJECTION, error_middleware
from node.api.info import healthz, metrics, models, node_info, receipt, settle_up
from node.api.schemas import ApiLimits
from node.config import NodeConfig
from node.daemon.supervisor import Supervisor
from node.metrics import NodeMetrics

log = logging.getLogger(__name__)


@web.middleware
async def metrics_middleware(request: web.Request, handler) -> web.StreamResponse:
    t0 = time.monotonic()
    route = request.match_info.route.resource
    endpoint = route.canonical if route is not None else "unmatched"
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except (asyncio.CancelledError, ConnectionResetError):
        status = 499  # the client went away (nginx's code): not a server error
        raise
    finally:
        m = request.app[K.METRICS]
        m.requests.labels(endpoint, str(status)).inc()
        rejection = request.get(PAYMENT_REJECTION)
        if rejection is not None:  # the operator's view of refused payments, by reason
            m.payment_rejections.labels(rejection).inc()
        m.latency.labels(endpoint).observe(time.monotonic() - t0)


def _limits(config: NodeConfig) -> ApiLimits:
    return ApiLimits(
        max_body_bytes=config.max_body_bytes,
        max_tokens_cap=config.max_tokens_limit,
        default_max_tokens=min(64, config.max_tokens_limit),
    )


def create_http_app(
    config: NodeConfig,
    *,
    node_metrics: NodeMetrics,
    loops: Supervisor,
    startup: Sequence[Callable[[web.Application], AsyncIterator[None]]] = (),
) -> web.Application:
    """The node's HTTP app: middlewares, routes and the dashboard. The handlers serve from the parts
    under node.api.keys, which the composition root's `startup` steps (aiohttp cleanup contexts,
    run in order at start and undone in reverse at cleanup) put there; `node_metrics`: what
    /metrics renders; `loops`: the supervised background loops /healthz reports."""
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[metrics_middleware, error_middleware])
    app[K.CONFIG] = config
    app[K.LIMITS] = _limits(config)
    app[K.METRICS] = node_metrics
    app[K.LOOPS] = loops
    app.cleanup_ctx.extend(startup)
    r = app.router
    r.add_post("/v1/chat/completions", chat_completions)
    r.add_post("/v1/completions", completions)
    r.add_get("/v1/models", models)
    r.add_get("/v1/node", node_info)
    r.add_get("/v1/quote", node_info)
    r.add_get("/v1/receipts/{request_id}", receipt)
    r.add_post("/v1/vouchers", settle_up)
    r.add_get("/healthz", healthz)
    r.add_get("/metrics", metrics)
    if config.dashboard_enabled:
        from node.api.dashboard import add_dashboard

        add_dashboard(app)
    return app
