"""The node's database: models, session factory, migrations and the queries other parts use."""

from node.db.migrate import current_revision, head_revision, migrate
from node.db.models import (
    Adapter,
    AdapterState,
    Base,
    BatchStatus,
    ChainBlock,
    ChainCursor,
    ChainEvent,
    Contribution,
    ContributionStatus,
    Dataset,
    NodeRow,
    OutboxAttempt,
    OutboxIntent,
    ReceiptBatch,
    ReceiptRow,
    VoucherRow,
)
from node.db.session import make_engine, make_session_factory

__all__ = [
    "Adapter",
    "AdapterState",
    "Base",
    "BatchStatus",
    "ChainBlock",
    "ChainCursor",
    "ChainEvent",
    "Contribution",
    "ContributionStatus",
    "Dataset",
    "NodeRow",
    "OutboxAttempt",
    "OutboxIntent",
    "ReceiptBatch",
    "ReceiptRow",
    "VoucherRow",
    "current_revision",
    "head_revision",
    "make_engine",
    "make_session_factory",
    "migrate",
]
