"""One chat with one node: streamed answers, each paid with the next cumulative voucher, its cost
and receipt checked by `node.client.payer` before anything is recorded."""

from __future__ import annotations

import time
import urllib.parse
from dataclasses import dataclass
from typing import Callable

from node.client.chat.discovery import Candidate, ProbeError, get_json
from node.client.chat.state import ChatState
from node.client.payer import ClientError, LoraNodeClient


RECEIPT_RETRIES = 10
RECEIPT_RETRY_S = 0.5
LOST_AFTER_S = 600.0


@dataclass(frozen=True)
class Answer:
    text: str
    request_id: str  # the receipt's requestId, 0x-hex
    compute_cost: int
    adapter_cost: int
    prompt_tokens: int
    completion_tokens: int
    totals: tuple[int, int]  # the lane's totals after this answer

    @property
    def cost(self) -> int:
        return self.compute_cost + self.adapter_cost


class Refused(Exception):
    """The node's answer failed a check (cost above the quote, receipt not matching): not paid."""


class ChatSession:
    def __init__(
        self,
        candidate: Candidate,
        payer,
        state: ChatState,
        *,
        signer=None,
        max_tokens: int = 256,
        temperature: float | None = None,
    ) -> None:
        self.candidate, self.state = candidate, state
        self.max_tokens, self.temperature = max_tokens, temperature
        self.client = LoraNodeClient(
            candidate.url, payer, signer_key=signer, quote=candidate.quote, totals=state.lane_totals(candidate.address)
        )
        self.wallet = self.client.wallet

    def recover_pending(self) -> list[str]:
        """Pay for streams of an earlier invocation that ended before their final event: the node
        metered and signed them; their receipts are at `/v1/receipts/{id}`. Returns the ids settled."""
        done = []
        for p in self.state.receipts(node=self.candidate.address, status="pending"):
            body = self._fetch_receipt(p)
            if body is None:
                continue
            raw = body.get("receipt")
            try:
                if (
                    not isinstance(raw, dict)
                    or int(raw.get("completionTokens", -1)) > p.max_tokens
                    or raw.get("requestId", "").lower() != p.request_id
                ):
                    raise ClientError("the node's receipt does not match the request (id or token count)")
                receipt = self.wallet.record_receipt(p.adapter_id, raw)
            except (ClientError, ValueError, TypeError) as e:
                self.state.mark(p.request_id, "refused", raw if isinstance(raw, dict) else None)
                raise Refused(f"receipt of earlier request {p.request_id} refused: {e}") from None
            r = receipt.receipt
            self.state.record_paid(
                p.request_id,
                node=p.node,
                url=p.url,
                model=p.model,
                adapter_id=p.adapter_id,
                max_tokens=p.max_tokens,
                totals=self.wallet.totals(p.adapter_id),
                cost=(r.compute_cost, r.adapter_cost),
                receipt=receipt.to_json(),
            )
            done.append(p.request_id)
        return done

    def _fetch_receipt(self, p) -> dict | None:
        """The node's receipt of a pending request; None while it has none yet. The node signs a
        dropped stream once it notices the disconnect: a young request gets a few seconds; one the
        node still has no receipt for after LOST_AFTER_S is marked lost (the node never billed it)."""
        url = f"{self.candidate.url}/v1/receipts/{urllib.parse.quote(p.request_id)}"
        for _ in range(RECEIPT_RETRIES):
            try:
                return get_json(url)[0]
            except ProbeError as e:
                if "HTTP 404" not in str(e):
                    return None  # unreachable: try again next time
            if time.time() - p.created > LOST_AFTER_S:
                self.state.mark(p.request_id, "lost")
                return None
            time.sleep(RECEIPT_RETRY_S)
        return None

    def ask(self, model: str, messages: list[dict], on_text: Callable[[str], object] = lambda _: None) -> Answer:
        aid = self.wallet.adapter_id(model)
        kwargs: dict[str, int | float] = {"max_tokens": self.max_tokens}
        if self.temperature is not None:
            kwargs["temperature"] = self.temperature
        request_id = None
        parts: list[str] = []
        stream = self.client.chat_stream(model, messages, **kwargs)
        try:
            for chunk in stream:
                if request_id is None:
                    request_id = "0x" + chunk.id.rsplit("-", 1)[-1].lower()
                    self.state.add_pending(
                        request_id,
                        node=self.candidate.address,
                        url=self.candidate.url,
                        model=model,
                        adapter_id=aid,
                        max_tokens=self.max_tokens,
                    )
                if chunk.choices and chunk.choices[0].delta.content:
                    parts.append(chunk.choices[0].delta.content)
                    on_text(chunk.choices[0].delta.content)
        except ClientError as e:
            if request_id is not None:
                self.state.mark(request_id, "refused")
            raise Refused(str(e)) from None
        finally:
            stream.close()  # stopped early (Ctrl-C): the connection closes now and the node meters what it made
        receipt = self.client.receipts[-1]
        r = receipt.receipt
        if "0x" + r.request_id.hex() != request_id:
            raise Refused("the receipt names another request than the stream's")
        totals = self.wallet.totals(aid)
        self.state.record_paid(
            request_id,
            node=self.candidate.address,
            url=self.candidate.url,
            model=model,
            adapter_id=aid,
            max_tokens=self.max_tokens,
            totals=totals,
            cost=(r.compute_cost, r.adapter_cost),
            receipt=receipt.to_json(),
        )
        return Answer("".join(parts), request_id, r.compute_cost, r.adapter_cost, r.prompt_tokens, r.completion_tokens, totals)
