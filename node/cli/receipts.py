"""`loranode receipts verify [RECEIPT.json]`: check a node's signature and the on-chain Merkle proof,
of one receipt file or of every receipt `loranode chat` stored; `loranode receipts list`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from node.cli.chat import PayerOpt, StateOpt
from node.cli.common import (
    CliError, DeploymentOpt, JsonOpt, KeystoreOpt, RpcOpt, checksum, connect, emit, handle_errors, keystore_address,
)

receipts_app = typer.Typer(name="receipts", help="List and verify inference receipts.", no_args_is_help=True)

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


def _verify_one(c, raw: dict, batch: dict | None, proof) -> dict:
    """Signature check, and the Merkle proof against ReceiptLog when the batch is committed."""
    from chain.eip712 import SignedReceipt, TypedDataError

    if not isinstance(raw, dict):
        raise CliError("'receipt' must be an object")
    try:
        signed = SignedReceipt.from_json({k: v for k, v in raw.items() if k in _SIGNED_FIELDS})
    except TypedDataError as e:
        raise CliError(f"malformed receipt: {e}") from None
    signer = signed.signer(c.chain_id, c.receipts.address)
    batch = batch if isinstance(batch, dict) else {}
    committed = None
    if proof is not None and "seq" in batch:
        if not isinstance(proof, list) or not all(isinstance(p, str) for p in proof) or len(proof) > 64:
            raise CliError("'proof' must be a list of at most 64 hex strings")
        try:
            committed = c.receipts.verify_receipt(signed.receipt, int(batch["seq"]), [bytes.fromhex(p.removeprefix("0x")) for p in proof])
        except ValueError:
            raise CliError("'proof' holds a value that is not hex") from None
    return {"request_id": "0x" + signed.receipt.request_id.hex(), "node": signed.receipt.node,
            "signer": signer, "signature_valid": signer == signed.receipt.node,
            "committed_on_chain": committed if committed is not None else "no proof yet (batch not committed)"}


@receipts_app.command("verify")
@handle_errors
def verify(
    file: Path = typer.Argument(None, help="Receipt JSON as returned by the node (GET /v1/receipts/{id}); "
                                           "without it, every receipt `loranode chat` stored for the payer."),
    rpc_url: str = RpcOpt, deployment: Path = DeploymentOpt, keystore: Path = KeystoreOpt,
    payer: str = PayerOpt, state: Path = StateOpt, as_json: bool = JsonOpt,
) -> None:
    """Check the node's EIP-712 signature and, once committed, the Merkle proof against ReceiptLog."""
    c = connect(rpc_url, deployment)
    if file is not None:
        body = load_receipt_file(file)
        result = _verify_one(c, body["receipt"], body.get("batch"), body.get("proof"))
        emit(result, as_json, title="receipt")
        if not result["signature_valid"] or result["committed_on_chain"] is False:
            raise typer.Exit(1)
        return
    results = [_verify_stored(c, r) for r in _stored(c, keystore, payer, state) if r.receipt is not None]
    emit(results, as_json, title="receipts")
    if any(not r["signature_valid"] or r["committed_on_chain"] is False or r.get("node_copy") == "differs"
           for r in results):
        raise typer.Exit(1)


def _verify_stored(c, stored) -> dict:
    """A receipt from the chat state: its signature, then the node's copy and proof when reachable."""
    from node.client.chat.discovery import ProbeError, get_json

    result = _verify_one(c, stored.receipt, None, None)
    try:
        body, _ = get_json(f"{stored.url}/v1/receipts/{stored.request_id}")
    except ProbeError as e:
        result["node_copy"] = f"not checked: {e}"
        return result
    theirs = body.get("receipt") if isinstance(body.get("receipt"), dict) else {}
    same = all(str(theirs.get(k, "")).lower() == str(v).lower() for k, v in stored.receipt.items() if k in _SIGNED_FIELDS)
    result["node_copy"] = "matches" if same else "differs"
    if same and body.get("status") == "committed":
        result["committed_on_chain"] = _verify_one(c, stored.receipt, body.get("batch"), body.get("proof"))["committed_on_chain"]
    return result


def _stored(c, keystore, payer, state):
    from node.client.chat.state import ChatState
    from node.cli.chat import state_path

    addr = checksum(payer, "payer address") if payer else keystore_address(keystore)
    path = state_path(state, c.chain_id, addr)
    if not path.exists():
        return []
    store = ChatState(path)
    try:
        return store.receipts()
    finally:
        store.close()


@receipts_app.command("list")
@handle_errors
def list_(
    rpc_url: str = RpcOpt, deployment: Path = DeploymentOpt, keystore: Path = KeystoreOpt,
    payer: str = PayerOpt, state: Path = StateOpt, as_json: bool = JsonOpt,
) -> None:
    """The payer's receipts recorded by `loranode chat` (oldest first)."""
    import datetime

    c = connect(rpc_url, deployment)
    rows = [{"request_id": r.request_id, "status": r.status, "model": r.model, "node": r.node, "url": r.url,
             "cost": str((r.compute or 0) + (r.adapter or 0)) if r.compute is not None else None,
             "compute": str(r.compute) if r.compute is not None else None,
             "adapter": str(r.adapter) if r.adapter is not None else None,
             "time": datetime.datetime.fromtimestamp(r.created, datetime.timezone.utc).isoformat(timespec="seconds")}
            for r in _stored(c, keystore, payer, state)]
    emit(rows, as_json, title="receipts", columns=["request_id", "status", "model", "node", "cost", "time"])
