"""Audit one committed receipt batch from public data only: chain events and IPFS content.

`audit_batch` fetches the batch's receipts file by the CID in ReceiptLog's BatchCommitted event
(CID-verified, size-capped), and the contributions its receipts name by their on-chain CIDs, then
checks each rule below and reports every discrepancy with the receipt (leaf index, request id) and
the rule it breaks:

- leaf: each receipt's EIP-712 digest is recomputed, signed by the node, and the Merkle tree of
  all of them has the root committed on chain (so every leaf is proven against it);
- attribution-hash: the receipt's weights hash to its signed `attributionHash`;
- attribution-total: the weights sum to at most 10,000 bps;
- adapter-datasets: every attributed contribution belongs to one of the adapter's datasets.
  These two are provable on chain from the one leaf: each is confirmed with
  AttributionPool.attributionFault and marked `slashable` (NodeRegistry.slashAttribution, without
  arbitrator: `loranode node dispute FILE --attribution`, FILE from the report's `slash_files`);
- span: every span names an attributed contribution of its stated dataset, lies inside the
  completion, its text occurs in that contribution's (CID-verified) content, and, given the base
  model's tokenizer, its `end - start` tokens sit at its stated `contributionStart` (the
  contribution tokenized as the index tokenizes it). A span without `contributionStart` is a
  discrepancy in a receipts file of version >= 2 and a note (unverifiable-position) in an older one;
- weights: the weights follow from the spans by inference/attribution/weights.py (checked
  when the receipt lists every span, i.e. fewer than the attributor's max_spans);
- settled-weights / settled-amounts: the weights the node settled in AttributionPool, and the
  amounts they paid, equal what node.attribution_rewards.rule gives from the receipts. BatchSettled
  logs only a hash of the settled entries: the expected entries are compared with it, and on a
  mismatch the settled entries are read from the settle transaction's calldata (`settled_entries`)
  to name each entry that differs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from eth_utils import to_checksum_address

from chain.attribution_entries import entries_hash, unpack
from node.attribution_rewards.rule import (
    Entry,
    RuleError,
    attribution_of,
    batch_weights,
    leaf_attribution,
    payouts,
    to_entries,
)
from node.errors import NodeError

MAX_RECEIPTS_FILE_BYTES = 64 * 1024 * 1024
MAX_CONTRIBUTION_BYTES = 32 * 1024 * 1024
MAX_SPANS = 64  # inference.attribution.AttributionConfig.max_spans: a receipt with fewer lists them all
POSITIONS_VERSION = 2  # receipts files from this version on carry every span's contributionStart
_ATTRIBUTION_KEYS = ("attribution", "datasetAttribution", "spans")
_FILE_KEYS = ("leafIndex", "digest")


class AuditError(NodeError):
    """The batch cannot be audited at all (not committed, receipts file missing or malformed)."""


@dataclass(frozen=True)
class Discrepancy:
    rule: str
    detail: str
    leaf_index: int | None = None
    request_id: str | None = None
    slashable: str | None = None  # how to slash it without arbitrator, when the leaf alone proves it


@dataclass
class AuditReport:
    node: str
    seq: int
    receipts_cid: str
    receipts: int = 0
    settled: bool = False
    discrepancies: list[Discrepancy] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    expected_entries: list[tuple[int, int, int]] = field(default_factory=list)
    expected_amounts: dict[int, int] = field(default_factory=dict)
    # leaf index -> the receipt file (receipt, batch, proof) `loranode node dispute --attribution` reads
    slash_files: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.discrepancies

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        d["expected_amounts"] = {str(k): str(v) for k, v in self.expected_amounts.items()}
        d["expected_entries"] = [[a, b, str(w)] for a, b, w in self.expected_entries]
        d["slash_files"] = {str(k): v for k, v in self.slash_files.items()}
        return d


def _topic_uint(n: int) -> str:
    return "0x" + n.to_bytes(32, "big").hex()


def _topic_addr(a: str) -> str:
    return "0x" + "00" * 12 + bytes.fromhex(a[2:]).hex()


def _event_logs(c, contract, name: str, *topics: str) -> list:
    logs = c.w3.eth.get_logs(
        {
            "address": contract.address,
            "fromBlock": c.deployment.start_block,
            "toBlock": "latest",
            "topics": [contract.event_topic(name), *topics],
        }
    )
    return c.decode_events(logs)


def find_commit(c, seq: int, node: str | None):
    """The BatchCommitted event of batch `seq` (of `node`, or of the only node that committed a `seq`)."""
    topics = [_topic_uint(seq)] if node is None else [_topic_addr(node), _topic_uint(seq)]
    evs = _event_logs(c, c.receipts, "BatchCommitted", *([None, *topics] if node is None else topics))
    if not evs:
        who = f"node {node}" if node else "any node"
        raise AuditError(f"batch {seq} of {who} is not committed in ReceiptLog {c.receipts.address}")
    nodes = {e.node for e in evs}
    if len(nodes) > 1:
        raise AuditError(f"several nodes committed a batch {seq}: pass --node (one of {sorted(nodes)})")
    return evs[-1]


def _load_json_file(path, max_bytes: int, what: str) -> Any:
    if path.is_dir():
        raise AuditError(f"{what} is a folder, not a JSON file")
    with open(path, "rb") as f:
        raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise AuditError(f"{what} is over {max_bytes} bytes")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AuditError(f"{what} is not JSON: {e}") from None


async def fetch_receipts_file(backends, cache, cid: str, max_bytes: int = MAX_RECEIPTS_FILE_BYTES) -> dict:
    """The receipts file `cid`, CID-verified and size-capped; AuditError with the reason otherwise."""
    from node.ipfs import IpfsError, fetch_verified

    try:
        path = await fetch_verified(backends, cid, max_bytes, cache)
    except IpfsError as e:
        raise AuditError(f"receipts file {cid}: {e}") from None
    doc = _load_json_file(path, max_bytes, f"receipts file {cid}")
    if not isinstance(doc, dict) or not isinstance(doc.get("receipts"), list):
        raise AuditError(f"receipts file {cid} has no `receipts` list")
    return doc


class _Contributions:
    """Contribution text by id, fetched by the CID the registry holds (verified), memoised."""

    def __init__(self, c, backends, cache, max_bytes: int, tokenizer=None):
        self.c, self.backends, self.cache, self.max_bytes = c, backends, cache, max_bytes
        self.tokenizer = tokenizer
        self.info: dict[int, Any] = {}
        self.text: dict[int, str | Exception] = {}
        self.tokens: dict[int, Any] = {}

    def dataset_of(self, cid: int) -> int | None:
        from chain.errors import ContractRevert

        if cid not in self.info:
            try:
                self.info[cid] = self.c.datasets.get_contribution(cid)
            except ContractRevert:
                self.info[cid] = None
        info = self.info[cid]
        return info.dataset_id if info is not None else None

    async def text_of(self, cid: int) -> str | Exception:
        from node.ipfs import IpfsError, fetch_verified

        if cid not in self.text:
            if self.dataset_of(cid) is None:
                self.text[cid] = AuditError(f"contribution {cid} does not exist")
            else:
                try:
                    path = await fetch_verified(self.backends, self.info[cid].cid, self.max_bytes, self.cache)
                    self.text[cid] = path.read_bytes().decode("utf-8")
                except (IpfsError, OSError, UnicodeDecodeError, IsADirectoryError) as e:
                    self.text[cid] = e
        return self.text[cid]

    def tokens_of(self, cid: int, text: str):
        """The contribution's token ids exactly as the attribution index tokenizes them."""
        from inference.attribution.text import tokenize

        if cid not in self.tokens:
            self.tokens[cid] = tokenize(self.tokenizer, text)
        return self.tokens[cid]


def _spans_weights(spans: list[dict], m: int) -> dict[int, int]:
    from inference.attribution.weights import coverage, credit, to_bps

    runs: dict[int, list[tuple[int, int]]] = {}
    for s in spans:
        runs.setdefault(int(s["contributionId"]), []).append((int(s["start"]), int(s["end"])))
    return to_bps(credit({cid: coverage(r, m) for cid, r in runs.items()}))


async def audit_batch(
    c,
    backends: Sequence,
    cache,
    seq: int,
    node: str | None = None,
    *,
    max_bytes: int = MAX_RECEIPTS_FILE_BYTES,
    contribution_max_bytes: int = MAX_CONTRIBUTION_BYTES,
    tokenizer=None,
) -> AuditReport:
    """Audit batch `seq` (see the module docstring). Raises AuditError when it cannot be audited.
    `tokenizer`: the base model's, to check span positions in the contributions (else a note)."""
    from chain.eip712 import receipt_digest
    from chain.merkle import StandardMerkleTree

    ev = find_commit(c, seq, to_checksum_address(node) if node else None)
    node = ev.node
    report = AuditReport(node=node, seq=seq, receipts_cid=ev.receipts_cid)
    doc = await fetch_receipts_file(backends, cache, ev.receipts_cid, max_bytes)
    entries = doc["receipts"]
    report.receipts = len(entries)
    if len(entries) != ev.count:
        report.discrepancies.append(Discrepancy("leaf", f"the file has {len(entries)} receipts, the batch commits {ev.count}"))
    contributions = _Contributions(c, backends, cache, contribution_max_bytes, tokenizer)
    version = doc.get("version")
    require_positions = isinstance(version, int) and not isinstance(version, bool) and version >= POSITIONS_VERSION
    if tokenizer is None:
        report.notes.append("no tokenizer: span positions in the contributions not checked")
    splits: dict[int, dict[int, int]] = {}

    def split_of(adapter_id: int) -> dict[int, int]:
        if adapter_id not in splits:
            a = c.adapters.get_adapter(adapter_id)
            splits[adapter_id] = dict(zip(a.dataset_ids, a.dataset_bps, strict=True))
        return splits[adapter_id]

    digests: dict[int, bytes] = {}
    good: list[dict] = []
    provable: dict[int, tuple[Any, dict, list[Discrepancy]]] = {}  # leaf -> (signed, raw, its one-leaf discrepancies)
    for pos, raw in enumerate(entries):
        leaf = raw.get("leafIndex", pos) if isinstance(raw, dict) else pos
        rid = raw.get("requestId") if isinstance(raw, dict) else None
        leaf_ok = isinstance(leaf, int) and not isinstance(leaf, bool) and leaf not in digests and 0 <= leaf < len(entries)
        signed, problems, notes = await check_receipt(c, raw, node, contributions, split_of, require_positions)
        if signed is not None and not leaf_ok:
            problems.insert(0, ("leaf", f"leaf index {leaf!r} is not a unique index into the batch"))
        elif signed is not None:
            digest = receipt_digest(signed.receipt, c.chain_id, c.receipts.address)
            digests[leaf] = digest
            if str(raw.get("digest", "")).lower() != "0x" + digest.hex():
                problems.insert(0, ("leaf", "the stated digest is not the receipt's EIP-712 digest"))
        for rule, detail in problems:
            report.discrepancies.append(
                Discrepancy(rule, detail, leaf if isinstance(leaf, int) else None, rid if isinstance(rid, str) else None)
            )
            if rule in ONE_LEAF_RULES and signed is not None and leaf in digests:
                provable.setdefault(leaf, (signed, raw, []))[2].append(report.discrepancies[-1])
        report.notes += [f"leaf {leaf}: {n}" for n in notes]
        if signed is not None and not any(rule in ("attribution-hash", "attribution-total") for rule, _ in problems):
            good.append(raw)

    if len(digests) == len(entries) and entries:
        tree = StandardMerkleTree.of([[digests[i]] for i in range(len(entries))], ["bytes32"])
        if tree.root != c.receipts.batch_root(node, seq):
            report.discrepancies.append(Discrepancy("leaf", "the receipts' Merkle root is not the root committed on chain"))
        else:
            _mark_slashable(c, report, tree, provable)
    elif entries:
        report.discrepancies.append(Discrepancy("leaf", "some receipts could not be read: the root cannot be rebuilt"))

    # what the node settled, against the rule applied to the receipts
    try:
        expected = to_entries(batch_weights(good, split_of, contributions.dataset_of))
    except RuleError as e:
        report.discrepancies.append(Discrepancy("settled-weights", f"the receipts cannot be weighed: {e}"))
        return report
    report.expected_entries = expected
    settled = _event_logs(c, c.pool, "BatchSettled", _topic_addr(node), _topic_uint(seq))
    if not settled:
        report.notes.append("not settled in AttributionPool yet")
        return report
    report.settled = True
    drained = {e.dataset_id: e.amount for e in _event_logs(c, c.pool, "PoolDrained", _topic_addr(node), _topic_uint(seq))}
    report.expected_amounts = payouts(expected, drained)[0]
    if entries_hash(expected) == settled[-1].entries_hash:
        return report  # the node settled exactly the receipts' entries, so it paid exactly their amounts
    stated = settled_entries(c, settled[-1])
    if stated is None:
        report.discrepancies.append(
            Discrepancy(
                "settled-weights",
                f"the {settled[-1].entry_count} settled entries (hash 0x{settled[-1].entries_hash.hex()}) "
                f"are not the {len(expected)} entries the receipts give (hash 0x{entries_hash(expected).hex()}); the settle "
                "transaction's input is not a direct AttributionPool.settle call, so the entries that differ are not listed",
            )
        )
        return report
    want, have = {(d, cid): w for d, cid, w in expected}, {(d, cid): w for d, cid, w in stated}
    for key in sorted(set(want) | set(have)):
        d, cid = key
        if cid and contributions.dataset_of(cid) != d:
            report.discrepancies.append(
                Discrepancy(
                    "settled-weights",
                    f"credits contribution {cid} under dataset {d}, but it belongs to dataset {contributions.dataset_of(cid)}",
                )
            )
        elif want.get(key, 0) != have.get(key, 0):
            who = f"contribution {cid}" if cid else "the unattributed part"
            report.discrepancies.append(
                Discrepancy(
                    "settled-weights",
                    f"dataset {d}, {who}: settled weight {have.get(key, 0)}, the receipts give {want.get(key, 0)}",
                )
            )
    paid_expected = report.expected_amounts
    paid_stated, _ = payouts(stated, drained)
    for cid in sorted(set(paid_expected) | set(paid_stated)):
        if paid_expected.get(cid, 0) != paid_stated.get(cid, 0):
            report.discrepancies.append(
                Discrepancy(
                    "settled-amounts",
                    f"contribution {cid}: paid {paid_stated.get(cid, 0)}, the receipts give {paid_expected.get(cid, 0)}",
                )
            )
    return report


def _raw_attribution_hash(ids: list[int], bps: list[int]) -> bytes:
    """keccak256(abi.encode(ids, bps)) as the contracts compute it, without chain.eip712's range
    checks: a lying node's weights must still be compared with what it signed."""
    from eth_abi import encode
    from eth_utils import keccak

    return keccak(encode(["uint256[]", "uint256[]"], [ids, bps]))


# Rules the chain checks from one committed leaf (AttributionPool.attributionFault).
ONE_LEAF_RULES = ("adapter-datasets", "attribution-total")


def _mark_slashable(c, report: AuditReport, tree, provable: dict[int, tuple[Any, dict, list[Discrepancy]]]) -> None:
    """Confirm each one-leaf discrepancy on chain and say how to slash it (the chain decides, not this code)."""
    from chain.eip712 import receipt_digest

    for leaf, (signed, raw, found) in sorted(provable.items()):
        weights = leaf_attribution(raw)
        ids = sorted(weights)
        proof = tree.proof(leaf)
        if not c.pool.attribution_fault(signed.receipt, report.seq, proof, ids, [weights[i] for i in ids]):
            continue
        digest = receipt_digest(signed.receipt, c.chain_id, c.receipts.address)
        if c.nodes.attribution_slashed(digest):
            how = "slashed already (NodeRegistry.slashAttribution)"
        else:
            report.slash_files[leaf] = {
                "receipt": {k: v for k, v in raw.items() if k not in _FILE_KEYS},
                "batch": {"seq": report.seq},
                "proof": ["0x" + p.hex() for p in proof],
            }
            how = (
                f"slashable without arbitrator: loranode node dispute leaf-{leaf}.json --attribution "
                "(file written by attribution audit --slash-files DIR; NodeRegistry.slashAttribution)"
            )
        for i, d in enumerate(report.discrepancies):
            if any(d is f for f in found):
                report.discrepancies[i] = Discrepancy(d.rule, d.detail, d.leaf_index, d.request_id, how)


def settled_entries(c, settled) -> list[Entry] | None:
    """The entries of a BatchSettled event, read from its transaction's calldata and checked against
    the logged hash; None when the transaction is not a direct AttributionPool.settle or
    UsageEscrow.redeemAndSettle call (e.g. one sent through a contract wallet) or does not match."""
    tx = c.w3.eth.get_transaction(settled.tx_hash)
    to = (tx.get("to") or "").lower()
    direct = {c.pool.address.lower(): (c.pool, "settle"), c.escrow.address.lower(): (c.escrow, "redeemAndSettle")}
    if to not in direct:
        return None
    binding, name = direct[to]
    try:
        fn, args = binding.contract.decode_function_input(tx["input"])
    except ValueError:
        return None
    if fn.fn_name != name or args.get("seq") != settled.seq:
        return None
    entries = [unpack(int(word)) for word in args["entries"]]
    return entries if entries_hash(entries) == settled.entries_hash else None


async def check_receipt(c, raw: Any, node: str, contributions: _Contributions, split_of, require_positions: bool = False):
    """(SignedReceipt or None, [(rule, detail)], notes) for one receipt JSON of `node`: signature,
    attribution hash, adapter datasets, spans, weights from spans (not the Merkle leaf: see callers).
    `require_positions`: a span without contributionStart is a discrepancy, not a note."""
    from chain.eip712 import SignedReceipt, TypedDataError

    if not isinstance(raw, dict):
        return None, [("leaf", "not a receipt object")], []
    try:
        signed = SignedReceipt.from_json({k: v for k, v in raw.items() if k not in (*_ATTRIBUTION_KEYS, *_FILE_KEYS)})
    except TypedDataError as e:
        return None, [("leaf", f"malformed receipt: {e}")], []
    r = signed.receipt
    problems: list[tuple[str, str]] = []
    notes: list[str] = []
    if r.node != node or signed.signer(c.chain_id, c.receipts.address) != node:
        problems.append(("leaf", f"not signed by the node {node}"))
    try:
        stated = leaf_attribution(raw)
    except RuleError as e:
        return signed, problems + [("attribution-hash", str(e))], notes
    ids = sorted(stated)
    hash_ok = _raw_attribution_hash(ids, [stated[i] for i in ids]) == r.attribution_hash
    if not hash_ok:
        problems.append(("attribution-hash", "the attribution weights do not hash to the signed attributionHash"))
    try:
        weights = attribution_of(raw)
    except RuleError as e:  # past 10,000 bps in all: signed (hash right), a lie the leaf proves
        return signed, problems + ([("attribution-total", str(e))] if hash_ok else []), notes
    if r.adapter_id == 0 and weights:
        problems.append(("adapter-datasets", "a base-model answer carries an attribution"))
    split = split_of(r.adapter_id) if r.adapter_id else {}
    for cid in ids:
        d = contributions.dataset_of(cid)
        if d not in split:
            problems.append(
                (
                    "adapter-datasets",
                    f"contribution {cid} (dataset {d}) is outside adapter {r.adapter_id}'s datasets {sorted(split)}",
                )
            )
    spans = raw.get("spans") or []
    if not isinstance(spans, list):
        problems.append(("span", "spans is not a list"))
        spans = []
    spans_ok = True
    unplaced = 0
    for k, s in enumerate(spans):
        problem = await _check_span(s, weights, r.completion_tokens, contributions)
        if problem is _UNPLACED:
            if not require_positions:
                unplaced += 1
                continue
            problem = "no contributionStart (required in a receipts file of this version)"
        if problem:
            spans_ok = False
            problems.append(("span", f"spans[{k}]: {problem}"))
    if unplaced:
        notes.append(
            f"unverifiable-position: {unplaced} span(s) state no contributionStart (a receipt from before span positions)"
        )
    if spans_ok and weights and len(spans) < MAX_SPANS:
        got = _spans_weights(spans, r.completion_tokens)
        if got != weights:
            problems.append(("weights", f"the spans give {got}, the receipt states {weights}"))
    elif spans_ok and len(spans) >= MAX_SPANS:
        notes.append(f"{len(spans)} spans (the attributor's cap): weights not recomputed")
    return signed, problems, notes


_UNPLACED = "unplaced"  # _check_span: every other check passed, but the span states no position


async def _check_span(s: Any, weights: dict[int, int], completion_tokens: int, contributions: _Contributions) -> str | None:
    if not isinstance(s, dict):
        return "not an object"
    try:
        cid, d, start, end = (int(s[k]) for k in ("contributionId", "datasetId", "start", "end"))
    except (KeyError, TypeError, ValueError):
        return "needs integer contributionId, datasetId, start, end"
    if cid not in weights:
        return f"contribution {cid} has no weight in the receipt"
    if contributions.dataset_of(cid) != d:
        return f"contribution {cid} is not in dataset {d}"
    if not 0 <= start < end <= completion_tokens:
        return f"[{start}, {end}) is not inside the {completion_tokens} completion tokens"
    text = s.get("text")
    if not isinstance(text, str) or not text.strip():
        return "no text to check against the contribution"
    content = await contributions.text_of(cid)
    if isinstance(content, Exception):
        return f"contribution {cid} content unavailable: {content}"
    if text not in content:
        return f"its text {text[:60]!r} does not occur in contribution {cid}"
    at = s.get("contributionStart")
    if at is None:
        return _UNPLACED
    if not isinstance(at, int) or isinstance(at, bool) or at < 0:
        return f"contributionStart {at!r} is not a non-negative integer"
    if contributions.tokenizer is None:
        return None  # audit_batch notes it once
    tokens = contributions.tokens_of(cid, content)
    n = end - start  # the span's output tokens equal the contribution's tokens at its position
    if at + n > tokens.shape[0]:
        return f"contribution {cid} tokens [{at}, {at + n}) run past its {tokens.shape[0]} tokens"
    if contributions.tokenizer.decode(tokens[at : at + n].tolist()) != text:
        return f"contribution {cid} tokens [{at}, {at + n}) are not its text {text[:60]!r}"
    return None


def _split_reader(c) -> Callable[[int], dict[int, int]]:
    splits: dict[int, dict[int, int]] = {}

    def split_of(adapter_id: int) -> dict[int, int]:
        if adapter_id not in splits:
            a = c.adapters.get_adapter(adapter_id)
            splits[adapter_id] = dict(zip(a.dataset_ids, a.dataset_bps, strict=True))
        return splits[adapter_id]

    return split_of


async def verify_with_output(
    c, backends: Sequence, cache, body: dict, output: str, tokenizer=None, *, contribution_max_bytes: int = MAX_CONTRIBUTION_BYTES
) -> AuditReport:
    """Everything a payer holding the answer can check about its receipt: the node's signature, the
    output hash, the attribution hash, the adapter's datasets, every span (in the output at its stated
    token position when `tokenizer` re-encodes the output losslessly, and in its contribution), the
    weights from the spans, and, when the body carries a batch and proof, the leaf against ReceiptLog."""
    from chain.eip712 import output_hash

    receipt = body.get("receipt")
    raw = receipt if isinstance(receipt, dict) else body
    node = raw.get("node") if isinstance(raw.get("node"), str) else None
    try:
        node = to_checksum_address(node) if node else None
    except ValueError:
        node = None
    if node is None:
        raise AuditError("the receipt has no valid `node` address")
    got_batch = body.get("batch")
    batch = got_batch if isinstance(got_batch, dict) else {}
    report = AuditReport(node=node, seq=int(batch.get("seq") or 0), receipts_cid=str(batch.get("cid") or ""))
    contributions = _Contributions(c, backends, cache, contribution_max_bytes, tokenizer)
    signed, problems, notes = await check_receipt(c, raw, node, contributions, _split_reader(c))
    report.receipts = 1 if signed is not None else 0
    if tokenizer is None:
        notes.append("no tokenizer: span positions in the output and the contributions not checked")
    rid = raw.get("requestId") if isinstance(raw.get("requestId"), str) else None
    if signed is not None:
        if output_hash(output) != signed.receipt.output_hash:
            problems.append(("output", "the output's hash is not the receipt's outputHash: not this answer"))
        else:
            problems += _spans_in_output(raw.get("spans") or [], output, tokenizer, notes)
        proof = body.get("proof")
        if report.seq and isinstance(proof, list) and len(proof) <= 64 and all(isinstance(p, str) for p in proof):
            try:
                ok = c.receipts.verify_receipt(signed.receipt, report.seq, [bytes.fromhex(p.removeprefix("0x")) for p in proof])
            except ValueError:
                ok = False
            if not ok:
                problems.append(("leaf", f"the proof does not lead to batch {report.seq}'s committed root"))
            report.settled = bool(ok) and int(c.pool.settled_seq(node)) >= report.seq
        else:
            notes.append("no batch and proof in the receipt JSON: not checked against ReceiptLog (not committed yet?)")
    for rule, detail in problems:
        report.discrepancies.append(Discrepancy(rule, detail, None, rid))
    report.notes += notes
    return report


def _spans_in_output(spans: list, output: str, tokenizer, notes: list[str]) -> list[tuple[str, str]]:
    problems = []
    ids = None
    if tokenizer is not None:
        ids = tokenizer(output, add_special_tokens=False).input_ids
        if tokenizer.decode(ids) != output:
            notes.append("the output does not re-encode losslessly: span positions checked by text only")
            ids = None
    for k, s in enumerate(spans):
        if not isinstance(s, dict) or not isinstance(s.get("text"), str):
            continue  # check_receipt reported it
        text = s["text"]
        if text not in output:
            problems.append(("span", f"spans[{k}]: its text {text[:60]!r} is not in the output"))
        elif ids is not None:
            try:
                start, end = int(s["start"]), int(s["end"])
            except (KeyError, TypeError, ValueError):
                continue
            if tokenizer.decode(ids[start:end]) != text:
                problems.append(("span", f"spans[{k}]: output tokens [{start}, {end}) are not its text {text[:60]!r}"))
    return problems
