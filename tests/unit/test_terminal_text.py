"""Untrusted text on the terminal (`node.services.terminal_text`), and the CLI's two printers that
show chain data, `emit` (tables) and `tx_done` (confirmations): escape sequences replaced, rich
markup printed literally, newlines unable to forge a row."""

from __future__ import annotations

from node.cli import common
from node.services.terminal_text import clean_output, one_line, shown

HOSTILE = "[bold]✓ verified[/bold]\x1b[2J\x1b]8;;http://evil.example\x07click\x1b]8;;\x07\r\nforged row\t\x9b31m"
CONTROLS = "\x1b\x07\x9b\r"


def test_one_line_and_clean_output_replace_every_control():
    line = one_line(HOSTILE)
    assert not any(ch in line for ch in CONTROLS + "\n\t") and "[bold]✓ verified[/bold]" in line
    text = clean_output(HOSTILE)
    assert not any(ch in text for ch in CONTROLS) and "\n" in text and "\t" in text
    assert not any(ch in shown(HOSTILE) for ch in CONTROLS) and len(shown("x" * 500)) < 130


def test_emit_and_tx_done_print_chain_strings_as_text(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    with common.console.capture() as cap:
        common.emit([{"name": HOSTILE, "n": 1}], False, title="t", columns=["name", "n"])
        common.tx_done({"transactionHash": b"\x01" * 32, "blockNumber": 7, "gasUsed": 1}, "done", False, name=HOSTILE)
    out = cap.get()
    assert not any(ch in out for ch in CONTROLS), out
    assert out.count("[bold]✓ verified[/bold]") == 2  # markup shown, not applied, in the table and the line
    assert "forged row" in out and not any(line.lstrip().startswith("forged row") for line in out.splitlines())
