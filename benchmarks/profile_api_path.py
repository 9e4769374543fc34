"""Where the node's per-request time goes outside the engine (issue 15, item 3).

Times each step the API runs for one streamed chat completion, in isolation, with the real code:
voucher header parse + signer recovery (payment gate), the escrow-cache hit, the voucher write
(one transaction), the receipt (EIP-712 digest + secp256k1 signature + insert + commit) written
one transaction per receipt and in groups of 16 (node.db.group_commit), SSE framing of one token
chunk, and the final event's JSON. SQLite file in WAL mode, as the node runs it. `admit_256_*`: 256
concurrent admissions through the real payment gate, wall time and event-loop CPU per admission,
with the gate's batched off-loop signer recovery and with the recovery inline on the loop (peer).
`admit_256_write_*`: the same with every voucher written (not a prepayment), group-committed by the
gate and with one transaction per admission in a worker thread (peer), and the grouped round's
transaction count. `receipt_256_*`: 256 receipts issued together (adapters without an attribution index), wall time
and event-loop CPU per receipt, through the issuer and with one attribution thread hop each (peer).

Peer: the per-receipt commit path measured in the same run (`grouped_vs_single` = per-receipt
time of one commit each ÷ per-receipt time in groups of 16).
Ends with one line `RESULT {json}` (microseconds per call).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.payment_fakes import FundedEscrow  # noqa: E402  (the gate's escrow reads, every payer funded)


def per_call_us(fn, n: int) -> float:
    fn()  # warm
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return round((time.perf_counter() - t0) / n * 1e6, 1)


def _crowd_gate_settings(operator, ledger, chain_id: int, escrow: str) -> dict:
    """PaymentGate arguments shared by every side of the admission crowds."""
    return dict(
        node_address=operator.address,
        mode="voucher",
        escrow=FundedEscrow(funds=10**30),
        book=ledger,
        chain_id=chain_id,
        escrow_address=escrow,
    )


def _medians(samples: dict[str, list[tuple[float, float]]], prefix: str) -> dict:
    """Median wall time and event-loop CPU per admission of each side's rounds."""
    out = {}
    for name, xs in samples.items():
        out[f"{prefix}_{name}_wall"] = round(statistics.median(x[0] for x in xs), 1)
        out[f"{prefix}_{name}_loop_cpu"] = round(statistics.median(x[1] for x in xs), 1)
    return out


def admit_256(operator, n: int) -> dict:
    """256 concurrent admissions through the real PaymentGate (16 payers x 16 lanes, escrow caches
    warm, prepaid vouchers so no voucher write): wall time and event-loop CPU (`time.thread_time` of
    the loop's thread) per admission, with the gate's batched off-loop signer recovery and, in
    interleaved rounds, with the recovery inline on the loop (the peer). Medians of the rounds."""
    from eth_account import Account

    from chain.eip712 import SignedVoucher, Voucher, sign_voucher
    from node.daemon.payments import gate as g
    from node.daemon.payments.ledger import Ledger
    from node.db import make_session_factory, migrate
    from node.metering import Cost, Price
    from node.wire import VOUCHER_HEADER, encode_voucher_header

    chain_id, escrow = 31337, "0x" + "11" * 20

    class InlineGate(g.PaymentGate):
        async def _recover(self, sv):
            try:
                return sv.signer(self.chain_id, self.escrow_address)
            except Exception as e:
                raise g._reject("voucher signature does not recover to an address", "voucher_bad_signature") from e

    payers = [Account.create() for _ in range(16)]
    price, max_cost = Price(1000, 1000), Cost(10**6, 10**6)
    jobs = []
    for i in range(256):
        p, adapter = payers[i % 16], i // 16 + 1
        v = Voucher(p.address, operator.address, adapter, 1, 1)
        jobs.append(({VOUCHER_HEADER: encode_voucher_header(SignedVoucher(v, sign_voucher(v, p, chain_id, escrow)))}, adapter))
    rounds = max(3, n // 100)
    samples: dict[str, list[tuple[float, float]]] = {"batched": [], "inline": []}
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/node.db"
        migrate(url)
        ledger = Ledger(make_session_factory(url))
        kw = _crowd_gate_settings(operator, ledger, chain_id, escrow)
        gates = {"batched": g.PaymentGate(**kw), "inline": InlineGate(**kw)}

        async def crowd(gate) -> tuple[float, float]:
            t0, c0 = time.perf_counter(), time.thread_time()
            auths = await asyncio.gather(*(gate.admit(h, a, price, max_cost) for h, a in jobs))
            wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
            for au in auths:
                au.release()
            return wall / len(jobs) * 1e6, cpu / len(jobs) * 1e6

        async def run() -> None:
            for gate in gates.values():
                for h, a in jobs[:16]:  # one per payer: fills the escrow cache
                    (await gate.admit(h, a, price, max_cost)).release()
                await crowd(gate)
            for _ in range(rounds):
                for name, gate in gates.items():
                    samples[name].append(await crowd(gate))

        asyncio.run(run())
    return _medians(samples, "admit_256")


def admit_256_write(operator, n: int) -> dict:
    """256 concurrent admissions through the real PaymentGate whose vouchers are written (each equals
    what its fresh lane owes, so it is not a prepayment): wall time and event-loop CPU per admission
    with the gate's group-committed voucher writes (one transaction per group) and, in interleaved
    rounds, with one `asyncio.to_thread(store_voucher)` transaction per admission (the peer, the
    gate's write before the group commit). Every round uses fresh lanes (a voucher already stored
    would not be written again); `transactions` counts the commits of one grouped round."""
    from eth_account import Account
    from sqlalchemy import event

    from chain.eip712 import SignedVoucher, Voucher, sign_voucher
    from node.daemon.payments import gate as g
    from node.daemon.payments.ledger import Ledger
    from node.db import make_session_factory, migrate
    from node.metering import Cost, Price
    from node.wire import VOUCHER_HEADER, encode_voucher_header

    chain_id, escrow = 31337, "0x" + "11" * 20

    class OneEach:
        """The peer's voucher writer: one worker-thread transaction per voucher."""

        def __init__(self, book) -> None:
            self.book = book

        async def submit(self, sv) -> None:
            await asyncio.to_thread(self.book.store_voucher, sv)

    price, max_cost = Price(1000, 1000), Cost(10**6, 10**6)
    rounds = max(3, n // 100)

    def header(p, adapter: int, value: int) -> dict:
        v = Voucher(p.address, operator.address, adapter, value, value)
        return {VOUCHER_HEADER: encode_voucher_header(SignedVoucher(v, sign_voucher(v, p, chain_id, escrow)))}

    def crowd_jobs() -> tuple[list[dict], list[tuple[dict, int]]]:
        """16 fresh payers x 16 fresh lanes (a payer's lane count stays that of `admit_256`): one
        prepaid voucher per payer to warm the escrow cache (not written), then the 256."""
        payers = [Account.create() for _ in range(16)]
        warm = [header(p, 99, 1) for p in payers]
        return warm, [(header(payers[i % 16], i // 16 + 1, 0), i // 16 + 1) for i in range(256)]

    crowds = [crowd_jobs() for _ in range(2 * (rounds + 1))]  # signed ahead: not timed
    samples: dict[str, list[tuple[float, float]]] = {"grouped": [], "one_each": []}
    commits = [0]
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/node.db"
        migrate(url)
        ledger = Ledger(make_session_factory(url))
        event.listen(ledger.sessions.kw["bind"], "commit", lambda conn: commits.__setitem__(0, commits[0] + 1))
        kw = _crowd_gate_settings(operator, ledger, chain_id, escrow)
        gates = {"grouped": g.PaymentGate(**kw), "one_each": g.PaymentGate(**kw)}
        gates["one_each"]._voucher_writes = OneEach(ledger)
        transactions: list[int] = []

        async def crowd(gate, warm_jobs) -> tuple[float, float]:
            warm, jobs = warm_jobs
            for h in warm:
                (await gate.admit(h, 99, price, max_cost)).release()
            t0, c0 = time.perf_counter(), time.thread_time()
            auths = await asyncio.gather(*(gate.admit(h, a, price, max_cost) for h, a in jobs))
            wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
            for au in auths:
                au.release()
            return wall / len(jobs) * 1e6, cpu / len(jobs) * 1e6

        async def run() -> None:
            todo = iter(crowds)
            for gate in gates.values():
                await crowd(gate, next(todo))
            for _ in range(rounds):
                for name, gate in gates.items():
                    before = commits[0]
                    samples[name].append(await crowd(gate, next(todo)))
                    if name == "grouped":
                        transactions.append(commits[0] - before)

        asyncio.run(run())
    out = _medians(samples, "admit_256_write")
    out["admit_256_write_grouped_transactions"] = statistics.median(transactions)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = ap.parse_args()
    n = 200 if args.quick else 2000

    from eth_account import Account

    from chain.eip712 import NO_ATTRIBUTION_HASH, SignedVoucher, Voucher, sign_voucher
    from node.db import make_session_factory, migrate
    from node.db.group_commit import GroupCommitter
    from node.daemon.payments.ledger import Ledger
    from node.metering import Cost
    from node.daemon.payments.gate import Lane
    from node.wire import encode_voucher_header, parse_voucher_header
    from node.daemon.payments.receipts import ReceiptIssuer, new_request_id

    chain_id, escrow, receipt_log = 31337, "0x" + "11" * 20, "0x" + "22" * 20
    operator, payer = Account.create(), Account.create()
    out: dict = {"unit": "us_per_call", "n": n}

    v = Voucher(payer.address, operator.address, 1, 10**6, 10**6)
    header = encode_voucher_header(SignedVoucher(v, sign_voucher(v, payer, chain_id, escrow)))
    out["voucher_parse_recover"] = per_call_us(lambda: parse_voucher_header(header).signer(chain_id, escrow), n)

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/node.db"
        migrate(url)
        ledger = Ledger(make_session_factory(url))
        issuer = ReceiptIssuer(operator=operator, chain_id=chain_id, receipt_log=receipt_log, ledger=ledger)
        lane = Lane(payer.address, operator.address, 1)
        total = [0]

        def store_voucher():
            total[0] += 1
            vv = Voucher(payer.address, operator.address, 1, 10**6 + total[0], 10**6 + total[0])
            ledger.store_voucher(SignedVoucher(vv, b"\x01" * 64 + b"\x1b"))

        out["voucher_store_commit"] = per_call_us(store_voucher, n)

        kw = dict(
            lane=lane,
            prompt_tokens=20,
            completion_tokens=8,
            cost=Cost(5, 7),
            text="hello world",
            attribution=(NO_ATTRIBUTION_HASH, {}),
        )
        out["receipt_sign_only"] = per_call_us(lambda: issuer.receipt_maker(request_id=new_request_id(), **kw)(1), n)
        out["receipt_one_commit_each"] = per_call_us(lambda: issuer.issue(request_id=new_request_id(), **kw), n)

        async def grouped() -> float:
            # 16 lanes finishing together (one request per lane at a time, as the gate enforces)
            issuer.committer = GroupCommitter(ledger.append_receipts, max_group=16)
            lanes = [Lane(payer.address, operator.address, a) for a in range(2, 18)]
            await asyncio.gather(*(issuer.issue_async(request_id=new_request_id(), **{**kw, "lane": ln}) for ln in lanes))  # warm
            t0 = time.perf_counter()
            rounds = max(1, n // 16)
            for _ in range(rounds):
                await asyncio.gather(*(issuer.issue_async(request_id=new_request_id(), **{**kw, "lane": ln}) for ln in lanes))
            await issuer.committer.close()
            return round((time.perf_counter() - t0) / (rounds * 16) * 1e6, 1)

        out["receipt_grouped_16"] = asyncio.run(grouped())

        async def receipts_256() -> None:
            # 256 receipts finishing together for adapters without an attribution index: the issuer
            # (no thread hop for the attribution) vs one hop per receipt as the API used to do (peer)
            issuer.committer = GroupCommitter(ledger.append_receipts)
            issuer.attributor_for = lambda adapter_id: None
            lanes = [Lane(payer.address, operator.address, a) for a in range(100, 356)]
            base = {k: v for k, v in kw.items() if k not in ("lane", "attribution")}

            async def one(ln, hop: bool):
                att = await asyncio.to_thread(issuer.attribution, ln.adapter_id, [1, 2, 3]) if hop else None
                await issuer.issue_async(request_id=new_request_id(), lane=ln, token_ids=[1, 2, 3], attribution=att, **base)

            samples: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
            for rnd in range(max(3, n // 100) + 1):
                for hop in (False, True):
                    t0, c0 = time.perf_counter(), time.thread_time()
                    await asyncio.gather(*(one(ln, hop) for ln in lanes))
                    if rnd:  # the first round warms
                        samples[hop].append(((time.perf_counter() - t0) / 256 * 1e6, (time.thread_time() - c0) / 256 * 1e6))
            await issuer.committer.close()
            for hop, name in ((False, "issuer"), (True, "hop_each")):
                out[f"receipt_256_{name}_wall"] = round(statistics.median(x[0] for x in samples[hop]), 1)
                out[f"receipt_256_{name}_loop_cpu"] = round(statistics.median(x[1] for x in samples[hop]), 1)

        asyncio.run(receipts_256())

    out.update(admit_256(operator, n))
    out.update(admit_256_write(operator, n))

    chunk = {
        "id": "chatcmpl-" + os.urandom(32).hex(),
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "adapter-1",
        "choices": [{"index": 0, "delta": {"content": " word"}, "finish_reason": None, "logprobs": None}],
    }
    from node.api.completions import _sse

    out["sse_token_chunk"] = per_call_us(lambda: _sse(chunk), n * 10)
    out["grouped_vs_single"] = round(out["receipt_one_commit_each"] / out["receipt_grouped_16"], 2)
    print("RESULT " + json.dumps(out, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
