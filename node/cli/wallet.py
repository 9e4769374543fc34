"""`loranode wallet new|import|address`: encrypted keystores; a key is never printed or taken on argv."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

import typer

from node.cli.common import default_keystore, emit, keystore_address, read_password
from node.cli.errors import handle_errors
from node.cli.options import JsonOpt, KeystoreOpt, PasswordFileOpt
from node.services.errors import InputError

wallet_app = typer.Typer(name="wallet", help="Encrypted wallet keystores.", no_args_is_help=True)


def _scrypt_n() -> int | None:
    # Tests set a small scrypt cost; real wallets keep eth-account's default (2**18).
    n = os.environ.get("LORANODE_KEYSTORE_SCRYPT_N")
    return int(n) if n else None


@wallet_app.command("new")
@handle_errors
def new(
    keystore: Path = KeystoreOpt,
    password_file: Path = PasswordFileOpt,
    force: bool = typer.Option(False, "--force", help="Overwrite an existing keystore."),
    as_json: bool = JsonOpt,
) -> None:
    """Create a new random key in an encrypted keystore and print its address."""
    from node.keystore import create_keystore

    path = keystore or default_keystore()
    pw = read_password(password_file, confirm=True)
    address = create_keystore(path, pw, overwrite=force, scrypt_n=_scrypt_n())
    emit({"address": address, "keystore": str(path)}, as_json, title="new wallet")


@wallet_app.command("import")
@handle_errors
def import_(
    key_file: Path = typer.Option(None, "--key-file", help="File holding the hex private key (else prompted, hidden)."),
    keystore: Path = KeystoreOpt,
    password_file: Path = PasswordFileOpt,
    force: bool = typer.Option(False, "--force", help="Overwrite an existing keystore."),
    as_json: bool = JsonOpt,
) -> None:
    """Import an existing private key into an encrypted keystore."""
    from node.keystore import create_keystore

    if key_file is not None:
        try:
            raw = key_file.read_text().strip()
        except OSError as e:
            raise InputError(f"cannot read key file {key_file}: {e.strerror or e}") from None
    elif sys.stdin.isatty():
        raw = getpass.getpass("Private key (hex): ").strip()
    else:
        raise InputError("no key: pass --key-file or run on a terminal")
    hexkey = raw.removeprefix("0x")
    if len(hexkey) != 64 or any(c not in "0123456789abcdefABCDEF" for c in hexkey):
        raise InputError("the private key must be 32 bytes of hex (64 hex digits)")  # never echo it
    path = keystore or default_keystore()
    pw = read_password(password_file, confirm=True)
    try:
        address = create_keystore(path, pw, private_key="0x" + hexkey, overwrite=force, scrypt_n=_scrypt_n())
    except ValueError:
        raise InputError("the private key is not a valid secp256k1 key") from None
    emit({"address": address, "keystore": str(path)}, as_json, title="imported wallet")


@wallet_app.command("address")
@handle_errors
def address(keystore: Path = KeystoreOpt, as_json: bool = JsonOpt) -> None:
    """Print the address of a keystore (no password needed)."""
    addr = keystore_address(keystore)
    if as_json:
        emit({"address": addr}, True)
    else:
        typer.echo(addr)
