"""Chain watcher on a real anvil with the real registries: discovery, confirmations, restart resume,
crash mid-window, reorgs (shallower than confirmations, and deeper ones that must be undone),
provider block-range limits and an RPC outage."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select
from web3 import Web3

from inference.embedded_model import EMBEDDED_MODEL_ID
from node.db import (
    Adapter,
    AdapterState,
    ChainCursor,
    ChainEvent,
    Contribution,
    Dataset,
    NodeRow,
    make_session_factory,
    migrate,
)
from node.daemon.sync import registry_watcher

BASE = EMBEDDED_MODEL_ID


@pytest.fixture
def db(tmp_path, request):
    # parametrized indirectly with "postgres": the same test on the machine's Postgres
    url = (
        request.getfixturevalue("pg_url")
        if getattr(request, "param", "sqlite") == "postgres"
        else f"sqlite:///{tmp_path / 'node.db'}"
    )
    migrate(url)
    f = make_session_factory(url)
    yield f
    f.kw["bind"].dispose()


def publish_all(r):
    r.send("DatasetRegistry", "createDataset", "wiki", "CC-BY-4.0", "bafymeta")
    r.send("DatasetRegistry", "contribute", 1, "bafyc1", 1000, key_index=1)
    r.send("DatasetRegistry", "contribute", 1, "bafyc2", 500, key_index=2)
    r.send("DatasetRegistry", "accept", 1, 7)
    r.send("DatasetRegistry", "reject", 2)
    r.send("AdapterRegistry", "register", BASE, "bafyadapter1", 8, 100, 7000, [1], [3000], key_index=3)
    r.send("AdapterRegistry", "register", "other/model", "bafyadapter2", 4, 5, 10_000, [], [], key_index=3)
    r.send("AdapterRegistry", "publishVersion", 1, "bafyadapter1v2", 16, 200, key_index=3)
    r.send("AdapterRegistry", "deprecate", 2, key_index=3)
    r.send("NodeRegistry", "register", "https://node.example", [BASE], 50, 0, key_index=4)


def snapshot(f):
    """Projection rows as plain tuples (chain columns only)."""
    with f() as s:
        return (
            [(d.id, d.curator, d.name) for d in s.scalars(select(Dataset).order_by(Dataset.id))],
            [(c.id, c.status, c.weight) for c in s.scalars(select(Contribution).order_by(Contribution.id))],
            [
                (a.id, a.cid, a.rank, a.price_per_1k, a.deprecated, a.base_model, a.dataset_splits)
                for a in s.scalars(select(Adapter).order_by(Adapter.id))
            ],
            [(n.operator, n.endpoint, n.base_models, n.price_per_1k, n.active) for n in s.scalars(select(NodeRow))],
        )


def chain_adapters(r):
    """Adapters as the contract's views say (the ground truth), shaped like `snapshot`'s."""
    ad = r.contracts["AdapterRegistry"].functions
    out = []
    for i in range(1, ad.adapterCount().call() + 1):
        owner, base, cid, rank, price, owner_bps, ids, bps, version, deprecated = ad.getAdapter(i).call()
        out.append((i, cid, rank, price, deprecated, base, [[a, b] for a, b in zip(ids, bps, strict=True)]))
    return out


async def test_discovers_everything_behind_confirmations_and_matches_chain(registries, db):
    r = registries
    publish_all(r)
    w = registry_watcher(r.w3, db, r, confirmations=2)
    await w.sync_until_caught_up()
    # the last two blocks are not confirmed yet: the node registration (last tx) is not applied
    datasets, contribs, adapters, nodes = snapshot(db)
    assert nodes == []
    r.w3.provider.make_request("anvil_mine", ["0x2"])
    await w.sync_until_caught_up()
    datasets, contribs, adapters, nodes = snapshot(db)
    assert datasets == [(1, r.w3.eth.accounts[0], "wiki")]
    assert contribs == [(1, "accepted", 7), (2, "rejected", 0)]
    assert adapters == [
        (1, "bafyadapter1v2", 16, 200, False, BASE, [[1, 3000]]),
        (2, "bafyadapter2", 4, 5, True, "other/model", []),
    ]
    assert nodes == [(r.w3.eth.accounts[4], "https://node.example", [BASE], 50, True)]
    assert adapters == chain_adapters(r)
    with db() as s:
        assert s.scalar(select(func.count(ChainEvent.id))) == 10
        assert s.get(ChainCursor, "registries").block_number == r.w3.eth.block_number - 2


async def test_restart_resumes_without_gaps_or_duplicates(registries, db):
    r = registries
    publish_all(r)
    r.w3.provider.make_request("anvil_mine", ["0x3"])
    # A first watcher with 2-block windows stops after three windows ("process exits").
    w1 = registry_watcher(r.w3, db, r, confirmations=0, max_window=2)
    for _ in range(3):
        await w1.sync_once()
    assert 0 < w1.cursor()[0] < r.w3.eth.block_number
    # A crash in the middle of a window: the whole window rolls back with its cursor.
    w2 = registry_watcher(r.w3, db, r, confirmations=0, max_window=3)
    before = w2.cursor()
    boom = w2.store.projector.apply
    calls = [0]

    def crash_on_third(s, ev):
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("killed mid-window")
        boom(s, ev)

    w2.store.projector.apply = crash_on_third
    with pytest.raises(RuntimeError):
        for _ in range(10):
            await w2.sync_once()
    assert w2.cursor()[0] >= before[0]
    # Restart: a new watcher continues from the cursor.
    w3 = registry_watcher(r.w3, db, r, confirmations=0)
    await w3.sync_until_caught_up()
    resumed = snapshot(db)
    with db() as s:
        rows = list(s.execute(select(ChainEvent.block_number, ChainEvent.log_index)))
    assert len(rows) == len(set(rows)) == 10  # every event exactly once
    assert resumed[2] == chain_adapters(r)
    assert resumed[1] == [(1, "accepted", 7), (2, "rejected", 0)]


async def test_reorg_shallower_than_confirmations_never_reaches_the_db(registries, db):
    r = registries
    r.send("DatasetRegistry", "createDataset", "d", "MIT", "m")
    r.send("AdapterRegistry", "register", BASE, "bafyA", 8, 1, 10_000, [], [], key_index=3)
    r.w3.provider.make_request("anvil_mine", ["0x3"])
    w = registry_watcher(r.w3, db, r, confirmations=3)
    await w.sync_until_caught_up()
    # New adapter 2 then a reorg (depth 2 < 3 confirmations) replacing it with another publication.
    r.send("AdapterRegistry", "register", BASE, "bafyLOST", 8, 1, 10_000, [], [], key_index=3)
    r.w3.provider.make_request("anvil_mine", ["0x1"])
    await w.sync_until_caught_up()
    ad = r.contracts["AdapterRegistry"]
    replacement = ad.functions.register(BASE, "bafyKEPT", 4, 9, 10_000, [], []).build_transaction(
        {"from": r.w3.eth.accounts[3], "gas": 500_000}
    )
    replacement = {k: (hex(v) if isinstance(v, int) else v) for k, v in replacement.items() if k != "chainId"}
    r.w3.provider.make_request("anvil_reorg", [2, [[replacement, 0]]])
    r.w3.provider.make_request("anvil_mine", ["0x4"])
    await w.sync_until_caught_up()
    assert w.reorgs == 0  # never applied an unconfirmed block
    adapters = snapshot(db)[2]
    assert [(a[0], a[1]) for a in adapters] == [(1, "bafyA"), (2, "bafyKEPT")]
    assert adapters == chain_adapters(r)


@pytest.mark.parametrize("db", ["sqlite", "postgres"], indirect=True)
async def test_deeper_reorg_is_walked_back_and_undone(registries, db):
    """confirmations = 0 lets a reorg hit applied blocks: the watcher must undo them."""
    r = registries
    r.send("AdapterRegistry", "register", BASE, "bafyA", 8, 1, 10_000, [], [], key_index=3)
    r.send("AdapterRegistry", "register", BASE, "bafyB", 8, 1, 10_000, [], [], key_index=3)
    w = registry_watcher(r.w3, db, r, confirmations=0)
    await w.sync_until_caught_up()
    with db.begin() as s:  # the lifecycle had loaded both
        for a in s.scalars(select(Adapter)):
            a.state, a.local_path = AdapterState.LOADED.value, f"/cache/{a.cid}"
    # Then: adapter 1 gets a new version, adapter 2 is deprecated, adapter 3 appears ... and all of
    # it is reorged away; the replacement chain only deprecates adapter 1.
    r.send("AdapterRegistry", "publishVersion", 1, "bafyA2", 8, 1, key_index=3)
    r.send("AdapterRegistry", "deprecate", 2, key_index=3)
    r.send("AdapterRegistry", "register", BASE, "bafyC", 8, 1, 10_000, [], [], key_index=3)
    await w.sync_until_caught_up()
    snap = {a[0]: a for a in snapshot(db)[2]}
    assert snap[1][1] == "bafyA2" and snap[2][4] is True and 3 in snap
    with db() as s:
        assert s.get(Adapter, 1).state == AdapterState.REGISTERED.value  # new CID: fetch again
        assert s.get(Adapter, 2).state == AdapterState.LOADED.value  # the lifecycle unloads it later
    ad = r.contracts["AdapterRegistry"]
    tx = ad.functions.deprecate(1).build_transaction({"from": r.w3.eth.accounts[3], "gas": 200_000})
    tx = {k: (hex(v) if isinstance(v, int) else v) for k, v in tx.items() if k != "chainId"}
    r.w3.provider.make_request("anvil_reorg", [3, [[tx, 0]]])
    await w.sync_until_caught_up()
    assert w.reorgs == 1
    with db() as s:
        a1, a2, a3 = s.get(Adapter, 1), s.get(Adapter, 2), s.get(Adapter, 3)
        assert a3 is None  # its registration was undone
        assert (a1.cid, a1.deprecated) == ("bafyA", True)
        assert (a2.cid, a2.deprecated, a2.state) == ("bafyB", False, AdapterState.REGISTERED.value)
        assert a1.state == AdapterState.REGISTERED.value  # CID changed back: its cached files are not trusted
        names = [e.name for e in s.scalars(select(ChainEvent).order_by(ChainEvent.block_number))]
    assert names == ["AdapterPublished", "AdapterPublished", "AdapterDeprecated"]
    assert snapshot(db)[2] == chain_adapters(r)  # DB == the contract's views


async def test_provider_range_limit_halves_the_window(registries, db, rpc_proxy):
    r = registries
    publish_all(r)
    r.w3.provider.make_request("anvil_mine", ["0x40"])
    rpc_proxy.max_log_range = 5
    w3p = Web3(Web3.HTTPProvider(rpc_proxy.url))
    w = registry_watcher(w3p, db, r, confirmations=0, max_window=64)
    await w.sync_until_caught_up()
    assert w.window <= 8  # shrank to what the provider accepts (regrows one step after 8 successes)
    assert rpc_proxy.calls.count("eth_getLogs") < 60  # no retry storm
    assert len(snapshot(db)[2]) == 2
    with db() as s:
        assert s.scalar(select(func.count(ChainEvent.id))) == 10


async def test_rpc_down_for_a_while_then_catch_up(registries, db, rpc_proxy):
    r = registries
    w3p = Web3(Web3.HTTPProvider(rpc_proxy.url, request_kwargs={"timeout": 2}))
    w = registry_watcher(w3p, db, r, confirmations=0, poll_s=0.05)
    await w.sync_until_caught_up()
    rpc_proxy.stop()  # the port is dead now
    with pytest.raises(Exception) as e:  # requests' ConnectionError, raised as is: nothing to halve
        await w.sync_once()
    assert "onnection" in str(e.value) or "refused" in str(e.value)
    assert w.lag_blocks() is None
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    publish_all(r)  # events happen while the node cannot see the chain
    await asyncio.sleep(0.3)
    assert w.last_error is not None
    rpc_proxy.start()  # same port, alive again
    for _ in range(100):
        await asyncio.sleep(0.05)
        if w.last_error is None and w.cursor()[0] == r.w3.eth.block_number:
            break
    stop.set()
    await asyncio.wait_for(task, 5)
    assert w.cursor()[0] == r.w3.eth.block_number
    assert len(snapshot(db)[2]) == 2 and w.lag_blocks() == 0


async def test_chain_that_got_shorter_is_rolled_back(registries, db):
    """A rollback to a shorter chain (the cursor block no longer exists) is a reorg too."""
    r = registries
    r.send("AdapterRegistry", "register", BASE, "bafyA", 8, 1, 10_000, [], [], key_index=3)
    snap = r.w3.provider.make_request("evm_snapshot", [])["result"]
    r.send("AdapterRegistry", "register", BASE, "bafyB", 8, 1, 10_000, [], [], key_index=3)
    r.send("AdapterRegistry", "deprecate", 1, key_index=3)
    w = registry_watcher(r.w3, db, r, confirmations=0)
    await w.sync_until_caught_up()
    assert [a[0] for a in snapshot(db)[2]] == [1, 2]
    r.w3.provider.make_request("evm_revert", [snap])  # head is now below the cursor
    await w.sync_until_caught_up()
    assert w.reorgs == 1 and snapshot(db)[2] == chain_adapters(r)
    assert [(a[0], a[4]) for a in snapshot(db)[2]] == [(1, False)]
    r.send("AdapterRegistry", "register", BASE, "bafyC", 8, 1, 10_000, [], [], key_index=3)
    await w.sync_until_caught_up()
    assert snapshot(db)[2] == chain_adapters(r) and snapshot(db)[2][1][1] == "bafyC"


async def test_listeners_hear_of_steps_that_changed_something(registries, db):
    r = registries
    w = registry_watcher(r.w3, db, r, confirmations=0, max_window=4)
    heard, also = [], []
    w.add_listener(heard.append)
    w.add_listener(also.append)
    await w.sync_until_caught_up()
    assert heard == []  # the deployment emitted no registry events
    publish_all(r)
    await w.sync_until_caught_up()
    assert sum(res.events for res in heard) == 10 and all(res.events for res in heard)
    assert also == heard
    r.w3.provider.make_request("anvil_mine", ["0x3"])
    await w.sync_until_caught_up()
    assert sum(res.events for res in heard) == 10  # empty windows are not news
