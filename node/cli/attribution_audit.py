"""`loranode attribution audit --batch SEQ [--node ADDR]` and `loranode attribution verify
RECEIPT.json --output FILE` (registered on the `attribution` group of node.cli.attribution)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from node.cli.attribution import attribution_app
from node.cli.common import CliError, DeploymentOpt, JsonOpt, RpcOpt, checksum, connect, console, handle_errors, run_async
from node.cli.ipfs import store_root
from node.services.uploads import IpfsStoreOpt

MAX_OUTPUT_BYTES = 4 << 20
GatewayOpt = typer.Option(None, "--gateway", help="Trustless IPFS gateway URL (repeatable), tried after the store and Kubo.")
KuboReadOpt = typer.Option(None, "--kubo-url", envvar="LORANODE_KUBO_URL", help="Kubo RPC API to fetch from.")


def _backends(store: Path | None, kubo_url: str | None, gateways: list[str] | None) -> list:
    from node.ipfs import EmbeddedStore, GatewayClient, KuboClient

    out = [EmbeddedStore(store_root(store))]
    if kubo_url:
        out.append(KuboClient(kubo_url))
    if gateways:
        out.append(GatewayClient(list(gateways)))
    return out


def _cache():
    from node.ipfs import ContentCache
    from node.ipfs.fetcher import DEFAULT_CACHE_BYTES, default_cache_root

    return ContentCache(default_cache_root() / "cache", DEFAULT_CACHE_BYTES)


def _print(report, as_json: bool, title: str) -> None:
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
        return
    from rich.markup import escape

    console.print(f"{title}: {report.receipts} receipt(s), node {report.node}"
                  + (f", batch {report.seq}" if report.seq else "") + (f", file {report.receipts_cid}" if report.receipts_cid else ""))
    for n in report.notes:
        console.print(f"  note: {escape(n)}")
    if report.expected_amounts:
        for cid, amount in sorted(report.expected_amounts.items()):
            console.print(f"  contribution {cid}: {amount} (wei) by attribution")
    if report.ok:
        console.print("[green]✓ every check passed[/]")
    for d in report.discrepancies:
        where = f"leaf {d.leaf_index}" if d.leaf_index is not None else "receipt"
        rid = f" {d.request_id}" if d.request_id else ""
        console.print(f"[red]✗[/] {where}{escape(rid)} [{d.rule}] {escape(d.detail)}")


@attribution_app.command("audit")
@handle_errors
def audit_cmd(
    batch: int = typer.Option(..., "--batch", min=1, help="Batch sequence number in ReceiptLog."),
    node: str = typer.Option(None, "--node", help="Node address (default: the only node with such a batch)."),
    rpc_url: str = RpcOpt, deployment: Path = DeploymentOpt, ipfs_store: Path = IpfsStoreOpt,
    kubo_url: str = KuboReadOpt, gateway: list[str] = GatewayOpt, as_json: bool = JsonOpt,
) -> None:
    """Audit a committed batch from public data: leaves, spans, weights, settled amounts. Exit 1 on any discrepancy."""
    from node.attribution_rewards.audit import audit_batch

    who = checksum(node, "node address") if node else None
    c = connect(rpc_url, deployment)
    report = run_async(audit_batch(c, _backends(ipfs_store, kubo_url, gateway), _cache(), batch, who))
    _print(report, as_json, "audit")
    if not report.ok:
        raise typer.Exit(1)


@attribution_app.command("verify")
@handle_errors
def verify_cmd(
    receipt: Path = typer.Argument(..., help="Receipt JSON (as served by /v1/receipts/{id}, with its proof once committed)."),
    output: Path = typer.Option(..., "--output", help="File holding the answer's text exactly as received."),
    rpc_url: str = RpcOpt, deployment: Path = DeploymentOpt, ipfs_store: Path = IpfsStoreOpt,
    kubo_url: str = KuboReadOpt, gateway: list[str] = GatewayOpt, as_json: bool = JsonOpt,
) -> None:
    """Verify a receipt completely with its answer: signature, output hash, attribution, spans, Merkle proof."""
    from node.attribution_rewards.audit import verify_with_output
    from node.cli.receipts import load_receipt_file

    body = load_receipt_file(receipt)
    try:
        raw = output.read_bytes()
    except OSError as e:
        raise CliError(f"cannot read {output}: {e.strerror or e}") from None
    if len(raw) > MAX_OUTPUT_BYTES:
        raise CliError(f"{output} is over {MAX_OUTPUT_BYTES} bytes: not an answer")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CliError(f"{output} is not UTF-8 text") from None
    c = connect(rpc_url, deployment)
    report = run_async(verify_with_output(c, _backends(ipfs_store, kubo_url, gateway), _cache(), body, text, _tokenizer()))
    _print(report, as_json, "verify")
    if not report.ok:
        raise typer.Exit(1)


def _tokenizer():
    """The base model's tokenizer (span positions are output token offsets); None if unavailable."""
    try:
        from transformers import AutoTokenizer

        from inference.base_model import resolve_model_folder

        return AutoTokenizer.from_pretrained(str(resolve_model_folder(None)), local_files_only=True)
    except Exception:  # noqa: BLE001 - positions then fall back to a text check, said in a note
        return None


def contributions_of(c, who: str, store: Path | None, kubo_url: str | None):
    """`rewards show`'s per-contribution breakdown (node.attribution_rewards.breakdown)."""
    from node.attribution_rewards.breakdown import breakdown

    return run_async(breakdown(c, who, _backends(store, kubo_url, None), _cache()))


def contribution_rows(b, places: int | None = 6) -> list[dict]:
    from node.cli.common import format_amount

    return [{
        "contribution": r.contribution_id, "dataset": r.dataset_id, "status": r.status, "answers": r.answers,
        "tokens attributed": f"{float(r.tokens_attributed):.1f}",
        "earned by attribution": format_amount(r.earned_by_attribution, places=places),
        "earned": format_amount(r.earned, places=places), "pending": format_amount(r.pending, places=places),
        "harvested": format_amount(r.harvested, places=places),
    } for r in b.contributions]
