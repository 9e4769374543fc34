"""The node's lane ledger on its DB: what each lane owes, the best voucher per lane, and the
signed receipts with their never-reused sequence numbers (queries in node.db.repository).

What a lane owes is the sum of its receipts' costs, so it is rebuilt from the `receipts` table at
start (crash-safe by construction) and kept in memory afterwards. A receipt, its sequence number
and (operator-funded mode) the operator's new voucher are written in one transaction.
"""

from __future__ import annotations

import time
from typing import Callable

from eth_utils import to_checksum_address
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from chain.eip712 import SignedReceipt, SignedVoucher, Voucher
from node.db import models as m
from node.db import repository as repo
from node.payments import Lane, LaneState


def _lane_from_key(key: str) -> Lane:
    payer, node, adapter = key.split(":")
    return Lane(to_checksum_address(payer), to_checksum_address(node), int(adapter))


def _voucher_from_row(row: m.Voucher) -> SignedVoucher:
    v = Voucher(to_checksum_address(row.payer), to_checksum_address(row.node), int(row.adapter_id),
                int(row.compute_value), int(row.adapter_value))
    return SignedVoucher(v, bytes.fromhex(row.signature.removeprefix("0x")))


def _dominates(new: Voucher, old: Voucher | None) -> bool:
    return old is None or (new.compute_value >= old.compute_value and new.adapter_value >= old.adapter_value
                           and (new.compute_value, new.adapter_value) != (old.compute_value, old.adapter_value))


class Ledger:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self._owed: dict[Lane, list[int]] = {}
        self._vouchers: dict[Lane, SignedVoucher] = {}
        self.load()

    def load(self) -> None:
        """Rebuild the in-memory view from the DB (at start)."""
        owed: dict[Lane, list[int]] = {}
        vouchers: dict[Lane, SignedVoucher] = {}
        with self.sessions() as s:
            for key, rec in s.execute(select(m.Receipt.lane, m.Receipt.receipt)):
                o = owed.setdefault(_lane_from_key(key), [0, 0])
                o[0] += int(rec["computeCost"])
                o[1] += int(rec["adapterCost"])
            for row in s.scalars(select(m.Voucher)):
                vouchers[_lane_from_key(row.lane)] = _voucher_from_row(row)
        self._owed, self._vouchers = owed, vouchers

    # -- LaneBook (node.payments) --
    def get(self, lane: Lane) -> LaneState:
        o = self._owed.get(lane, (0, 0))
        return LaneState(o[0], o[1], self._vouchers.get(lane))

    def lanes_of(self, payer: str, node: str) -> list[tuple[Lane, LaneState]]:
        lanes = set(self._owed) | set(self._vouchers)
        return [(ln, self.get(ln)) for ln in lanes if ln.payer == payer and ln.node == node]

    def store_voucher(self, sv: SignedVoucher) -> None:
        """Keep `sv` as the lane's newest voucher if it dominates the stored one (never go down)."""
        lane = Lane(sv.voucher.payer, sv.voucher.node, sv.voucher.adapter_id)
        old = self._vouchers.get(lane)
        if not _dominates(sv.voucher, old.voucher if old else None):
            return
        with self.sessions.begin() as s:
            self._store(s, sv)
        self._vouchers[lane] = sv

    @staticmethod
    def _store(s: Session, sv: SignedVoucher) -> None:
        v = sv.voucher
        repo.store_voucher(s, lane=repo.lane_key(v.payer, v.node, v.adapter_id), payer=v.payer, node=v.node,
                           adapter_id=v.adapter_id, compute_value=v.compute_value, adapter_value=v.adapter_value,
                           signature="0x" + sv.signature.hex())

    # -- receipts --
    def append_receipt(
        self,
        lane: Lane,
        make: Callable[[int], tuple[SignedReceipt, bytes]],
        operator_voucher: Callable[[int, int], SignedVoucher] | None = None,
        extra: dict | None = None,
    ) -> SignedReceipt:
        """Allocate the next seq, let `make(seq)` build and sign the receipt (returns it and its
        EIP-712 digest), and store it with the lane's new total in one transaction. `extra`: JSON
        fields stored beside the signed ones (the attribution weights and spans the hash commits to)."""
        with repo.RECEIPT_SEQ_LOCK, self.sessions.begin() as s:
            seq = repo.next_receipt_seq(s)
            signed, digest = make(seq)
            r = signed.receipt
            repo.store_receipt(s, seq=seq, request_id="0x" + r.request_id.hex(),
                               lane=repo.lane_key(lane.payer, lane.node, lane.adapter_id),
                               receipt={**signed.to_json(), **(extra or {})}, digest="0x" + digest.hex())
            o = self._owed.get(lane, [0, 0])
            new_owed = [o[0] + r.compute_cost, o[1] + r.adapter_cost]
            sv = operator_voucher(*new_owed) if operator_voucher else None
            if sv is not None:
                self._store(s, sv)
        self._owed[lane] = new_owed
        if sv is not None:
            self._vouchers[lane] = sv
        return signed

    def receipt_with_proof(self, request_id: str) -> repo.ReceiptProof | None:
        with self.sessions() as s:
            return repo.receipt_with_proof(s, request_id.lower())

    def pending_stats(self) -> tuple[int, float]:
        """(receipts not yet in a committed batch, age in seconds of the oldest of them)."""
        with self.sessions() as s:
            count = repo.pending_receipt_count(s)
            oldest = repo.oldest_unsettled_receipt_at(s)
        return count, (time.time() - oldest) if oldest else 0.0
