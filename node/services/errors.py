"""Errors of the services shared by the CLI and the demo."""

from __future__ import annotations

from node.errors import NodeError


class InputError(NodeError):
    """The user's value or file is refused (malformed, missing, too large): the message says why.

    The CLI maps it to its bad-input exit code (`node.cli.errors`)."""
