"""`loranode attribution explain|audit|verify`: which contributions an answer drew on, checked.

`explain RECEIPT.json` reads a receipt JSON as the node serves it (`/v1/receipts/{id}`, the
committed receipts file): the signed receipt's fields plus `attribution`, `datasetAttribution` and
`spans` (shape in docs/interfaces.md, "attribution"), checks it, and prints the matched spans with
their source contribution. When the receipt carries `attributionHash`, the weights are checked
against it. `audit --batch SEQ [--node ADDR]` checks a committed batch from public data, and
`verify RECEIPT.json --output FILE` a receipt completely with its answer
(`node.attribution_rewards.audit`). `flush --node ADDR --dataset ID` moves a node's undrained pool
to the dataset's accepted-weight split (anyone; after the flush delay, or at once when the node has
no bond at stake and so may not settle it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from chain.protocol import TOTAL_BPS
from node.cli.common import chain_time, checksum, connect, console, event_of, load_account, run_async, tx_done
from node.cli.errors import FAILED, CliError, handle_errors
from node.cli.options import (
    DeploymentOpt,
    GatewayOpt,
    IpfsStoreOpt,
    JsonOpt,
    KeystoreOpt,
    KuboOpt,
    PasswordFileOpt,
    RpcOpt,
)
from node.services.amounts import format_amount
from node.services.content import fetch_cache, read_backends
from node.services.errors import InputError
from node.services.receipt_files import load_receipt_file, read_receipt_bytes
from node.services.terminal_text import one_line

attribution_app = typer.Typer(
    name="attribution",
    help="Per-inference data attribution: which dataset contributions an answer drew on.",
    no_args_is_help=True,
)

MAX_OUTPUT_BYTES = 4 << 20


class ReceiptFormatError(InputError, ValueError):
    """The receipt JSON does not have the documented attribution shape."""


@dataclass(frozen=True)
class ExplainedReceipt:
    request_id: str | None
    adapter_id: int | None
    attribution: dict[int, int]
    dataset_attribution: dict[int, int]
    spans: list[dict[str, Any]]
    hash_ok: bool | None  # None: the receipt has no attributionHash to check against

    def to_json(self) -> dict[str, Any]:
        return {
            "requestId": self.request_id,
            "adapterId": self.adapter_id,
            "attribution": {str(k): v for k, v in self.attribution.items()},
            "datasetAttribution": {str(k): v for k, v in self.dataset_attribution.items()},
            "spans": self.spans,
            "attributionHashOk": self.hash_ok,
        }


def _uint(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise ReceiptFormatError(f"{what}: expected an unsigned integer, got {value!r}")
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or value < 0 or value >= 2**256:
        raise ReceiptFormatError(f"{what}: expected an unsigned integer, got {value!r}")
    return value


def _weights(obj: Any, what: str) -> dict[int, int]:
    """{"<id>": bps} -> {id: bps}, ascending; bps sum to 10,000 unless empty."""
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise ReceiptFormatError(f"{what}: expected an object of id -> bps")
    out = {_uint(k, f"{what} id"): _uint(v, f"{what}[{k}]") for k, v in obj.items()}
    if out and sum(out.values()) != TOTAL_BPS:
        raise ReceiptFormatError(f"{what}: weights sum to {sum(out.values())} bps, expected {TOTAL_BPS}")
    return dict(sorted(out.items()))


def _spans(obj: Any) -> list[dict[str, Any]]:
    if obj is None:
        return []
    if not isinstance(obj, list):
        raise ReceiptFormatError("spans: expected a list")
    out = []
    for i, s in enumerate(obj):
        if not isinstance(s, dict):
            raise ReceiptFormatError(f"spans[{i}]: expected an object")
        span: dict[str, Any] = {
            "contributionId": _uint(s.get("contributionId"), f"spans[{i}].contributionId"),
            "datasetId": _uint(s.get("datasetId"), f"spans[{i}].datasetId"),
            "start": _uint(s.get("start"), f"spans[{i}].start"),
            "end": _uint(s.get("end"), f"spans[{i}].end"),
        }
        if span["end"] <= span["start"]:
            raise ReceiptFormatError(f"spans[{i}]: end {span['end']} is not after start {span['start']}")
        if s.get("contributionStart") is not None:  # absent in receipts from before span positions
            span["contributionStart"] = _uint(s["contributionStart"], f"spans[{i}].contributionStart")
        text = s.get("text")
        if text is not None and not isinstance(text, str):
            raise ReceiptFormatError(f"spans[{i}].text: expected a string")
        span["text"] = text
        out.append(span)
    return out


def parse_receipt(raw: bytes) -> ExplainedReceipt:
    """Parse and check a receipt JSON (bytes). Raises ReceiptFormatError with the reason."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReceiptFormatError(f"not a JSON document: {e}") from e
    if isinstance(obj, dict) and isinstance(obj.get("receipt"), dict) and "attribution" not in obj:
        obj = {**obj["receipt"], **{k: v for k, v in obj.items() if k != "receipt"}}  # wrapped form
    if not isinstance(obj, dict):
        raise ReceiptFormatError("expected a JSON object")
    if "attribution" not in obj:
        raise ReceiptFormatError("no `attribution` field: not a receipt with attribution")
    attribution = _weights(obj["attribution"], "attribution")
    datasets = _weights(obj.get("datasetAttribution"), "datasetAttribution")
    spans = _spans(obj.get("spans"))
    unknown = sorted({s["contributionId"] for s in spans} - set(attribution))
    if unknown:
        raise ReceiptFormatError(f"spans name contributions without weight: {unknown}")
    hash_ok = None
    if obj.get("attributionHash") is not None:
        from chain.eip712 import attribution_hash

        claimed = str(obj["attributionHash"]).lower().removeprefix("0x")
        ids = list(attribution)
        hash_ok = attribution_hash(ids, [attribution[i] for i in ids]).hex() == claimed
    adapter = obj.get("adapterId")
    return ExplainedReceipt(
        request_id=obj.get("requestId") if isinstance(obj.get("requestId"), str) else None,
        adapter_id=_uint(adapter, "adapterId") if adapter is not None else None,
        attribution=attribution,
        dataset_attribution=datasets,
        spans=spans,
        hash_ok=hash_ok,
    )


def _print_table(r: ExplainedReceipt) -> None:
    """The receipt file comes from a node: its strings are shown as text (no markup, no controls)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    console = Console()
    rid = escape(one_line(r.request_id or "?"))
    console.print(f"receipt {rid}  adapter {r.adapter_id if r.adapter_id is not None else '?'}")
    if r.hash_ok is not None:
        console.print(
            "attributionHash: " + ("[green]matches the weights[/]" if r.hash_ok else "[red]DOES NOT MATCH the weights[/]")
        )
    if not r.attribution:
        console.print("No attribution: the answer matched no contribution; the adapter's registered dataset split applies.")
        return
    weights = Table(title="Weights")
    for col in ("contribution", "bps", "share"):
        weights.add_column(col, justify="right")
    for cid, bps in r.attribution.items():
        weights.add_row(Text(one_line(cid)), Text(one_line(bps)), f"{bps / 100:.2f}%")
    console.print(weights)
    if r.dataset_attribution:
        console.print("datasets: " + ", ".join(f"{d}: {b / 100:.2f}%" for d, b in r.dataset_attribution.items()))
    spans = Table(title="Matched spans (output tokens [start, end); contribution @ its token offset)")
    for col in ("contribution", "dataset", "tokens", "len"):
        spans.add_column(col, justify="right")
    spans.add_column("text", overflow="fold")
    for s in r.spans:
        spans.add_row(
            Text(one_line(f"{s['contributionId']} @ {s.get('contributionStart', '?')}")),
            Text(one_line(s["datasetId"])),
            Text(one_line(f"{s['start']}-{s['end']}")),
            Text(one_line(s["end"] - s["start"])),
            Text(one_line(s["text"] if s["text"] is not None else "")),
        )
    console.print(spans)


@attribution_app.command("explain")
@handle_errors
def explain_cmd(
    receipt: Path = typer.Argument(..., help="Receipt JSON (as served by /v1/receipts/{id})."),
    as_json: bool = typer.Option(False, "--json", help="Print the checked attribution as JSON."),
) -> None:
    """Show which contributions a receipt's answer drew on: weights and matched spans."""
    raw = read_receipt_bytes(receipt)
    try:
        r = parse_receipt(raw)
    except ReceiptFormatError as e:
        raise ReceiptFormatError(f"{receipt}: {e}") from None
    if as_json:
        typer.echo(json.dumps(r.to_json(), indent=2))
    else:
        _print_table(r)
    if r.hash_ok is False:
        raise CliError("attributionHash does not match the attribution weights")


def _print(report, as_json: bool, title: str) -> None:
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
        return
    from rich.markup import escape

    console.print(
        f"{title}: {report.receipts} receipt(s), node {escape(one_line(report.node))}"
        + (f", batch {report.seq}" if report.seq else "")
        + (f", file {escape(one_line(report.receipts_cid))}" if report.receipts_cid else "")  # an on-chain string
    )
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
        if getattr(d, "slashable", None):
            console.print(f"    [yellow]{escape(d.slashable)}[/]")


@attribution_app.command("audit")
@handle_errors
def audit_cmd(
    batch: int = typer.Option(..., "--batch", min=1, help="Batch sequence number in ReceiptLog."),
    node: str = typer.Option(None, "--node", help="Node address (default: the only node with such a batch)."),
    rpc_url: str = RpcOpt,
    deployment: Path = DeploymentOpt,
    ipfs_store: Path = IpfsStoreOpt,
    kubo_url: str = KuboOpt,
    gateway: list[str] = GatewayOpt,
    slash_files: Path = typer.Option(
        None,
        "--slash-files",
        help="Folder to write leaf-N.json for each leaf slashable without arbitrator (for `node dispute --attribution`).",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Audit a committed batch from public data: leaves, spans, weights, settled amounts. Exit 1 on any discrepancy."""
    from node.attribution_rewards.audit import audit_batch

    who = checksum(node, "node address") if node else None
    c = connect(rpc_url, deployment)
    report = run_async(
        audit_batch(c, read_backends(ipfs_store, kubo_url, gateway), fetch_cache(), batch, who, tokenizer=_tokenizer())
    )
    if slash_files is not None and report.slash_files:
        try:
            slash_files.mkdir(parents=True, exist_ok=True)
            for leaf, body in report.slash_files.items():
                (slash_files / f"leaf-{leaf}.json").write_text(json.dumps(body, indent=2))
        except OSError as e:
            raise InputError(f"cannot write the slash files to {slash_files}: {e.strerror or e}") from None
    _print(report, as_json, "audit")
    if not report.ok:
        raise typer.Exit(FAILED)


@attribution_app.command("verify")
@handle_errors
def verify_cmd(
    receipt: Path = typer.Argument(..., help="Receipt JSON (as served by /v1/receipts/{id}, with its proof once committed)."),
    output: Path = typer.Option(..., "--output", help="File holding the answer's text exactly as received."),
    rpc_url: str = RpcOpt,
    deployment: Path = DeploymentOpt,
    ipfs_store: Path = IpfsStoreOpt,
    kubo_url: str = KuboOpt,
    gateway: list[str] = GatewayOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Verify a receipt completely with its answer: signature, output hash, attribution, spans, Merkle proof."""
    from node.attribution_rewards.audit import verify_with_output

    body = load_receipt_file(receipt)
    try:
        raw = output.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {output}: {e.strerror or e}") from None
    if len(raw) > MAX_OUTPUT_BYTES:
        raise InputError(f"{output} is over {MAX_OUTPUT_BYTES} bytes: not an answer")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{output} is not UTF-8 text") from None
    c = connect(rpc_url, deployment)
    report = run_async(
        verify_with_output(c, read_backends(ipfs_store, kubo_url, gateway), fetch_cache(), body, text, _tokenizer())
    )
    _print(report, as_json, "verify")
    if not report.ok:
        raise typer.Exit(FAILED)


@attribution_app.command("flush")
@handle_errors
def flush_cmd(
    node: str = typer.Option(..., "--node", help="The node whose pool it is."),
    dataset: int = typer.Option(..., "--dataset", min=1, max=2**32 - 1, help="Dataset id of the pool."),
    rpc_url: str = RpcOpt,
    deployment: Path = DeploymentOpt,
    keystore: Path = KeystoreOpt,
    password_file: Path = PasswordFileOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Move the undrained pool of (NODE, DATASET) to the dataset's accepted-weight split (anyone may):
    once it has waited the flush delay, or at once when the node has no bond at stake."""
    addr = checksum(node, "node address")
    c = connect(rpc_url, deployment)
    pool = c.pool.pool_of(addr, dataset)
    if pool.balance == 0:
        raise CliError(f"the pool of node {addr} for dataset {dataset} is empty")
    ready_at = pool.since + c.pool.flush_delay()
    if chain_time(c) < ready_at and c.nodes.can_redeem(addr):  # the next block is later than the latest
        raise CliError(f"node {addr} is in good standing: its pool for dataset {dataset} may be flushed from {ready_at}")
    account = load_account(keystore, password_file)
    rcpt = c.pool.flush(account, addr, dataset)
    ev = event_of(c, rcpt, "PoolFlushed")
    tx_done(
        rcpt, "pool flushed to the accepted-weight split", as_json, node=addr, dataset=dataset, amount=format_amount(ev.amount)
    )


def _tokenizer():
    """The base model's tokenizer (span positions are token offsets in the output and in the
    contribution); None if unavailable."""
    try:
        from transformers import AutoTokenizer

        from inference.base_model import resolve_model_folder

        return AutoTokenizer.from_pretrained(str(resolve_model_folder(None)), local_files_only=True)
    except Exception:  # noqa: BLE001 - positions then fall back to a text check, said in a note
        return None
