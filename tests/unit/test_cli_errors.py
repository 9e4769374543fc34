"""`node.cli.errors`: one exit code per kind of failure, the same in every command group."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from chain.errors import ContractRevert
from node.cli.app import app
from node.cli.errors import BAD_INPUT, FAILED, UNREACHABLE, CliError, exit_code_of, handle_errors
from node.services.errors import InputError

runner = CliRunner()
DEAD_RPC = "http://127.0.0.1:9"  # nothing listens on the discard port
NODE = "0x" + "11" * 20


def _one_command(fail: Exception) -> typer.Typer:
    """A group with one command that raises `fail`, as a chain command would."""
    sub = typer.Typer()

    @sub.command()
    @handle_errors
    def go() -> None:
        raise fail

    return sub


def test_bad_input_exits_2_with_one_error_line():
    r = runner.invoke(app, ["escrow", "deposit", "abc", "--node", NODE, "--rpc-url", DEAD_RPC])
    assert r.exit_code == BAD_INPUT == 2, r.output
    assert "error: not an amount: 'abc'" in r.output and "Traceback" not in r.output


def test_usage_errors_keep_click_s_code_2():
    r = runner.invoke(app, ["attribution", "audit", "--batch", "0"])
    assert r.exit_code == BAD_INPUT


@pytest.mark.parametrize(
    "argv",
    [
        ["attribution", "explain", "{tmp}/missing.json"],
        ["wallet", "address", "--keystore", "{tmp}/missing.json"],
        ["ipfs", "cid", "{tmp}/missing"],
    ],
)
def test_a_missing_file_is_bad_input_in_every_group(tmp_path, argv):
    r = runner.invoke(app, [a.format(tmp=tmp_path) for a in argv])
    assert r.exit_code == BAD_INPUT, r.output
    assert "error:" in r.output and str(tmp_path / "missing") in r.output


@pytest.mark.parametrize("argv", [["dataset", "list"], ["adapter", "show", "1"], ["rewards", "show", NODE]])
def test_an_unreachable_chain_exits_3(argv):
    r = runner.invoke(app, [*argv, "--rpc-url", DEAD_RPC])
    assert r.exit_code == UNREACHABLE == 3, r.output
    assert "cannot reach the chain" in r.output


def test_a_revert_exits_1_with_the_custom_error():
    r = runner.invoke(_one_command(ContractRevert("UsageEscrowInsufficientBalance", (1, 2))), [])
    assert r.exit_code == FAILED == 1, r.output
    assert "error: UsageEscrowInsufficientBalance(1, 2)" in r.output


def test_each_kind_has_one_code():
    assert exit_code_of(ContractRevert("X")) == FAILED
    assert exit_code_of(CliError("nothing to claim")) == FAILED
    assert exit_code_of(InputError("bad")) == BAD_INPUT
    assert exit_code_of(ConnectionError("refused")) == UNREACHABLE
    assert exit_code_of(KeyError("a bug")) is None


def test_a_bug_keeps_its_traceback():
    r = runner.invoke(_one_command(KeyError("a bug")), [])
    assert isinstance(r.exception, KeyError)


def test_messages_are_printed_as_text_not_markup():
    r = runner.invoke(_one_command(CliError("refused [bold]x[/bold]")), [])
    assert "refused [bold]x[/bold]" in r.output
