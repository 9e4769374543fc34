"""Build and sign the EIP-712 receipt of one served request (docs/interfaces.md "Receipt").

The sequence number comes from the DB (node.daemon.payments.ledger), the attribution from the adapter's
`inference.attribution.Attributor` when the node has one for that adapter, else it is empty.
The API issues with `issue_async`: requests finishing together have their receipts signed and
written in one transaction per group, in a worker thread (node.db.group_commit); each returns
only after its receipt committed. On the event loop stay the output hash (keccak of the text) and
building the job. Span matching runs in a worker thread only when the adapter has an attribution
index: measured with `benchmarks/profile_api_path.py` (`receipt_256_*`: 256 receipts issued
together, 2 shared cores), a hop for an adapter without one held the loop ~41-50 µs per receipt
instead of ~27-31 µs, for no gain in wall time (~215-265 µs per receipt either way). Signing stays in
the writer's thread: inline it would hold the loop another ~120 µs per receipt (`receipt_sign_only`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from chain.eip712 import (
    NO_ATTRIBUTION_HASH,
    Receipt,
    SignedReceipt,
    attribution_hash,
    output_hash,
    receipt_digest,
    sign_digest,
)
from node.db.group_commit import GroupCommitter
from node.daemon.payments.ledger import Ledger, ReceiptJob
from node.metering import Cost
from node.daemon.payments.gate import Lane, SignedVoucher

if TYPE_CHECKING:
    from inference.attribution import Attributor

log = logging.getLogger(__name__)

AttributorLookup = Callable[[int], "Attributor | None"]  # adapter id -> its attributor, None when none is ready


def _no_attribution() -> dict:
    return {"attribution": {}, "datasetAttribution": {}, "spans": []}


def new_request_id() -> bytes:
    return os.urandom(32)


@dataclass(frozen=True)
class Issued:
    signed: SignedReceipt
    attribution: dict  # JSON-safe: {"attribution": {id: bps}, "datasetAttribution": ..., "spans": [...]}

    def to_json(self) -> dict:
        return {**self.signed.to_json(), **self.attribution}


class ReceiptIssuer:
    def __init__(
        self,
        *,
        operator,
        chain_id: int,
        receipt_log: str,
        ledger: Ledger,
        attributor_for: AttributorLookup | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.operator = operator
        self.chain_id = chain_id
        self.receipt_log = receipt_log
        self.ledger = ledger
        self.attributor_for = attributor_for
        self.clock = clock
        self.committer: GroupCommitter[ReceiptJob, SignedReceipt] = GroupCommitter(ledger.append_receipts)

    def attribution(self, adapter_id: int, token_ids: Sequence[int]) -> tuple[bytes, dict]:
        """(attributionHash, receipt JSON fields) of one answer. Pure CPU and thread-safe (blocking:
        on the event loop use `attribution_async`)."""
        return self._attribute(adapter_id, self._attributor(adapter_id), token_ids)

    async def attribution_async(self, adapter_id: int, token_ids: Sequence[int]) -> tuple[bytes, dict]:
        """`attribution` for the event loop: span matching in a worker thread, and no thread hop when
        there is nothing to match (no index ready for the adapter, the base model, no tokens): there the
        hop cost more loop time than the lookup it moved (module docstring)."""
        attributor = self._attributor(adapter_id)  # a dict lookup (node.daemon.attribution)
        if attributor is None or not token_ids:
            return self._attribute(adapter_id, None, token_ids)
        return await asyncio.to_thread(self._attribute, adapter_id, attributor, token_ids)

    def _attributor(self, adapter_id: int) -> Attributor | None:
        return self.attributor_for(adapter_id) if (self.attributor_for and adapter_id) else None

    def _attribute(self, adapter_id: int, attributor: Attributor | None, token_ids: Sequence[int]) -> tuple[bytes, dict]:
        # an adapter's receipt always says what it drew on: empty (the registered split applies) when
        # nothing matched or no index is ready yet; the base model (id 0) has no datasets
        none = _no_attribution() if (self.attributor_for and adapter_id) else {}
        if attributor is None or not token_ids:
            return NO_ATTRIBUTION_HASH, none
        try:
            att = attributor.attribute(list(token_ids))
        except Exception:  # attribution must never cost the client its answer; the receipt says "none"
            log.exception("attribution failed for adapter %s; receipt carries no attribution", adapter_id)
            return NO_ATTRIBUTION_HASH, none
        ids, weights = att.ids_and_weights()
        return attribution_hash(ids, weights), att.to_json()

    def receipt_maker(
        self,
        *,
        request_id: bytes,
        lane: Lane,
        prompt_tokens: int,
        completion_tokens: int,
        cost: Cost,
        text: str,
        attribution: tuple[bytes, dict],
    ) -> Callable[[int], tuple[SignedReceipt, bytes]]:
        """`make(seq)`: the signed receipt and its EIP-712 digest (the ledger supplies the seq)."""
        att_hash = attribution[0]
        out_hash = output_hash(text)
        ts = int(self.clock())

        def make(seq: int) -> tuple[SignedReceipt, bytes]:
            r = Receipt(
                request_id=request_id,
                payer=lane.payer,
                node=lane.node,
                adapter_id=lane.adapter_id,
                seq=seq,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                compute_cost=cost.compute,
                adapter_cost=cost.adapter,
                output_hash=out_hash,
                attribution_hash=att_hash,
                timestamp=ts,
            )
            digest = receipt_digest(r, self.chain_id, self.receipt_log)
            return SignedReceipt(r, sign_digest(digest, self.operator)), digest

        return make

    def _job(
        self, request_id, lane, prompt_tokens, completion_tokens, cost, text, token_ids, operator_voucher, attribution
    ) -> tuple[ReceiptJob, dict]:
        att = attribution if attribution is not None else self.attribution(lane.adapter_id, token_ids)
        make = self.receipt_maker(
            request_id=request_id,
            lane=lane,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost=cost,
            text=text,
            attribution=att,
        )
        # the attribution is stored with the receipt: /v1/receipts and the committed receipts file show it
        return ReceiptJob(lane, make, operator_voucher, extra=att[1]), att[1]

    def issue(
        self,
        *,
        request_id: bytes,
        lane: Lane,
        prompt_tokens: int,
        completion_tokens: int,
        cost: Cost,
        text: str,
        token_ids: Sequence[int] = (),
        operator_voucher: Callable[[int, int], SignedVoucher] | None = None,
        attribution: tuple[bytes, dict] | None = None,
    ) -> Issued:
        """Sign and store one receipt in its own transaction (blocking)."""
        job, att_json = self._job(
            request_id, lane, prompt_tokens, completion_tokens, cost, text, token_ids, operator_voucher, attribution
        )
        return Issued(self.ledger.append_receipt(job.lane, job.make, job.operator_voucher, job.extra), att_json)

    async def issue_async(
        self,
        *,
        request_id: bytes,
        lane: Lane,
        prompt_tokens: int,
        completion_tokens: int,
        cost: Cost,
        text: str,
        token_ids: Sequence[int] = (),
        operator_voucher: Callable[[int, int], SignedVoucher] | None = None,
        attribution: tuple[bytes, dict] | None = None,
    ) -> Issued:
        """`issue` for the event loop: signed and written with the other receipts of its group, in a
        worker thread; returns once the group's transaction committed. Without `attribution` it is
        computed by `attribution_async`."""
        if attribution is None:
            attribution = await self.attribution_async(lane.adapter_id, token_ids)
        job, att_json = self._job(
            request_id, lane, prompt_tokens, completion_tokens, cost, text, token_ids, operator_voucher, attribution
        )
        return Issued(await self.committer.submit(job), att_json)
