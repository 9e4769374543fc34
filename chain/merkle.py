"""A Merkle tree byte-compatible with OpenZeppelin's `@openzeppelin/merkle-tree` StandardMerkleTree.

Layout (as OZ v1): leaf = keccak256(keccak256(abi.encode(types, value))); leaves sorted by hash;
the tree is a flat array of 2n-1 nodes with the root at 0, children of i at 2i+1 and 2i+2, and
leaf k (in sorted order) at index len-1-k; parents hash their two children sorted. Proofs
therefore verify with OpenZeppelin's `MerkleProof.verify` on chain, and `dump()` produces the
same "standard-v1" JSON the npm package loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from eth_abi import encode as abi_encode
from eth_abi.exceptions import EncodingError
from eth_utils import keccak

from chain.errors import ChainError

try:  # pycryptodome directly: a third faster than eth_utils.keccak's dispatch, and trees hash a lot
    from Crypto.Hash import keccak as _ck

    def _keccak(data: bytes) -> bytes:
        return _ck.new(data=data, digest_bits=256).digest()

except ImportError:  # pragma: no cover - eth-hash may run on another backend

    def _keccak(data: bytes) -> bytes:
        return keccak(data)


MAX_LEAVES = 1 << 22  # ~4M leaves ≈ 400 MB of nodes; refuse anything bigger


class MerkleError(ChainError, ValueError):
    """Bad tree input (no leaves, values that don't match the leaf types, bad index or proof)."""


def hash_pair(a: bytes, b: bytes) -> bytes:
    """OpenZeppelin's commutative pair hash: keccak256 of the two nodes in ascending order."""
    return _keccak(a + b if a < b else b + a)


def _to_bytes32(name: str, value: Any) -> bytes:
    if isinstance(value, str) and value.startswith(("0x", "0X")):
        try:
            value = bytes.fromhex(value[2:])
        except ValueError as e:
            raise MerkleError(f"{name} is not valid hex") from e
    if not isinstance(value, (bytes, bytearray)) or len(value) != 32:
        raise MerkleError(f"{name} must be 32 bytes")
    return bytes(value)


def _encode(types: Sequence[str], value: Sequence[Any]) -> bytes:
    # Fast path for the receipt leaf ["bytes32"]: abi.encode(bytes32 x) is x itself.
    if len(types) == 1 and types[0] == "bytes32" and len(value) == 1 and isinstance(value[0], (bytes, bytearray)):
        if len(value[0]) != 32:
            raise MerkleError("bytes32 leaf value must be exactly 32 bytes")
        return bytes(value[0])
    try:
        return abi_encode(list(types), _normalise(types, value))
    except (EncodingError, TypeError, ValueError) as e:
        raise MerkleError(f"value {list(value)!r:.120} does not encode as {list(types)}: {e}") from e


def _normalise(types: Sequence[str], value: Sequence[Any]) -> list:
    # accept what the npm package's JSON holds: 0x-hex for bytes, decimal strings for integers
    out = []
    for t, v in zip(types, value, strict=True):  # a length mismatch is a MerkleError, not a silent cut
        if t.startswith("bytes") and isinstance(v, str) and v.startswith(("0x", "0X")):
            try:
                v = bytes.fromhex(v[2:])
            except ValueError as e:
                raise MerkleError(f"{v!r:.80} is not valid hex") from e
        elif t.startswith(("uint", "int")) and isinstance(v, str):
            if len(v) > 80 or not v.lstrip("-").isdigit() or not v.isascii():
                raise MerkleError(f"{v!r:.80} is not a decimal integer")
            v = int(v)
        out.append(v)
    return out


def standard_leaf_hash(types: Sequence[str], value: Sequence[Any]) -> bytes:
    """keccak256(bytes.concat(keccak256(abi.encode(value...))))."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise MerkleError(f"a leaf value is a list with one entry per type, got {type(value).__name__}")
    if len(value) != len(types):
        raise MerkleError(f"leaf value has {len(value)} entries but there are {len(types)} types")
    return _keccak(_keccak(_encode(types, value)))


def process_proof(leaf: bytes, proof: Iterable[bytes | str]) -> bytes:
    node = _to_bytes32("leaf", leaf)
    for i, p in enumerate(proof):
        node = hash_pair(node, _to_bytes32(f"proof[{i}]", p))
    return node


def verify_leaf(root: bytes | str, leaf: bytes | str, proof: Iterable[bytes | str]) -> bool:
    """True when `proof` links the already hashed `leaf` to `root`, as MerkleProof.verify."""
    return process_proof(_to_bytes32("leaf", leaf), proof) == _to_bytes32("root", root)


def verify(
    root: bytes | str, leaf_values: Sequence[Any], proof: Iterable[bytes | str], types: Sequence[str] = ("bytes32",)
) -> bool:
    """True when `proof` links the leaf of `leaf_values` (encoded as `types`) to `root`.

    The default types are the receipt leaf: `verify(root, [receipt_digest], proof)`.
    """
    return verify_leaf(root, standard_leaf_hash(tuple(types), leaf_values), proof)


@dataclass(frozen=True)
class MultiProof:
    leaves: tuple[bytes, ...]  # leaf hashes, in the order MerkleProof.multiProofVerify wants
    proof: tuple[bytes, ...]
    proof_flags: tuple[bool, ...]


def process_multiproof(mp: MultiProof) -> bytes:
    """The root a multiproof implies (OZ processMultiProof)."""
    leaves = [_to_bytes32("leaf", x) for x in mp.leaves]
    proof = [_to_bytes32("proof", x) for x in mp.proof]
    if len(proof) < sum(1 for f in mp.proof_flags if not f) or len(leaves) + len(proof) != len(mp.proof_flags) + 1:
        raise MerkleError("multiproof sizes are inconsistent")
    stack, rest = leaves, proof
    si = pi = 0  # read cursors instead of pop(0): O(n)
    for flag in mp.proof_flags:
        a = stack[si]
        si += 1
        if flag:
            b = stack[si]
            si += 1
        else:
            b = rest[pi]
            pi += 1
        stack.append(hash_pair(a, b))
    return stack[-1] if si < len(stack) else rest[pi]


def verify_multiproof(root: bytes | str, mp: MultiProof) -> bool:
    try:
        return process_multiproof(mp) == _to_bytes32("root", root)
    except IndexError:  # flags ask for more nodes than given
        return False


class StandardMerkleTree:
    """Build with `StandardMerkleTree.of(values, types)`; values keep their input order for `proof(i)`."""

    def __init__(self, tree: list[bytes], values: list[tuple[Any, ...]], tree_index: list[int], types: tuple[str, ...]):
        self._tree = tree
        self._values = values
        self._tree_index = tree_index  # value i -> its node index in _tree
        self.leaf_encoding = types

    @classmethod
    def of(cls, values: Sequence[Sequence[Any]], types: Sequence[str]) -> "StandardMerkleTree":
        types = tuple(types)
        if not types or not all(isinstance(t, str) for t in types):
            raise MerkleError("types must be a non-empty list of Solidity type names, e.g. ['bytes32']")
        n = len(values)
        if n == 0:
            raise MerkleError("a Merkle tree needs at least one leaf")
        if n > MAX_LEAVES:
            raise MerkleError(f"too many leaves: {n} > {MAX_LEAVES}")
        # anything but a list or tuple is left as it is, for standard_leaf_hash to refuse
        leaves: list[Any] = [tuple(v) if isinstance(v, (list, tuple)) else v for v in values]
        hashes = [standard_leaf_hash(types, v) for v in leaves]
        # OZ sorts leaves by hash (stable for duplicates); order[k] = value index of k-th leaf
        order = sorted(range(n), key=hashes.__getitem__)
        size = 2 * n - 1
        tree: list[bytes] = [b""] * size
        tree_index = [0] * n
        for k, vi in enumerate(order):
            tree[size - 1 - k] = hashes[vi]
            tree_index[vi] = size - 1 - k
        for i in range(size - 1 - n, -1, -1):
            tree[i] = hash_pair(tree[2 * i + 1], tree[2 * i + 2])
        return cls(tree, leaves, tree_index, types)

    # --- reading ----------------------------------------------------------------------------

    @property
    def root(self) -> bytes:
        return self._tree[0]

    @property
    def root_hex(self) -> str:
        return "0x" + self._tree[0].hex()

    def __len__(self) -> int:
        return len(self._values)

    def values(self) -> list[tuple[Any, ...]]:
        return list(self._values)

    def leaf_hash(self, value: Sequence[Any]) -> bytes:
        return standard_leaf_hash(self.leaf_encoding, value)

    def leaf_at(self, index: int) -> bytes:
        return self._tree[self._node_index(index)]

    def _node_index(self, index: int) -> int:
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(self._values):
            raise MerkleError(f"leaf index {index!r} out of range (tree has {len(self._values)} leaves)")
        return self._tree_index[index]

    def proof(self, index: int) -> list[bytes]:
        """Sibling hashes from leaf `index` (its position in the input values) up to the root."""
        i = self._node_index(index)
        out = []
        while i > 0:
            out.append(self._tree[i + 1 if i % 2 else i - 1])
            i = (i - 1) // 2
        return out

    def proof_hex(self, index: int) -> list[str]:
        return ["0x" + p.hex() for p in self.proof(index)]

    def verify(self, index: int, proof: Sequence[bytes | str]) -> bool:
        return verify_leaf(self.root, self.leaf_at(index), proof)

    def multiproof(self, indices: Sequence[int]) -> MultiProof:
        """OZ getMultiProof: one proof for several leaves (verifies with MerkleProof.multiProofVerify)."""
        nodes = sorted({self._node_index(i) for i in indices}, reverse=True)
        if len(nodes) != len(indices):
            raise MerkleError("multiproof indices must be distinct")
        if not nodes:  # as OZ: proving nothing is the root alone
            return MultiProof((), (self.root,), ())
        stack = list(nodes)
        proof: list[bytes] = []
        flags: list[bool] = []
        while stack and stack[0] > 0:
            j = stack.pop(0)
            s = j + 1 if j % 2 else j - 1
            p = (j - 1) // 2
            if stack and s == stack[0]:
                flags.append(True)
                stack.pop(0)
            else:
                flags.append(False)
                proof.append(self._tree[s])
            stack.append(p)
        return MultiProof(tuple(self._tree[j] for j in nodes), tuple(proof), tuple(flags))

    # --- OZ "standard-v1" JSON --------------------------------------------------------------

    def dump(self) -> dict:
        return {
            "format": "standard-v1",
            "leafEncoding": list(self.leaf_encoding),
            "tree": ["0x" + h.hex() for h in self._tree],
            "values": [
                {"value": [_json_value(x) for x in v], "treeIndex": ti}
                for v, ti in zip(self._values, self._tree_index, strict=True)
            ],
        }

    @classmethod
    def load(cls, data: dict) -> "StandardMerkleTree":
        """Load a dump (ours or the npm package's) and check that every node is consistent."""
        if not isinstance(data, dict) or data.get("format") != "standard-v1":
            raise MerkleError("not a standard-v1 Merkle tree dump")
        try:
            types = tuple(data["leafEncoding"])
            tree = [_to_bytes32(f"tree[{i}]", h) for i, h in enumerate(data["tree"])]
            values = [tuple(v["value"]) for v in data["values"]]
            tree_index = [int(v["treeIndex"]) for v in data["values"]]
        except (KeyError, TypeError) as e:
            raise MerkleError(f"malformed tree dump: {e}") from e
        n = len(values)
        if n == 0 or len(tree) != 2 * n - 1 or sorted(tree_index) != list(range(n - 1, 2 * n - 1)):
            raise MerkleError("tree dump has inconsistent sizes or indices")
        for v, ti in zip(values, tree_index, strict=True):
            if standard_leaf_hash(types, v) != tree[ti]:
                raise MerkleError(f"leaf {ti} does not match its value")
        for i in range(n - 1):
            if tree[i] != hash_pair(tree[2 * i + 1], tree[2 * i + 2]):
                raise MerkleError(f"node {i} does not hash its children")
        return cls(tree, values, tree_index, types)


def _json_value(x: Any) -> Any:
    if isinstance(x, (bytes, bytearray)):
        return "0x" + bytes(x).hex()
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    return x
