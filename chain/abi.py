"""ABI parameters as types and values: canonical type strings, and values to and from web3.

Every conversion is driven by the ABI entry of the parameter, never by the shape of the value,
so a string that happens to look like an address stays a string.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from eth_utils import to_checksum_address
from hexbytes import HexBytes

from chain.contract_types import snake
from chain.errors import ChainError

AbiParam = Mapping[str, Any]  # one entry of an ABI's "inputs", "outputs" or "components"


def canonical_type(param: AbiParam) -> str:
    """`(uint256,address)[]` for a struct array: the form selectors and eth_abi use."""
    t = param["type"]
    if t.startswith("tuple"):
        return "(" + ",".join(canonical_type(c) for c in param["components"]) + ")" + t[len("tuple") :]
    return t


def element_param(param: AbiParam) -> AbiParam:
    """The parameter of one element of an array parameter (`uint256[]` -> `uint256`)."""
    return {**param, "type": param["type"][: param["type"].rindex("[")]}


def from_abi(value: Any, param: AbiParam) -> Any:
    """A decoded ABI value as plain Python: checksum addresses, bytes, tuples for arrays and structs."""
    t = param["type"]
    if t.endswith("]"):
        return tuple(from_abi(v, element_param(param)) for v in value)
    if t == "tuple":
        if isinstance(value, Mapping):  # web3 decodes an event's struct as a dict in ABI order
            value = list(value.values())
        return tuple(from_abi(v, c) for v, c in zip(value, param["components"], strict=True))
    if t == "address":
        return to_checksum_address(value)
    if t.startswith("bytes"):
        return bytes(value)
    return value


def to_abi(value: Any, param: AbiParam, where: str) -> Any:
    """A Python value as web3 encodes it for `param`: arrays from any sequence, structs from a
    dataclass whose fields are the components in snake_case (or from a sequence in ABI order),
    bytes from bytes or hex strings. `where` names the argument in errors."""
    t = param["type"]
    if t.endswith("]"):
        if isinstance(value, (str, bytes, bytearray)) or not isinstance(value, Sequence):
            raise ChainError(f"{where}: expected a sequence for {canonical_type(param)}, got {value!r}")
        return [to_abi(v, element_param(param), f"{where}[{i}]") for i, v in enumerate(value)]
    if t == "tuple":
        comps = param["components"]
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            try:
                value = [getattr(value, snake(c["name"])) for c in comps]
            except AttributeError as e:
                raise ChainError(f"{where}: {type(value).__name__} is not a {canonical_type(param)}: {e}") from e
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != len(comps):
            raise ChainError(f"{where}: expected {len(comps)} fields for {canonical_type(param)}, got {value!r}")
        return tuple(to_abi(v, c, f"{where}.{c['name']}") for v, c in zip(value, comps, strict=True))
    if t.startswith("bytes") and isinstance(value, (str, bytes, bytearray)):
        try:
            return bytes(HexBytes(value))
        except ValueError as e:
            raise ChainError(f"{where}: not hex bytes for {t}: {value!r}") from e
    return value
