"""`loranode attribution explain`: a real signed receipt (chain.eip712) carrying a real
`Attribution`'s JSON, as node.daemon.payments.receipts builds it."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from chain.devchain import DEV_PRIVATE_KEYS
from chain.eip712 import Receipt, SignedReceipt, address_of, attribution_hash, output_hash, sign_receipt
from inference.attribution import Attribution, Span
from node.cli.app import app

runner = CliRunner()
RECEIPT_LOG = "0x" + "11" * 20


def receipt_json(att: Attribution, *, hash_of: Attribution | None = None) -> dict:
    ids, weights = (hash_of or att).ids_and_weights()
    key = DEV_PRIVATE_KEYS[0]
    r = Receipt(
        request_id=b"\x07" * 32,
        payer=address_of(DEV_PRIVATE_KEYS[1]),
        node=address_of(key),
        adapter_id=3,
        seq=1,
        prompt_tokens=10,
        completion_tokens=30,
        compute_cost=5,
        adapter_cost=7,
        output_hash=output_hash("an answer"),
        attribution_hash=attribution_hash(ids, weights),
        timestamp=1_700_000_000,
    )
    signed = SignedReceipt(r, sign_receipt(r, key, 31337, RECEIPT_LOG))
    return {**signed.to_json(), **att.to_json()}  # what node.daemon.payments.receipts serves


ATT = Attribution(
    weights_bps={4: 7500, 9: 2500},
    spans=[Span(4, 1, 0, 24, "the planted sentence from four", 1200), Span(9, 2, 24, 32, "tail from nine", 7)],
    dataset_weights={1: 7500, 2: 2500},
)


def run(tmp_path, obj, *args):
    path = tmp_path / "receipt.json"
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return runner.invoke(app, ["attribution", "explain", str(path), *args])


def test_explain_prints_spans_with_their_contributions(tmp_path):
    res = run(tmp_path, receipt_json(ATT))
    assert res.exit_code == 0, res.output
    assert "the planted sentence from four" in res.output and "tail from nine" in res.output
    assert "75.00%" in res.output and "matches the weights" in res.output
    assert "0-24" in res.output and "24-32" in res.output and "4 @ 1200" in res.output


def test_explain_json_round_trips_the_attribution(tmp_path):
    res = run(tmp_path, receipt_json(ATT), "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["attribution"] == {"4": 7500, "9": 2500}
    assert out["datasetAttribution"] == {"1": 7500, "2": 2500}
    assert out["attributionHashOk"] is True and out["adapterId"] == 3
    assert [(s["contributionId"], s["start"], s["end"]) for s in out["spans"]] == [(4, 0, 24), (9, 24, 32)]
    assert [s["contributionStart"] for s in out["spans"]] == [1200, 7]


def test_explain_reads_a_receipt_from_before_span_positions(tmp_path):
    old = Attribution({4: 10_000}, [Span(4, 1, 0, 24, "the planted sentence")], {1: 10_000})  # no contributionStart
    res = run(tmp_path, receipt_json(old), "--json")
    assert res.exit_code == 0, res.output
    assert "contributionStart" not in json.loads(res.output)["spans"][0]


def test_explain_empty_attribution_says_the_registered_split_applies(tmp_path):
    res = run(tmp_path, receipt_json(Attribution({}, [], {})))
    assert res.exit_code == 0, res.output
    assert "No attribution" in res.output and "matches" in res.output


def test_explain_flags_weights_that_do_not_match_the_signed_hash(tmp_path):
    forged = Attribution({4: 10_000}, [Span(4, 1, 0, 24, "x")], {1: 10_000})
    res = run(tmp_path, receipt_json(forged, hash_of=ATT))
    assert res.exit_code == 1
    assert "does not match" in res.output.lower()


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("{not json", "not a JSON document"),
        ('["a list"]', "expected a JSON object"),
        ({"requestId": "0x01"}, "no `attribution` field"),
        ({"attribution": {"4": 5000}}, "sum to 5000"),
        ({"attribution": {"x": 10000}}, "unsigned integer"),
        ({"attribution": {"4": -1, "5": 10001}}, "unsigned integer"),
        (
            {"attribution": {"4": 10000}, "spans": [{"contributionId": 4, "datasetId": 1, "start": 5, "end": 5}]},
            "not after start",
        ),
        ({"attribution": {"4": 10000}, "spans": [{"contributionId": 8, "datasetId": 1, "start": 0, "end": 9}]}, "without weight"),
        ({"attribution": {"4": 10000}, "spans": "all"}, "expected a list"),
        (
            {
                "attribution": {"4": 10000},
                "spans": [{"contributionId": 4, "datasetId": 1, "start": 0, "end": 9, "contributionStart": -3}],
            },
            "spans[0].contributionStart: expected an unsigned integer",
        ),
    ],
)
def test_explain_refuses_malformed_receipts_with_a_reason(tmp_path, bad, reason):
    res = run(tmp_path, bad)
    assert res.exit_code == 2
    assert reason in res.output


def test_explain_refuses_missing_and_non_utf8_files(tmp_path):
    res = runner.invoke(app, ["attribution", "explain", str(tmp_path / "nope.json")])
    assert res.exit_code == 2 and "error" in res.output
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe{}")
    res = runner.invoke(app, ["attribution", "explain", str(tmp_path / "bin.json")])
    assert res.exit_code == 2 and "not a JSON document" in res.output


def test_explain_shows_a_hostile_span_as_text(tmp_path, monkeypatch):
    """Attack: the node that served the receipt puts markup and escape sequences in a span's text
    (the contribution's words, as the node claims them): explain prints them as text."""
    monkeypatch.setenv("COLUMNS", "400")
    hostile = "[bold]✓ verified[/bold]\x1b[2J\x1b]8;;http://evil.example\x07x\x9b31m"
    att = Attribution(weights_bps={4: 10_000}, spans=[Span(4, 1, 0, 24, hostile, 3)], dataset_weights={1: 10_000})
    res = run(tmp_path, receipt_json(att))
    assert res.exit_code == 0, res.output
    assert "[bold]✓ verified[/bold]" in res.output and not any(ch in res.output for ch in "\x1b\x07\x9b")
