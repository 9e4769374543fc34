"""Revert data decoded into `chain.errors.ContractRevert`, over the custom errors of every artifact."""

from __future__ import annotations

from functools import lru_cache

from eth_abi import decode as abi_decode
from eth_utils import function_abi_to_4byte_selector
from hexbytes import HexBytes
from web3.exceptions import ContractLogicError

from chain.abi import AbiParam, canonical_type, from_abi
from chain.artifacts import PROTOCOL_CONTRACTS, load_artifact
from chain.errors import ContractRevert

_ERROR_SOURCES = ("DemoToken", *PROTOCOL_CONTRACTS)
_BUILTIN_ERRORS: dict[bytes, tuple[str, list[AbiParam]]] = {
    bytes.fromhex("08c379a0"): ("Error", [{"name": "message", "type": "string"}]),
    bytes.fromhex("4e487b71"): ("Panic", [{"name": "code", "type": "uint256"}]),
}


@lru_cache(maxsize=1)
def _error_table() -> dict[bytes, tuple[str, list[AbiParam]]]:
    """4-byte selector -> (error name, its ABI inputs)."""
    table = dict(_BUILTIN_ERRORS)
    for name in _ERROR_SOURCES:
        for entry in load_artifact(name).abi:
            if entry["type"] == "error":
                table[function_abi_to_4byte_selector(entry)] = (entry["name"], list(entry["inputs"]))
    return table


def decode_revert(data: bytes | str | None) -> ContractRevert:
    """The ContractRevert that revert `data` encodes (name "Unknown" if it matches no known error)."""
    raw = bytes(HexBytes(data)) if data else b""
    entry = _error_table().get(raw[:4]) if len(raw) >= 4 else None
    if entry is None:
        return ContractRevert("Unknown", (), raw, f"revert with unknown data 0x{raw.hex()}")
    name, inputs = entry
    try:
        values = abi_decode([canonical_type(i) for i in inputs], raw[4:]) if inputs else ()
    except Exception:  # noqa: BLE001 - malformed data from a hostile contract must not crash decoding
        return ContractRevert("Unknown", (), raw, f"malformed {name} revert data 0x{raw.hex()}")
    return ContractRevert(name, tuple(from_abi(v, i) for v, i in zip(values, inputs, strict=True)), raw)


def revert_data(data: object) -> bytes | None:
    """The revert bytes in an error's `data` (a web3 exception's, or a raw JSON-RPC error's), if any.
    None when there are none, or when they are not hex (a broken provider's reply): the caller
    then reports a revert without data rather than failing on the provider's text."""
    if isinstance(data, dict):  # some providers nest it
        data = data.get("data")
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    if isinstance(data, str) and data.startswith("0x"):
        try:
            return bytes.fromhex(data[2:])
        except ValueError:
            return None
    return None


def as_revert(e: Exception) -> Exception:
    """The decoded ContractRevert behind a web3 error, or `e` itself when it carries no revert."""
    data = revert_data(getattr(e, "data", None))
    if data is not None:
        return decode_revert(data)
    if isinstance(e, ContractLogicError):
        return ContractRevert("Unknown", (), b"", str(e))
    return e
