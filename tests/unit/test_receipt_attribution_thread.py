"""Where a receipt's attribution runs: span matching in a worker thread when the adapter has an
index, no thread hop when there is nothing to match; the receipt's attribution is the same either
way (node.daemon.payments.receipts)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from eth_account import Account

from chain.eip712 import NO_ATTRIBUTION_HASH, attribution_hash
from inference.attribution.attributor import Attribution
from node.daemon.payments.gate import Lane
from node.daemon.payments.ledger import Ledger
from node.daemon.payments.receipts import ReceiptIssuer, new_request_id
from node.db import make_session_factory, migrate
from node.metering import Cost

OPERATOR, PAYER = Account.create(), Account.create()


class _Attributor:
    def __init__(self) -> None:
        self.threads: list[int] = []

    def attribute(self, token_ids: list[int]) -> Attribution:
        self.threads.append(threading.get_ident())
        return Attribution({5: 10_000}, [], {2: 10_000})


@pytest.fixture
def ledger(tmp_path):
    url = f"sqlite:///{tmp_path / 'node.db'}"
    migrate(url)
    return Ledger(make_session_factory(url))


async def _issue(issuer: ReceiptIssuer, adapter: int, token_ids=(1, 2, 3)):
    return await issuer.issue_async(
        request_id=new_request_id(),
        lane=Lane(PAYER.address, OPERATOR.address, adapter),
        prompt_tokens=3,
        completion_tokens=3,
        cost=Cost(1, 1),
        text="abc",
        token_ids=token_ids,
    )


async def test_span_matching_runs_in_a_worker_thread_and_is_committed_to(ledger):
    att = _Attributor()
    issuer = ReceiptIssuer(
        operator=OPERATOR, chain_id=31337, receipt_log="0x" + "22" * 20, ledger=ledger, attributor_for=lambda a: att
    )
    issued = await _issue(issuer, 1)
    assert att.threads and threading.get_ident() not in att.threads
    assert issued.signed.receipt.attribution_hash == attribution_hash([5], [10_000])
    assert issued.attribution["attribution"] == {"5": 10_000}


async def test_nothing_to_match_takes_no_thread_hop(ledger, monkeypatch):
    hops: list[object] = []
    to_thread = asyncio.to_thread

    async def spy(fn, *args):  # asyncio is one module: the receipt writer's hops pass through too
        hops.append(fn)
        return await to_thread(fn, *args)

    monkeypatch.setattr(asyncio, "to_thread", spy)
    att = _Attributor()
    issuer = ReceiptIssuer(
        operator=OPERATOR,
        chain_id=31337,
        receipt_log="0x" + "22" * 20,
        ledger=ledger,
        attributor_for=lambda a: att if a == 1 else None,
    )
    for adapter, token_ids in ((2, (1, 2)), (0, (1, 2)), (1, ())):  # no index yet, base model, no tokens
        issued = await _issue(issuer, adapter, token_ids)
        assert issued.signed.receipt.attribution_hash == NO_ATTRIBUTION_HASH
        assert issued.attribution == ({} if adapter == 0 else {"attribution": {}, "datasetAttribution": {}, "spans": []})
    assert issuer._attribute not in hops and att.threads == []
    await _issue(issuer, 1)
    assert hops.count(issuer._attribute) == 1 and len(att.threads) == 1  # an adapter with an index: the thread
