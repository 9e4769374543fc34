"""Encrypted operator keystores (the standard Ethereum JSON keystore, scrypt + AES-128-CTR).

Keys never appear in logs, exceptions or reprs: errors name the file, never its content.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from eth_account import Account

from node.errors import ConfigError

MAX_KEYSTORE_BYTES = 64 * 1024


class KeystoreError(ConfigError):
    """A keystore is missing, malformed or its password is wrong."""


def create_keystore(
    path: str | os.PathLike,
    password: str,
    private_key: str | bytes | None = None,
    *,
    overwrite: bool = False,
    scrypt_n: int | None = None,
) -> str:
    """Encrypt `private_key` (a fresh random key when None) into `path` (mode 0600). Returns the address.

    `scrypt_n`: scrypt cost (default eth-account's 2**18); tests pass a small one to stay fast.
    """
    if not password:
        raise KeystoreError("keystore password must not be empty")
    p = Path(path)
    if p.exists() and not overwrite:
        raise KeystoreError(f"keystore {p} already exists")
    acct = Account.from_key(private_key) if private_key is not None else Account.create()
    blob = Account.encrypt(acct.key, password, kdf="scrypt", iterations=scrypt_n)
    p.parent.mkdir(parents=True, exist_ok=True)
    # Create with 0600 from the start so the encrypted key is never world-readable.
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(blob, f)
    return acct.address


def load_keystore(path: str | os.PathLike, password: str) -> bytes:
    """Decrypt the keystore at `path`; returns the 32-byte private key."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_KEYSTORE_BYTES:
            raise KeystoreError(f"keystore {p} is too large to be a keystore")
        blob = json.loads(p.read_text())
    except OSError as e:
        raise KeystoreError(f"keystore {p}: cannot read ({e.strerror or e})") from e
    except ValueError as e:
        raise KeystoreError(f"keystore {p}: not a JSON keystore") from e
    try:
        return bytes(Account.decrypt(blob, password))
    except ValueError:
        # eth-account says "MAC mismatch" for a wrong password; nothing to chain
        raise KeystoreError(f"keystore {p}: wrong password or corrupted keystore") from None
    except (KeyError, TypeError) as e:
        raise KeystoreError(f"keystore {p}: not a valid keystore ({type(e).__name__})") from None


def keystore_address(path: str | os.PathLike) -> str | None:
    """The address a keystore declares (without decrypting), or None."""
    try:
        addr = json.loads(Path(path).read_text()).get("address")
    except (OSError, ValueError, AttributeError):
        return None
    return None if not addr else "0x" + addr.removeprefix("0x")
