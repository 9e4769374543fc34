"""Which nodes serve a model: NodeRegistry's registrations (from its events, then `getNode`), each
endpoint probed with `/v1/node` and `/v1/models`, and every answer checked against the chain before
a voucher is signed for it:

- the endpoint answers as the address that registered it (else anyone could point an endpoint at
  somebody else's node, or at a node that signs as someone else);
- same chain id, UsageEscrow and ReceiptLog as the deployment (a voucher for another escrow is
  signed for a contract the payer did not choose);
- it lists the model, and its prices are at most what is on chain (the compute price the node
  registered, the adapter's registered price): a node quoting more is refused as overcharging;
- it can redeem (NodeRegistry.canRedeem: at least the minimum bond, not condemned by a proven
  fault): a node with no bond to lose answers for nothing it signs, and could not be paid anyway.

Candidates are ranked by price per 1K tokens, then by measured round-trip latency.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from chain.protocol import ADAPTER_MODEL_PREFIX, parse_adapter_model_name
from node.client.chat.endpoints import BadEndpoint, validate_endpoint
from node.services.terminal_text import shown
from node.client.payer import NodeQuote

MAX_PROBE_BYTES = 16 << 20  # /v1/models of a node serving thousands of adapters is a few MB
PROBE_TIMEOUT_S = 5.0
LOG_WINDOW = 10_000
PROBE_WORKERS = 8


@dataclass(frozen=True)
class Candidate:
    url: str
    address: str
    quote: NodeQuote
    price_per_1k: int  # compute + adapter, what one 1K tokens costs on this node
    latency_s: float


@dataclass
class Discovery:
    chosen: list[Candidate] = field(default_factory=list)  # best first
    refused: list[tuple[str, str]] = field(default_factory=list)  # (who, why), both safe to show


class ProbeError(Exception):
    """A node's answer was unusable or contradicts the chain."""


def get_json(url: str, timeout: float = PROBE_TIMEOUT_S) -> tuple[dict, float]:
    """GET a JSON object (size-capped, no redirects followed), with its round-trip seconds."""
    t0 = time.monotonic()
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=timeout) as r:
            raw = r.read(MAX_PROBE_BYTES + 1)
    except urllib.error.HTTPError as e:
        raise ProbeError(f"HTTP {e.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise ProbeError(f"unreachable ({shown(reason, 80)})") from None
    dt = time.monotonic() - t0
    if len(raw) > MAX_PROBE_BYTES:
        raise ProbeError(f"answer larger than {MAX_PROBE_BYTES} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise ProbeError("answer is not JSON") from None
    if not isinstance(body, dict):
        raise ProbeError("answer is not a JSON object")
    return body, dt


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **k):  # a registered endpoint may not send us elsewhere
        return None


def registered_nodes(contracts) -> list:
    """Every node that ever registered (NodeRegistered events since the registry's deployment),
    as its current `NodeInfo`, active ones only."""
    reg = contracts.nodes
    w3 = reg.w3
    start = int(contracts.deployment.blocks.get("NodeRegistry", 0))
    head = w3.eth.block_number
    seen: dict[str, None] = {}
    for lo in range(start, head + 1, LOG_WINDOW):
        logs = w3.eth.get_logs({"address": reg.address, "fromBlock": lo, "toBlock": min(head, lo + LOG_WINDOW - 1)})
        for log in logs:
            ev = reg.decode_log(log)
            if type(ev).__name__ == "NodeRegistered":
                seen[ev.node] = None
    infos = [reg.get_node(addr) for addr in seen]
    return [n for n in infos if n.active]


def check_quote(body: dict, *, model: str, contracts, registrations: dict, adapter_price: int | None) -> NodeQuote:
    """The node's `/v1/node` answer as a NodeQuote, or ProbeError saying what contradicts the chain.
    registrations: {address: NodeInfo} of the nodes that registered this endpoint (empty: a URL the
    user gave that no node registered; then only the chain and contracts are checked)."""
    try:
        quote = NodeQuote.from_json(body)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ProbeError("/v1/node answer is malformed") from None
    dep = contracts.deployment
    reg = {a.lower(): n for a, n in registrations.items()}.get(str(quote.node).lower())
    if registrations and reg is None:
        raise ProbeError(
            f"answers as node {shown(quote.node, 44)}, not as {', '.join(registrations)} that registered this endpoint"
        )
    if quote.chain_id != dep.chain_id:
        raise ProbeError(f"is on chain {quote.chain_id}, not {dep.chain_id}")
    if (
        quote.escrow.lower() != dep.addresses["UsageEscrow"].lower()
        or quote.receipt_log.lower() != dep.addresses["ReceiptLog"].lower()
    ):
        raise ProbeError("names other UsageEscrow/ReceiptLog contracts than the deployment's")
    if reg is not None and quote.compute_price_per_1k > reg.compute_price_per_1k:
        raise ProbeError(
            f"overcharges: quotes a compute price of {quote.compute_price_per_1k} per 1K tokens, "
            f"more than the {reg.compute_price_per_1k} it registered on chain"
        )
    if model != quote.base_model:
        aid = parse_adapter_model_name(model)
        if aid is None or aid not in quote.adapter_prices:
            raise ProbeError(f"does not serve {model}")
        if adapter_price is not None and quote.adapter_prices[aid] > adapter_price:
            raise ProbeError(
                f"overcharges: quotes {quote.adapter_prices[aid]} per 1K tokens for {model}, "
                f"more than the adapter's registered {adapter_price}"
            )
    return quote


def probe(url: str, model: str, contracts, *, registrations: dict, adapter_price: int | None) -> Candidate:
    models, t1 = get_json(url + "/v1/models")
    data = models.get("data")
    if not isinstance(data, list) or not any(isinstance(m, dict) and m.get("id") == model for m in data):
        raise ProbeError(f"does not list {model} in /v1/models")
    body, t2 = get_json(url + "/v1/node")
    quote = check_quote(body, model=model, contracts=contracts, registrations=registrations, adapter_price=adapter_price)
    if not contracts.nodes.can_redeem(quote.node):
        raise ProbeError(
            "has no bond to lose (less than the registry's minimum, or condemned for a proven fault): "
            "it could be neither slashed for a wrong answer nor paid"
        )
    aid = 0 if model == quote.base_model else parse_adapter_model_name(model) or 0  # check_quote accepted it
    price = quote.compute_price_per_1k + quote.adapter_prices.get(aid, 0)
    return Candidate(url, quote.node, quote, price, min(t1, t2))


def model_terms(contracts, model: str) -> tuple[str | None, int | None]:
    """(base model id the model runs on, the adapter's registered price) from chain; (None, None)
    for a name that is not adapter-<id> (then it must be a base model id)."""
    if model.startswith(ADAPTER_MODEL_PREFIX):
        aid = parse_adapter_model_name(model)
        if aid is None:
            raise ProbeError(f"model {shown(model)} is not adapter-<id>")
        if aid > contracts.adapters.adapter_count():
            raise ProbeError(f"adapter {aid} is not registered on chain")
        info = contracts.adapters.get_adapter(aid)
        if info.deprecated:
            raise ProbeError(f"adapter {aid} is deprecated")
        return info.base_model_id, info.price_per_1k
    return model, None


def discover(contracts, model: str, *, node_url: str | None = None) -> Discovery:
    """Candidates for `model`: the one at `node_url`, or every active registered node serving the
    model's base; best (cheapest, then fastest) first."""
    base, adapter_price = model_terms(contracts, model)
    out = Discovery()
    if node_url is not None:
        url = validate_endpoint(node_url)
        regs = {n.node: n for n in registered_nodes(contracts) if isinstance(n.endpoint, str) and n.endpoint.rstrip("/") == url}
        try:
            out.chosen.append(probe(url, model, contracts, registrations=regs, adapter_price=adapter_price))
        except ProbeError as e:
            out.refused.append((url, str(e)))
        return out
    serving = [n for n in registered_nodes(contracts) if base in n.base_model_ids]

    def check(info) -> Candidate | tuple[str, str]:
        try:
            url = validate_endpoint(info.endpoint)
            return probe(url, model, contracts, registrations={info.node: info}, adapter_price=adapter_price)
        except (BadEndpoint, ProbeError) as e:
            return f"{info.node} at {shown(info.endpoint, 80)}", str(e)

    # probed in parallel: a dead endpoint costs its timeout once, not once per node after it
    with ThreadPoolExecutor(max_workers=min(PROBE_WORKERS, max(1, len(serving)))) as pool:
        for result in pool.map(check, serving):
            if isinstance(result, Candidate):
                out.chosen.append(result)
            else:
                out.refused.append(result)
    out.chosen.sort(key=lambda c: (c.price_per_1k, c.latency_s))
    return out
