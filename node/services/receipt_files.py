"""Receipt files as the node serves them (`GET /v1/receipts/{id}`): one reader, one size cap, for
every command that takes one (`receipts verify`, `node dispute`, `attribution explain|verify`)."""

from __future__ import annotations

import json
from pathlib import Path

from node.services.errors import InputError

# A receipt with attribution spans (and their text) of a long answer stays far below this.
MAX_RECEIPT_FILE_BYTES = 16 << 20
# The fields of the signed EIP-712 receipt; the node's JSON adds attribution details beside them.
SIGNED_RECEIPT_FIELDS = frozenset(
    {
        "requestId",
        "payer",
        "node",
        "adapterId",
        "seq",
        "promptTokens",
        "completionTokens",
        "computeCost",
        "adapterCost",
        "outputHash",
        "attributionHash",
        "timestamp",
        "signature",
    }
)


def read_receipt_bytes(path: Path) -> bytes:
    """The file's bytes, refused past the cap without reading it all."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_RECEIPT_FILE_BYTES + 1)
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None
    if len(raw) > MAX_RECEIPT_FILE_BYTES:
        raise InputError(f"{path} is larger than {MAX_RECEIPT_FILE_BYTES} bytes: not a receipt")
    return raw


def load_receipt_file(path: Path) -> dict:
    """Accept either the node's `/v1/receipts/{id}` body ({receipt, batch, proof}) or a bare signed receipt."""
    try:
        body = json.loads(read_receipt_bytes(path).decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{path} is not JSON") from None
    if not isinstance(body, dict):
        raise InputError(f"{path}: expected a JSON object")
    return body if "receipt" in body else {"receipt": body}


def signed_receipt(raw: object):
    """The `chain.eip712.SignedReceipt` of a receipt object (extra attribution fields ignored)."""
    from chain.eip712 import SignedReceipt, TypedDataError

    if not isinstance(raw, dict):
        raise InputError("'receipt' must be an object")
    try:
        return SignedReceipt.from_json({k: v for k, v in raw.items() if k in SIGNED_RECEIPT_FIELDS})
    except TypedDataError as e:
        raise InputError(f"malformed receipt: {e}") from None


# A Merkle proof of a batch of up to 2^64 receipts.
MAX_PROOF_LENGTH = 64


def batch_proof(body: dict) -> tuple[int, list[bytes]] | None:
    """(batch seq, Merkle proof) of a receipt file once its batch is committed (`batch.seq` and
    `proof`, as `/v1/receipts/{id}` serves them); None before."""
    batch, proof = body.get("batch"), body.get("proof")
    if not isinstance(batch, dict) or "seq" not in batch or proof is None:
        return None
    seq = batch["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 < seq < 2**64:
        raise InputError(f"'batch.seq' must be a batch number, got {seq!r}")
    if not isinstance(proof, list) or not all(isinstance(p, str) for p in proof) or len(proof) > MAX_PROOF_LENGTH:
        raise InputError(f"'proof' must be a list of at most {MAX_PROOF_LENGTH} hex strings")
    try:
        nodes = [bytes.fromhex(p.removeprefix("0x")) for p in proof]
    except ValueError:
        raise InputError("'proof' holds a value that is not hex") from None
    if any(len(n) != 32 for n in nodes):
        raise InputError("'proof' holds a value that is not 32 bytes")
    return seq, nodes
