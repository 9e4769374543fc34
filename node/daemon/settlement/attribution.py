"""The node's attribution step: after committing receipt batch `seq` and redeeming the vouchers
that paid for it, send AttributionPool.settle(seq, entries) with the weights `rule` computes from
the batch's receipts. Settling drains the whole pool, so the node waits until every lane of the
batch has collected at least its cumulative adapter cost up to the batch's last receipt on it: the
batch's money is then in the pool. A payer who never pays its last request would hold the batch
forever, so after `max_wait_s` from the batch's creation it settles anyway (what arrives later is
drained by the next batch, or flushed to the accepted-weight split). Batches are settled in order,
each once (the contract enforces both); the chain's `settledSeq` is the truth after a restart, and
every transaction goes through the settlement's outbox under a deterministic key, so a crash never
sends a batch twice. When a redeem would complete the payment of the next batch (every lane of it
collects its cost with that redeem's vouchers and those of the redeems sent before it in the same
pass), the settle rides in it (UsageEscrow.redeemAndSettle, `fusable`):
one transaction, and the pools it fills and drains are never written; its outbox key ends in
`:settle:SEQ`, and no separate settle of SEQ is sent while it is open. A node without a bond at
stake (NodeRegistry.canRedeem false: never bonded, slashed or condemned) may not settle: it sends
nothing, says so once, and anyone may flush its pools to the accepted-weight split."""

from __future__ import annotations

import logging
from functools import lru_cache

from sqlalchemy import select

from chain.errors import ContractRevert
from node.attribution_rewards.rule import Entry, batch_weights, to_entries
from node.db.models import ReceiptBatch, ReceiptRow, VoucherRow

log = logging.getLogger(__name__)

MIN_WAIT_S = 120.0  # a batch settled before its money arrived leaves that money for a later batch or a flush


class AttributionSettler:
    def __init__(self, settlement, max_wait_s: float | None = None):
        """`settlement`: the node.daemon.settlement.settler.Settlement whose outbox, DB and contracts this uses.
        `max_wait_s` (default: three redeem intervals plus a batch interval, at least MIN_WAIT_S)
        bounds the wait for payment."""
        self.s = settlement
        if max_wait_s is None:  # long enough for a settle-up voucher to be redeemed on a busy machine
            max_wait_s = max(MIN_WAIT_S, 3 * settlement.redeem_interval_s + settlement.interval_s)
        self.max_wait_s = max_wait_s
        self._cumulative: dict[str, tuple[int, int]] = {}  # lane -> (up to batch, adapter cost of its receipts)
        self.pool = settlement.contracts.pool
        self._said_unaccountable = False
        self.split_of = lru_cache(maxsize=4096)(self._split_of)  # splits are fixed per adapter
        self.dataset_of = lru_cache(maxsize=65536)(self._dataset_of)  # so is a contribution's dataset

    def _split_of(self, adapter_id: int) -> dict[int, int]:
        a = self.s.contracts.adapters.get_adapter(adapter_id)
        return dict(zip(a.dataset_ids, a.dataset_bps, strict=True))

    def _dataset_of(self, contribution_id: int) -> int | None:
        try:
            return self.s.contracts.datasets.get_contribution(contribution_id).dataset_id
        except ContractRevert:  # unknown id: it weighs nothing anywhere
            return None

    def receipts_of(self, seq: int) -> list[dict]:
        with self.s.sessions() as db:
            rows = db.scalars(select(ReceiptRow).where(ReceiptRow.batch_seq == seq).order_by(ReceiptRow.leaf_index))
            return [r.receipt for r in rows]

    def entries_for(self, seq: int) -> list[Entry]:
        return to_entries(batch_weights(self.receipts_of(seq), self.split_of, self.dataset_of))

    def _lane_cost_upto(self, db, lane: str, seq: int) -> int:
        """Adapter cost of the lane's receipts in batches <= seq (incremental: batches only grow)."""
        done, total = self._cumulative.get(lane, (0, 0))
        if done > seq:
            done, total = 0, 0
        rows = db.scalars(
            select(ReceiptRow.receipt).where(ReceiptRow.lane == lane, ReceiptRow.batch_seq > done, ReceiptRow.batch_seq <= seq)
        )
        total += sum(int(r["adapterCost"]) for r in rows)
        self._cumulative[lane] = (seq, total)
        return total

    def paid(self, seq: int, sending: dict[str, int] | None = None) -> bool:
        """Whether every adapter lane of batch `seq` has collected what its receipts up to it cost,
        or will have once `sending` ({lane: voucher adapter value}, redeems about to be sent) is redeemed."""
        sending = sending or {}
        with self.s.sessions() as db:
            lanes = set(db.scalars(select(ReceiptRow.lane).where(ReceiptRow.batch_seq == seq)))
            for lane in sorted(lanes):
                if lane.endswith(":0"):  # the base model pays no dataset
                    continue
                v = db.get(VoucherRow, lane)
                if v is None and lane not in sending:
                    return False
                have = max(int(v.redeemed_adapter or 0) if v is not None else 0, sending.get(lane, 0))
                if have < self._lane_cost_upto(db, lane, seq):
                    return False
        return True

    def ready(self, seq: int) -> bool:
        if self.paid(seq):
            return True
        with self.s.sessions() as db:
            b = db.get(ReceiptBatch, seq)
        return b is not None and self.s.clock() - b.created_at >= self.max_wait_s

    def pending(self, committed_upto: int) -> bool:
        """Whether a committed batch is ready to settle and not settled yet (and the node may settle it)."""
        settled = self.settled_seq()
        return settled < committed_upto and self.ready(settled + 1) and self.accountable()

    def accountable(self) -> bool:
        """Whether the node has a bond at stake (AttributionPool refuses its settle otherwise)."""
        ok = bool(self.s.contracts.nodes.can_redeem(self.s.node))
        if not ok and not self._said_unaccountable:
            log.warning("attribution: the node has no bond at stake (NodeRegistry.canRedeem): it settles no batch")
        self._said_unaccountable = not ok
        return ok

    def fusable(self, group: dict[str, int], committed_upto: int) -> tuple[int, list[Entry]] | None:
        """(seq, entries) of the next batch to settle when redeeming `group` ({lane: voucher adapter
        value}: the redeems about to be sent, in order) pays it: committed, not settled nor being
        settled, the node accountable, and every adapter lane of the batch collecting at least its
        cost up to the batch with `group` redeemed."""
        seq = self.settled_seq() + 1
        if seq > committed_upto or self._in_flight(seq) or not self.paid(seq, group) or not self.accountable():
            return None
        return seq, self.entries_for(seq)

    def _in_flight(self, seq: int) -> bool:
        """Whether a settle of batch `seq` is open in the outbox, alone or inside a redeem."""
        alone = self._key_prefix(seq)
        return self._riding(seq) or any(i.key.startswith(alone) for i in self.s.outbox.store.open_intents(self.s.node))

    def _riding(self, seq: int) -> bool:
        """Whether an open redeem carries the settle of batch `seq` (its key ends in `:settle:SEQ`)."""
        inside = f":settle:{seq}"
        return any(i.key.endswith(inside) for i in self.s.outbox.store.open_intents(self.s.node))

    def _key_prefix(self, seq: int) -> str:
        return f"attribution:{self.s.chain_id}:{self.s.node}:{seq}:"

    def _key(self, seq: int, attempt: int) -> str:
        return f"{self._key_prefix(seq)}{attempt}"

    def settled_seq(self) -> int:
        return int(self.pool.settled_seq(self.s.node))

    def enqueue(self, ready_upto: int) -> int:
        """An outbox intent for every batch in (settledSeq, ready_upto] that has no open one, in order,
        stopping at the first batch that is not `ready` (paid, or waited for long enough)."""
        outbox = self.s.outbox
        settled = self.settled_seq()
        if settled >= ready_upto or not self.accountable():
            return 0
        sent = 0
        for seq in range(settled + 1, ready_upto + 1):
            if not self.ready(seq):
                break  # in order: later batches wait for this one
            if self._riding(seq):
                break  # a redeem carries this batch's settle: it lands first, or fails and this sends it
            attempt = 0
            while True:  # deterministic keys: after a crash the same intent is found again
                prior = outbox.store.get_by_key(self._key(seq, attempt))
                if prior is None or prior.status.is_open:
                    break
                attempt += 1  # failed, or mined then reorged away (settledSeq says it is not settled)
            if prior is not None and prior.status.is_open:
                continue
            if attempt:
                log.warning(
                    "attribution settle of batch %d: attempt %d (last: %s)",
                    seq,
                    attempt,
                    outbox.store.get_by_key(self._key(seq, attempt - 1)).error,
                )
            entries = self.entries_for(seq)
            outbox.enqueue(self._key(seq, attempt), self.pool.build_settle(self.s.node, seq, entries))
            log.info("batch %d: attribution settle enqueued (%d entries)", seq, len(entries))
            sent += 1
        return sent
