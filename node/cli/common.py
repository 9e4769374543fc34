"""Shared plumbing of the user-facing CLI groups: chain connection, wallets, output.

Every command that sends a transaction estimates it first (`chain.send.send_tx`), so a call
that would revert fails with the contract's custom error and nothing is sent.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from node.cli.errors import CliError, Unreachable
from node.services.errors import InputError
from node.services.terminal_text import one_line

console = Console()


def loranode_home() -> Path:
    return Path(os.environ.get("LORANODE_HOME", Path.home() / ".loranode"))


def default_keystore() -> Path:
    return loranode_home() / "wallets" / "default.json"


# ------------------------------------------------------------------------------ wallet + chain


def read_password(password_file: Path | None, *, confirm: bool = False) -> str:
    if password_file is not None:
        try:
            pw = password_file.read_text().rstrip("\r\n")
        except OSError as e:
            raise InputError(f"cannot read password file {password_file}: {e.strerror or e}") from None
    elif sys.stdin.isatty():
        pw = getpass.getpass("Keystore password: ")
        if confirm and getpass.getpass("Repeat password: ") != pw:
            raise InputError("passwords do not match")
    else:
        raise InputError("no password: pass --password-file (or LORANODE_WALLET_PASSWORD_FILE) or run on a terminal")
    if not pw:
        raise InputError("empty password")
    return pw


def load_account(keystore: Path | None, password_file: Path | None):
    """The wallet's LocalAccount, decrypted from its keystore (never from a plaintext key)."""
    from eth_account import Account

    from node.keystore import load_keystore

    path = keystore or default_keystore()
    if not path.exists():
        raise InputError(f"no wallet at {path}: create one with `loranode wallet new` or pass --keystore")
    return Account.from_key(load_keystore(path, read_password(password_file)))


def keystore_address(keystore: Path | None) -> str:
    """Address recorded in a keystore, without decrypting it."""
    from eth_utils import to_checksum_address

    path = keystore or default_keystore()
    try:
        blob = json.loads(path.read_text())
        return to_checksum_address("0x" + blob["address"].removeprefix("0x"))
    except FileNotFoundError:
        raise InputError(f"no wallet at {path}") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"{path} is not a keystore with an address") from None


def connect(rpc_url: str, deployment: Path | None):
    """A `chain.contracts.Contracts` for the deployment on `rpc_url`."""
    from web3 import Web3

    from chain.contracts import Contracts
    from chain.deploy import Deployment, deployment_file

    from node.services.progress import show_tx_waits

    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    show_tx_waits(w3)
    try:
        chain_id = w3.eth.chain_id
    except Exception as e:  # noqa: BLE001  (requests/aiohttp raise many types for a dead endpoint)
        raise Unreachable(f"cannot reach the chain at {rpc_url}: {type(e).__name__}") from None
    path = deployment or deployment_file(chain_id)
    if not path.exists():
        raise InputError(f"no deployment file {path}: pass --deployment (see `loranode dev up`)")
    try:
        dep = Deployment.load(path)
    except Exception as e:  # noqa: BLE001  (any failure to read or parse the file is bad input, said in one line)
        raise InputError(f"unreadable deployment file {path}: {e}") from None
    return Contracts(w3, dep)


def checksum(address: str, what: str = "address") -> str:
    from eth_utils import is_address, to_checksum_address

    if not isinstance(address, str) or not is_address(address):
        raise InputError(f"not a valid {what}: {address!r}")
    return to_checksum_address(address)


def chain_time(contracts) -> int:
    """Timestamp of the chain's latest block: what the contracts compare deadlines with."""
    return int(contracts.w3.eth.get_block("latest")["timestamp"])


# ------------------------------------------------------------------------------ output


# Token amounts and other uint256 quantities: always decimal strings in --json (a stable shape, and
# JSON readers lose precision past 2**53). Ids, counts, bps, ranks and blocks stay numbers.
AMOUNT_FIELDS = frozenset(
    {
        "price_per_1k",
        "compute_price_per_1k",
        "balance",
        "thawing",
        "bond",
        "claimable",
        "amount",
        "escrow",
        "wallet_balance",
        "node_fees",
        "usage_shares",
        "dataset_harvested",
        "dataset_pending",
        "claimed",
        "weight",
        "total_weight",
        "acc_reward_per_weight",
        "cost",
        "compute",
        "adapter",
        "total",
    }
)


def _plain(v: Any, key: str | None = None) -> Any:
    if is_dataclass(v) and not isinstance(v, type):  # an instance (asdict refuses a dataclass type)
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
    for r in rows:  # Text cells: on-chain strings are shown, never read as rich markup
        table.add_row(*[Text(one_line(r.get(c, ""))) for c in cols])
    console.print(table)


def tx_done(receipt, what: str, as_json: bool = False, **extra) -> None:
    info = {
        "tx": "0x" + bytes(receipt["transactionHash"]).hex(),
        "block": receipt["blockNumber"],
        "gas_used": receipt["gasUsed"],
        **extra,
    }
    if as_json:
        typer.echo(json.dumps(_plain(info)))
    else:
        details = escape(" ".join(f"{k}={one_line(v)}" for k, v in extra.items()))
        console.print(f"[green]✓[/] {what} {details} (tx {info['tx'][:12]}…, block {info['block']})")


def event_of(contracts, receipt, cls_name: str):
    for ev in contracts.events_of(receipt):
        if type(ev).__name__ == cls_name:
            return ev
    raise CliError(f"transaction mined but no {cls_name} event found")


def run_async(coro):
    import asyncio

    return asyncio.run(coro)
