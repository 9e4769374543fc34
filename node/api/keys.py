"""Typed keys (aiohttp `web.AppKey`) of everything the API app serves from: the one home of the
app's keys. The composition root (node.daemon.root) puts the parts there at start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web
from sqlalchemy.orm import sessionmaker

from node.api.catalog import Catalog
from node.api.schemas import ApiLimits
from node.config import NodeConfig
from node.daemon.payments.ledger import Ledger
from node.metrics import NodeMetrics
from node.daemon.payments.gate import PaymentGate
from node.daemon.payments.receipts import ReceiptIssuer
from node.daemon.supervisor import Supervisor


@dataclass
class ChainInfo:
    """The chain this node settles on, as the API quotes it to clients."""

    chain_id: int
    node_address: str
    escrow: str
    receipt_log: str
    addresses: dict[str, str]
    w3: Any = None
    contracts: Any = None
    deployment: Any = None
    operator: Any = None


CONFIG = web.AppKey("config", NodeConfig)
LIMITS = web.AppKey("limits", ApiLimits)
METRICS = web.AppKey("metrics", NodeMetrics)
SESSIONS = web.AppKey("sessions", sessionmaker)
LEDGER = web.AppKey("ledger", Ledger)
CHAIN = web.AppKey("chain", ChainInfo)
ENGINE = web.AppKey("engine", object)
CATALOG = web.AppKey("catalog", Catalog)
GATE = web.AppKey("gate", PaymentGate)
ISSUER = web.AppKey("issuer", ReceiptIssuer)
LOOPS = web.AppKey("loops", Supervisor)  # every background loop, with its health (/healthz, dashboard)
ESCROW_READER = web.AppKey("escrow_reader", object)
ATTRIBUTOR_FOR = web.AppKey("attributor_for", object)  # adapter id -> Attributor | None
ATTRIBUTION = web.AppKey("attribution", object)  # node.daemon.attribution.AttributionService, when it runs
DASHBOARD_SNAPSHOTTER = web.AppKey("dashboard_snapshotter", dict)  # {"s": Snapshotter}, made at the first request
