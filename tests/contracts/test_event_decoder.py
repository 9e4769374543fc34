"""chain.events.EventDecoder: logs → typed event dataclasses, and the JSON form the node stores."""

from __future__ import annotations

import pytest
from eth_abi import encode as abi_encode
from eth_utils import event_abi_to_log_topic, keccak

from chain.artifacts import load_artifact
from chain.contract_types import AdapterPublished, BatchSettled, NodeRegistered
from chain.events import EventDecodeError, EventDecoder

REGISTRY = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
POOL = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
OWNER = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"
BLOCK = {"blockNumber": 7, "blockHash": b"\x01" * 32, "transactionHash": b"\x02" * 32, "logIndex": 3}


def _event_abi(contract: str, name: str) -> dict:
    return next(e for e in load_artifact(contract).abi if e["type"] == "event" and e["name"] == name)


def _topic(contract: str, name: str) -> bytes:
    return event_abi_to_log_topic(_event_abi(contract, name))


def _word(value: int | str) -> bytes:
    return abi_encode(["address" if isinstance(value, str) else "uint256"], [value])


def adapter_published_log(address: str = REGISTRY) -> dict:
    data = abi_encode(
        ["uint32", "string", "string", "uint16", "uint128", "uint16", "uint256[]", "uint16[]"],
        [2, "base/model", "bafyA", 8, 100, 7000, [1, 4], [2000, 1000]],
    )
    return {
        "address": address,
        "topics": [_topic("AdapterRegistry", "AdapterPublished"), _word(5), _word(OWNER)],
        "data": data,
        **BLOCK,
    }


@pytest.fixture
def registry():
    return EventDecoder({REGISTRY: load_artifact("AdapterRegistry").abi_list})


def test_decodes_a_log_into_its_dataclass(registry):
    ev = registry.decode(adapter_published_log())
    assert ev == AdapterPublished(
        address=REGISTRY,
        block_number=7,
        block_hash=b"\x01" * 32,
        tx_hash=b"\x02" * 32,
        log_index=3,
        adapter_id=5,
        owner=OWNER,
        version=2,
        base_model_id="base/model",
        cid="bafyA",
        rank=8,
        price_per_1k=100,
        owner_bps=7000,
        dataset_ids=(1, 4),
        dataset_bps=(2000, 1000),
    )
    assert registry.topics() == sorted(
        "0x" + _topic("AdapterRegistry", n).hex() for n in ("AdapterPublished", "AdapterDeprecated")
    )


def test_bytes_decode_as_bytes_and_store_as_hex():
    """BatchSettled (node, seq indexed; the entries' hash and count in data): bytes32 comes out as
    `bytes` and is stored as 0x hex, and the stored form decodes back to the same event. (No event
    carries a struct array any more: AttributionPool logs a hash of its packed entries.)"""
    dec = EventDecoder({POOL: load_artifact("AttributionPool").abi_list}, ["BatchSettled"])
    digest = bytes(range(32))
    data = abi_encode(["bytes32", "uint256"], [digest, 7])
    log = {"address": POOL, "topics": [_topic("AttributionPool", "BatchSettled"), _word(OWNER), _word(9)], "data": data, **BLOCK}
    ev = dec.decode(log)
    assert isinstance(ev, BatchSettled) and ev.seq == 9 and ev.entries_hash == digest and ev.entry_count == 7
    stored = dec.to_json(ev)
    assert stored["entriesHash"] == "0x" + digest.hex()
    again = dec.from_json(
        "BatchSettled",
        stored,
        address=POOL,
        block_number=7,
        block_hash=BLOCK["blockHash"],
        tx_hash=BLOCK["transactionHash"],
        log_index=3,
    )
    assert again == ev


def test_rows_stored_by_earlier_versions_still_decode():
    """`chain_events.args` as the node has always written them (ABI names, JSON values)."""
    dec = EventDecoder({REGISTRY: load_artifact("NodeRegistry").abi_list})
    stored = {"node": OWNER, "endpoint": "https://node.example", "baseModelIds": ["base/model"], "computePricePer1k": 50}
    ev = dec.from_json(
        "NodeRegistered",
        stored,
        address=REGISTRY,
        block_number=7,
        block_hash="0x" + "01" * 32,
        tx_hash="0x" + "02" * 32,
        log_index=3,
    )
    assert ev == NodeRegistered(
        address=REGISTRY,
        block_number=7,
        block_hash=b"\x01" * 32,
        tx_hash=b"\x02" * 32,
        log_index=3,
        node=OWNER,
        endpoint="https://node.example",
        base_model_ids=("base/model",),
        compute_price_per_1k=50,
    )
    assert dec.to_json(ev) == stored
    with pytest.raises(EventDecodeError, match="lacks"):
        dec.from_json(
            "NodeRegistered", {"node": OWNER}, address=REGISTRY, block_number=7, block_hash=b"", tx_hash=b"", log_index=0
        )


def test_other_logs_are_skipped(registry):
    assert registry.decode(adapter_published_log(address=POOL)) is None  # another contract
    assert registry.decode({**adapter_published_log(), "removed": True}) is None
    assert registry.decode({**adapter_published_log(), "topics": [keccak(text="Unknown()")]}) is None
    assert registry.decode({**adapter_published_log(), "topics": []}) is None
    assert registry.decode_all([adapter_published_log(address=POOL), adapter_published_log()])[0].adapter_id == 5


def test_malformed_logs_and_bad_arguments_are_clear_errors(registry):
    log = adapter_published_log()
    with pytest.raises(EventDecodeError, match="indexed topics"):
        registry.decode({**log, "topics": log["topics"][:2]})
    with pytest.raises(EventDecodeError, match="does not match its ABI"):
        registry.decode({**log, "data": b"\x00" * 8})
    with pytest.raises(ValueError, match="no event dataclass"):
        EventDecoder({REGISTRY: load_artifact("AdapterRegistry").abi_list}, ["NoSuchEvent"])
    with pytest.raises(EventDecodeError, match="does not know"):
        registry.from_json("NodeRegistered", {}, address=REGISTRY, block_number=0, block_hash=b"", tx_hash=b"", log_index=0)
