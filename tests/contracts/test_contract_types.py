"""The event dataclasses match the contracts' ABIs field for field (no artifact drift)."""

from __future__ import annotations

from chain.artifacts import load_artifact
from chain.contract_types import EVENT_CLASSES, event_fields, snake
from chain.deploy import PROTOCOL_CONTRACTS

UNDECODED = {"EIP712DomainChanged"}  # carries no data the node uses


def test_every_event_has_a_matching_dataclass():
    seen = set()
    for name in ("DemoToken", *PROTOCOL_CONTRACTS):
        for entry in load_artifact(name).abi:
            if entry["type"] != "event" or entry["name"] in UNDECODED:
                continue
            cls = EVENT_CLASSES.get(entry["name"])
            assert cls is not None, f"{name}.{entry['name']} has no dataclass"
            assert event_fields(cls) == [snake(i["name"]) for i in entry["inputs"]], entry["name"]
            seen.add(entry["name"])
    assert seen == set(EVENT_CLASSES), f"dataclasses without an event: {set(EVENT_CLASSES) - seen}"


def test_snake_names():
    assert snake("datasetId") == "dataset_id"
    assert snake("accRewardPerWeight") == "acc_reward_per_weight"
    assert snake("from") == "from_" and snake("pricePer1k") == "price_per_1k"
