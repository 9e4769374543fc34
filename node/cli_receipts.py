"""`loranode receipts verify RECEIPT.json`: check a node's signature and the on-chain Merkle proof."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from node.cli_common import CliError, DeploymentOpt, JsonOpt, RpcOpt, connect, emit, handle_errors

receipts_app = typer.Typer(name="receipts", help="Verify inference receipts.", no_args_is_help=True)

MAX_RECEIPT_FILE = 1 << 20
# The fields of the signed EIP-712 receipt; the node's JSON adds attribution details beside them.
_SIGNED_FIELDS = {"requestId", "payer", "node", "adapterId", "seq", "promptTokens", "completionTokens",
                  "computeCost", "adapterCost", "outputHash", "attributionHash", "timestamp", "signature"}


def load_receipt_file(path: Path) -> dict:
    """Accept either the node's `/v1/receipts/{id}` body ({receipt, batch, proof}) or a bare signed receipt."""
    try:
        if path.stat().st_size > MAX_RECEIPT_FILE:
            raise CliError(f"{path} is larger than {MAX_RECEIPT_FILE} bytes: not a receipt")
        body = json.loads(path.read_text())
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError):
        raise CliError(f"{path} is not JSON") from None
    if not isinstance(body, dict):
        raise CliError(f"{path}: expected a JSON object")
    return body if "receipt" in body else {"receipt": body}


@receipts_app.command("verify")
@handle_errors
def verify(
    file: Path = typer.Argument(..., help="Receipt JSON as returned by the node (GET /v1/receipts/{id})."),
    rpc_url: str = RpcOpt, deployment: Path = DeploymentOpt, as_json: bool = JsonOpt,
) -> None:
    """Check the node's EIP-712 signature and, once committed, the Merkle proof against ReceiptLog."""
    from chain.eip712 import SignedReceipt, TypedDataError

    body = load_receipt_file(file)
    raw = body["receipt"]
    if not isinstance(raw, dict):
        raise CliError("'receipt' must be an object")
    try:
        signed = SignedReceipt.from_json({k: v for k, v in raw.items() if k in _SIGNED_FIELDS})
    except TypedDataError as e:
        raise CliError(f"malformed receipt: {e}") from None
    c = connect(rpc_url, deployment)
    signer = signed.signer(c.chain_id, c.receipts.address)
    sig_ok = signer == signed.receipt.node
    batch = body.get("batch") or {}
    proof = body.get("proof")
    committed = None
    if proof is not None and "seq" in batch:
        if not isinstance(proof, list) or not all(isinstance(p, str) for p in proof) or len(proof) > 64:
            raise CliError("'proof' must be a list of at most 64 hex strings")
        try:
            committed = c.receipts.verify_receipt(signed.receipt, int(batch["seq"]), [bytes.fromhex(p.removeprefix("0x")) for p in proof])
        except ValueError:
            raise CliError("'proof' holds a value that is not hex") from None
    result = {"request_id": "0x" + signed.receipt.request_id.hex(), "node": signed.receipt.node,
              "signer": signer, "signature_valid": sig_ok,
              "committed_on_chain": committed if committed is not None else "no proof yet (batch not committed)"}
    emit(result, as_json, title="receipt")
    if not sig_ok or committed is False:
        raise typer.Exit(1)
