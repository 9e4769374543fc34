"""The daemon's composition root and `loranode node run`.

`build_app` builds each part of the node once and wires them, in order: DB (migrations applied at
start) → chain connection → engine → IPFS backends and the attribution service → payment gate and
receipt issuer → every background loop under one `Supervisor` (watcher, adapter lifecycle,
settlement, escrow follower, attribution). node.api.app only serves HTTP from the parts it finds
under node.api.keys. The steps run as aiohttp cleanup contexts, so they are undone in reverse
order; SIGINT/SIGTERM stop the node gracefully: the listener closes, in-flight requests finish,
loops stop, the engine stops, the DB closes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING, Any, Callable

from aiohttp import web

from node.api import keys as K
from node.api.app import create_http_app
from node.config import NodeConfig
from node.daemon.supervisor import Supervisor
from node.errors import ConfigError
from node.metrics import NodeMetrics

if TYPE_CHECKING:
    from node.daemon.attribution import AttributionService
    from node.daemon.payments.escrow_reads import Web3EscrowReader
    from node.daemon.payments.receipts import AttributorLookup

log = logging.getLogger("loranode.daemon")


def build_app(
    config: NodeConfig,
    *,
    engine=None,
    w3=None,
    operator=None,
    background: bool = True,
    attributor_for: AttributorLookup | None = None,
) -> web.Application:
    """The node's aiohttp app with every part wired. `engine`: a started `inference.engine.Engine`
    owned by the caller (else one is built from `config` and stopped at cleanup); `w3`/`operator`:
    override the RPC connection and operator account (tests); `background`: run the watcher,
    lifecycle, settlement and attribution loops (the escrow follower always runs);
    `attributor_for`: a caller-given attribution lookup instead of the attribution service."""
    wiring = _Wiring(config, engine=engine, w3=w3, operator=operator, background=background, attributor_for=attributor_for)
    app = create_http_app(config, node_metrics=NodeMetrics(), loops=wiring.loops, startup=wiring.steps())
    if attributor_for is not None:
        app[K.ATTRIBUTOR_FOR] = attributor_for
    return app


def ipfs_backends(config: NodeConfig) -> list[Any]:
    """The configured content backends, embedded store first (it is also where receipts files go)."""
    from node.ipfs import EmbeddedStore, GatewayClient, KuboClient

    backends: list[Any] = [EmbeddedStore(config.ipfs_store_dir)]
    if config.ipfs_kubo_url:
        backends.append(KuboClient(config.ipfs_kubo_url, timeout=config.ipfs_fetch_timeout_s))
    if config.ipfs_gateways:
        backends.append(GatewayClient(config.ipfs_gateways, timeout=config.ipfs_fetch_timeout_s))
    return backends


class _Wiring:
    """The startup steps; each builds its parts once, puts what the API serves from under its
    key, and undoes its work at cleanup. The parts later steps use are kept typed on `self` too."""

    def __init__(
        self, config: NodeConfig, *, engine, w3, operator, background: bool, attributor_for: AttributorLookup | None = None
    ) -> None:
        self.config, self.given_engine, self.given_w3, self.given_operator = config, engine, w3, operator
        self.background = background
        self.loops = Supervisor()
        self.backends: list[Any] = []
        self.attribution: AttributionService | None = None  # when it runs
        self.served_engine: Any = None  # app[K.ENGINE]: the given engine or the one built from the config
        self.escrow_reader: Web3EscrowReader | None = None  # app[K.ESCROW_READER]
        self.attributor_for = attributor_for  # app[K.ATTRIBUTOR_FOR]: caller-given, else the attribution service's

    def steps(self) -> list[Callable]:
        return [self.database, self.chain, self.engine, self.content, self.payments, self.supervised_loops]

    async def database(self, app: web.Application):
        from node.api.catalog import Catalog
        from node.daemon.payments.ledger import Ledger
        from node.db import make_session_factory, migrate

        config = self.config
        config.ensure_dirs()
        await asyncio.to_thread(migrate, config.database_url)  # schema only through Alembic
        sessions = make_session_factory(config.database_url)
        app[K.SESSIONS] = sessions
        app[K.LEDGER] = await asyncio.to_thread(Ledger, sessions)
        app[K.CATALOG] = Catalog(sessions, config.base_model_id)
        yield
        sessions.kw["bind"].dispose()

    async def chain(self, app: web.Application):
        from web3 import Web3

        from chain.contracts import Contracts
        from node.daemon.payments.escrow_reads import Web3EscrowReader, check_chain

        config = self.config
        web3 = self.given_w3 or Web3(Web3.HTTPProvider(config.rpc_url, request_kwargs={"timeout": config.rpc_timeout_s}))
        deployment = await asyncio.to_thread(_load_deployment, config, web3)
        chain_id = await asyncio.to_thread(check_chain, web3, deployment)
        account = self.given_operator or config.operator_account(chain_id)
        addresses = dict(deployment.addresses)
        app[K.CHAIN] = K.ChainInfo(
            chain_id=chain_id,
            node_address=account.address,
            escrow=addresses["UsageEscrow"],
            receipt_log=addresses["ReceiptLog"],
            addresses=addresses,
            w3=web3,
            contracts=Contracts(web3, deployment),
            deployment=deployment,
            operator=account,
        )
        self.escrow_reader = app[K.ESCROW_READER] = Web3EscrowReader(web3, addresses["UsageEscrow"])
        yield

    async def engine(self, app: web.Application):
        metrics = app[K.METRICS]
        if self.given_engine is not None:  # the caller owns it (tests share one engine across apps)
            self.served_engine = app[K.ENGINE] = self.given_engine
            metrics.bind_engine_stats(self.given_engine.stats)
            yield
            return
        from node.daemon.engine_factory import build_engine

        own = await asyncio.to_thread(build_engine, self.config)
        self.served_engine = app[K.ENGINE] = own
        metrics.bind_engine_stats(own.stats)
        try:
            yield
        finally:
            await asyncio.to_thread(own.close)  # stop, then loader threads and packed copies

    async def content(self, app: web.Application):
        """The IPFS backends (shared by the lifecycle, settlement and attribution) and the
        attribution service, which builds each loaded adapter's index off the request path; the
        receipt issuer (next step) gets its `attributor_for`."""
        if not self.background:
            yield
            return
        self.backends = ipfs_backends(self.config)
        try:
            if K.ATTRIBUTOR_FOR not in app:  # else a caller-given lookup
                from node.daemon.attribution import AttributionService
                from node.ipfs import ContentCache

                config = self.config
                svc = AttributionService(
                    app[K.SESSIONS],
                    self.backends,
                    ContentCache(config.data_dir / "attribution" / "content", config.cache_max_bytes),
                    self.served_engine.tokenizer,
                    config.data_dir,
                    fetch_timeout_s=config.ipfs_fetch_timeout_s,
                )
                self.attribution = app[K.ATTRIBUTION] = svc
                self.attributor_for = app[K.ATTRIBUTOR_FOR] = svc.attributor_for
                app[K.METRICS].bind_stats("attribution", svc.metrics)
            yield
        finally:
            for b in self.backends:
                if hasattr(b, "close"):
                    await b.close()

    async def payments(self, app: web.Application):
        from node.daemon.payments.gate import PaymentGate
        from node.daemon.payments.receipts import ReceiptIssuer

        config, chain = self.config, app[K.CHAIN]
        if self.escrow_reader is None:
            raise RuntimeError("the payments step needs the chain step's escrow reader")
        app[K.GATE] = PaymentGate(
            node_address=chain.node_address,
            mode=config.payment_mode,
            escrow=self.escrow_reader,
            book=app[K.LEDGER],
            chain_id=chain.chain_id,
            escrow_address=chain.escrow,
            api_keys=config.all_api_keys() if config.payment_mode == "operator-funded" else [],
            operator_account=chain.operator,
        )
        app[K.ISSUER] = ReceiptIssuer(
            operator=chain.operator,
            chain_id=chain.chain_id,
            receipt_log=chain.receipt_log,
            ledger=app[K.LEDGER],
            attributor_for=self.attributor_for,
        )
        yield

    async def supervised_loops(self, app: web.Application):
        from node.daemon.payments.follower import EscrowFollower

        chain = app[K.CHAIN]
        # Escrow events (deposits, thaws, signer changes) reach the gate's caches within a poll.
        self.loops.add("escrow_follower", EscrowFollower(chain.w3, chain.escrow, chain.node_address, app[K.GATE]))
        if self.background:
            await self._add_background_loops(app)
        self.loops.start()
        try:
            yield
        finally:
            await self.loops.stop()

    async def _add_background_loops(self, app: web.Application) -> None:
        from node.daemon.lifecycle import AdapterLifecycle
        from node.daemon.sync import registry_watcher
        from node.ipfs import ContentCache

        config, chain = self.config, app[K.CHAIN]
        lifecycle = AdapterLifecycle(
            app[K.SESSIONS],
            self.served_engine,
            self.backends,
            ContentCache(config.adapter_cache_dir, config.cache_max_bytes),
            base_model_id=config.base_model_id,
            max_adapter_bytes=config.adapter_max_bytes,
            prefetch=config.prefetch,
            fetch_timeout_s=config.ipfs_fetch_timeout_s,
        )
        watcher = registry_watcher(
            chain.w3,
            app[K.SESSIONS],
            chain.deployment,
            confirmations=config.confirmations,
            max_window=config.getlogs_max_blocks,
            ring_size=config.block_ring_size,
            poll_s=config.watcher_poll_s,
        )
        # chain rows changed: adapters to bring up; contributions accepted/rejected to re-index
        watcher.add_listener(lifecycle.notify)
        if self.attribution is not None:
            watcher.add_listener(self.attribution.notify)
        app[K.METRICS].bind_stats(
            "adapters", lambda: {"loads": lifecycle.loads, "unloads": lifecycle.unloads, "failures": lifecycle.failures}
        )
        self.loops.add("watcher", watcher)
        self.loops.add("lifecycle", lifecycle)
        if config.settlement_enabled:
            from node.daemon.settlement.settler import settlement_from_config

            self.loops.add(
                "settlement",
                await asyncio.to_thread(
                    settlement_from_config, config, app[K.SESSIONS], chain.w3, chain.operator, chain.contracts, self.backends[0]
                ),
            )
        if self.attribution is not None:
            self.loops.add("attribution", self.attribution)


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
    stop = stop or asyncio.Event()
    app = build_app(config, **app_kwargs)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=30.0)
    await runner.setup()  # runs the startup steps: DB migrations, chain check, engine, loops
    loop = asyncio.get_running_loop()
    installed = []
    try:
        site = web.TCPSite(runner, config.listen_host, config.listen_port)
        await site.start()
        host, port = runner.addresses[0][:2]
        url = f"http://{host}:{port}"
        log.info(
            "serving %s on %s (node %s, payment mode %s)",
            config.base_model_id,
            url,
            app[K.CHAIN].node_address,
            config.payment_mode,
        )
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


def run(config: NodeConfig) -> int:
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # migration chatter at every start

    def ready(url: str, _app) -> None:
        print(f"loranode node: listening on {url}", flush=True)

    asyncio.run(serve(config, on_ready=ready))
    return 0
