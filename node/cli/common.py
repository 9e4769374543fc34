"""Shared plumbing of the user-facing CLI groups: chain connection, wallets, amounts, output, errors.

Every command that sends a transaction estimates it first (`chain.send.send_tx`), so a call
that would revert fails with the contract's custom error and nothing is sent.
"""

from __future__ import annotations

import functools
import getpass
import json
import os
import sys
from dataclasses import asdict, is_dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Callable

import typer
from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # one line per error: greppable

TOKEN_DECIMALS = 18
DEFAULT_RPC = "http://127.0.0.1:8545"

# Options shared by every command (each reads its LORANODE_* variable when not given).
RpcOpt = typer.Option(DEFAULT_RPC, "--rpc-url", envvar="LORANODE_RPC_URL", help="JSON-RPC URL of the chain.")
DeploymentOpt = typer.Option(
    None, "--deployment", envvar="LORANODE_DEPLOYMENT", help="Deployment JSON (default: deployments/<chainId>.json)."
)
KeystoreOpt = typer.Option(
    None, "--keystore", envvar="LORANODE_WALLET", help="Encrypted wallet keystore (default: ~/.loranode/wallets/default.json)."
)
PasswordFileOpt = typer.Option(
    None, "--password-file", envvar="LORANODE_WALLET_PASSWORD_FILE", help="File holding the wallet password (else prompted)."
)
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON.")


class CliError(Exception):
    """A user-facing failure: printed as `error: ...`, exit code 1, no traceback."""


def loranode_home() -> Path:
    return Path(os.environ.get("LORANODE_HOME", Path.home() / ".loranode"))


def default_keystore() -> Path:
    return loranode_home() / "wallets" / "default.json"


def handle_errors(fn: Callable) -> Callable:
    """Turn the project's exceptions into one clear line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from chain.errors import ChainError
        from inference.errors import InferenceError
        from node.errors import NodeError

        try:
            return fn(*args, **kwargs)
        except (CliError, ChainError, NodeError, InferenceError) as e:
            err_console.print(f"[red]error:[/] {e}", markup=True, highlight=False)
            raise typer.Exit(1) from None
        except ConnectionError as e:
            err_console.print(f"[red]error:[/] cannot reach the chain: {e}")
            raise typer.Exit(1) from None

    return wrapper


# ------------------------------------------------------------------------------ amounts


def parse_amount(text: str, decimals: int = TOKEN_DECIMALS) -> int:
    """'1.5' tokens -> 1.5e18 base units; refuses negatives, NaN and excess precision."""
    try:
        d = Decimal(text.strip())
    except (InvalidOperation, AttributeError):
        raise CliError(f"not an amount: {text!r}") from None
    if not d.is_finite() or d < 0:
        raise CliError(f"amount must be a non-negative number, got {text!r}")
    units = d * (Decimal(10) ** decimals)
    if units != units.to_integral_value():
        raise CliError(f"amount {text!r} has more than {decimals} decimals")
    value = int(units)
    if value >= 2**256:
        raise CliError(f"amount {text!r} is too large")
    return value


def format_amount(units: int, decimals: int = TOKEN_DECIMALS, places: int | None = None) -> str:
    """Base units as a decimal token amount; `places` rounds (down) for display only."""
    q = Decimal(units) / (Decimal(10) ** decimals)
    if places is not None:
        q = q.quantize(Decimal(1).scaleb(-places), rounding="ROUND_DOWN")
    return f"{q.normalize():f}"


# ------------------------------------------------------------------------------ wallet + chain


def read_password(password_file: Path | None, *, confirm: bool = False) -> str:
    if password_file is not None:
        try:
            pw = password_file.read_text().rstrip("\r\n")
        except OSError as e:
            raise CliError(f"cannot read password file {password_file}: {e.strerror or e}") from None
    elif sys.stdin.isatty():
        pw = getpass.getpass("Keystore password: ")
        if confirm and getpass.getpass("Repeat password: ") != pw:
            raise CliError("passwords do not match")
    else:
        raise CliError("no password: pass --password-file (or LORANODE_WALLET_PASSWORD_FILE) or run on a terminal")
    if not pw:
        raise CliError("empty password")
    return pw


def load_account(keystore: Path | None, password_file: Path | None):
    """The wallet's LocalAccount, decrypted from its keystore (never from a plaintext key)."""
    from eth_account import Account

    from node.keystore import load_keystore

    path = keystore or default_keystore()
    if not path.exists():
        raise CliError(f"no wallet at {path}: create one with `loranode wallet new` or pass --keystore")
    return Account.from_key(load_keystore(path, read_password(password_file)))


def keystore_address(keystore: Path | None) -> str:
    """Address recorded in a keystore, without decrypting it."""
    from eth_utils import to_checksum_address

    path = keystore or default_keystore()
    try:
        blob = json.loads(path.read_text())
        return to_checksum_address("0x" + blob["address"].removeprefix("0x"))
    except FileNotFoundError:
        raise CliError(f"no wallet at {path}") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise CliError(f"{path} is not a keystore with an address") from None


def connect(rpc_url: str, deployment: Path | None):
    """A `chain.contracts.Contracts` for the deployment on `rpc_url`."""
    from web3 import Web3

    from chain.contracts import Contracts
    from chain.deploy import Deployment

    from node.cli.progress import show_tx_waits

    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    show_tx_waits(w3)
    try:
        chain_id = w3.eth.chain_id
    except Exception as e:  # requests/aiohttp raise many types for a dead endpoint
        raise CliError(f"cannot reach the chain at {rpc_url}: {type(e).__name__}") from None
    path = deployment or Path("deployments") / f"{chain_id}.json"
    if not path.exists():
        raise CliError(f"no deployment file {path}: pass --deployment (see `loranode dev up`)")
    try:
        dep = Deployment.load(path)
    except Exception as e:
        raise CliError(f"unreadable deployment file {path}: {e}") from None
    return Contracts(w3, dep)


def all_contributions(c):
    """Every contribution on chain, in id order (the registry has no per-dataset or per-address index)."""
    for i in range(1, c.datasets.contribution_count() + 1):
        yield c.datasets.get_contribution(i)


def checksum(address: str, what: str = "address") -> str:
    from eth_utils import is_address, to_checksum_address

    if not isinstance(address, str) or not is_address(address):
        raise CliError(f"not a valid {what}: {address!r}")
    return to_checksum_address(address)


# ------------------------------------------------------------------------------ output


# Token amounts and other uint256 quantities: always decimal strings in --json (a stable shape, and
# JSON readers lose precision past 2**53). Ids, counts, bps, ranks and blocks stay numbers.
AMOUNT_FIELDS = frozenset({
    "price_per_1k", "compute_price_per_1k", "balance", "thawing", "bond", "claimable", "amount", "escrow",
    "wallet_balance", "node_fees", "usage_shares", "dataset_harvested", "dataset_pending", "claimed",
    "weight", "total_weight", "acc_reward_per_weight", "cost", "compute", "adapter", "total",
})


def _plain(v: Any, key: str | None = None) -> Any:
    if is_dataclass(v):
        return {k: _plain(x, k) for k, x in asdict(v).items()}
    if isinstance(v, (bytes, bytearray)):
        return "0x" + bytes(v).hex()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x, str(k)) for k, x in v.items()}
    if isinstance(v, int) and not isinstance(v, bool) and (key in AMOUNT_FIELDS or abs(v) >= 2**53):
        return str(v)
    return v


def emit(data: Any, as_json: bool, *, title: str | None = None, columns: list[str] | None = None) -> None:
    """Print `data` (a dict, or a list of dicts) as JSON or as a rich table."""
    if as_json:
        typer.echo(json.dumps(_plain(data), indent=2))
        return
    rows = data if isinstance(data, list) else [data]
    rows = [_plain(r) for r in rows]
    cols = columns or (list(rows[0].keys()) if rows else [])
    table = Table(title=title)
    for c in cols:
        table.add_column(c)
    for r in rows:
        table.add_row(*[str(r.get(c, "")) for c in cols])
    console.print(table)


def tx_done(receipt, what: str, as_json: bool = False, **extra) -> None:
    info = {"tx": "0x" + bytes(receipt["transactionHash"]).hex(), "block": receipt["blockNumber"],
            "gas_used": receipt["gasUsed"], **extra}
    if as_json:
        typer.echo(json.dumps(_plain(info)))
    else:
        details = " ".join(f"{k}={v}" for k, v in extra.items())
        console.print(f"[green]✓[/] {what} {details} (tx {info['tx'][:12]}…, block {info['block']})")


def event_of(contracts, receipt, cls_name: str):
    for ev in contracts.events_of(receipt):
        if type(ev).__name__ == cls_name:
            return ev
    raise CliError(f"transaction mined but no {cls_name} event found")


def run_async(coro):
    import asyncio

    return asyncio.run(coro)
