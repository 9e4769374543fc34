"""The one event decoder: raw logs → the typed event dataclasses of `chain.contract_types`.

Driven by the contracts' ABIs (from `artifacts/`): topic0 picks the event, indexed arguments come
from the other topics, the rest from `data`. Values come out plain: addresses checksummed, bytes as
`bytes`, arrays and structs as tuples. Indexed dynamic values (strings, arrays) are only their
keccak hash on chain, so they decode as 32 `bytes`, as web3 does.

`to_json` / `from_json` give an event's arguments as JSON keyed by the ABI's argument names
(bytes as 0x hex, arrays as lists, structs as objects), for callers that store events.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence, cast

from eth_abi import decode as abi_decode
from eth_typing import ABIEvent
from eth_utils import event_abi_to_log_topic, to_checksum_address
from hexbytes import HexBytes

from chain.abi import canonical_type, element_param, from_abi
from chain.contract_types import EVENT_CLASSES, Event, event_fields
from chain.errors import ChainError


class EventDecodeError(ChainError):
    """A log carries a known event's topic but does not match its ABI (wrong topics or data)."""


def _is_dynamic_indexed(inp: Mapping[str, Any]) -> bool:
    """Indexed values of these types are stored as their keccak hash in the topic."""
    t = inp["type"]
    return t in ("string", "bytes") or t.endswith("]") or t.startswith("tuple")


def _to_json(inp: Mapping[str, Any], value: Any) -> Any:
    t = inp["type"]
    if t.endswith("]"):
        return [_to_json(element_param(inp), v) for v in value]
    if t == "tuple":
        return {c["name"]: _to_json(c, v) for c, v in zip(inp["components"], value, strict=True)}
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    return value


def _from_json(inp: Mapping[str, Any], value: Any) -> Any:
    t = inp["type"]
    if t.endswith("]"):
        return tuple(_from_json(element_param(inp), v) for v in value)
    if t == "tuple":
        items = value.values() if isinstance(value, Mapping) else value
        return tuple(_from_json(c, v) for c, v in zip(inp["components"], items, strict=True))
    if t == "address":
        return to_checksum_address(value)
    if t.startswith("bytes"):
        return bytes(HexBytes(value))
    return value


def _log_topic(entry: Mapping[str, Any]) -> str:
    """topic0 (0x hex) of an event's ABI entry."""
    # the entry is a JSON ABI item whose "type" is "event": the shape of eth_typing's ABIEvent TypedDict
    return "0x" + event_abi_to_log_topic(cast(ABIEvent, dict(entry))).hex()


def _topic_hex(v: Any) -> str:
    return "0x" + bytes(HexBytes(v)).hex()


class EventDecoder:
    """Decodes the logs of known contracts into event dataclasses.

    `contracts`: address → that contract's ABI. `names`: only these events (default: every event
    that has a dataclass). Logs of other addresses or events decode to None.
    """

    def __init__(self, contracts: Mapping[str, Sequence[Mapping[str, Any]]], names: Iterable[str] | None = None):
        wanted = set(names) if names is not None else None
        unknown = (wanted or set()) - set(EVENT_CLASSES)
        if unknown:
            raise ValueError(f"no event dataclass for {sorted(unknown)}")
        self.addresses = [to_checksum_address(a) for a in contracts]
        self._by_topic: dict[tuple[str, str], Mapping[str, Any]] = {}
        self._by_name: dict[str, Mapping[str, Any]] = {}
        for address, abi in contracts.items():
            for entry in abi:
                name = entry.get("name")
                if entry.get("type") != "event" or entry.get("anonymous") or name not in EVENT_CLASSES:
                    continue
                if wanted is not None and name not in wanted:
                    continue
                known = self._by_name.setdefault(name, entry)
                if [canonical_type(i) for i in known["inputs"]] != [canonical_type(i) for i in entry["inputs"]]:
                    raise ValueError(f"event {name} has two different ABIs among the decoded contracts")
                topic = _log_topic(entry)
                self._by_topic[(to_checksum_address(address), topic)] = entry

    def topics(self) -> list[str]:
        """topic0 values (0x hex) of the decoded events, for eth_getLogs."""
        return sorted({t for _, t in self._by_topic})

    def topic(self, name: str) -> str:
        """topic0 (0x hex) of the event `name`, to filter eth_getLogs for it."""
        return _log_topic(self._entry(name))

    def decode(self, log: Mapping[str, Any]) -> Event | None:
        """The event dataclass of one log, or None for logs of other contracts/events and removed logs."""
        topics = log.get("topics") or []
        if not topics or log.get("removed"):
            return None
        entry = self._by_topic.get((to_checksum_address(log["address"]), _topic_hex(topics[0])))
        if entry is None:
            return None
        return self._decode(entry, log, [bytes(HexBytes(t)) for t in topics[1:]])

    def decode_all(self, logs: Iterable[Mapping[str, Any]]) -> list[Event]:
        """The decodable logs of `logs`, in their order."""
        return [ev for ev in (self.decode(lg) for lg in logs) if ev is not None]

    def _decode(self, entry: Mapping[str, Any], log: Mapping[str, Any], topics: list[bytes]) -> Event:
        name = entry["name"]
        indexed = [i for i in entry["inputs"] if i.get("indexed")]
        rest = [i for i in entry["inputs"] if not i.get("indexed")]
        if len(topics) != len(indexed):
            raise EventDecodeError(f"{name} log has {len(topics)} indexed topics, its ABI {len(indexed)}")
        try:
            by_topic = {
                i["name"]: bytes(t) if _is_dynamic_indexed(i) else abi_decode([canonical_type(i)], t)[0]
                for i, t in zip(indexed, topics, strict=True)
            }
            data = bytes(HexBytes(log.get("data") or b""))
            by_data = dict(zip((i["name"] for i in rest), abi_decode([canonical_type(i) for i in rest], data), strict=True))
        except Exception as e:  # eth_abi raises several types on malformed data
            raise EventDecodeError(f"{name} log does not match its ABI: {e}") from e
        values = {
            i["name"]: from_abi(by_topic[i["name"]] if i.get("indexed") else by_data[i["name"]], i) for i in entry["inputs"]
        }
        return self._build(
            name,
            entry,
            values,
            address=log["address"],
            block_number=log["blockNumber"],
            block_hash=log["blockHash"],
            tx_hash=log["transactionHash"],
            log_index=log["logIndex"],
        )

    # -- JSON form of the arguments (ABI names), for storage --------------------------------------
    def to_json(self, ev: Event) -> dict[str, Any]:
        """The event's arguments as JSON, keyed by the ABI's argument names."""
        entry = self._entry(type(ev).__name__)
        return {i["name"]: _to_json(i, getattr(ev, f)) for i, f in zip(entry["inputs"], event_fields(type(ev)), strict=True)}

    def from_json(
        self,
        name: str,
        args: Mapping[str, Any],
        *,
        address: str,
        block_number: int,
        block_hash: bytes | str,
        tx_hash: bytes | str,
        log_index: int,
    ) -> Event:
        """The event `to_json` gave `args` for, with its log position."""
        entry = self._entry(name)
        missing = [i["name"] for i in entry["inputs"] if i["name"] not in args]
        if missing:
            raise EventDecodeError(f"stored {name} event lacks {missing}")
        values = {i["name"]: _from_json(i, args[i["name"]]) for i in entry["inputs"]}
        return self._build(
            name,
            entry,
            values,
            address=address,
            block_number=block_number,
            block_hash=block_hash,
            tx_hash=tx_hash,
            log_index=log_index,
        )

    def _entry(self, name: str) -> Mapping[str, Any]:
        entry = self._by_name.get(name)
        if entry is None:
            raise EventDecodeError(f"this decoder does not know the event {name!r}")
        return entry

    @staticmethod
    def _build(
        name: str,
        entry: Mapping[str, Any],
        values: Mapping[str, Any],
        *,
        address: str,
        block_number: int,
        block_hash: bytes | str,
        tx_hash: bytes | str,
        log_index: int,
    ) -> Event:
        cls = EVENT_CLASSES[name]
        return cls(
            address=to_checksum_address(address),
            block_number=int(block_number),
            block_hash=bytes(HexBytes(block_hash)),
            tx_hash=bytes(HexBytes(tx_hash)),
            log_index=int(log_index),
            # dataclass fields follow the ABI's inputs in order (tests/contracts/test_contract_types.py)
            **{f: values[i["name"]] for i, f in zip(entry["inputs"], event_fields(cls), strict=True)},
        )
