"""The queries other node parts share (API, settlement, lifecycle). Each takes an open `Session`;
the caller owns the transaction (`with factory.begin() as s:`) so a receipt and its voucher can be
stored atomically.

Receipt sequence numbers are allocated as max + 1 inside the caller's transaction and the primary
key rejects a duplicate; callers in one process serialise allocation with `RECEIPT_SEQ_LOCK`
(an asyncio.Lock would not cover worker threads).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import cast

from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from node.db.models import Adapter, AdapterState, BatchStatus, ReceiptBatch, ReceiptRow, VoucherRow, now
from node.errors import NodeError

RECEIPT_SEQ_LOCK = threading.Lock()


class VoucherRegression(NodeError):
    """A voucher whose cumulative values are below the stored one for its lane."""


def lane_key(payer: str, node: str, adapter_id: int) -> str:
    """Canonical lane id: lower-case addresses and the decimal adapter id."""
    return f"{payer.lower()}:{node.lower()}:{int(adapter_id)}"


# -- receipts -------------------------------------------------------------------------------------


def next_receipt_seq(session: Session) -> int:
    """The next receipt sequence number (1, 2, 3 ...; never reused: receipts are never deleted)."""
    return (session.scalar(select(func.max(ReceiptRow.seq))) or 0) + 1


def store_receipt(session: Session, *, seq: int, request_id: str, lane: str, receipt: dict, digest: str) -> ReceiptRow:
    """Insert a signed receipt (JSON-safe dict incl. signature) with its EIP-712 digest (0x hex)."""
    row = ReceiptRow(seq=seq, request_id=request_id, lane=lane, receipt=receipt, digest=digest)
    session.add(row)
    session.flush()  # surface a duplicate seq/request id inside the caller's transaction
    return row


def store_receipts(session: Session, rows: list[dict]) -> None:
    """Insert many signed receipts with one executemany (rows: `store_receipt`'s keyword arguments).
    A duplicate seq or request id raises here, inside the caller's transaction."""
    if rows:
        session.execute(insert(ReceiptRow), rows)


def get_receipt(session: Session, request_id: str) -> ReceiptRow | None:
    return session.scalar(select(ReceiptRow).where(ReceiptRow.request_id == request_id))


def unbatched_receipts(session: Session, limit: int) -> list[ReceiptRow]:
    return list(session.scalars(select(ReceiptRow).where(ReceiptRow.batch_seq.is_(None)).order_by(ReceiptRow.seq).limit(limit)))


def pending_receipt_count(session: Session) -> int:
    """Receipts not yet in a committed batch (metrics: pending receipts)."""
    q = (
        select(func.count(ReceiptRow.seq))
        .outerjoin(ReceiptBatch, ReceiptRow.batch_seq == ReceiptBatch.seq)
        .where((ReceiptRow.batch_seq.is_(None)) | (ReceiptBatch.status != BatchStatus.COMMITTED.value))
    )
    return int(session.scalar(q) or 0)


def oldest_unsettled_receipt_at(session: Session) -> float | None:
    """Creation time of the oldest receipt not yet committed (metrics: settlement lag)."""
    q = (
        select(func.min(ReceiptRow.created_at))
        .outerjoin(ReceiptBatch, ReceiptRow.batch_seq == ReceiptBatch.seq)
        .where((ReceiptRow.batch_seq.is_(None)) | (ReceiptBatch.status != BatchStatus.COMMITTED.value))
    )
    return session.scalar(q)


@dataclass(frozen=True)
class ReceiptProof:
    """A receipt and, once its batch is committed, the Merkle proof that `verifyReceipt` accepts."""

    receipt: dict
    digest: str
    seq: int
    batch_seq: int | None
    leaf_index: int | None
    root: str | None
    proof: list[str] | None
    batch_cid: str | None
    committed: bool


@lru_cache(maxsize=64)
def _batch_tree(batch_seq: int, digests: tuple[str, ...]):
    from chain.merkle import StandardMerkleTree

    return StandardMerkleTree.of([[d] for d in digests], ["bytes32"])


def _hex(v) -> str:
    if isinstance(v, (bytes, bytearray)):
        return "0x" + bytes(v).hex()
    return v if isinstance(v, str) and v.startswith("0x") else ("0x" + v.hex() if hasattr(v, "hex") else str(v))


def batch_proof(session: Session, batch: ReceiptBatch, leaf_index: int) -> tuple[str, list[str]]:
    """(root, proof) of leaf `leaf_index` in `batch`, rebuilt from the stored digests (cached)."""
    digests = tuple(
        session.scalars(select(ReceiptRow.digest).where(ReceiptRow.batch_seq == batch.seq).order_by(ReceiptRow.leaf_index))
    )
    tree = _batch_tree(batch.seq, digests)
    if _hex(tree.root).lower() != batch.root.lower():
        raise NodeError(f"receipt batch {batch.seq}: stored root does not match its receipts")
    return _hex(tree.root), [_hex(p) for p in tree.proof(leaf_index)]


def receipt_with_proof(session: Session, request_id: str) -> ReceiptProof | None:
    """The receipt for `request_id` (None if unknown), with its proof when its batch is committed."""
    r = get_receipt(session, request_id)
    if r is None:
        return None
    batch = session.get(ReceiptBatch, r.batch_seq) if r.batch_seq is not None else None
    committed = batch is not None and batch.status == BatchStatus.COMMITTED.value
    root = proof = None
    if batch is not None and committed:
        if r.leaf_index is None:
            raise NodeError(f"receipt {request_id} is in committed batch {batch.seq} without a leaf index")
        root, proof = batch_proof(session, batch, r.leaf_index)
    return ReceiptProof(
        receipt=r.receipt,
        digest=r.digest,
        seq=r.seq,
        batch_seq=r.batch_seq,
        leaf_index=r.leaf_index,
        root=root,
        proof=proof,
        batch_cid=batch.cid if batch else None,
        committed=committed,
    )


# -- vouchers -------------------------------------------------------------------------------------


def latest_voucher(session: Session, lane: str) -> VoucherRow | None:
    return session.get(VoucherRow, lane)


def store_voucher(
    session: Session, *, lane: str, payer: str, node: str, adapter_id: int, compute_value: int, adapter_value: int, signature: str
) -> VoucherRow:
    """Keep the newest voucher of a lane. Cumulative values never go down (raises `VoucherRegression`)."""
    store_vouchers(
        session,
        [
            {
                "lane": lane,
                "payer": payer,
                "node": node,
                "adapter_id": adapter_id,
                "compute_value": compute_value,
                "adapter_value": adapter_value,
                "signature": signature,
            }
        ],
    )
    row = session.get(VoucherRow, lane, populate_existing=True)  # the row as the statement left it
    if row is None:  # written just above in this transaction
        raise RuntimeError(f"voucher row of lane {lane} vanished within its transaction")
    return row


def store_vouchers(session: Session, vouchers: list[dict]) -> None:
    """`store_voucher` for many lanes, one voucher each (`store_voucher`'s keyword arguments), in
    Core statements on the session's connection: one SELECT of their rows and one executemany per
    INSERT / UPDATE (the ORM's load and flush per row cost several times a group's commit). Raises
    `VoucherRegression` if any voucher is below its lane's row (the caller's transaction is then to
    roll back). Voucher rows the session already loaded are not refreshed: use a session of its own."""
    if not vouchers:
        return
    session.flush()  # the statements below go around the ORM: pending changes first
    lanes = [v["lane"] for v in vouchers]
    if len(set(lanes)) != len(lanes):
        raise ValueError("store_vouchers takes one voucher per lane")
    t = cast(Table, VoucherRow.__table__)
    conn = session.connection()
    q = select(t.c.lane, t.c.compute_value, t.c.adapter_value).where(t.c.lane.in_(lanes)).with_for_update()
    have = {lane: (c, a) for lane, c, a in conn.execute(q)}
    at = now()
    inserts: list[dict] = []
    updates: list[dict] = []
    for v in vouchers:
        lane, c, a = v["lane"], int(v["compute_value"]), int(v["adapter_value"])
        values = {"compute_value": c, "adapter_value": a, "signature": v["signature"], "updated_at": at}
        old = have.get(lane)
        if old is None:
            inserts.append(
                values
                | {
                    "lane": lane,
                    "payer": v["payer"].lower(),
                    "node": v["node"].lower(),
                    "adapter_id": int(v["adapter_id"]),
                    "redeemed_compute": 0,
                    "redeemed_adapter": 0,
                }
            )
        elif c < old[0] or a < old[1]:
            raise VoucherRegression(f"voucher for lane {lane} is below the stored cumulative values")
        else:
            updates.append(values | {"key": lane, "redeem_error": None})  # a newer voucher deserves a new try
    if inserts:
        conn.execute(insert(t), inserts)
    if updates:
        conn.execute(update(t).where(t.c.lane == bindparam("key")), updates)


def unredeemed_vouchers(session: Session, limit: int) -> list[VoucherRow]:
    """Lanes whose newest voucher exceeds what was redeemed and that no redeem tx covers now."""
    rows = session.scalars(select(VoucherRow).where(VoucherRow.redeem_outbox_id.is_(None)).order_by(VoucherRow.lane))
    out = [v for v in rows if v.compute_value > v.redeemed_compute or v.adapter_value > v.redeemed_adapter]
    return out[:limit]


# -- adapters ---------------------------------------------------------------------------------------


def ready_adapters(session: Session, base_model: str | None = None) -> list[Adapter]:
    """Adapters in state `loaded` (servable here), optionally for one base model."""
    q = select(Adapter).where(Adapter.state == AdapterState.LOADED.value)
    if base_model is not None:
        q = q.where(Adapter.base_model == base_model)
    return list(session.scalars(q.order_by(Adapter.id)))


def get_adapter(session: Session, adapter_id: int) -> Adapter | None:
    return session.get(Adapter, int(adapter_id))
