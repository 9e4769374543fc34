"""The dashboard's state: one JSON snapshot of the node, built from its DB (and a few cached chain
reads). Amounts are decimal strings. Receipt aggregates (traffic per adapter, earnings, answers
attributed per contribution) are kept incrementally by receipt seq, so a poll reads only the
receipts signed since the previous one."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

from sqlalchemy import func, select

from node.db import models as m

RECENT_RECEIPTS = 50
RECENT_BATCHES = 20
MAX_ADAPTERS = 500
MAX_DATASETS = 100
MAX_CONTRIBUTIONS = 200
CHAIN_CACHE_S = 10.0


class Snapshotter:
    def __init__(self, sessions, config, chain, ledger, clock=time.time) -> None:
        self.sessions, self.config, self.chain, self.ledger, self.clock = sessions, config, chain, ledger, clock
        self._lock = threading.Lock()
        self._last_seq = 0
        self._traffic: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # adapter: requests, tokens, compute, adapter
        self._attributed: dict[int, int] = defaultdict(int)  # contribution id: answers crediting it
        self._chain_cache: tuple[float, dict] | None = None

    def _fold_new_receipts(self, s) -> None:
        rows = s.execute(
            select(m.ReceiptRow.seq, m.ReceiptRow.receipt).where(m.ReceiptRow.seq > self._last_seq).order_by(m.ReceiptRow.seq)
        ).all()
        for seq, r in rows:
            t = self._traffic[int(r.get("adapterId", 0))]
            t[0] += 1
            t[1] += int(r.get("promptTokens", 0)) + int(r.get("completionTokens", 0))
            t[2] += int(r.get("computeCost", 0))
            t[3] += int(r.get("adapterCost", 0))
            for cid in r.get("attribution") or {}:
                self._attributed[int(cid)] += 1
            self._last_seq = seq

    def build(self, background: dict[str, str]) -> dict:
        with self._lock, self.sessions() as s:
            self._fold_new_receipts(s)
            out: dict[str, Any] = {
                "node": self._node(),
                "adapters": self._adapters(s),
                "receipts": self._receipts(s),
                "batches": self._batches(s),
                "settlement": self._settlement(s, background),
                "datasets": self._datasets(s),
            }
        out["earnings"] = self._earnings(out["settlement"])
        out["generated_at"] = self.clock()
        return out

    def _node(self) -> dict:
        cfg = self.config
        return {
            "address": self.chain.node_address,
            "chain_id": self.chain.chain_id,
            "base_model": cfg.base_model_id,
            "compute_price_per_1k": str(cfg.compute_price_per_1k),
            "payment_mode": cfg.payment_mode,
        }

    def _adapters(self, s) -> list[dict]:
        rows = s.scalars(select(m.Adapter).order_by(m.Adapter.id).limit(MAX_ADAPTERS)).all()
        out = []
        for a in rows:
            req, tokens, compute, adapter = self._traffic.get(a.id, [0, 0, 0, 0])
            out.append(
                {
                    "id": a.id,
                    "model": a.model_name,
                    "state": a.state,
                    "reason": a.failure_reason,
                    "owner": a.owner,
                    "base_model": a.base_model,
                    "price_per_1k": str(a.price_per_1k),
                    "deprecated": a.deprecated,
                    "cid": a.cid,
                    "requests": req,
                    "tokens": tokens,
                    "revenue": str(compute + adapter),
                }
            )
        return out

    def _receipts(self, s) -> list[dict]:
        rows = s.execute(
            select(m.ReceiptRow, m.ReceiptBatch.status)
            .outerjoin(m.ReceiptBatch, m.ReceiptRow.batch_seq == m.ReceiptBatch.seq)
            .order_by(m.ReceiptRow.seq.desc())
            .limit(RECENT_RECEIPTS)
        ).all()
        out = []
        for r, bstatus in rows:
            rj = r.receipt
            status = (
                "pending" if r.batch_seq is None else ("committed" if bstatus == m.BatchStatus.COMMITTED.value else "batched")
            )
            out.append(
                {
                    "seq": r.seq,
                    "request_id": r.request_id,
                    "adapter_id": int(rj.get("adapterId", 0)),
                    "payer": rj.get("payer"),
                    "tokens": int(rj.get("promptTokens", 0)) + int(rj.get("completionTokens", 0)),
                    "cost": str(int(rj.get("computeCost", 0)) + int(rj.get("adapterCost", 0))),
                    "status": status,
                    "batch_seq": r.batch_seq,
                    "created_at": r.created_at,
                    "verify_url": f"/v1/receipts/{r.request_id}",
                }
            )
        return out

    def _batches(self, s) -> list[dict]:
        rows = s.scalars(select(m.ReceiptBatch).order_by(m.ReceiptBatch.seq.desc()).limit(RECENT_BATCHES)).all()
        return [
            {
                "seq": b.seq,
                "count": b.count,
                "root": b.root,
                "cid": b.cid,
                "status": b.status,
                "committed_block": b.committed_block,
                "created_at": b.created_at,
            }
            for b in rows
        ]

    def _settlement(self, s, background: dict[str, str]) -> dict:
        pending, lag = self.ledger.pending_stats()
        outbox = {st: n for st, n in s.execute(select(m.OutboxIntent.status, func.count()).group_by(m.OutboxIntent.status))}
        failed = s.scalars(
            select(m.OutboxIntent).where(m.OutboxIntent.status == "failed").order_by(m.OutboxIntent.id.desc()).limit(1)
        ).first()
        redeemed = s.execute(
            select(
                m.VoucherRow.redeemed_compute,
                m.VoucherRow.redeemed_adapter,
                m.VoucherRow.compute_value,
                m.VoucherRow.adapter_value,
            )
        ).all()
        return {
            "pending_receipts": pending,
            "lag_seconds": round(lag, 1),
            "outbox": outbox,
            "last_failure": (failed.key, getattr(failed, "error", None)) if failed else None,
            "vouchers_total": str(sum(int(c) + int(a) for _, _, c, a in redeemed)),
            "vouchers_redeemed": str(sum(int(rc) + int(ra) for rc, ra, _, _ in redeemed)),
            "background": background,
        }

    def _datasets(self, s) -> list[dict]:
        datasets = s.scalars(select(m.Dataset).order_by(m.Dataset.id).limit(MAX_DATASETS)).all()
        ids = [d.id for d in datasets]
        contribs = (
            s.scalars(
                select(m.Contribution)
                .where(m.Contribution.dataset_id.in_(ids))
                .order_by(m.Contribution.id)
                .limit(MAX_CONTRIBUTIONS)
            ).all()
            if ids
            else []
        )
        rewards = self._chain_reads([c.id for c in contribs if c.status == m.ContributionStatus.ACCEPTED.value])
        by_ds = defaultdict(list)
        for c in contribs:
            by_ds[c.dataset_id].append(
                {
                    "id": c.id,
                    "contributor": c.contributor,
                    "status": c.status,
                    "weight": str(c.weight),
                    "size_tokens": c.size_tokens,
                    "cid": c.content_cid,
                    "answers_attributed": self._attributed.get(c.id, 0),
                    "pending_reward": rewards.get("pending", {}).get(c.id),
                }
            )
        return [
            {"id": d.id, "name": d.name, "license": d.license, "curator": d.curator, "contributions": by_ds.get(d.id, [])}
            for d in datasets
        ]

    def _earnings(self, settlement: dict) -> dict:
        compute = sum(t[2] for t in self._traffic.values())
        adapter = sum(t[3] for t in self._traffic.values())
        chain = self._chain_reads([])
        return {
            "compute_signed": str(compute),
            "adapter_signed": str(adapter),
            "vouchers_redeemed": settlement["vouchers_redeemed"],
            "claimable": chain.get("claimable"),
        }

    def _chain_reads(self, contribution_ids: list[int]) -> dict:
        """The node's claimable balance and contributions' pending rewards; cached, None when the
        chain does not answer (the dashboard never fails because the RPC is slow)."""
        now = time.monotonic()
        if (
            self._chain_cache
            and now - self._chain_cache[0] < CHAIN_CACHE_S
            and set(contribution_ids) <= set(self._chain_cache[1].get("pending", {}))
        ):
            return self._chain_cache[1]
        c = self.chain.contracts
        out: dict = {"claimable": None, "pending": {}}
        if c is None:
            return out
        try:
            out["claimable"] = str(c.vault.claimable(self.chain.node_address))
            out["pending"] = {i: str(c.datasets.pending_reward(i)) for i in contribution_ids}
        except Exception:  # noqa: BLE001 - shown as unknown, never an error page
            pass
        self._chain_cache = (now, out)
        return out
