"""The settlement rule (node.attribution_rewards.rule) and the audit/verify CLIs' input checks."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from node.attribution_rewards import rule
from node.attribution_rewards.rule import RuleError, batch_weights, payouts, receipt_weights, to_entries

DATASET = {10: 1, 11: 1, 20: 2}.get  # contribution -> dataset


def test_receipt_weights_split_within_each_dataset_and_keep_the_remainder_unattributed():
    r = {"adapterCost": "7", "attribution": {"10": 3000, "11": 3000, "20": 4000}}
    w = receipt_weights(r, {1: 3000, 2: 1000}, DATASET)
    # dataset 1: base 21,000 split 1:1 by bps; dataset 2: all of its 7,000 to contribution 20
    assert w == {(1, 10): 10_500, (1, 11): 10_500, (2, 20): 7_000}
    w = receipt_weights({"adapterCost": "1", "attribution": {"10": 1, "11": 2}}, {1: 10}, DATASET)
    assert w == {(1, 10): 3, (1, 11): 6, (1, 0): 1}  # floors: the remainder is unattributed, nothing lost
    # no attribution, or only contributions outside the split: all of it unattributed
    assert receipt_weights({"adapterCost": 5, "attribution": {}}, {1: 100}, DATASET) == {(1, 0): 500}
    assert receipt_weights({"adapterCost": 5, "attribution": {"20": 9_999, "99": 1}}, {1: 100}, DATASET) == {(1, 0): 500}


def test_batch_entries_sorted_and_payouts_conserve():
    receipts = [
        {"adapterId": "1", "adapterCost": "3", "attribution": {"10": 10_000}},
        {"adapterId": "1", "adapterCost": "5", "attribution": {}},
        {"adapterId": "0", "adapterCost": "0", "attribution": {}},
    ]
    entries = to_entries(batch_weights(receipts, lambda a: {1: 4000}, DATASET))
    assert entries == [(1, 0, 20_000), (1, 10, 12_000)]
    paid, rest = payouts(entries, {1: 1001})
    assert paid == {10: 1001 * 12_000 // 32_000} and paid[10] + rest[1] == 1001


def test_entries_over_the_cap_fold_the_lightest_into_unattributed(monkeypatch):
    monkeypatch.setattr(rule, "MAX_ENTRIES", 3)
    w = {(1, 1): 5, (1, 2): 1, (1, 3): 2, (2, 4): 9}
    assert to_entries(w) == [(1, 0, 3), (1, 1, 5), (2, 4, 9)]
    assert sum(x for *_, x in to_entries(w)) == sum(w.values())


@pytest.mark.parametrize(
    "bad",
    [
        {"adapterCost": "-1"},
        {"adapterCost": "x"},
        {"adapterCost": 1.5},
        {"adapterCost": 1, "attribution": {"10": 10_001}},
        {"adapterCost": 1, "attribution": []},
        {"adapterCost": True},
    ],
)
def test_malformed_receipts_are_refused_with_the_field(bad):
    with pytest.raises(RuleError):
        receipt_weights(bad, {1: 100}, DATASET)


def test_verify_cli_refuses_bad_files_before_touching_the_chain(tmp_path):
    from node.cli.app import app

    runner = CliRunner()
    receipt = tmp_path / "r.json"
    receipt.write_text(json.dumps({"receipt": {"node": "0x" + "11" * 20}}))
    out = tmp_path / "out.txt"
    cases = [
        ([str(tmp_path / "missing.json"), "--output", str(out)], "cannot read"),
        ([str(receipt), "--output", str(tmp_path / "nope.txt")], "cannot read"),
    ]
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9")
    cases.append(([str(receipt), "--output", str(tmp_path / "latin1.txt")], "not UTF-8"))
    (tmp_path / "big.txt").write_bytes(b"a" * ((4 << 20) + 1))
    cases.append(([str(receipt), "--output", str(tmp_path / "big.txt")], "over"))
    (tmp_path / "notjson.json").write_bytes(b"{nope")
    cases.append(([str(tmp_path / "notjson.json"), "--output", str(out)], "not JSON"))
    out.write_text("hello")
    for args, msg in cases:
        res = runner.invoke(app, ["attribution", "verify", *args, "--rpc-url", "http://127.0.0.1:9"])
        assert res.exit_code == 2 and msg in res.output, (args, res.output)  # bad input (node.cli.errors)


def test_audit_cli_refuses_bad_arguments():
    from node.cli.app import app

    runner = CliRunner()
    res = runner.invoke(app, ["attribution", "audit", "--batch", "0"])
    assert res.exit_code == 2  # usage error: batches start at 1
    res = runner.invoke(app, ["attribution", "audit", "--batch", "1", "--node", "0xnot-an-address"])
    assert res.exit_code == 2 and "not a valid node address" in res.output
    res = runner.invoke(app, ["attribution", "audit", "--batch", "1", "--rpc-url", "http://127.0.0.1:9"])
    assert res.exit_code == 3 and "cannot reach the chain" in res.output


def test_receipts_file_version_says_whether_every_span_is_placed():
    """Version 2 (the audit then requires contributionStart) only when every span states one:
    receipts signed before the upgrade may share a batch with new ones."""
    from node.daemon.settlement.settler import _file_version

    placed = {"spans": [{"contributionId": 1, "start": 0, "end": 9, "contributionStart": 4}]}
    old = {"spans": [{"contributionId": 1, "start": 0, "end": 9}]}
    assert _file_version([placed, {"spans": []}, {}]) == 2
    assert _file_version([placed, old]) == 1
