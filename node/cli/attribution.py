"""`loranode attribution explain RECEIPT.json`: which contributions a receipt's answer drew on.

Reads a receipt JSON as the node serves it (`/v1/receipts/{id}`, the committed receipts file):
the signed receipt's fields plus `attribution`, `datasetAttribution` and `spans` (shape in
docs/interfaces.md, "attribution"), checks it, and prints the matched spans with their source
contribution. When the receipt carries `attributionHash`, the weights are checked against it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from chain.protocol import TOTAL_BPS

attribution_app = typer.Typer(
    name="attribution",
    help="Per-inference data attribution: which dataset contributions an answer drew on.",
    no_args_is_help=True,
)

MAX_RECEIPT_FILE_BYTES = 16 * 1024 * 1024


class ReceiptFormatError(ValueError):
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
        span = {
            "contributionId": _uint(s.get("contributionId"), f"spans[{i}].contributionId"),
            "datasetId": _uint(s.get("datasetId"), f"spans[{i}].datasetId"),
            "start": _uint(s.get("start"), f"spans[{i}].start"),
            "end": _uint(s.get("end"), f"spans[{i}].end"),
        }
        if span["end"] <= span["start"]:
            raise ReceiptFormatError(f"spans[{i}]: end {span['end']} is not after start {span['start']}")
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


def _read(path: Path) -> bytes:
    with open(path, "rb") as f:
        raw = f.read(MAX_RECEIPT_FILE_BYTES + 1)
    if len(raw) > MAX_RECEIPT_FILE_BYTES:
        raise ReceiptFormatError(f"over {MAX_RECEIPT_FILE_BYTES} bytes: not a receipt")
    return raw


def _print_table(r: ExplainedReceipt) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"receipt {r.request_id or '?'}  adapter {r.adapter_id if r.adapter_id is not None else '?'}")
    if r.hash_ok is not None:
        console.print("attributionHash: " + ("[green]matches the weights[/]" if r.hash_ok else "[red]DOES NOT MATCH the weights[/]"))
    if not r.attribution:
        console.print("No attribution: the answer matched no contribution; the adapter's registered dataset split applies.")
        return
    weights = Table(title="Weights")
    for col in ("contribution", "bps", "share"):
        weights.add_column(col, justify="right")
    for cid, bps in r.attribution.items():
        weights.add_row(str(cid), str(bps), f"{bps / 100:.2f}%")
    console.print(weights)
    if r.dataset_attribution:
        console.print("datasets: " + ", ".join(f"{d}: {b / 100:.2f}%" for d, b in r.dataset_attribution.items()))
    spans = Table(title="Matched spans (output tokens [start, end))")
    for col in ("contribution", "dataset", "tokens", "len"):
        spans.add_column(col, justify="right")
    spans.add_column("text", overflow="fold")
    for s in r.spans:
        spans.add_row(
            str(s["contributionId"]), str(s["datasetId"]), f"{s['start']}-{s['end']}",
            str(s["end"] - s["start"]), s["text"] if s["text"] is not None else "",
        )
    console.print(spans)


@attribution_app.command("explain")
def explain_cmd(
    receipt: Path = typer.Argument(..., help="Receipt JSON (as served by /v1/receipts/{id})."),
    as_json: bool = typer.Option(False, "--json", help="Print the checked attribution as JSON."),
) -> None:
    """Show which contributions a receipt's answer drew on: weights and matched spans."""
    try:
        r = parse_receipt(_read(receipt))
    except (OSError, ReceiptFormatError) as e:
        typer.echo(f"error: {receipt}: {e}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(r.to_json(), indent=2))
    else:
        _print_table(r)
    if r.hash_ok is False:
        typer.echo("error: attributionHash does not match the attribution weights", err=True)
        raise typer.Exit(1)


# `attribution audit` and `attribution verify` live with the rewards they check.
from node.cli import attribution_audit as _audit_cli  # noqa: E402,F401  (registers the commands)
