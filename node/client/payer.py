"""Client helper: the official `openai` client plus automatic cumulative vouchers for a payer key.

    client = LoraNodeClient("http://127.0.0.1:8080", payer_key)
    r = client.chat("adapter-3", [{"role": "user", "content": "hi"}], max_tokens=16)
    for chunk in client.chat_stream("adapter-3", messages): ...

The node's quote (node address, chain id, escrow, prices) comes from `GET /v1/node`. For each lane
(payer, node, adapter) the wallet keeps the total the node has charged so far and signs a
voucher for exactly that total before each request (the node serves while the unpaid amount is
at most one request). Every response is checked before its cost is accepted: the cost must match
the quoted prices for the usage, and the receipt must be signed by the node for this lane.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from dataclasses import dataclass
from typing import Any, Generator

from eth_account import Account

from chain.eip712 import SignedReceipt, SignedVoucher, Voucher, output_hash, sign_voucher
from chain.protocol import parse_adapter_model_name
from node.metering import Price, cost_for
from node.wire import VOUCHER_HEADER, encode_voucher_header


class ClientError(Exception):
    """The node's answer failed a check (wrong cost, bad receipt), or the quote is unusable."""


@dataclass(frozen=True)
class NodeQuote:
    node: str
    chain_id: int
    escrow: str
    receipt_log: str
    base_model: str
    compute_price_per_1k: int
    adapter_prices: dict[int, int]

    @classmethod
    def fetch(cls, base_url: str, timeout: float = 10.0) -> "NodeQuote":
        with urllib.request.urlopen(base_url.rstrip("/") + "/v1/node", timeout=timeout) as r:  # noqa: S310 (loopback/http by design)
            return cls.from_json(json.loads(r.read()))

    @classmethod
    def from_json(cls, d: dict) -> "NodeQuote":
        prices = {int(m["adapter_id"]): int(m["price_per_1k"]) for m in d.get("models", [])}
        return cls(
            d["node"], int(d["chain_id"]), d["escrow"], d["receipt_log"], d["base_model"], int(d["compute_price_per_1k"]), prices
        )


class VoucherWallet:
    """Per-lane running totals and voucher signing for one payer (thread-safe)."""

    def __init__(self, payer_key, quote: NodeQuote, *, signer_key=None, totals: dict[int, tuple[int, int]] | None = None) -> None:
        """payer_key: the payer's key or account; with `signer_key` (a signer the payer authorized in
        UsageEscrow) it may be the payer's address alone. totals: lane totals carried over from an
        earlier session with this node ({adapter id: (compute, adapter)}), so its vouchers cover them."""
        if signer_key is not None and isinstance(payer_key, str) and len(payer_key) == 42:
            from types import SimpleNamespace

            from eth_utils import to_checksum_address

            payer_key = SimpleNamespace(address=to_checksum_address(payer_key))
        self.payer = Account.from_key(payer_key) if not hasattr(payer_key, "address") else payer_key
        self.signer = (
            self.payer
            if signer_key is None
            else (Account.from_key(signer_key) if not hasattr(signer_key, "address") else signer_key)
        )
        self.quote = quote
        self._totals: dict[int, list[int]] = {aid: [int(c), int(a)] for aid, (c, a) in (totals or {}).items()}
        self._locks: dict[int, threading.Lock] = {}
        self._guard = threading.Lock()

    def adapter_id(self, model: str) -> int:
        if model == self.quote.base_model:
            return 0
        adapter_id = parse_adapter_model_name(model)
        if adapter_id is None:
            raise ClientError(f"model {model!r} is neither the base model nor adapter-<id>")
        return adapter_id

    def lane_lock(self, adapter_id: int) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(adapter_id, threading.Lock())

    def totals(self, adapter_id: int) -> tuple[int, int]:
        t = self._totals.get(adapter_id, [0, 0])
        return t[0], t[1]

    def signed_voucher(self, adapter_id: int) -> SignedVoucher:
        c, a = self.totals(adapter_id)
        v = Voucher(self.payer.address, self.quote.node, adapter_id, c, a)
        return SignedVoucher(v, sign_voucher(v, self.signer, self.quote.chain_id, self.quote.escrow))

    def header(self, adapter_id: int) -> dict[str, str]:
        return {VOUCHER_HEADER: encode_voucher_header(self.signed_voucher(adapter_id))}

    def record_receipt(self, adapter_id: int, receipt_json: dict) -> SignedReceipt:
        """Add the cost of a receipt fetched from `/v1/receipts/{id}` (a stream the client dropped:
        it never saw the final event). Checks the node's signature, the lane and the quoted price."""
        receipt = SignedReceipt.from_json({k: v for k, v in receipt_json.items() if k not in _ATTRIBUTION_KEYS})
        r = receipt.receipt
        if receipt.signer(self.quote.chain_id, self.quote.receipt_log) != self.quote.node:
            raise ClientError("receipt is not signed by the node")
        if (r.payer, r.node, r.adapter_id) != (self.payer.address, self.quote.node, adapter_id):
            raise ClientError("receipt is for another lane")
        price = Price(self.quote.compute_price_per_1k, self.quote.adapter_prices.get(adapter_id, 0) if adapter_id else 0)
        expect = cost_for(r.prompt_tokens, r.completion_tokens, price)
        if (r.compute_cost, r.adapter_cost) != (expect.compute, expect.adapter):
            raise ClientError("receipt cost does not match the quoted prices")
        t = self._totals.setdefault(adapter_id, [0, 0])
        t[0] += r.compute_cost
        t[1] += r.adapter_cost
        return receipt

    def record(self, adapter_id: int, body: dict, text: str) -> SignedReceipt:
        """Check a response's usage, cost and receipt, then add its cost to the lane."""
        usage, cost, rjson = body.get("usage"), body.get("cost"), body.get("receipt")
        if not (usage and cost and rjson):
            raise ClientError("the node's response has no usage, cost or receipt")
        price = Price(self.quote.compute_price_per_1k, self.quote.adapter_prices.get(adapter_id, 0) if adapter_id else 0)
        expect = cost_for(int(usage["prompt_tokens"]), int(usage["completion_tokens"]), price)
        got = (int(cost["compute"]), int(cost["adapter"]))
        if got != (expect.compute, expect.adapter):
            raise ClientError(f"node charged {got}, the quoted prices give {(expect.compute, expect.adapter)}")
        receipt = SignedReceipt.from_json({k: v for k, v in rjson.items() if k not in _ATTRIBUTION_KEYS})
        r = receipt.receipt
        if receipt.signer(self.quote.chain_id, self.quote.receipt_log) != self.quote.node:
            raise ClientError("receipt is not signed by the node")
        if (r.payer, r.node, r.adapter_id) != (self.payer.address, self.quote.node, adapter_id):
            raise ClientError("receipt is for another lane")
        if (r.compute_cost, r.adapter_cost) != got or r.output_hash != output_hash(text):
            raise ClientError("receipt does not match the response (cost or output hash)")
        t = self._totals.setdefault(adapter_id, [0, 0])
        t[0] += got[0]
        t[1] += got[1]
        return receipt


_ATTRIBUTION_KEYS = ("attribution", "datasetAttribution", "spans")


def _extra(obj: Any) -> dict:
    """Non-OpenAI fields (usage dict, cost, receipt) of an openai response model."""
    d = obj.model_dump() if hasattr(obj, "model_dump") else dict(obj)
    extra = getattr(obj, "model_extra", None) or {}
    return {**d, **extra}


class LoraNodeClient:
    """The official `openai.OpenAI` client pointed at a node, with vouchers attached per request."""

    def __init__(
        self,
        base_url: str,
        payer_key,
        *,
        signer_key=None,
        timeout: float = 120.0,
        quote: NodeQuote | None = None,
        totals: dict[int, tuple[int, int]] | None = None,
    ) -> None:
        import openai

        self.base_url = base_url.rstrip("/")
        self.quote = quote or NodeQuote.fetch(self.base_url)
        self.wallet = VoucherWallet(payer_key, self.quote, signer_key=signer_key, totals=totals)
        self.openai = openai.OpenAI(base_url=self.base_url + "/v1", api_key="voucher", timeout=timeout, max_retries=0)
        self.receipts: list[SignedReceipt] = []

    def refresh_quote(self) -> None:
        self.quote = self.wallet.quote = NodeQuote.fetch(self.base_url)

    def _prepare(self, kind: str, aid: int):
        """The openai endpoint and this request's voucher header (refreshing the quote for a new adapter)."""
        if aid and aid not in self.quote.adapter_prices:
            self.refresh_quote()
        api = self.openai.chat.completions if kind == "chat" else self.openai.completions
        return api, self.wallet.header(aid)

    def chat(self, model: str, messages: list[dict], **kwargs):
        return self._unary("chat", model, dict(messages=messages, **kwargs))

    def complete(self, model: str, prompt: str, **kwargs):
        return self._unary("completion", model, dict(prompt=prompt, **kwargs))

    def _unary(self, kind: str, model: str, kwargs: dict):
        aid = self.wallet.adapter_id(model)
        with self.wallet.lane_lock(aid):
            api, headers = self._prepare(kind, aid)
            resp = api.create(model=model, extra_headers=headers, **kwargs)
            body = _extra(resp)
            text = resp.choices[0].message.content if kind == "chat" else resp.choices[0].text
            self.receipts.append(self.wallet.record(aid, body, text or ""))
            return resp

    def settle_up(self) -> None:
        """Send each lane's voucher for its full total: pays the last request of every lane, which
        no later request's voucher will (the node redeems it at its next settlement)."""
        import urllib.error

        for aid in list(self.wallet._totals):
            with self.wallet.lane_lock(aid):
                req = urllib.request.Request(  # noqa: S310  (the node's URL, http by design)
                    self.base_url + "/v1/vouchers",
                    data=b"",
                    method="POST",
                    headers=self.wallet.header(aid),
                )
                try:
                    urllib.request.urlopen(req, timeout=30).close()  # noqa: S310  (the node's base URL, http by design)
                except urllib.error.HTTPError as e:
                    raise ClientError(f"settle-up of lane {aid} refused: {e.read()[:500]!r}") from e

    def chat_stream(self, model: str, messages: list[dict], **kwargs) -> Generator[Any, None, None]:
        return self._stream("chat", model, dict(messages=messages, **kwargs))

    def complete_stream(self, model: str, prompt: str, **kwargs) -> Generator[Any, None, None]:
        return self._stream("completion", model, dict(prompt=prompt, **kwargs))

    def _stream(self, kind: str, model: str, kwargs: dict) -> Generator[Any, None, None]:
        aid = self.wallet.adapter_id(model)
        with self.wallet.lane_lock(aid):
            api, headers = self._prepare(kind, aid)
            parts: list[str] = []
            final = None
            stream = api.create(model=model, extra_headers=headers, stream=True, **kwargs)
            with stream:  # closes the connection at once when the caller stops early (the node meters then)
                for chunk in stream:
                    if chunk.choices:
                        c = chunk.choices[0]
                        piece = (c.delta.content if kind == "chat" else c.text) or ""
                        parts.append(piece)
                    extra = getattr(chunk, "model_extra", None) or {}
                    if "receipt" in extra:
                        final = _extra(chunk)
                    yield chunk
            if final is None:
                raise ClientError("the stream ended without usage, cost and receipt")
            self.receipts.append(self.wallet.record(aid, final, "".join(parts)))
