"""The node's attribution step: after committing receipt batch `seq` and redeeming the vouchers
that paid for it, send AttributionPool.settle(seq, entries) with the weights `rule` computes from
the batch's receipts. Batches are settled in order, each once (the contract enforces both); the
chain's `settledSeq` is the truth after a restart, and every transaction goes through the
settlement's outbox under a deterministic key, so a crash never sends a batch twice."""

from __future__ import annotations

import logging
from functools import lru_cache

from sqlalchemy import select

from chain.errors import ContractRevert
from node.attribution_rewards.rule import Entry, batch_weights, to_entries
from node.db.models import Receipt

log = logging.getLogger(__name__)


class AttributionSettler:
    def __init__(self, settlement):
        """`settlement`: the node.settlement.Settlement whose outbox, DB and contracts this uses."""
        self.s = settlement
        self.pool = settlement.contracts.pool
        self.split_of = lru_cache(maxsize=4096)(self._split_of)  # splits are fixed per adapter
        self.dataset_of = lru_cache(maxsize=65536)(self._dataset_of)  # so is a contribution's dataset

    def _split_of(self, adapter_id: int) -> dict[int, int]:
        a = self.s.contracts.adapters.get_adapter(adapter_id)
        return dict(zip(a.dataset_ids, a.dataset_bps))

    def _dataset_of(self, contribution_id: int) -> int | None:
        try:
            return self.s.contracts.datasets.get_contribution(contribution_id).dataset_id
        except ContractRevert:  # unknown id: it weighs nothing anywhere
            return None

    def receipts_of(self, seq: int) -> list[dict]:
        with self.s.sessions() as db:
            rows = db.scalars(select(Receipt).where(Receipt.batch_seq == seq).order_by(Receipt.leaf_index))
            return [r.receipt for r in rows]

    def entries_for(self, seq: int) -> list[Entry]:
        return to_entries(batch_weights(self.receipts_of(seq), self.split_of, self.dataset_of))

    def _key(self, seq: int, attempt: int) -> str:
        return f"attribution:{self.s.chain_id}:{self.s.node}:{seq}:{attempt}"

    def settled_seq(self) -> int:
        return int(self.pool.settled_seq(self.s.node))

    def enqueue(self, ready_upto: int) -> int:
        """An outbox intent for every batch in (settledSeq, ready_upto] that has no open one."""
        outbox = self.s.outbox
        settled = self.settled_seq()
        sent = 0
        for seq in range(settled + 1, ready_upto + 1):
            attempt = 0
            while True:  # deterministic keys: after a crash the same intent is found again
                prior = outbox.store.get_by_key(self._key(seq, attempt))
                if prior is None or prior.status.is_open:
                    break
                attempt += 1  # failed, or mined then reorged away (settledSeq says it is not settled)
            if prior is not None and prior.status.is_open:
                continue
            if attempt:
                log.warning("attribution settle of batch %d: attempt %d (last: %s)", seq, attempt,
                            outbox.store.get_by_key(self._key(seq, attempt - 1)).error)
            entries = self.entries_for(seq)
            outbox.enqueue(self._key(seq, attempt), self.pool.build_settle(self.s.node, seq, entries))
            log.info("batch %d: attribution settle enqueued (%d entries)", seq, len(entries))
            sent += 1
        return sent
