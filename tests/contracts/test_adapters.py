"""AdapterRegistry: registration, versions, deprecation, split validation and ownership."""

from __future__ import annotations

import pytest

from chain.contract_types import AdapterDeprecated, AdapterPublished


@pytest.fixture
def datasets(env):
    for i in range(11):
        env.c.datasets.create_dataset(env.curator, f"d{i}", "MIT", "")
    return list(range(1, 12))


def test_register_event_carries_everything(env, datasets):
    c = env.c
    r = c.adapters.register(env.owner, "smollm2-135m", "bafyfolder", 16, 12345, 7000, [2, 5], [1000, 2000])
    (ev,) = [e for e in c.events_of(r) if isinstance(e, AdapterPublished)]
    assert (ev.adapter_id, ev.owner, ev.version, ev.base_model_id, ev.cid, ev.rank, ev.price_per_1k) == (
        1,
        env.owner.address,
        1,
        "smollm2-135m",
        "bafyfolder",
        16,
        12345,
    )
    assert (ev.owner_bps, ev.dataset_ids, ev.dataset_bps) == (7000, (2, 5), (1000, 2000))
    a = c.adapters.get_adapter(1)
    assert (a.owner, a.base_model_id, a.cid, a.rank, a.price_per_1k, a.owner_bps) == (
        env.owner.address,
        "smollm2-135m",
        "bafyfolder",
        16,
        12345,
        7000,
    )
    assert (a.dataset_ids, a.dataset_bps, a.version, a.deprecated) == ((2, 5), (1000, 2000), 1, False)
    assert c.adapters.adapter_count() == 1


def test_ten_datasets_pack_and_unpack(env, datasets):
    c = env.c
    ids = datasets[:10]
    bps = [100 * (i + 1) for i in range(10)]  # sum 5,500
    c.adapters.register(env.owner, "m", "bafy", 8, 1, 10_000 - sum(bps), ids, bps)
    a = c.adapters.get_adapter(1)
    assert (a.dataset_ids, a.dataset_bps) == (tuple(ids), tuple(bps))
    p = c.adapters.payout_of(1)
    assert p.owner == env.owner.address and p.count == 10
    assert (p.packed0 >> 16) & 0xFFFFFFFF == 1 and p.packed0 & 0xFFFF == 100
    assert (p.packed1 >> 16) & 0xFFFFFFFF == 6 and p.packed1 & 0xFFFF == 600
    assert c.adapters.payout_of(99).owner == "0x" + "00" * 20


def test_publish_version_and_deprecate(env, datasets, reverts):
    c = env.c
    c.adapters.register(env.owner, "m", "bafy1", 8, 100, 9000, [3], [1000])
    r = c.adapters.publish_version(env.owner, 1, "bafy2", 16, 200)
    (ev,) = [e for e in c.events_of(r) if isinstance(e, AdapterPublished)]
    assert (ev.version, ev.cid, ev.rank, ev.price_per_1k, ev.dataset_ids, ev.owner_bps) == (2, "bafy2", 16, 200, (3,), 9000)
    r = c.adapters.deprecate(env.owner, 1)
    assert [type(e) for e in c.events_of(r)] == [AdapterDeprecated]
    assert c.adapters.get_adapter(1).deprecated
    with reverts("AdapterRegistryDeprecated", 1):
        c.adapters.publish_version(env.owner, 1, "bafy3", 8, 1)
    with reverts("AdapterRegistryDeprecated", 1):
        c.adapters.deprecate(env.owner, 1)


def test_non_owner_cannot_change_an_adapter(env, datasets, reverts):
    c = env.c
    c.adapters.register(env.owner, "m", "bafy1", 8, 100, 10_000)
    with reverts("AdapterRegistryNotOwner", 1, env.stranger.address):
        c.adapters.publish_version(env.stranger, 1, "bafyevil", 8, 0)
    with reverts("AdapterRegistryNotOwner", 1, env.stranger.address):
        c.adapters.deprecate(env.stranger, 1)
    assert c.adapters.get_adapter(1).cid == "bafy1"
    with reverts("AdapterRegistryUnknownAdapter", 2):
        c.adapters.publish_version(env.owner, 2, "bafy", 8, 0)
    with reverts("AdapterRegistryUnknownAdapter", 2):
        c.adapters.get_adapter(2)


@pytest.mark.parametrize(
    "owner_bps,ids,bps,error,args",
    [
        (9000, [1], [999], "AdapterRegistryBpsSum", (9999,)),  # attack: bps not summing to 10,000
        (9000, [1], [1001], "AdapterRegistryBpsSum", (10001,)),
        (0, [], [], "AdapterRegistryBpsSum", (0,)),
        (10_000, [1], [0], "AdapterRegistryZeroDatasetBps", (1,)),
        (9000, [1, 2], [1000], "AdapterRegistryLengthMismatch", (2, 1)),
        (0, list(range(1, 12)), [1] * 11, "AdapterRegistryTooManyDatasets", (11,)),
        (8000, [2, 1], [1000, 1000], "AdapterRegistryDatasetsNotAscending", (1,)),
        (8000, [1, 1], [1000, 1000], "AdapterRegistryDatasetsNotAscending", (1,)),
        (9000, [12], [1000], "AdapterRegistryUnknownDataset", (12,)),
        (9000, [0], [1000], "AdapterRegistryDatasetsNotAscending", (0,)),
    ],
)
def test_split_validation(env, datasets, reverts, owner_bps, ids, bps, error, args):
    with reverts(error, *args):
        env.c.adapters.register(env.owner, "m", "bafy", 8, 1, owner_bps, ids, bps)


def test_field_validation(env, reverts):
    c = env.c
    with reverts("AdapterRegistryInvalidRank", 0):
        c.adapters.register(env.owner, "m", "bafy", 0, 1, 10_000)
    with reverts("AdapterRegistryInvalidRank", 1025):
        c.adapters.register(env.owner, "m", "bafy", 1025, 1, 10_000)
    with reverts("AdapterRegistryInvalidString", "baseModelId"):
        c.adapters.register(env.owner, "", "bafy", 8, 1, 10_000)
    with reverts("AdapterRegistryInvalidString", "cid"):
        c.adapters.register(env.owner, "m", "c" * 257, 8, 1, 10_000)
    c.adapters.register(env.owner, "m", "bafy", 8, 1, 10_000)
    with reverts("AdapterRegistryInvalidString", "cid"):
        c.adapters.publish_version(env.owner, 1, "", 8, 1)
    with reverts("AdapterRegistryInvalidRank", 0):
        c.adapters.publish_version(env.owner, 1, "bafy", 0, 1)
