"""Untrusted text made safe for a terminal. Anyone can put any string on chain (a dataset's name, an
adapter's CID, a node's endpoint) or send any text as a node: printed raw, C0/C1 controls and ANSI
escape sequences (ESC, CSI, OSC) could clear the screen, move the cursor, retitle the window or plant
a hyperlink, and rich markup (`[bold]`, `[link=…]`) could fake what the CLI itself says."""

from __future__ import annotations

import re

# C0/C1 controls (newline and tab excepted) and DEL: every byte that starts an escape sequence.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_LINE_BREAKS = re.compile(r"[\n\t]")


def clean_output(text: str) -> str:
    """Multi-line text (a model's answer): newlines and tabs kept, other controls replaced, so the
    sender cannot move the cursor or rewrite what was printed."""
    return _CONTROL.sub("\ufffd", text)


def one_line(text: object) -> str:
    """A table cell or a `key=value` field: every control replaced, newlines and tabs included (a
    newline could forge a row)."""
    return _LINE_BREAKS.sub(" ", _CONTROL.sub("\ufffd", str(text)))


def shown(text: object, limit: int = 120) -> str:
    """An untrusted string inside a message: controls removed, length bounded, quoted by repr."""
    s = _CONTROL.sub("?", str(text))
    return repr(s[:limit] + ("…" if len(s) > limit else ""))
