"""SQLAlchemy 2 models of the node DB. The schema is created ONLY by the Alembic migrations in
`migrations/` (`node.db.migrate(url)`); these classes must match the newest migration
(tests/integration/test_db.py checks that they do).

Chain-derived tables (datasets, contributions, adapters' chain columns, nodes) are projections of
`chain_events`; on a reorg the watcher deletes the undone events and rebuilds the affected rows.
uint256 values are stored as decimal strings (`Uint256`): SQLite has no 256-bit integers.
"""

from __future__ import annotations

import enum
import time
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from chain.protocol import TOTAL_BPS, adapter_model_name

# Deterministic constraint names so migrations are portable between SQLite and Postgres.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Uint256(TypeDecorator):
    """A uint256 as a decimal string (exact on every backend); Python side is `int`."""

    impl = String(78)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect) -> str | None:
        if value is None:
            return None
        v = int(value)
        if v < 0 or v >= 1 << 256:
            raise ValueError(f"uint256 out of range: {v}")
        return str(v)

    def process_result_value(self, value: Any, dialect) -> int | None:
        return None if value is None else int(value)


def now() -> float:
    return time.time()


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class AdapterState(str, enum.Enum):
    """Local lifecycle of an adapter on this node (docs/ARCHITECTURE.md, "An AdapterRegistered event")."""

    REGISTERED = "registered"  # seen on chain, nothing fetched yet
    FETCHING = "fetching"  # IPFS fetch + CID verification in progress
    VERIFIED = "verified"  # bytes verified and PEFT config validated; in the disk cache
    LOADED = "loaded"  # registered in the engine: servable
    FAILED = "failed"  # see `failure_reason`; retried only when `attempts` allows
    DEPRECATED = "deprecated"  # deprecated on chain: unloaded, not served
    IGNORED = "ignored"  # another base model than the one this node serves


class ContributionStatus(str, enum.Enum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class BatchStatus(str, enum.Enum):
    PENDING = "pending"  # built and stored; commit tx not yet mined
    COMMITTED = "committed"  # ReceiptLog has it (mined)


# -- chain sync ------------------------------------------------------------------------------------


class ChainCursor(Base):
    """Last block whose events are fully applied (one row per watcher name)."""

    __tablename__ = "chain_cursor"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    block_number: Mapped[int] = mapped_column(BigInteger)
    block_hash: Mapped[str] = mapped_column(String(66))
    updated_at: Mapped[float] = mapped_column(Float, default=now, onupdate=now)


class ChainBlock(Base):
    """Ring of recent processed block hashes, to find the common ancestor after a reorg."""

    __tablename__ = "chain_blocks"
    number: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(66))
    parent_hash: Mapped[str] = mapped_column(String(66))


class ChainEvent(Base):
    """A decoded contract event, kept so projections can be rebuilt after a reorg."""

    __tablename__ = "chain_events"
    __table_args__ = (UniqueConstraint("block_number", "log_index"), Index("ix_chain_events_entity", "entity"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    block_number: Mapped[int] = mapped_column(BigInteger, index=True)
    block_hash: Mapped[str] = mapped_column(String(66))
    tx_hash: Mapped[str] = mapped_column(String(66))
    log_index: Mapped[int] = mapped_column(Integer)
    address: Mapped[str] = mapped_column(String(42))
    name: Mapped[str] = mapped_column(String(64))
    entity: Mapped[str] = mapped_column(String(96))  # projection key, e.g. "adapter:3"
    args: Mapped[dict] = mapped_column(JSON)


# -- registries (projections of chain_events) -----------------------------------------------------


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    curator: Mapped[str] = mapped_column(String(42))
    name: Mapped[str] = mapped_column(Text, default="")
    license: Mapped[str] = mapped_column(Text, default="")
    metadata_cid: Mapped[str] = mapped_column(Text, default="")
    block_number: Mapped[int] = mapped_column(BigInteger)


class Contribution(Base):
    __tablename__ = "contributions"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    dataset_id: Mapped[int] = mapped_column(BigInteger, index=True)
    contributor: Mapped[str] = mapped_column(String(42))
    content_cid: Mapped[str] = mapped_column(Text, default="")
    size_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[str] = mapped_column(String(16), default=ContributionStatus.PENDING.value)
    weight: Mapped[int] = mapped_column(Uint256, default=0)
    block_number: Mapped[int] = mapped_column(BigInteger)


class Adapter(Base):
    """An adapter: chain columns (from events) + this node's lifecycle columns."""

    __tablename__ = "adapters"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    owner: Mapped[str] = mapped_column(String(42))
    base_model: Mapped[str] = mapped_column(Text)
    cid: Mapped[str] = mapped_column(Text)
    rank: Mapped[int] = mapped_column(Integer, default=0)
    price_per_1k: Mapped[int] = mapped_column(Uint256, default=0)
    owner_bps: Mapped[int] = mapped_column(Integer, default=TOTAL_BPS)
    dataset_splits: Mapped[list] = mapped_column(JSON, default=list)  # [[dataset_id, bps], ...]
    previous_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # older version, if any
    deprecated: Mapped[bool] = mapped_column(Boolean, default=False)  # on chain
    block_number: Mapped[int] = mapped_column(BigInteger)
    # lifecycle on this node
    state: Mapped[str] = mapped_column(String(16), default=AdapterState.REGISTERED.value, index=True)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    local_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[float] = mapped_column(Float, default=now, onupdate=now)

    @property
    def model_name(self) -> str:
        """API model name (docs/interfaces.md)."""
        return adapter_model_name(self.id)


class NodeRow(Base):
    __tablename__ = "nodes"
    operator: Mapped[str] = mapped_column(String(42), primary_key=True)
    endpoint: Mapped[str] = mapped_column(Text, default="")
    base_models: Mapped[list] = mapped_column(JSON, default=list)
    price_per_1k: Mapped[int] = mapped_column(Uint256, default=0)
    bond: Mapped[int] = mapped_column(Uint256, default=0)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    block_number: Mapped[int] = mapped_column(BigInteger)


# -- metering and settlement -------------------------------------------------------------------


class ReceiptBatch(Base):
    """A Merkle batch of receipts, committed to ReceiptLog under `seq` (exactly last + 1)."""

    __tablename__ = "receipt_batches"
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    root: Mapped[str] = mapped_column(String(66))
    count: Mapped[int] = mapped_column(Integer)
    cid: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=BatchStatus.PENDING.value)
    outbox_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    committed_block: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class ReceiptRow(Base):
    """A node-signed receipt (docs/interfaces.md "Receipt"); batched later for settlement."""

    __tablename__ = "receipts"
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    request_id: Mapped[str] = mapped_column(String(66), unique=True)
    lane: Mapped[str] = mapped_column(String(160), index=True)  # "payer:node:adapterId"
    receipt: Mapped[dict] = mapped_column(JSON)  # the Receipt struct + signature, JSON-safe
    digest: Mapped[str] = mapped_column(String(66))  # EIP-712 digest (the Merkle leaf value)
    batch_seq: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("receipt_batches.seq"), nullable=True, index=True)
    leaf_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class VoucherRow(Base):
    """The newest voucher per lane (cumulative) and what the escrow has paid on that lane."""

    __tablename__ = "vouchers"
    lane: Mapped[str] = mapped_column(String(160), primary_key=True)
    payer: Mapped[str] = mapped_column(String(42), index=True)
    node: Mapped[str] = mapped_column(String(42))
    adapter_id: Mapped[int] = mapped_column(BigInteger)
    compute_value: Mapped[int] = mapped_column(Uint256)
    adapter_value: Mapped[int] = mapped_column(Uint256)
    signature: Mapped[str] = mapped_column(Text)
    redeemed_compute: Mapped[int] = mapped_column(Uint256, default=0)
    redeemed_adapter: Mapped[int] = mapped_column(Uint256, default=0)
    # values covered by a redeem tx in flight (outbox), None when none is
    redeeming_compute: Mapped[int | None] = mapped_column(Uint256, nullable=True)
    redeeming_adapter: Mapped[int | None] = mapped_column(Uint256, nullable=True)
    redeem_outbox_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    redeem_error: Mapped[str | None] = mapped_column(Text, nullable=True)  # last failed redeem of this lane
    updated_at: Mapped[float] = mapped_column(Float, default=now, onupdate=now)


class OutboxIntent(Base):
    """Transaction outbox intent (chain.outbox_store.Intent): queued → signed → sent → mined | failed.

    Written through `node.db.outbox_store.SqlOutboxStore`; the nonce is unique per sender so the
    outbox can never hand one nonce to two intents, even across crashes.
    """

    __tablename__ = "outbox_intents"
    __table_args__ = (UniqueConstraint("sender", "nonce"), Index("ix_outbox_intents_open", "sender", "status"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)  # idempotency key ("commit:<node>:<seq>" ...)
    sender: Mapped[str] = mapped_column(String(42))
    params: Mapped[dict] = mapped_column(JSON)  # {"to", "data", "value", "gas"}
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[float] = mapped_column(Float)
    nonce: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    sent_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    tx_hash: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # the attempt that was mined
    block_number: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    gas_used: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class OutboxAttempt(Base):
    """One signed version of an intent's transaction; the raw bytes are rebroadcast after a crash."""

    __tablename__ = "outbox_attempts"
    intent_id: Mapped[int] = mapped_column(Integer, ForeignKey("outbox_intents.id"), primary_key=True, autoincrement=False)
    n: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    tx_hash: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    max_fee_per_gas: Mapped[int] = mapped_column(Uint256)
    max_priority_fee_per_gas: Mapped[int] = mapped_column(Uint256)
    signed_at: Mapped[float] = mapped_column(Float)
