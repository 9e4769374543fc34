"""The node's aiohttp application. `init_app()` builds it; `cleanup_ctx` owns every lifecycle:
DB (migrations applied at start), chain connection, engine, payment gate and receipt issuer, and
the background loops (chain watcher, adapter lifecycle, settlement).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from aiohttp import web

from node.api import keys as K
from node.api.catalog import Catalog
from node.api.completions import chat_completions, completions
from node.api.errors import error_middleware
from node.api.info import healthz, metrics, models, node_info, receipt, settle_up
from node.api.schemas import ApiLimits
from node.config import NodeConfig
from node.errors import ConfigError
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
        m.latency.labels(endpoint).observe(time.monotonic() - t0)


def _limits(config: NodeConfig) -> ApiLimits:
    return ApiLimits(max_body_bytes=config.max_body_bytes, max_tokens_cap=config.max_tokens_limit,
                     default_max_tokens=min(64, config.max_tokens_limit))


# ---- lifecycles ---------------------------------------------------------------------------------


async def _db_ctx(app: web.Application):
    from node.db import make_session_factory, migrate
    from node.daemon.payments.ledger import Ledger

    config = app[K.CONFIG]
    config.ensure_dirs()
    await asyncio.to_thread(migrate, config.database_url)  # schema only through Alembic
    sessions = make_session_factory(config.database_url)
    app[K.SESSIONS] = sessions
    app[K.LEDGER] = await asyncio.to_thread(Ledger, sessions)
    app[K.CATALOG] = Catalog(sessions, config.base_model_id)
    yield
    sessions.kw["bind"].dispose()


def _load_deployment(config: NodeConfig, web3) -> Any:
    """The configured deployment file, else the one `chain.deploy` wrote for the RPC's chain."""
    from chain.deploy import Deployment, deployment_file
    from chain.errors import ChainError

    if config.deployment is not None:
        path = config.deployment
    else:
        try:
            path = deployment_file(web3.eth.chain_id)
        except Exception as e:  # requests/aiohttp raise many types for a dead endpoint
            raise ConfigError(f"rpc_url: cannot reach the chain: {e}") from e
    try:
        return Deployment.load(path)
    except (OSError, ValueError, KeyError, ChainError) as e:
        raise ConfigError(f"deployment: cannot read {path}: {e}") from e


def _chain_ctx(w3=None, operator=None) -> Callable:
    async def ctx(app: web.Application):
        from web3 import Web3

        from node.daemon.payments.escrow_reads import Web3EscrowReader, check_chain

        config = app[K.CONFIG]
        web3 = w3 or Web3(Web3.HTTPProvider(config.rpc_url, request_kwargs={"timeout": config.rpc_timeout_s}))
        deployment = await asyncio.to_thread(_load_deployment, config, web3)
        chain_id = await asyncio.to_thread(check_chain, web3, deployment)
        account = operator or config.operator_account(chain_id)
        addresses = dict(deployment.addresses)
        from chain.contracts import Contracts

        contracts = Contracts(web3, deployment)
        app[K.CHAIN] = K.ChainInfo(
            chain_id=chain_id, node_address=account.address, escrow=addresses["UsageEscrow"],
            receipt_log=addresses["ReceiptLog"], addresses=addresses, w3=web3, contracts=contracts,
            deployment=deployment, operator=account,
        )
        app[K.ESCROW_READER] = Web3EscrowReader(web3, addresses["UsageEscrow"])
        yield

    return ctx


def _engine_ctx(engine=None) -> Callable:
    async def ctx(app: web.Application):
        if engine is not None:  # the caller owns it (tests share one engine across apps)
            app[K.ENGINE] = engine
            app[K.METRICS].bind_engine_stats(engine.stats)
            yield
            return
        from node.daemon.engine_factory import build_engine

        own = await asyncio.to_thread(build_engine, app[K.CONFIG])
        app[K.ENGINE] = own
        app[K.METRICS].bind_engine_stats(own.stats)
        try:
            yield
        finally:
            await asyncio.to_thread(own.close)  # stop, then loader threads and packed copies

    return ctx


async def _services_ctx(app: web.Application):
    from node.daemon.payments.gate import PaymentGate
    from node.daemon.payments.receipts import ReceiptIssuer

    config, chain = app[K.CONFIG], app[K.CHAIN]
    app[K.GATE] = PaymentGate(
        node_address=chain.node_address, mode=config.payment_mode, escrow=app[K.ESCROW_READER],
        book=app[K.LEDGER], chain_id=chain.chain_id, escrow_address=chain.escrow,
        api_keys=config.all_api_keys() if config.payment_mode == "operator-funded" else [],
        operator_account=chain.operator,
    )
    app[K.ISSUER] = ReceiptIssuer(
        operator=chain.operator, chain_id=chain.chain_id, receipt_log=chain.receipt_log, ledger=app[K.LEDGER],
        attributor_for=app.get(K.ATTRIBUTOR_FOR),
    )
    # Escrow events (deposits, thaws, signer changes) reach the gate's caches within a poll.
    from node.daemon.payments.follower import EscrowFollower

    follower = EscrowFollower(chain.w3, chain.escrow, chain.node_address, app[K.GATE])
    stop = asyncio.Event()
    task = asyncio.create_task(follower.run(stop), name="loranode-escrow-follower")
    try:
        yield
    finally:
        stop.set()
        await task


ATTRIBUTION = web.AppKey("attribution", object)  # node.daemon.attribution.AttributionService


def _attribution_ctx(enabled: bool) -> Callable:
    """Per-inference attribution: an AttributionService builds each loaded adapter's index in the
    background; the receipt issuer (built next, in `_services_ctx`) gets its `attributor_for`."""

    async def ctx(app: web.Application):
        if not enabled or K.ATTRIBUTOR_FOR in app:  # tests without loops, or a caller-given lookup
            yield
            return
        from node.daemon.attribution import AttributionService
        from node.daemon.supervisor import ipfs_backends
        from node.ipfs import ContentCache

        config = app[K.CONFIG]
        backends = ipfs_backends(config)
        svc = AttributionService(
            app[K.SESSIONS], backends,
            ContentCache(config.data_dir / "attribution" / "content", config.cache_max_bytes),
            app[K.ENGINE].tokenizer, config.data_dir, fetch_timeout_s=config.ipfs_fetch_timeout_s,
        )
        app[ATTRIBUTION] = svc
        app[K.ATTRIBUTOR_FOR] = svc.attributor_for
        app[K.METRICS].bind_stats("attribution", svc.metrics)
        stop = asyncio.Event()
        task = asyncio.create_task(svc.run(stop), name="loranode-attribution")
        try:
            yield
        finally:
            stop.set()
            try:
                await asyncio.wait_for(task, 15.0)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                task.cancel()
            for b in backends:
                if hasattr(b, "close"):
                    await b.close()

    return ctx


def _background_ctx(enabled: bool) -> Callable:
    async def ctx(app: web.Application):
        if not enabled:
            yield
            return
        from node.daemon.supervisor import COMPONENTS, start_background

        bg = await start_background(app)
        app[K.BACKGROUND].update(bg.tasks)
        watcher = app[COMPONENTS].get("watcher")
        if ATTRIBUTION in app and watcher is not None:  # contribution accepted/rejected: re-check at once
            watcher.add_listener(app[ATTRIBUTION].notify)
        try:
            yield
        finally:
            await bg.stop()

    return ctx


# ---- the factory ----------------------------------------------------------------------------------


def init_app(
    config: NodeConfig,
    *,
    engine=None,
    w3=None,
    operator=None,
    background: bool = True,
    attributor_for: Callable[[int], Any] | None = None,
) -> web.Application:
    """Build the node's HTTP app. `engine`: a started `inference.engine.Engine` owned by the caller
    (else one is built from `config` and stopped at cleanup); `w3`/`operator`: override the RPC
    connection and operator account (tests); `background`: run watcher, lifecycle and settlement."""
    app = web.Application(client_max_size=config.max_body_bytes,
                          middlewares=[metrics_middleware, error_middleware])
    app[K.CONFIG] = config
    app[K.LIMITS] = _limits(config)
    app[K.METRICS] = NodeMetrics()
    app[K.BACKGROUND] = {}
    if attributor_for is not None:
        app[K.ATTRIBUTOR_FOR] = attributor_for
    app.cleanup_ctx.extend([_db_ctx, _chain_ctx(w3, operator), _engine_ctx(engine), _attribution_ctx(background),
                            _services_ctx, _background_ctx(background)])
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
