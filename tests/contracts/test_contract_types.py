"""The typed dataclasses match the contracts' ABIs field for field, name, order and type (no
artifact drift): every event dataclass, and every struct read the bindings decode."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, fields

import pytest

from chain.artifacts import PROTOCOL_CONTRACTS, load_artifact
from chain.contract_types import EVENT_CLASSES, event_fields, snake
from chain.contracts import STRUCT_READS, StructRead, output_params

UNDECODED = {"EIP712DomainChanged"}  # carries no data the node uses
READ_RESULT_CLASSES = {
    "AdapterInfo",
    "AdapterPayout",
    "DatasetInfo",
    "ContributionInfo",
    "NodeInfo",
    "EscrowAccount",
    "LaneCollected",
    "SignerInfo",
    "DisputeInfo",
    "DisputeTerms",
    "PoolBalance",
    "ProtocolFee",
}


def python_type(param: dict) -> object:
    """The annotation a dataclass field holding this ABI parameter must carry."""
    t = param["type"]
    if t.endswith("]"):
        if t.startswith("tuple"):
            return tuple  # structs in an array stay plain tuples, in ABI order
        return types.GenericAlias(tuple, (python_type({**param, "type": t[: t.rindex("[")]}), ...))
    if t.startswith(("uint", "int")):
        return int
    if t in ("address", "string"):
        return str
    if t == "bool":
        return bool
    if t.startswith("bytes"):
        return bytes
    raise AssertionError(f"no Python type for ABI type {t}")


def field_types(cls: type) -> dict[str, object]:
    return typing.get_type_hints(cls)


def test_python_type_mapping():
    assert python_type({"type": "uint16[]"}) == tuple[int, ...]
    assert python_type({"type": "bytes32"}) is bytes and python_type({"type": "address"}) is str
    with pytest.raises(AssertionError):
        python_type({"type": "fixed128x18"})


def test_every_event_has_a_matching_dataclass():
    seen = set()
    for name in ("DemoToken", *PROTOCOL_CONTRACTS):
        for entry in load_artifact(name).abi:
            if entry["type"] != "event" or entry["name"] in UNDECODED:
                continue
            cls = EVENT_CLASSES.get(entry["name"])
            assert cls is not None, f"{name}.{entry['name']} has no dataclass"
            assert event_fields(cls) == [snake(i["name"]) for i in entry["inputs"]], entry["name"]
            hints = field_types(cls)
            for i in entry["inputs"]:
                assert hints[snake(i["name"])] == python_type(i), f"{entry['name']}.{i['name']}: {i['type']}"
            seen.add(entry["name"])
    assert seen == set(EVENT_CLASSES), f"dataclasses without an event: {set(EVENT_CLASSES) - seen}"


def _function(contract: str, fn: str) -> dict:
    [entry] = [e for e in load_artifact(contract).abi if e["type"] == "function" and e["name"] == fn]
    return entry


def check_struct_read(contract: str, fn: str, read: StructRead) -> None:
    entry = _function(contract, fn)
    assert entry["stateMutability"] == "view", f"{contract}.{fn} is not a read"
    names = [f.name for f in fields(read.cls)]
    keys = [snake(i["name"]) for i in entry["inputs"] if snake(i["name"]) in names]
    outs = output_params(entry)
    # the id that was asked for comes first, then every output component in ABI order
    assert names == keys + [snake(p["name"]) for p in outs], f"{read.cls.__name__} vs {contract}.{fn}"
    hints = field_types(read.cls)
    for p in [*(i for i in entry["inputs"] if snake(i["name"]) in keys), *outs]:
        expected = str if snake(p["name"]) in read.enums else python_type(p)
        assert hints[snake(p["name"])] == expected, f"{read.cls.__name__}.{snake(p['name'])}: {p['type']}"


@pytest.mark.parametrize("contract,fn", sorted(STRUCT_READS))
def test_struct_read_matches_its_abi(contract, fn):
    check_struct_read(contract, fn, STRUCT_READS[(contract, fn)])


def test_every_read_dataclass_is_decoded():
    assert {r.cls.__name__ for r in STRUCT_READS.values()} == READ_RESULT_CLASSES


@dataclass(frozen=True)
class _SwappedAccount:
    thawing: int
    balance: int
    thaw_end: int


@dataclass(frozen=True)
class _MistypedAccount:
    balance: int
    thawing: int
    thaw_end: str


def test_the_struct_check_catches_drift():
    with pytest.raises(AssertionError, match="_SwappedAccount vs UsageEscrow.accountOf"):
        check_struct_read("UsageEscrow", "accountOf", StructRead(_SwappedAccount))
    with pytest.raises(AssertionError, match="thaw_end: uint64"):
        check_struct_read("UsageEscrow", "accountOf", StructRead(_MistypedAccount))


def test_snake_names():
    assert snake("datasetId") == "dataset_id"
    assert snake("accRewardPerWeight") == "acc_reward_per_weight"
    assert snake("from") == "from_" and snake("pricePer1k") == "price_per_1k"
