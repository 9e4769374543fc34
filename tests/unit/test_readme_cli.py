"""The README lists every CLI command with an example (one home for the user's reference)."""

from __future__ import annotations

from pathlib import Path

import typer

from node.cli.app import app


def _paths(cmd, prefix: str) -> list[str]:
    """Full paths of the leaf commands under `cmd` (a group has `commands`)."""
    if hasattr(cmd, "commands"):
        return [p for name, sub in sorted(cmd.commands.items()) for p in _paths(sub, f"{prefix} {name}")]
    return [prefix]


def test_every_cli_command_is_in_the_readme():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    commands = _paths(typer.main.get_command(app), "loranode")
    assert len(commands) > 20  # the walk found the tree, not just the root
    missing = [c for c in commands if f"`{c}" not in readme]
    assert not missing, f"README's command table lacks {missing}"
