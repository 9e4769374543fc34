"""loranode chat, the parts without a node: endpoints from chain are untrusted (validated before any request,
cleaned before shown), and the chat state file is checked before use."""

from __future__ import annotations

import pytest

from node.client.chat.endpoints import BadEndpoint, validate_endpoint
from node.services.terminal_text import clean_output, shown


@pytest.mark.parametrize("good", ["http://127.0.0.1:8080", "https://node.example/", "https://node.example/lora/v2"])
def test_good_endpoints(good):
    assert validate_endpoint(good) == good.rstrip("/")


@pytest.mark.parametrize(
    "bad, why",
    [
        ("", "empty"),
        (None, "empty"),
        ("javascript:alert(1)", "not http"),
        ("file:///etc/passwd", "not http"),
        ("ftp://node.example", "not http"),
        ("http://", "no host"),
        ("http://user:pw@node.example", "credentials"),
        ("http://node.example/?x=1", "query"),
        ("http://node.example/#frag", "query"),
        ("http://node.example:99999", "not a URL"),
        ("http://node.example:0", "port 0"),
        ("http://node.example/\x1b[2J", "control"),
        ("http://nöde.example", "non-ASCII"),
        ("http://node.example /x", "spaces"),
        ("http://" + "a" * 300 + ".example", "longer than"),
    ],
)
def test_bad_endpoints_are_refused(bad, why):
    with pytest.raises(BadEndpoint, match=why):
        validate_endpoint(bad)


def test_untrusted_text_cannot_drive_the_terminal():
    hostile = "hi\x1b[2J\x1b]0;pwned\x07 there\r\nnext\tcol\x9b31m"
    out = clean_output(hostile)
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out and "\r" not in out
    assert "\n" in out and "\t" in out and out.startswith("hi")
    s = shown("<img src=x>\x1b[31m" + "x" * 500)
    assert "\x1b" not in s and len(s) < 140


def test_a_broken_chat_state_is_a_clear_error(tmp_path):
    import sqlite3

    from node.client.chat.state import ChatState, ChatStateError

    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(ChatStateError, match="unusable"):
        ChatState(garbage)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).executescript("CREATE TABLE receipts (x TEXT);")
    with pytest.raises(ChatStateError, match="not a loranode chat state"):
        ChatState(other)
    with pytest.raises(ChatStateError):
        ChatState(tmp_path)  # a folder
    s = ChatState(tmp_path / "ok.sqlite")  # and a good one round-trips uint256 totals exactly
    s.record_paid(
        "0x01",
        node="0xN",
        url="http://x",
        model="adapter-1",
        adapter_id=1,
        max_tokens=4,
        totals=(2**200 + 1, 3),
        cost=(2**200 + 1, 3),
        receipt={"a": 1},
    )
    assert s.lane_totals("0xN") == {1: (2**200 + 1, 3)}
    assert s.receipts()[0].compute == 2**200 + 1
