"""Settlement: receipts → Merkle batches → ReceiptLog.commitBatch; newest vouchers → UsageEscrow.redeem.

Every chain write goes through the transaction outbox (`chain.outbox.Outbox`) backed by the node DB
(`node.db.outbox_store.SqlOutboxStore`), and every step is written before the next starts, so the
daemon can be killed anywhere and resume:

1. batch: the oldest unbatched receipts (a full batch, or a partial one whose oldest receipt is older
   than the interval) get a batch seq, their leaf index and the Merkle root in ONE DB transaction;
   the receipts file is pinned to IPFS first (content-addressed, so redoing it is harmless).
2. enqueue: an outbox intent keyed by (node, seq, attempt) — re-enqueueing after a crash finds it.
3. the outbox signs (bytes stored before sending), broadcasts, rebroadcasts after a restart, settles.
4. settle: a mined intent marks the batch committed. At start, `reconcile()` compares every local
   batch with `ReceiptLog.batchRoot` (chain is the truth) and refreshes what each lane collected.
5. attribution: once the vouchers paying for a committed batch's receipts are redeemed (or after a
   wait, for a payer who never pays its last request), the batch is settled in AttributionPool
   (node.daemon.settlement.attribution; AttributionPool.settledSeq is the truth).

ReceiptLog accepts seq = lastSeq + 1 only, and UsageEscrow pays only the increase of a cumulative
voucher, so a duplicate transaction can never commit a receipt twice or pay a voucher twice; the
outbox keeps them from even being sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from eth_utils import to_checksum_address
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from chain.attribution_entries import pack
from node.db import repository as repo
from node.db.models import BatchStatus, ReceiptBatch, ReceiptRow, VoucherRow
from node.errors import NodeError

log = logging.getLogger(__name__)


class SettlementError(NodeError):
    """Local settlement state contradicts the chain; needs an operator (settlement stops)."""


_Row = TypeVar("_Row")


def _row(s: Session, model: type[_Row], key: Any) -> _Row:
    """The row `key` of `model`, which settlement wrote earlier and never deletes."""
    row = s.get(model, key)
    if row is None:
        raise SettlementError(f"{model.__name__} {key!r} is missing from the DB")
    return row


StepHook = Callable[[str], None]
PARKED = "parked:"  # redeem_error prefix of a lane the escrow could not pay in full


@dataclass
class SettlementReport:
    batches_created: int = 0
    batches_committed: int = 0
    redeems_sent: int = 0
    lanes_settled: int = 0
    attribution_sent: int = 0


def _hex(b: bytes | str) -> str:
    return b if isinstance(b, str) else "0x" + bytes(b).hex()


class Settlement:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        w3,
        account,
        contracts,
        ipfs,
        *,
        receipts_dir: str | Path,
        batch_size: int = 256,
        interval_s: float = 30.0,
        redeem_batch_size: int = 50,
        redeem_interval_s: float = 60.0,
        outbox=None,
        on_step: StepHook | None = None,
        clock: Callable[[], float] = time.time,
        poll_s: float = 1.0,
        confirmations: int = 0,
    ):
        """`contracts`: chain.contracts.Contracts; `ipfs`: a node.ipfs backend (`await add_path(path)`)."""
        from chain.reverts import decode_revert
        from chain.outbox import Outbox
        from node.db.outbox_store import SqlOutboxStore

        self.sessions = session_factory
        self.w3 = w3
        self.account = account
        self.node = to_checksum_address(account.address)
        self.contracts = contracts
        self.ipfs = ipfs
        self.receipts_dir = Path(receipts_dir)
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.redeem_batch_size = redeem_batch_size
        self.redeem_interval_s = redeem_interval_s
        self.on_step = on_step
        self.clock = clock
        self.poll_s = poll_s
        self.chain_id = int(w3.eth.chain_id)
        self.outbox = outbox or Outbox(
            w3,
            account,
            SqlOutboxStore(session_factory, on_step=(lambda name, _id: self._step(name))),
            self.chain_id,
            error_decoder=lambda data: decode_revert(data).message,
            confirmations=confirmations,  # a tx counts as mined only this deep: reorgs can't undo a settled batch
        )
        self._reconciled = False
        self._chain_last_seq = 0
        self._last_redeem = 0.0
        self.last_error: str | None = None
        from node.daemon.settlement.attribution import AttributionSettler

        self.attribution = AttributionSettler(self)

    def _step(self, name: str) -> None:
        if self.on_step is not None:
            self.on_step(name)

    # -- the loop ---------------------------------------------------------------------------------
    async def run_once(self, force: bool = False) -> SettlementReport:
        """One pass. `force`: batch and redeem now, ignoring the size/time thresholds."""
        report = SettlementReport()
        if not self._reconciled:
            await asyncio.to_thread(self.reconcile)
        report.batches_created = await self.make_batches(force)
        await asyncio.to_thread(self._chain_step, force, report)
        return report

    async def run(self, stop_event: asyncio.Event) -> None:
        """Settle until `stop_event` is set; RPC/IPFS failures back off and retry (serving is unaffected)."""
        backoff = self.poll_s
        while not stop_event.is_set():
            try:
                await self.run_once()  # sets last_error from the outbox's transient errors
                backoff = self.poll_s
            except SettlementError:
                raise
            except Exception as e:  # noqa: BLE001 - keep settling once the RPC/IPFS is back
                self.last_error = str(e)
                log.warning("settlement: %s (retry in %.1fs)", e, backoff)
                backoff = min(60.0, backoff * 2)
            try:
                await asyncio.wait_for(stop_event.wait(), timeout=backoff)
            except asyncio.TimeoutError:
                pass

    async def flush(self, timeout: float = 60.0) -> None:
        """Batch and redeem everything now and wait until it is settled (tests, shutdown, CLI)."""
        deadline = time.monotonic() + timeout
        while True:
            await self.run_once(force=True)
            with self.sessions() as s:
                busy = (
                    repo.unbatched_receipts(s, 1)
                    or s.scalar(select(ReceiptBatch.seq).where(ReceiptBatch.status != BatchStatus.COMMITTED.value))
                    or s.scalar(select(VoucherRow.lane).where(VoucherRow.redeem_outbox_id.is_not(None)))
                )
            busy = busy or await asyncio.to_thread(self.attribution.pending, self._chain_last_seq)
            if not busy:
                return
            if time.monotonic() > deadline:
                raise TimeoutError("settlement did not finish in time")
            await asyncio.sleep(0.05)

    def _chain_step(self, force: bool, report: SettlementReport) -> None:
        self.enqueue_commits()
        for _ in range(8):  # sign → send → settle; automining chains finish in two passes
            if self.outbox.process().idle:
                break
        report.batches_committed = self.settle_commits()
        report.lanes_settled = self.settle_redeems()
        if force or self.clock() - self._last_redeem >= self.redeem_interval_s:
            report.redeems_sent = self.enqueue_redeems()
            self._last_redeem = self.clock()
            if report.redeems_sent:
                for _ in range(8):
                    if self.outbox.process().idle:
                        break
                report.lanes_settled += self.settle_redeems()
        report.attribution_sent = self.attribution.enqueue(self._chain_last_seq)
        if report.attribution_sent:
            for _ in range(8):
                if self.outbox.process().idle:
                    break
        # The outbox keeps transient RPC errors on its open intents instead of raising: surface them.
        errors = [i.error for i in self.outbox.store.open_intents(self.node) if i.error]
        self.last_error = errors[0] if errors else None

    # -- reconcile ----------------------------------------------------------------------------------
    def reconcile(self) -> None:
        """Align the DB with the chain at start: committed batches, what each lane has collected."""
        rl = self.contracts.receipts
        self._chain_last_seq = int(rl.last_seq(self.node))
        with self.sessions.begin() as s:
            # Check what may differ from the chain: uncommitted batches, batches above lastSeq (a reorg
            # dropped them) and the newest committed one (a DB of another history). Older committed
            # batches are not re-read: that would cost one RPC call per batch ever made at each start.
            newest_committed = s.scalar(
                select(ReceiptBatch.seq)
                .where(ReceiptBatch.status == BatchStatus.COMMITTED.value)
                .order_by(ReceiptBatch.seq.desc())
                .limit(1)
            )
            q = (
                select(ReceiptBatch)
                .where(
                    (ReceiptBatch.status != BatchStatus.COMMITTED.value)
                    | (ReceiptBatch.seq > self._chain_last_seq)
                    | (ReceiptBatch.seq == (newest_committed or 0))
                )
                .order_by(ReceiptBatch.seq)
            )
            for b in s.scalars(q):
                on_chain = _hex(rl.batch_root(self.node, b.seq))
                if on_chain.lower() == b.root.lower():
                    if b.status != BatchStatus.COMMITTED.value:
                        b.status = BatchStatus.COMMITTED.value
                        log.info("batch %d found committed on chain", b.seq)
                elif int(on_chain, 16) != 0:
                    raise SettlementError(
                        f"receipt batch {b.seq} on chain has root {on_chain}, the DB has {b.root}: "
                        "this DB does not belong to this operator's chain history"
                    )
                elif b.status == BatchStatus.COMMITTED.value:
                    # the commit was reorged away: send it again
                    b.status, b.outbox_id = BatchStatus.PENDING.value, None
        self.settle_redeems()
        escrow = self.contracts.escrow
        with self.sessions.begin() as s:
            for v in s.scalars(select(VoucherRow).where(VoucherRow.redeem_outbox_id.is_(None))):
                c = escrow.collected(to_checksum_address(v.payer), to_checksum_address(v.node), v.adapter_id)
                v.redeemed_compute, v.redeemed_adapter = int(c.compute), int(c.adapter)
        self._reconciled = True

    # -- batches ------------------------------------------------------------------------------------
    def _next_batch_seq(self, s: Session) -> int:
        local = s.scalar(select(ReceiptBatch.seq).order_by(ReceiptBatch.seq.desc()).limit(1)) or 0
        return max(local, self._chain_last_seq) + 1

    async def make_batches(self, force: bool = False) -> int:
        from chain.merkle import StandardMerkleTree

        made = 0
        while True:
            with self.sessions() as s:
                rows = repo.unbatched_receipts(s, self.batch_size)
                if not rows:
                    return made
                if len(rows) < self.batch_size and not force and self.clock() - rows[0].created_at < self.interval_s:
                    return made
                seq = self._next_batch_seq(s)
                receipts = [(r.seq, r.digest, r.receipt) for r in rows]
            tree = StandardMerkleTree.of([[d] for _, d, _ in receipts], ["bytes32"])
            root = _hex(tree.root)
            doc = {
                "version": _file_version(r for _, _, r in receipts),
                "chainId": self.chain_id,
                "receiptLog": self.contracts.receipts.address,
                "node": self.node,
                "batchSeq": seq,
                "root": root,
                "leafEncoding": ["bytes32"],
                "receipts": [{"leafIndex": i, "digest": d, **r} for i, (_, d, r) in enumerate(receipts)],
            }
            self.receipts_dir.mkdir(parents=True, exist_ok=True)
            path = self.receipts_dir / f"batch-{seq:08d}.json"
            path.write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")))
            cid = await self.ipfs.add_path(path)
            with self.sessions.begin() as s:
                # Receipts, batch and leaf indices in one transaction: a receipt is in at most one batch.
                s.add(
                    ReceiptBatch(
                        seq=seq,
                        root=root,
                        count=len(receipts),
                        cid=cid,
                        status=BatchStatus.PENDING.value,
                        created_at=self.clock(),
                    )
                )
                s.flush()
                for i, (rseq, _, _) in enumerate(receipts):
                    r = _row(s, ReceiptRow, rseq)
                    if r.batch_seq is not None:
                        raise SettlementError(f"receipt {rseq} was batched concurrently")
                    r.batch_seq, r.leaf_index = seq, i
            made += 1
            log.info("batch %d: %d receipts, root %s, file %s", seq, len(receipts), root, cid)
            self._step("batch_stored")

    def _commit_key(self, seq: int, attempt: int) -> str:
        return f"commit:{self.chain_id}:{self.node}:{seq}:{attempt}"

    def enqueue_commits(self) -> None:
        """An outbox intent for every pending batch that has none (or whose last one failed)."""
        rl = self.contracts.receipts
        with self.sessions() as s:
            todo = [
                (b.seq, b.root, b.count, b.cid)
                for b in s.scalars(
                    select(ReceiptBatch)
                    .where(ReceiptBatch.status == BatchStatus.PENDING.value, ReceiptBatch.outbox_id.is_(None))
                    .order_by(ReceiptBatch.seq)
                )
            ]
        for seq, root, count, cid in todo:
            attempt = 0
            while True:  # deterministic keys: after a crash the same intent is found again
                prior = self.outbox.store.get_by_key(self._commit_key(seq, attempt))
                if prior is None or prior.status.is_open:
                    break
                # finished: failed, or mined and then reorged away (reconcile reset the batch)
                if prior.status.value == "mined" and _hex(rl.batch_root(self.node, seq)).lower() == root.lower():
                    break  # it is on chain after all: settle_commits marks it
                attempt += 1
            params = rl.build_commit_batch(self.node, seq, bytes.fromhex(root[2:]), count, cid)
            intent_id = self.outbox.enqueue(self._commit_key(seq, attempt), params)
            with self.sessions.begin() as s:
                _row(s, ReceiptBatch, seq).outbox_id = intent_id
            self._step("commit_enqueued")

    def settle_commits(self) -> int:
        done = 0
        rl = self.contracts.receipts
        with self.sessions() as s:
            pending = [
                (b.seq, b.root, b.outbox_id)
                for b in s.scalars(
                    select(ReceiptBatch)
                    .where(ReceiptBatch.status == BatchStatus.PENDING.value, ReceiptBatch.outbox_id.is_not(None))
                    .order_by(ReceiptBatch.seq)
                )
            ]
        for seq, root, intent_id in pending:
            if intent_id is None:  # the query selects batches with an intent
                raise SettlementError(f"batch {seq} has no outbox intent to settle")
            intent = self.outbox.get(intent_id)
            if intent.status.is_open:
                continue
            committed = intent.status.value == "mined" or _hex(rl.batch_root(self.node, seq)).lower() == root.lower()
            with self.sessions.begin() as s:
                b = _row(s, ReceiptBatch, seq)
                if committed:
                    b.status, b.committed_block = BatchStatus.COMMITTED.value, intent.block_number
                    self._chain_last_seq = max(self._chain_last_seq, seq)
                else:
                    log.warning("commit of batch %d failed (%s); retrying", seq, intent.error)
                    b.outbox_id = None
            if committed:
                done += 1
                self._step("batch_committed")
        return done

    # -- vouchers -----------------------------------------------------------------------------------
    def enqueue_redeems(self) -> int:
        """Redeem the newest voucher of every lane that is owed more than it collected."""
        from chain.eip712 import Voucher as V

        with self.sessions() as s:
            cands = [v for v in repo.unredeemed_vouchers(s, 10_000) if v.node.lower() == self.node.lower()]
        cands = self._unparked(cands)
        if not cands:
            return 0
        # lanes whose last redeem failed go alone, so one bad voucher cannot block the others
        failed = [v for v in cands if v.redeem_error and not v.redeem_error.startswith(PARKED)]
        groups = [[v] for v in failed]
        rest = [v for v in cands if v not in failed]
        groups += [rest[i : i + self.redeem_batch_size] for i in range(0, len(rest), self.redeem_batch_size)]
        sent = 0
        fused_once = False
        sending: dict[str, int] = {}  # lane -> adapter value, over this pass's groups so far (sent in order)
        for n, group in enumerate(groups):
            vouchers = [
                V(
                    to_checksum_address(v.payer),
                    to_checksum_address(v.node),
                    int(v.adapter_id),
                    int(v.compute_value),
                    int(v.adapter_value),
                )
                for v in group
            ]
            sigs = [bytes.fromhex(v.signature.removeprefix("0x")) for v in group]
            # what each lane collected is part of the key: a voucher the escrow paid only in part
            # (then parked) is redeemed again after a deposit as a new intent
            content = json.dumps(
                [[v.lane, v.compute_value, v.adapter_value, v.redeemed_compute, v.redeemed_adapter] for v in group]
            )
            key = f"redeem:{self.chain_id}:{self.node}:{hashlib.sha256(content.encode()).hexdigest()[:32]}"
            # The group whose redeem completes the payment of the next batch (with the groups before it
            # in this pass, mined before it: same sender, nonce order) settles it in the same
            # transaction. Not a retried lane: its redeem failed before, and a settle would fail with it.
            fused = None
            if not fused_once and n >= len(failed):
                sending.update({v.lane: int(v.adapter_value) for v in group})
                fused = self.attribution.fusable(sending, self._chain_last_seq)
            if fused is not None:
                fused_once = True
                key += f":settle:{fused[0]}"
                seq, entries = fused
                params = self.contracts.escrow.build_redeem_and_settle(self.node, vouchers, sigs, seq, pack(entries))
                log.info("batch %d: attribution settle rides in a redeem (%d entries)", fused[0], len(fused[1]))
            else:
                params = self.contracts.escrow.build_redeem(self.node, vouchers, sigs)
            intent_id = self.outbox.enqueue(key, params)
            with self.sessions.begin() as s:
                for v in group:
                    row = _row(s, VoucherRow, v.lane)
                    row.redeeming_compute, row.redeeming_adapter = v.compute_value, v.adapter_value
                    row.redeem_outbox_id = intent_id
            sent += 1
            self._step("redeem_enqueued")
        return sent

    def _unparked(self, cands: list) -> list:
        """Drop parked lanes (their payer's account had nothing left) until that account holds funds
        again: one view call per parked payer per round instead of a redeem transaction each."""
        funded: dict[str, bool] = {}
        out = []
        for v in cands:
            if v.redeem_error and v.redeem_error.startswith(PARKED):
                payer = to_checksum_address(v.payer)
                if payer not in funded:
                    funded[payer] = self.contracts.escrow.account_of(payer, self.node).balance > 0
                if not funded[payer]:
                    continue
            out.append(v)
        return out

    def settle_redeems(self) -> int:
        """Lanes whose redeem tx finished: record what the escrow says they collected."""
        escrow = self.contracts.escrow
        with self.sessions() as s:
            inflight = [
                (v.lane, v.payer, v.node, v.adapter_id, v.redeem_outbox_id)
                for v in s.scalars(select(VoucherRow).where(VoucherRow.redeem_outbox_id.is_not(None)))
            ]
        done = 0
        for lane, payer, node, adapter_id, intent_id in inflight:
            if intent_id is None:  # the query selects lanes with a redeem intent
                raise SettlementError(f"lane {lane} has no redeem intent to settle")
            intent = self.outbox.store.get(intent_id)
            if intent is not None and intent.status.is_open:
                continue
            c = escrow.collected(to_checksum_address(payer), to_checksum_address(node), adapter_id)
            with self.sessions.begin() as s:
                row = _row(s, VoucherRow, lane)
                row.redeemed_compute, row.redeemed_adapter = int(c.compute), int(c.adapter)
                row.redeeming_compute = row.redeeming_adapter = row.redeem_outbox_id = None
                ok = intent is not None and intent.status.value == "mined"
                row.redeem_error = None if ok else ((intent.error if intent else None) or "redeem failed")[:2000]
                if ok and (row.redeemed_compute < row.compute_value or row.redeemed_adapter < row.adapter_value):
                    # the escrow paid what it had (min(increase, available)): park until a deposit
                    row.redeem_error = f"{PARKED} the payer's escrow for this node is empty"
                    log.warning("lane %s underfunded: parked until the payer deposits", lane)
            done += 1
            self._step("voucher_settled")
        return done

    # -- metrics ------------------------------------------------------------------------------------
    def pending_receipts(self) -> int:
        with self.sessions() as s:
            return repo.pending_receipt_count(s)

    def lag_seconds(self) -> float:
        """Age of the oldest receipt not yet committed on chain (0 when all are)."""
        with self.sessions() as s:
            t = repo.oldest_unsettled_receipt_at(s)
        return 0.0 if t is None else max(0.0, self.clock() - t)


def settlement_from_config(
    cfg, session_factory: sessionmaker[Session], w3, account, contracts, ipfs, **kwargs: Any
) -> Settlement:
    """A `Settlement` with the batch/redeem options of a `node.config.NodeConfig`."""
    return Settlement(
        session_factory,
        w3,
        account,
        contracts,
        ipfs,
        receipts_dir=cfg.receipts_dir,
        batch_size=cfg.settlement_batch_size,
        interval_s=cfg.settlement_interval_s,
        redeem_batch_size=cfg.redeem_batch_size,
        redeem_interval_s=cfg.redeem_interval_s,
        confirmations=cfg.confirmations,
        **kwargs,
    )


def _file_version(receipts) -> int:
    """2 when every span states its contributionStart (the audit then requires it), else 1: receipts
    signed before an upgrade may still be pending, and version 1 keeps them auditable (by text)."""
    placed = all("contributionStart" in sp for r in receipts for sp in (r.get("spans") or []) if isinstance(sp, dict))
    return 2 if placed else 1
