"""`audit_batch` against honest and lying nodes, on a private anvil with the real contracts and the
embedded IPFS store. Receipts are built and signed here as a node would (no model needed: the
audit reads only public data); each lie is caught with the rule it breaks:

- a node inflates one contribution's settled weight (and so its amount);
- a node credits a contribution of another dataset (the contract refuses to pay it; the audit
  names it; a receipt attributing it is provable on chain from one leaf, and the audit's slash file
  slashes the node without arbitrator, once);
- a node signs an attribution past 10,000 bps (likewise slashable from the leaf);
- a node invents a span that does not occur in the contribution;
- a node states a span at a wrong position in the contribution, or one whose text occurs there
  but is fewer tokens than the span claims (checked with the base model's tokenizer); a span
  without a position is a lie in a version-2 receipts file and a note in a version-1 one.
Hostile input: an uncommitted batch, a receipts file no backend has, a CID that is not one, a file
over the size cap, a file that is not JSON, and a file whose receipts are not the committed ones.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from eth_account import Account
from web3 import Web3

from chain.contract_types import AttributionRefused
from chain.contracts import Contracts
from chain.deploy import deploy
from chain.devchain import DEV_PRIVATE_KEYS
from chain.eip712 import Receipt, Voucher, attribution_hash, output_hash, receipt_digest, sign_digest, sign_voucher
from chain.merkle import StandardMerkleTree
from node.attribution_rewards.audit import AuditError, audit_batch
from node.attribution_rewards.rule import batch_weights, payouts, to_entries
from node.ipfs import ContentCache, EmbeddedStore

KEYS = dict(
    zip(
        ["deployer", "curator", "alice", "bob", "payer", "honest", "inflater", "crosser", "inventor", "hostile"],
        DEV_PRIVATE_KEYS,
        strict=True,
    )
)
ACCT = {k: Account.from_key(v) for k, v in KEYS.items()}
TEXT = {
    1: "The harbour was quiet that morning and the gulls were loud over the boats.",
    2: "To bake rye bread, mix flour, water, salt and a sourdough starter.",
    3: "Robots speak in beeps and whirs when nobody is listening.",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from chain.devchain import Anvil

    tmp = tmp_path_factory.mktemp("audit")
    with Anvil() as anvil:
        w3 = Web3(Web3.HTTPProvider(anvil.url))
        dep = deploy(anvil.url, KEYS["deployer"], out_dir=None, w3=w3, protocol_fee_bps=500)
        c = Contracts(w3, dep)
        dep_path = dep.save(tmp / "deployment.json")
        store = EmbeddedStore(tmp / "ipfs")
        c.datasets.create_dataset(ACCT["curator"], "harbour", "MIT", "")
        c.datasets.create_dataset(ACCT["curator"], "robots", "MIT", "")
        for cid_id, (who, ds) in {1: ("alice", 1), 2: ("bob", 1), 3: ("alice", 2)}.items():
            (tmp / f"c{cid_id}.txt").write_text(TEXT[cid_id])
            cid = store.add_path_sync(tmp / f"c{cid_id}.txt")
            c.datasets.contribute(ACCT[who], ds, cid, 20)
            c.datasets.accept(ACCT["curator"], cid_id, 1)
        c.adapters.register(ACCT["curator"], "m", "bafyadapter", 4, 10**15, 6000, [1], [4000])
        nodes = ("honest", "inflater", "crosser", "inventor", "hostile")
        c.token.mint(ACCT["deployer"], ACCT["payer"].address, len(nodes) * 10**21)
        c.token.approve(ACCT["payer"], c.escrow.address, len(nodes) * 10**21)
        bond = c.nodes.dispute_terms().min_bond  # only a staked node redeems
        for who in nodes:  # escrow is earmarked per (payer, node)
            c.escrow.deposit(ACCT["payer"], ACCT[who].address, 10**21)
            c.token.mint(ACCT["deployer"], ACCT[who].address, bond)
            c.token.approve(ACCT[who], c.nodes.address, bond)
            c.nodes.register(ACCT[who], "http://127.0.0.1:8080", ["m"], 0, bond)
        yield {"c": c, "store": store, "tmp": tmp, "url": anvil.url, "deployment": dep_path}


def _span(cid: int, ds: int, start: int, end: int, text: str) -> dict:
    return {"contributionId": cid, "datasetId": ds, "start": start, "end": end, "text": text}


HONEST = [  # (adapter cost, attribution, spans): spans give exactly these weights
    (3 * 10**15, {1: 10_000}, [_span(1, 1, 0, 10, "the gulls were loud")]),
    (10**15, {1: 6000, 2: 4000}, [_span(1, 1, 0, 6, "quiet that morning"), _span(2, 1, 6, 10, "rye bread")]),
    (2 * 10**15, {}, []),
]


async def _batch(world, who: str, receipts=HONEST, *, lie=None, cid_override=None, version=1) -> tuple[int, dict]:
    """Sign `receipts` as node `who`, pin the file, commit, redeem, settle (with `lie(entries)` applied)."""
    c, store, tmp, node = world["c"], world["store"], world["tmp"], ACCT[who]
    seq = c.receipts.last_seq(node.address) + 1
    docs, digests, total = [], [], 0
    for i, (cost, attr, spans) in enumerate(receipts):
        ids = sorted(attr)
        r = Receipt(
            request_id=bytes([seq, i]) * 16,
            payer=ACCT["payer"].address,
            node=node.address,
            adapter_id=1,
            seq=100 * seq + i,
            prompt_tokens=5,
            completion_tokens=10,
            compute_cost=0,
            adapter_cost=cost,
            output_hash=output_hash(f"answer {i}"),
            attribution_hash=_any_attribution_hash(ids, [attr[k] for k in ids]),
            timestamp=1_700_000_000 + i,
        )
        digest = receipt_digest(r, c.chain_id, c.receipts.address)
        digests.append(digest)
        total += cost
        docs.append(
            {
                "leafIndex": i,
                "digest": "0x" + digest.hex(),
                **r.to_json(),
                "signature": "0x" + sign_digest(digest, node).hex(),
                "attribution": {str(k): v for k, v in attr.items()},
                "datasetAttribution": {},
                "spans": spans,
            }
        )
    tree = StandardMerkleTree.of([[d] for d in digests], ["bytes32"])
    path = tmp / f"{who}-{seq}.json"
    path.write_text(json.dumps({"version": version, "node": node.address, "batchSeq": seq, "receipts": docs}))
    cid = cid_override or store.add_path_sync(path)
    c.receipts.commit_batch(node, seq, tree.root, len(docs), cid)
    col = c.escrow.collected(ACCT["payer"].address, node.address, 1)
    v = Voucher(ACCT["payer"].address, node.address, 1, 0, col.adapter + total)
    c.escrow.redeem(node, [v], [sign_voucher(v, ACCT["payer"].key, c.chain_id, c.escrow.address)])
    weighable = [d for d in docs if sum(d["attribution"].values()) <= 10_000]  # as the audit: a lie past it weighs nothing
    entries = to_entries(batch_weights(weighable, lambda a: {1: 4000}, lambda k: {1: 1, 2: 1, 3: 2}.get(k)))
    settled = c.pool.settle(node, seq, lie(entries) if lie else entries)
    return seq, {"entries": entries, "settled": settled, "drained": (total - total * 500 // 10_000) * 4000 // 10_000}


def _any_attribution_hash(ids, bps) -> bytes:
    """What a node signs, lies included (chain.eip712.attribution_hash refuses weights past 10,000 bps)."""
    if sum(bps) <= 10_000:
        return attribution_hash(ids, bps)
    from eth_abi import encode
    from eth_utils import keccak

    return keccak(encode(["uint256[]", "uint256[]"], [ids, bps]))


def _slash_with_file(c, body: dict, fisherman):
    """What `loranode node dispute FILE --attribution` sends, from the audit's slash file."""
    from node.attribution_rewards.rule import leaf_attribution
    from node.services.receipt_files import batch_proof, signed_receipt

    found = batch_proof(body)
    assert found is not None
    weights = leaf_attribution(body["receipt"])
    ids = sorted(weights)
    r = signed_receipt(body["receipt"]).receipt
    return c.nodes.slash_attribution(fisherman, r, *found, ids, [weights[i] for i in ids])


async def _audit(world, seq, who, **kw):
    return await audit_batch(
        world["c"], [world["store"]], ContentCache(world["tmp"] / f"cache-{who}-{seq}", 1 << 26), seq, ACCT[who].address, **kw
    )


async def test_honest_batch_passes_and_amounts_match(world):
    seq, info = await _batch(world, "honest")
    report = await _audit(world, seq, "honest")
    assert report.ok, report.discrepancies
    assert report.settled and report.receipts == 3 and report.expected_entries == info["entries"]
    paid, _ = payouts(info["entries"], {1: info["drained"]})
    assert report.expected_amounts == paid and paid[1] > paid[2] > 0
    assert world["c"].datasets.pending_attributed(1) >= paid[1]  # what the chain credited


async def test_inflated_contribution_is_caught(world):
    def inflate(entries):
        return [(d, c, w * 3 if c == 2 else w) for d, c, w in entries]

    seq, _ = await _batch(world, "inflater", lie=inflate)
    report = await _audit(world, seq, "inflater")
    rules = {(d.rule, "contribution 2" in d.detail) for d in report.discrepancies}
    assert ("settled-weights", True) in rules and ("settled-amounts", True) in rules
    assert all(d.rule.startswith("settled") for d in report.discrepancies)


async def test_inflated_weights_are_caught_by_hash_when_the_calldata_is_unreadable(world, monkeypatch):
    """BatchSettled logs a hash of the entries: a settle sent through a contract wallet has calldata
    the audit cannot decode, yet the mismatch with the receipts' entries is still reported."""
    from node.attribution_rewards import audit

    def inflate(entries):
        return [(d, c, w + 1 if c == 1 else w) for d, c, w in entries]

    seq, _ = await _batch(world, "inflater", lie=inflate)
    monkeypatch.setattr(audit, "settled_entries", lambda c, settled: None)
    report = await _audit(world, seq, "inflater")
    (d,) = report.discrepancies
    assert d.rule == "settled-weights" and "are not the 3 entries the receipts give" in d.detail


async def test_contribution_of_another_dataset_is_caught_and_not_paid(world):
    c = world["c"]

    def cross(entries):
        return sorted(entries + [(1, 3, 10**18)])

    receipts = HONEST + [(10**15, {3: 10_000}, [_span(3, 2, 0, 10, "beeps and whirs")])]
    seq, info = await _batch(world, "crosser", receipts, lie=cross)
    refused = [e for e in c.events_of(info["settled"]) if isinstance(e, AttributionRefused)]
    assert [(e.contribution_id, e.dataset_id) for e in refused] == [(3, 1)]  # the contract pays it by weight instead
    assert c.datasets.pending_attributed(3) == 0
    report = await _audit(world, seq, "crosser")
    details = [(d.rule, d.leaf_index, d.detail) for d in report.discrepancies]
    assert any(r == "adapter-datasets" and leaf == 3 and "contribution 3" in t for r, leaf, t in details)
    assert any(r == "settled-weights" and "contribution 3 under dataset 1" in t for r, _, t in details)
    # the lying leaf alone proves it on chain (what a slash without arbitrator can call)
    doc_receipt = _receipt_of(world, "crosser", seq, 3)
    tree_proof = _proof(world, "crosser", seq, 3)
    assert c.pool.attribution_fault(doc_receipt, seq, tree_proof, [3], [10_000]) == 1  # OUTSIDE_ADAPTER
    # the audit says it is slashable, and how; its file condemns the node's bond at once, once, and
    # the slash is executed after the dispute window of the node's last commit
    (d,) = [d for d in report.discrepancies if d.rule == "adapter-datasets"]
    assert "slashable without arbitrator" in d.slashable and "--attribution" in d.slashable
    assert all(x.slashable is None for x in report.discrepancies if x.rule != "adapter-datasets")
    assert list(report.slash_files) == [3]
    bond = c.nodes.get_node(ACCT["crosser"].address).bond
    before = c.token.balance_of(ACCT["alice"].address)
    _slash_with_file(c, json.loads(json.dumps(report.slash_files[3])), ACCT["alice"])
    assert c.nodes.get_node(ACCT["crosser"].address).condemned and not c.nodes.can_redeem(ACCT["crosser"].address)
    c.w3.provider.make_request("evm_increaseTime", [c.nodes.dispute_terms().dispute_window + 1])
    c.w3.provider.make_request("evm_mine", [])
    c.nodes.execute_condemnation(ACCT["bob"], ACCT["crosser"].address)  # anyone
    assert c.token.balance_of(ACCT["alice"].address) - before == bond // 2
    again = await _audit(world, seq, "crosser")
    (d,) = [d for d in again.discrepancies if d.rule == "adapter-datasets"]
    assert "slashed already" in d.slashable and not again.slash_files


async def test_attribution_past_the_whole_answer_is_slashable(world):
    c, node = world["c"], ACCT["crosser"]
    bond = c.nodes.dispute_terms().min_bond  # bonded again (the previous test may have slashed it)
    c.token.mint(ACCT["deployer"], node.address, bond)
    c.token.approve(node, c.nodes.address, bond)
    c.nodes.add_bond(node, bond)
    receipts = HONEST + [(10**15, {1: 6000, 2: 6000}, [])]
    seq, _ = await _batch(world, "crosser", receipts)
    report = await _audit(world, seq, "crosser")
    (d,) = report.discrepancies
    assert d.rule == "attribution-total" and d.leaf_index == 3 and "slashable without arbitrator" in d.slashable
    # the CLI says so and writes the file `node dispute --attribution` reads
    from typer.testing import CliRunner

    from node.cli.app import app

    out_dir = world["tmp"] / "slash"
    args = ["attribution", "audit", "--batch", str(seq), "--node", node.address, "--rpc-url", world["url"]]
    args += ["--deployment", str(world["deployment"]), "--ipfs-store", str(world["tmp"] / "ipfs"), "--slash-files", str(out_dir)]
    res = await asyncio.to_thread(CliRunner().invoke, app, args)
    text = " ".join(res.output.split())  # rich wraps long lines
    assert res.exit_code == 1 and "slashable without arbitrator: loranode node dispute leaf-3.json --attribution" in text
    body = json.loads((out_dir / "leaf-3.json").read_text())
    tx = _slash_with_file(c, body, ACCT["bob"])
    from chain.contract_types import AttributionSlashed

    (ev,) = [e for e in c.events_of(tx) if isinstance(e, AttributionSlashed)]
    assert ev.fault == 2 and ev.batch_seq == seq  # OVER_TOTAL


async def test_invented_span_is_caught(world):
    receipts = [(10**15, {1: 10_000}, [_span(1, 1, 0, 10, "the lighthouse keeper sang")])]
    seq, _ = await _batch(world, "inventor", receipts)
    report = await _audit(world, seq, "inventor")
    (d,) = report.discrepancies
    assert d.rule == "span" and d.leaf_index == 0 and "does not occur in contribution 1" in d.detail


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from inference.base_model import resolve_model_folder

    return AutoTokenizer.from_pretrained(str(resolve_model_folder(None)), local_files_only=True)


def _placed(tokenizer, at: int, n: int, **override) -> dict:
    """An honest span: contribution 1's tokens [at, at + n) (as the index tokenizes it) copied to output [0, n)."""
    from inference.attribution.text import tokenize

    tokens = tokenize(tokenizer, TEXT[1])
    span = {**_span(1, 1, 0, n, tokenizer.decode(tokens[at : at + n].tolist())), "contributionStart": at}
    return {**span, **override}


async def test_span_at_its_stated_position_passes(world, tokenizer):
    seq, _ = await _batch(world, "inventor", [(10**15, {1: 10_000}, [_placed(tokenizer, 3, 6)])], version=2)
    report = await _audit(world, seq, "inventor", tokenizer=tokenizer)
    assert report.ok, report.discrepancies
    assert not any("position" in n for n in report.notes), report.notes


@pytest.mark.parametrize(
    "lie, expected",
    [
        ({"contributionStart": 4}, "tokens [4, 10) are not its text"),  # the text occurs, but not there
        ({"contributionStart": 10**6}, "run past its"),
        ({"contributionStart": -1}, "not a non-negative integer"),
        ({"contributionStart": "3"}, "not a non-negative integer"),
        ({"end": 10}, "tokens [3, 13) are not its text"),  # claims 10 output tokens for a 6-token text
    ],
)
async def test_span_at_a_wrong_position_is_caught(world, tokenizer, lie, expected):
    seq, _ = await _batch(world, "inventor", [(10**15, {1: 10_000}, [_placed(tokenizer, 3, 6, **lie)])], version=2)
    report = await _audit(world, seq, "inventor", tokenizer=tokenizer)
    (d,) = [d for d in report.discrepancies if d.rule == "span"]
    assert d.leaf_index == 0 and expected in d.detail, d.detail


async def test_span_without_position_is_a_lie_in_version_2_and_a_note_in_version_1(world, tokenizer):
    span = _placed(tokenizer, 3, 6)
    del span["contributionStart"]
    seq, _ = await _batch(world, "inventor", [(10**15, {1: 10_000}, [span])], version=2)
    (d,) = (await _audit(world, seq, "inventor", tokenizer=tokenizer)).discrepancies
    assert d.rule == "span" and "no contributionStart" in d.detail
    seq, _ = await _batch(world, "inventor", [(10**15, {1: 10_000}, [span])], version=1)
    report = await _audit(world, seq, "inventor", tokenizer=tokenizer)
    assert report.ok, report.discrepancies
    assert any(n.startswith("leaf 0: unverifiable-position: 1 span(s)") for n in report.notes), report.notes


async def test_positions_unchecked_without_a_tokenizer_say_so(world, tokenizer):
    seq, _ = await _batch(world, "inventor", [(10**15, {1: 10_000}, [_placed(tokenizer, 3, 6, contributionStart=4)])], version=2)
    report = await _audit(world, seq, "inventor")
    assert report.ok and "no tokenizer: span positions in the contributions not checked" in report.notes


async def test_weights_not_following_from_spans_are_caught(world):
    receipts = [(10**15, {1: 9000, 2: 1000}, [_span(1, 1, 0, 5, "quiet that morning"), _span(2, 1, 5, 10, "rye bread")])]
    seq, _ = await _batch(world, "inventor", receipts)
    report = await _audit(world, seq, "inventor")
    (d,) = report.discrepancies
    assert d.rule == "weights" and "{1: 5000, 2: 5000}" in d.detail


async def test_hostile_receipts_files(world, tmp_path):
    store = world["store"]
    with pytest.raises(AuditError, match="not committed"):
        await _audit(world, 99, "hostile")
    # a CID no backend has
    from node.ipfs import cid_of_bytes

    missing = cid_of_bytes(b"a receipts file nobody pinned")
    seq, _ = await _batch(world, "hostile", cid_override=missing)
    with pytest.raises(AuditError, match=f"receipts file {missing}"):
        await _audit(world, seq, "hostile")
    # not a CID at all
    seq, _ = await _batch(world, "hostile", cid_override="not-a-cid")
    with pytest.raises(AuditError, match="not-a-cid"):
        await _audit(world, seq, "hostile")
    # over the size cap
    seq, _ = await _batch(world, "hostile")
    with pytest.raises(AuditError, match="over 100 bytes|larger|too large|ContentTooLarge"):
        await _audit(world, seq, "hostile", max_bytes=100)
    # not JSON
    (tmp_path / "junk.json").write_bytes(b"\x00\xffnot json")
    seq, _ = await _batch(world, "hostile", cid_override=store.add_path_sync(tmp_path / "junk.json"))
    with pytest.raises(AuditError, match="not JSON"):
        await _audit(world, seq, "hostile")
    # a well-formed file whose receipts are not the committed ones (tampered: a cost raised)
    seq, _ = await _batch(world, "hostile")
    doc = json.loads((world["tmp"] / f"hostile-{seq}.json").read_text())
    doc["receipts"][0]["adapterCost"] = str(int(doc["receipts"][0]["adapterCost"]) * 2)
    (tmp_path / "tampered.json").write_text(json.dumps(doc))
    seq2, _ = await _batch(world, "hostile", cid_override=store.add_path_sync(tmp_path / "tampered.json"))
    report = await _audit(world, seq2, "hostile")
    rules = {d.rule for d in report.discrepancies}
    assert "leaf" in rules and not report.ok


def _docs(world, who, seq):
    return json.loads((world["tmp"] / f"{who}-{seq}.json").read_text())["receipts"]


def _receipt_of(world, who, seq, i):
    from chain.eip712 import SignedReceipt

    raw = _docs(world, who, seq)[i]
    keep = {k: v for k, v in raw.items() if k not in ("leafIndex", "digest", "attribution", "datasetAttribution", "spans")}
    return SignedReceipt.from_json(keep).receipt


def _proof(world, who, seq, i):
    docs = _docs(world, who, seq)
    tree = StandardMerkleTree.of([[bytes.fromhex(d["digest"][2:])] for d in docs], ["bytes32"])
    return tree.proof(i)
