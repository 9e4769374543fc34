"""`loranode receipts verify [RECEIPT.json]`: check a node's signature and the on-chain Merkle proof,
of one receipt file or of every receipt `loranode chat` stored; `loranode receipts list`."""

from __future__ import annotations

from pathlib import Path

import typer

from node.cli.common import checksum, connect, emit, keystore_address
from node.cli.errors import FAILED, handle_errors
from node.cli.options import DeploymentOpt, JsonOpt, KeystoreOpt, PayerOpt, RpcOpt, StateOpt
from node.services.receipt_files import SIGNED_RECEIPT_FIELDS, batch_proof, load_receipt_file, signed_receipt

receipts_app = typer.Typer(name="receipts", help="List and verify inference receipts.", no_args_is_help=True)


def _verify_one(c, raw: dict, batch: dict | None, proof) -> dict:
    """Signature check, and the Merkle proof against ReceiptLog when the batch is committed."""
    signed = signed_receipt(raw)
    signer = signed.signer(c.chain_id, c.receipts.address)
    committed = None
    found = batch_proof({"batch": batch, "proof": proof})
    if found is not None:
        committed = c.receipts.verify_receipt(signed.receipt, *found)
    return {
        "request_id": "0x" + signed.receipt.request_id.hex(),
        "node": signed.receipt.node,
        "signer": signer,
        "signature_valid": signer == signed.receipt.node,
        "committed_on_chain": committed if committed is not None else "no proof yet (batch not committed)",
    }


@receipts_app.command("verify")
@handle_errors
def verify(
    file: Path = typer.Argument(
        None,
        help="Receipt JSON as returned by the node (GET /v1/receipts/{id}); "
        "without it, every receipt `loranode chat` stored for the payer.",
    ),
    rpc_url: str = RpcOpt,
    deployment: Path = DeploymentOpt,
    keystore: Path = KeystoreOpt,
    payer: str = PayerOpt,
    state: Path = StateOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Check the node's EIP-712 signature and, once committed, the Merkle proof against ReceiptLog."""
    c = connect(rpc_url, deployment)
    if file is not None:
        body = load_receipt_file(file)
        result = _verify_one(c, body["receipt"], body.get("batch"), body.get("proof"))
        emit(result, as_json, title="receipt")
        if not result["signature_valid"] or result["committed_on_chain"] is False:
            raise typer.Exit(FAILED)
        return
    results = [_verify_stored(c, r) for r in _stored(c, keystore, payer, state) if r.receipt is not None]
    emit(results, as_json, title="receipts")
    if any(not r["signature_valid"] or r["committed_on_chain"] is False or r.get("node_copy") == "differs" for r in results):
        raise typer.Exit(FAILED)


def _verify_stored(c, stored) -> dict:
    """A receipt from the chat state: its signature, then the node's copy and proof when reachable."""
    from node.client.chat.discovery import ProbeError, get_json

    result = _verify_one(c, stored.receipt, None, None)
    try:
        body, _ = get_json(f"{stored.url}/v1/receipts/{stored.request_id}")
    except ProbeError as e:
        result["node_copy"] = f"not checked: {e}"
        return result
    got = body.get("receipt")
    theirs = got if isinstance(got, dict) else {}
    same = all(str(theirs.get(k, "")).lower() == str(v).lower() for k, v in stored.receipt.items() if k in SIGNED_RECEIPT_FIELDS)
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
    rpc_url: str = RpcOpt,
    deployment: Path = DeploymentOpt,
    keystore: Path = KeystoreOpt,
    payer: str = PayerOpt,
    state: Path = StateOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The payer's receipts recorded by `loranode chat` (oldest first)."""
    import datetime

    c = connect(rpc_url, deployment)
    rows = [
        {
            "request_id": r.request_id,
            "status": r.status,
            "model": r.model,
            "node": r.node,
            "url": r.url,
            "cost": str((r.compute or 0) + (r.adapter or 0)) if r.compute is not None else None,
            "compute": str(r.compute) if r.compute is not None else None,
            "adapter": str(r.adapter) if r.adapter is not None else None,
            "time": datetime.datetime.fromtimestamp(r.created, datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        for r in _stored(c, keystore, payer, state)
    ]
    emit(rows, as_json, title="receipts", columns=["request_id", "status", "model", "node", "cost", "time"])
