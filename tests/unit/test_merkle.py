"""chain.merkle against the real npm @openzeppelin/merkle-tree (run with node in a subprocess)."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest
from eth_abi import encode as abi_encode
from eth_utils import keccak, to_checksum_address

from chain.merkle import (
    MerkleError,
    MultiProof,
    StandardMerkleTree,
    hash_pair,
    process_proof,
    standard_leaf_hash,
    verify,
    verify_leaf,
    verify_multiproof,
)

REPO = Path(__file__).resolve().parents[2]

# Reads a list of {types, values, multi} on stdin; for each prints the npm tree's root, every
# proof, a multiproof and its dump. One node process for all cases (node start-up is slow).
OZ_SCRIPT = r"""
const { StandardMerkleTree } = require("@openzeppelin/merkle-tree");
let input = "";
process.stdin.on("data", d => (input += d));
process.stdin.on("end", () => {
  const out = JSON.parse(input).map(({ types, values, multi, proofIdx }) => {
    const t = StandardMerkleTree.of(values, types);
    const proofs = proofIdx.map(i => t.getProof(i));
    const mp = t.getMultiProof(multi);
    const leafHashes = mp.leaves.map(v => t.leafHash(v));
    return { root: t.root, proofs, mp: { ...mp, leafHashes }, dump: t.dump() };
  });
  process.stdout.write(JSON.stringify(out));
});
"""
# the receipt leaf at every size; a mixed (address, uint256, bytes) leaf too, except at 1000
# (the npm package's pure-JS keccak makes big trees slow on a loaded 2-core machine)
CASES = [(n, "bytes32") for n in (1, 2, 3, 7, 100, 1000)] + [(n, "mixed") for n in (1, 2, 3, 7, 100)]


def oz(cases: list[dict]) -> list[dict]:
    out = subprocess.run(
        ["node", "-e", OZ_SCRIPT],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=180,
    )
    assert out.returncode == 0, f"node @openzeppelin/merkle-tree failed (run `make install`): {out.stderr[-2000:]}"
    return json.loads(out.stdout)


def hx(b: bytes) -> str:
    return "0x" + b.hex()


def random_values(rng: random.Random, n: int, kind: str) -> tuple[list[str], list[list], list[list]]:
    """(types, python values, JSON values for node): the receipt leaf and a mixed leaf."""
    if kind == "bytes32":
        py = [[rng.randbytes(32)] for _ in range(n)]
        return ["bytes32"], py, [[hx(v[0])] for v in py]
    py = [[to_checksum_address(rng.randbytes(20)), rng.getrandbits(256), rng.randbytes(rng.randrange(0, 70))] for _ in range(n)]
    return ["address", "uint256", "bytes"], py, [[a, str(u), hx(b)] for a, u, b in py]


def make_case(n: int, kind: str):
    rng = random.Random(n * 7919 + len(kind))
    types, py, js = random_values(rng, n, kind)
    multi = sorted(rng.sample(range(n), min(n, 5)))
    proof_idx = list(range(n)) if n <= 100 else sorted({0, n - 1, *rng.sample(range(n), 150)})
    return types, py, js, multi, proof_idx


@pytest.fixture(scope="module")
def oz_reference() -> dict:
    cases = [make_case(n, k) for n, k in CASES]
    refs = oz([{"types": t, "values": js, "multi": m, "proofIdx": pi} for t, _, js, m, pi in cases])
    return dict(zip(CASES, refs, strict=True))


@pytest.mark.parametrize("n, kind", CASES)
def test_matches_openzeppelin(n, kind, oz_reference):
    types, py, js, multi, proof_idx = make_case(n, kind)
    ref = oz_reference[(n, kind)]
    tree = StandardMerkleTree.of(py, types)
    assert tree.root_hex == ref["root"]
    assert [tree.proof_hex(i) for i in proof_idx] == ref["proofs"]
    for i in range(n):
        assert tree.verify(i, tree.proof(i))
        assert verify(tree.root, py[i], tree.proof(i), types)
        assert verify_leaf(tree.root, tree.leaf_hash(py[i]), tree.proof(i))
    mp = tree.multiproof(multi)
    assert [hx(x) for x in mp.proof] == ref["mp"]["proof"]
    assert list(mp.proof_flags) == ref["mp"]["proofFlags"]
    assert [hx(x) for x in mp.leaves] == ref["mp"]["leafHashes"]
    assert verify_multiproof(tree.root, mp)
    # the dumps agree node for node, and each side loads the other's
    dump = tree.dump()
    assert dump["tree"] == ref["dump"]["tree"]
    assert [v["treeIndex"] for v in dump["values"]] == [v["treeIndex"] for v in ref["dump"]["values"]]
    assert StandardMerkleTree.load(ref["dump"]).root == tree.root


def test_leaf_hash_is_double_keccak_of_abi_encoding():
    value = [to_checksum_address(b"\x11" * 20), 5]
    assert standard_leaf_hash(["address", "uint256"], value) == keccak(keccak(abi_encode(["address", "uint256"], value)))
    d = b"\x42" * 32
    assert standard_leaf_hash(["bytes32"], [d]) == keccak(keccak(d)) == standard_leaf_hash(["bytes32"], [hx(d)])


def test_single_leaf_root_is_the_leaf():
    t = StandardMerkleTree.of([[b"\x01" * 32]], ["bytes32"])
    assert t.root == t.leaf_at(0) and t.proof(0) == []


def test_duplicate_leaves_each_get_a_valid_proof():
    d = [b"\x07" * 32]
    t = StandardMerkleTree.of([d, d, [b"\x08" * 32]], ["bytes32"])
    assert len(t) == 3
    for i in range(3):
        assert t.verify(i, t.proof(i))


def test_bad_input_is_refused():
    with pytest.raises(MerkleError, match="at least one leaf"):
        StandardMerkleTree.of([], ["bytes32"])
    with pytest.raises(MerkleError, match="types"):
        StandardMerkleTree.of([[b"\x00" * 32]], [])
    with pytest.raises(MerkleError, match="2 entries but there are 1"):
        StandardMerkleTree.of([[b"\x00" * 32, b"\x00" * 32]], ["bytes32"])
    with pytest.raises(MerkleError, match="exactly 32 bytes"):
        StandardMerkleTree.of([[b"\x00" * 31]], ["bytes32"])
    with pytest.raises(MerkleError, match="does not encode"):
        StandardMerkleTree.of([[-1]], ["uint256"])
    with pytest.raises(MerkleError, match="does not encode"):
        StandardMerkleTree.of([["0x1234"]], ["address"])
    with pytest.raises(MerkleError, match="a list with one entry per type"):
        StandardMerkleTree.of([b"\x00" * 32], ["bytes32"])
    t = StandardMerkleTree.of([[b"\x00" * 32], [b"\x01" * 32]], ["bytes32"])
    for bad in (2, -1, True, "0"):
        with pytest.raises(MerkleError, match="out of range"):
            t.proof(bad)
    with pytest.raises(MerkleError, match="distinct"):
        t.multiproof([0, 0])
    with pytest.raises(MerkleError, match="32 bytes"):
        verify_leaf(t.root, t.leaf_at(0), [b"\x00" * 31])


def test_tampered_proofs_fail():
    rng = random.Random(3)
    t = StandardMerkleTree.of([[rng.randbytes(32)] for _ in range(50)], ["bytes32"])
    p = t.proof(10)
    assert not verify_leaf(t.root, t.leaf_at(11), p)
    assert not verify_leaf(t.root, t.leaf_at(10), p[:-1])
    assert not verify_leaf(t.root, t.leaf_at(10), [bytes(32)] + p[1:])
    mp = t.multiproof([1, 2, 3])
    assert not verify_multiproof(t.root, MultiProof(mp.leaves[::-1][:2] + (bytes(32),), mp.proof, mp.proof_flags))
    with pytest.raises(MerkleError, match="inconsistent"):
        verify_multiproof(t.root, MultiProof(mp.leaves, mp.proof[:-1], mp.proof_flags))


def test_load_rejects_inconsistent_dump():
    t = StandardMerkleTree.of([[bytes([i]) * 32] for i in range(5)], ["bytes32"])
    dump = t.dump()
    dump["tree"][1] = hx(bytes(32))
    with pytest.raises(MerkleError, match="does not hash its children"):
        StandardMerkleTree.load(dump)
    with pytest.raises(MerkleError, match="standard-v1"):
        StandardMerkleTree.load({"format": "other"})
    dump = t.dump()
    dump["values"][0]["value"] = [hx(b"\x09" * 32)]
    with pytest.raises(MerkleError, match="does not match"):
        StandardMerkleTree.load(dump)


def test_hash_pair_is_commutative_and_proofs_process():
    a, b = b"\x01" * 32, b"\x02" * 32
    assert hash_pair(a, b) == hash_pair(b, a) == keccak(a + b)
    assert process_proof(a, [b]) == keccak(a + b)


def test_ten_thousand_leaves():
    # the benchmark's batch size; its speed is measured in benchmarks/, not asserted here
    rng = random.Random(1)
    values = [[rng.randbytes(32)] for _ in range(10_000)]
    t = StandardMerkleTree.of(values, ["bytes32"])
    for i in range(0, 10_000, 97):
        p = t.proof(i)
        assert len(p) in (13, 14)  # floor/ceil(log2(10000))
        assert verify(t.root, values[i], p)  # default leaf types: the receipt leaf ["bytes32"]
