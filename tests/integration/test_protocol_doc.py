"""docs/protocol.md is true: every JSON example in it (marked `<!-- example: ... -->`) is compared
with what a running node (and the CLI) actually produce, by shape: the same keys, the same kinds of
values (a decimal string stays a decimal string, `0x` hex stays hex, numbers stay numbers). The
documented requests are sent as written."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from live_stack import ACCT, KEY, fund_escrow
from node.dev.stack import get_json, wait_for

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
_EXAMPLE = re.compile(r"^<!-- example: ([^\n>]+?) -->\n```json\n(.*?)^```", re.S | re.M)
_DECIMAL = re.compile(r"^[0-9]+(\.[0-9]+)?$")
_HEX = re.compile(r"^0x[0-9a-fA-F]*$")
PASSWORD = "pw"


def examples() -> dict[str, object]:
    found = {}
    for name, body in _EXAMPLE.findall(DOC.read_text()):
        assert name not in found, f"example {name!r} twice"
        found[name] = json.loads(body)  # every example is valid JSON
    return found


def kind(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return type(v).__name__
    if isinstance(v, str):
        return "hex" if _HEX.match(v) else "decimal" if _DECIMAL.match(v) else "str"
    return type(v).__name__


def assert_shape(example, actual, path="$") -> None:
    ek, ak = kind(example), kind(actual)
    if ek == "str":
        assert isinstance(actual, str), f"{path}: documented a string, got {actual!r}"
    elif ek == "float":
        assert ak in ("int", "float"), f"{path}: documented a number, got {actual!r}"
    else:
        assert ek == ak, f"{path}: documented {ek} ({example!r}), got {ak} ({actual!r})"
    if isinstance(example, dict) and example:
        assert set(example) == set(actual), f"{path}: documented keys {sorted(example)}, got {sorted(actual)}"
        for k in example:
            assert_shape(example[k], actual[k], f"{path}.{k}")
    if isinstance(example, list) and example:  # an empty list is always allowed (a proof of a one-receipt batch)
        for i, item in enumerate(actual):  # [base, adapter]: later items look like the last documented one
            assert_shape(example[min(i, len(example) - 1)], item, f"{path}[{i}]")


def test_shape_checker_catches_what_it_must():
    with pytest.raises(AssertionError, match="documented decimal"):
        assert_shape({"cost": "12"}, {"cost": 12})  # an amount that became a number
    with pytest.raises(AssertionError, match="documented keys"):
        assert_shape({"a": 1}, {"a": 1, "b": 2})
    with pytest.raises(AssertionError, match="documented hex"):
        assert_shape(["0xab"], ["0xab", "zz"])
    assert_shape({"t": "text", "n": None, "l": []}, {"t": "123", "n": None, "l": [1, 2]})


def _post(url, body, headers=None):
    data = b"" if body is None else json.dumps(body).encode()
    # url: the test's own loopback node
    req = urllib.request.Request(  # noqa: S310
        url,
        data=data,
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:  # noqa: S310
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _sse(raw: str) -> list:
    events = [line[len("data: ") :] for line in raw.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_every_documented_example_matches_the_running_node(live, tmp_path, monkeypatch):
    from node.cli.app import app
    from node.client.payer import NodeQuote, VoucherWallet
    from node.keystore import create_keystore

    doc = examples()
    checked: set[str] = set()

    def check(name, actual):
        assert name in doc, f"no example {name!r} in {DOC.name}"
        assert_shape(doc[name], actual, name)
        checked.add(name)

    u = live.url
    check("response GET /v1/node", get_json(u + "/v1/node"))
    check("response GET /v1/models", get_json(u + "/v1/models"))
    fund_escrow(live, "bob")  # this module's payer: its lanes start at zero
    wallet = VoucherWallet(KEY["bob"], NodeQuote.fetch(u))
    check("header X-Payment-Voucher", wallet.signed_voucher(1).to_json())

    chat_req = doc["request POST /v1/chat/completions"]
    status, body = _post(u + "/v1/chat/completions", chat_req, wallet.header(1))
    assert status == 200, body
    chat = json.loads(body)
    check("response POST /v1/chat/completions", chat)
    wallet.record(1, chat, chat["choices"][0]["message"]["content"])
    checked.add("request POST /v1/chat/completions")

    status, body = _post(u + "/v1/completions", doc["request POST /v1/completions"], wallet.header(1))
    assert status == 200, body
    comp = json.loads(body)
    check("response POST /v1/completions", comp)
    wallet.record(1, comp, comp["choices"][0]["text"])
    checked.add("request POST /v1/completions")

    status, body = _post(u + "/v1/chat/completions", {**chat_req, "stream": True}, wallet.header(1))
    assert status == 200, body
    events = _sse(body)
    check("stream first chunk", events[0])
    check("stream content chunk", events[1])
    check("stream last chunk", events[-1])
    wallet.record(1, events[-1], "".join(e["choices"][0]["delta"].get("content", "") for e in events))

    # a stream the client drops: its cost is at /v1/receipts/{the chunks' id} (u: the test's own loopback node)
    req = urllib.request.Request(  # noqa: S310
        u + "/v1/chat/completions",
        method="POST",
        data=json.dumps({**chat_req, "stream": True, "max_tokens": 64}).encode(),
        headers={"Content-Type": "application/json", **wallet.header(1)},
    )
    with urllib.request.urlopen(req, timeout=60) as r:  # noqa: S310
        first = json.loads(r.readline().decode().removeprefix("data: "))
    dropped = wait_for(lambda: _receipt_or_none(u, first["id"]), 30, "the dropped stream's receipt")
    wallet.record_receipt(1, dropped["receipt"])

    rid = chat["receipt"]["requestId"]
    committed = wait_for(
        lambda: (r := get_json(u + f"/v1/receipts/{rid}"))["status"] == "committed" and r, 90, "the receipt batch to commit"
    )
    check("response GET /v1/receipts/{id}", committed)

    status, body = _post(u + "/v1/vouchers", None, wallet.header(1))
    assert status == 200, body
    check("response POST /v1/vouchers", json.loads(body))

    def error(name, status_expected, got):
        status, body = got
        assert status == status_expected, body
        err = json.loads(body)
        assert err["error"]["code"] == name.split()[-1]
        check(name, err)

    error("error 402 payment_missing", 402, _post(u + "/v1/chat/completions", chat_req))
    stale = VoucherWallet(KEY["bob"], NodeQuote.fetch(u))
    error("error 402 voucher_undervalued", 402, _post(u + "/v1/chat/completions", chat_req, stale.header(1)))
    broke = VoucherWallet(KEY["alice"], NodeQuote.fetch(u))  # tokens, but nothing in escrow
    error("error 402 escrow_insufficient", 402, _post(u + "/v1/chat/completions", chat_req, broke.header(1)))
    error("error 400 invalid_field", 400, _post(u + "/v1/chat/completions", {**chat_req, "messages": "x"}))
    error("error 404 model_not_found", 404, _post(u + "/v1/chat/completions", {**chat_req, "model": "adapter-9"}))
    try:
        urllib.request.urlopen(u + "/v1/receipts/0x" + "ab" * 32, timeout=10)  # noqa: S310 - the test's own loopback node
        raise AssertionError("an unknown receipt was found")
    except urllib.error.HTTPError as e:
        assert e.code == 404
        check("error 404 receipt_not_found", json.loads(e.read()))

    # the CLI's --json shapes, for a payer of its own (its lane totals live in its chat state)
    fund_escrow(live, "dave")
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD)
    create_keystore(tmp_path / "dave.json", PASSWORD, KEY["dave"], scrypt_n=1024)
    for k, v in {
        **live.stack.env(),
        "LORANODE_HOME": str(tmp_path / "home"),
        "LORANODE_WALLET": str(tmp_path / "dave.json"),
        "LORANODE_WALLET_PASSWORD_FILE": str(pw),
    }.items():
        monkeypatch.setenv(k, v)
    runner = CliRunner()

    def cli(*args):
        r = runner.invoke(app, [*args, "--json"], catch_exceptions=False)
        assert r.exit_code == 0, r.stdout + r.stderr
        return json.loads(r.stdout)

    said = cli("chat", "adapter-1", "Ahoy", "--max-tokens", "4")
    check("cli chat", said)
    check("cli receipts list", cli("receipts", "list"))
    wait_for(lambda: get_json(u + f"/v1/receipts/{said['receipt_id']}")["status"] == "committed", 90, "commit")
    verified = cli("receipts", "verify")
    assert verified[0]["committed_on_chain"] is True
    check("cli receipts verify", verified)
    check("cli escrow balance", cli("escrow", "balance", "--node", ACCT["node"].address))
    check("cli adapter show", cli("adapter", "show", "1"))
    check("cli dataset show", cli("dataset", "show", str(live.dataset_id)))
    check("cli rewards show", cli("rewards", "show", ACCT["node"].address))
    contributor = cli("rewards", "show", ACCT["alice"].address)  # a contributor: per-contribution rows
    assert contributor["contributions"], "alice contributed to the live stack's dataset"
    assert_shape(doc["cli rewards show"], contributor, "cli rewards show (contributor)")

    assert checked == set(doc), f"examples nobody checked: {sorted(set(doc) - checked)}"


def _receipt_or_none(url, rid):
    try:
        return get_json(f"{url}/v1/receipts/{rid}")
    except urllib.error.HTTPError:
        return None
