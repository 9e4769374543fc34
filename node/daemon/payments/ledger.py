"""The node's lane ledger on its DB: what each lane owes, the best voucher per lane, and the
signed receipts with their never-reused sequence numbers (queries in node.db.repository).

What a lane owes is the sum of its receipts' costs, so it is rebuilt from the `receipts` table at
start (crash-safe by construction) and kept in memory afterwards. A receipt, its sequence number
and (operator-funded mode) the operator's new voucher are written in one transaction; the API
writes the receipts of requests finishing together in one transaction per small group
(`append_receipts`, driven by node.db.group_commit), the in-memory totals move only after it commits.
The payment gate writes the vouchers of requests admitted together the same way (`store_vouchers`,
one transaction per group, in Core statements: one SELECT and one executemany per INSERT/UPDATE).
Measured (`benchmarks/profile_api_path.py` and a direct loop, SQLite in WAL mode, 2 shared cores):
the ORM's per-row load + flush cost ~250-350 µs a voucher even inside a group, far more than the
commit, so the group write goes around it: ~20 µs a voucher in groups of 32 for the repository
write (~40-55 µs through `store_vouchers`), and one voucher alone (`store_voucher`, the
profile's `voucher_store_commit`) ~320-335 µs where the ORM path took ~400-415 µs.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

from eth_utils import to_checksum_address
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from chain.eip712 import SignedReceipt, SignedVoucher, Voucher
from node.db import models as m
from node.db import repository as repo
from node.daemon.payments.gate import Lane, LaneState

J = TypeVar("J")
R = TypeVar("R")


def _lane_from_key(key: str) -> Lane:
    payer, node, adapter = key.split(":")
    return Lane(to_checksum_address(payer), to_checksum_address(node), int(adapter))


def _voucher_from_row(row: m.VoucherRow) -> SignedVoucher:
    v = Voucher(
        to_checksum_address(row.payer),
        to_checksum_address(row.node),
        int(row.adapter_id),
        int(row.compute_value),
        int(row.adapter_value),
    )
    return SignedVoucher(v, bytes.fromhex(row.signature.removeprefix("0x")))


def _each_alone_on_failure(write: Callable[[Sequence[J]], Sequence[R]], jobs: Sequence[J]) -> list[R | Exception]:
    """`write(jobs)` in one transaction; if it fails, each job in a transaction of its own, so one bad
    job fails alone. One result or one exception per job, in order."""
    try:
        return list(write(jobs))
    except Exception as e:  # noqa: BLE001 - isolated below
        if len(jobs) == 1:
            return [e]
    out: list[R | Exception] = []
    for job in jobs:
        try:
            out += write([job])
        except Exception as e:  # noqa: BLE001 - reported to that job's caller
            out.append(e)
    return out


def _dominates(new: Voucher, old: Voucher | None) -> bool:
    return old is None or (
        new.compute_value >= old.compute_value
        and new.adapter_value >= old.adapter_value
        and (new.compute_value, new.adapter_value) != (old.compute_value, old.adapter_value)
    )


@dataclass(frozen=True)
class ReceiptJob:
    """One receipt to write: `make(seq)` builds and signs it (returns it and its EIP-712 digest)."""

    lane: Lane
    make: Callable[[int], tuple[SignedReceipt, bytes]]
    operator_voucher: Callable[[int, int], SignedVoucher] | None = None
    extra: dict | None = None


class Ledger:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self._owed: dict[Lane, list[int]] = {}
        self._vouchers: dict[Lane, SignedVoucher] = {}
        # (payer, node) -> its lanes: the gate asks for a payer's lanes on every request, and a scan
        # of every lane the node ever served grows with its history
        self._lanes: dict[tuple[str, str], frozenset[Lane]] = {}
        self._lanes_lock = threading.Lock()  # the receipt writer's thread and the event loop both add lanes
        self.load()

    def load(self) -> None:
        """Rebuild the in-memory view from the DB (at start)."""
        owed: dict[Lane, list[int]] = {}
        vouchers: dict[Lane, SignedVoucher] = {}
        with self.sessions() as s:
            for key, rec in s.execute(select(m.ReceiptRow.lane, m.ReceiptRow.receipt)):
                o = owed.setdefault(_lane_from_key(key), [0, 0])
                o[0] += int(rec["computeCost"])
                o[1] += int(rec["adapterCost"])
            for row in s.scalars(select(m.VoucherRow)):
                vouchers[_lane_from_key(row.lane)] = _voucher_from_row(row)
        self._owed, self._vouchers, self._lanes = owed, vouchers, {}
        self._index(set(owed) | set(vouchers))

    def _index(self, lanes) -> None:
        """Add lanes to the per-payer index (frozensets swapped whole: a reader on another thread
        sees the old or the new set, never one that changes while it iterates)."""
        with self._lanes_lock:
            for ln in lanes:
                key = (ln.payer, ln.node)
                have = self._lanes.get(key, frozenset())
                if ln not in have:
                    self._lanes[key] = have | {ln}

    # -- LaneBook (node.daemon.payments.gate) --
    def get(self, lane: Lane) -> LaneState:
        o = self._owed.get(lane, (0, 0))
        return LaneState(o[0], o[1], self._vouchers.get(lane))

    def lanes_of(self, payer: str, node: str) -> list[tuple[Lane, LaneState]]:
        return [(ln, self.get(ln)) for ln in self._lanes.get((payer, node), ())]

    def store_voucher(self, sv: SignedVoucher) -> None:
        """Keep `sv` as the lane's newest voucher if it dominates the stored one (never go down)."""
        [res] = self.store_vouchers([sv])
        if res is not None:
            raise res

    def store_vouchers(self, vouchers: Sequence[SignedVoucher]) -> list[None | Exception]:
        """`store_voucher` for a group, in one transaction (the gate's group commit). Blocking: run it
        in a worker thread. Taken in order: each voucher is kept only if it dominates the lane's
        voucher as the vouchers before it in the group left it, so two of one lane end with the
        dominating one. If the transaction fails, each voucher is retried in its own (a bad one
        fails alone, as in `append_receipts`); returns None or the exception per voucher."""
        return _each_alone_on_failure(self._store_group, vouchers)

    def _store_group(self, vouchers: Sequence[SignedVoucher]) -> list[None]:
        newest: dict[Lane, SignedVoucher] = {}  # the lanes' vouchers as this transaction moves them
        for sv in vouchers:
            lane = Lane(sv.voucher.payer, sv.voucher.node, sv.voucher.adapter_id)
            old = newest.get(lane) or self._vouchers.get(lane)
            if _dominates(sv.voucher, old.voucher if old else None):
                newest[lane] = sv
        if not newest:  # nothing moves: no transaction
            return [None] * len(vouchers)
        with self.sessions.begin() as s:  # the lane's last voucher only: it dominates those before it
            repo.store_vouchers(s, [self._row(sv) for sv in newest.values()])
        # committed: only now does the gate see the new vouchers
        self._vouchers.update(newest)
        self._index(newest)
        return [None] * len(vouchers)

    @staticmethod
    def _row(sv: SignedVoucher) -> dict:
        """`repo.store_voucher`'s keyword arguments for `sv`."""
        v = sv.voucher
        return {
            "lane": repo.lane_key(v.payer, v.node, v.adapter_id),
            "payer": v.payer,
            "node": v.node,
            "adapter_id": v.adapter_id,
            "compute_value": v.compute_value,
            "adapter_value": v.adapter_value,
            "signature": "0x" + sv.signature.hex(),
        }

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
        return self._write([ReceiptJob(lane, make, operator_voucher, extra)])[0]

    def append_receipts(self, jobs: Sequence[ReceiptJob]) -> list[SignedReceipt | Exception]:
        """Write `jobs` in one transaction (consecutive seqs). Blocking: run it in a worker thread.
        If that transaction fails, each job is retried in its own, so one bad job (a signing error,
        a duplicate request id) fails alone; returns one receipt or one exception per job."""
        return _each_alone_on_failure(self._write, jobs)

    def _write(self, jobs: Sequence[ReceiptJob]) -> list[SignedReceipt]:
        owed: dict[Lane, list[int]] = {}  # the lanes' totals as this transaction moves them
        vouchers: dict[Lane, SignedVoucher] = {}
        signed_all: list[SignedReceipt] = []
        rows: list[dict] = []
        with repo.RECEIPT_SEQ_LOCK, self.sessions.begin() as s:
            first = repo.next_receipt_seq(s)
            for k, job in enumerate(jobs):
                lane = job.lane
                signed, digest = job.make(first + k)
                r = signed.receipt
                rows.append(
                    {
                        "seq": first + k,
                        "request_id": "0x" + r.request_id.hex(),
                        "lane": repo.lane_key(lane.payer, lane.node, lane.adapter_id),
                        "receipt": {**signed.to_json(), **(job.extra or {})},
                        "digest": "0x" + digest.hex(),
                    }
                )
                o = owed.get(lane) or self._owed.get(lane, [0, 0])
                owed[lane] = [o[0] + r.compute_cost, o[1] + r.adapter_cost]
                sv = job.operator_voucher(*owed[lane]) if job.operator_voucher else None
                if sv is not None:
                    vouchers[lane] = sv  # a lane's later voucher of the group covers its earlier ones
                signed_all.append(signed)
            repo.store_receipts(s, rows)  # one executemany: a per-row ORM flush cost more than the signing
            if vouchers:
                repo.store_vouchers(s, [self._row(sv) for sv in vouchers.values()])
        # committed: only now do the totals the payment gate checks move (whole lists are swapped
        # in, so a reader on the event loop sees either the old or the new total)
        self._owed.update(owed)
        self._vouchers.update(vouchers)
        self._index(owed)
        return signed_all

    def receipt_with_proof(self, request_id: str) -> repo.ReceiptProof | None:
        with self.sessions() as s:
            return repo.receipt_with_proof(s, request_id.lower())

    def pending_stats(self) -> tuple[int, float]:
        """(receipts not yet in a committed batch, age in seconds of the oldest of them)."""
        with self.sessions() as s:
            count = repo.pending_receipt_count(s)
            oldest = repo.oldest_unsettled_receipt_at(s)
        return count, (time.time() - oldest) if oldest else 0.0
