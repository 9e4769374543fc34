"""The exit codes of every `loranode` command, and the one place that maps errors to them.

| code | meaning |
|---|---|
| 0 `OK` | done |
| 1 `FAILED` | the command ran and the answer is no (below) |
| 2 `BAD_INPUT` | usage error (click's own code), invalid value, missing/unreadable/malformed file, invalid configuration |
| 3 `UNREACHABLE` | the chain's JSON-RPC endpoint did not answer: retrying later may help |

"The answer is no" (`FAILED`): the contract would revert (nothing is sent), a check failed (signature, proof,
audit), or the chain's state refuses (insufficient balance, not the owner, unknown id, content not found).

Every failure is one line `error: ...` on stderr, never a traceback; an unexpected exception (a bug)
keeps its traceback.
"""

from __future__ import annotations

import functools
from typing import Callable

import typer
from rich.console import Console

OK, FAILED, BAD_INPUT, UNREACHABLE = 0, 1, 2, 3

err_console = Console(stderr=True, soft_wrap=True)  # one line per error: greppable


class CliError(Exception):
    """A user-facing failure (exit 1) printed as `error: ...`; bad input is `node.services.errors.InputError`."""

    exit_code = FAILED


class Unreachable(CliError):
    """The chain's JSON-RPC endpoint did not answer."""

    exit_code = UNREACHABLE


def exit_code_of(e: BaseException) -> int | None:
    """The exit code for an error the user can act on; None for anything else (a bug: let it raise)."""
    from chain.errors import ChainError
    from inference.errors import AdapterValidationError, InferenceError
    from node.errors import ConfigError, NodeError
    from node.ipfs.errors import InvalidCID
    from node.services.errors import InputError

    if isinstance(e, CliError):
        return e.exit_code
    if isinstance(e, (InputError, ConfigError, InvalidCID, AdapterValidationError)):
        return BAD_INPUT
    if isinstance(e, ConnectionError):
        return UNREACHABLE
    if isinstance(e, (ChainError, NodeError, InferenceError)):  # ContractRevert among them
        return FAILED
    return None


def report(e: BaseException) -> typer.Exit:
    """Print `e` as one `error:` line; the typer.Exit to raise with its code."""
    from rich.markup import escape

    code = exit_code_of(e)
    what = f"cannot reach the chain: {e}" if isinstance(e, ConnectionError) else str(e)
    err_console.print(f"[red]error:[/] {escape(what)}", markup=True, highlight=False)
    return typer.Exit(FAILED if code is None else code)


def handle_errors(fn: Callable) -> Callable:
    """Turn the project's exceptions into one clear line on stderr and the exit code of the table above."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if exit_code_of(e) is None:
                raise
            raise report(e) from None

    return wrapper
