"""RegistryProjector folds NodeRegistry's bond events into the node's row, on a real SQLite database:
a slash lowers the projected bond, and a rebuild after a reorg gives the same row. (The watcher tests
run on a real chain, but their registries deploy no ReceiptLog, so no slash can happen there; the
contract side of slashing is tests/contracts/test_accountability.py.)"""

from __future__ import annotations

import pytest

from chain.contract_types import BondAdded, NodeRegistered, NodeSlashed
from node.daemon.sync.projections import WATCHED_EVENTS, RegistryProjector
from node.db import NodeRow, make_session_factory, migrate

NODE = "0x" + "ab" * 20
PROVER = "0x" + "cd" * 20


def _event(cls, block: int, **fields):
    return cls(address="0x" + "11" * 20, block_number=block, block_hash=b"\0" * 32, tx_hash=b"\0" * 32, log_index=0, **fields)


@pytest.fixture
def session(tmp_path):
    url = f"sqlite:///{tmp_path / 'node.db'}"
    migrate(url)
    factory = make_session_factory(url)
    yield factory
    factory.kw["bind"].dispose()


def test_a_slash_lowers_the_projected_bond_and_a_rebuild_agrees(session):
    p = RegistryProjector()
    events = [
        _event(NodeRegistered, 1, node=NODE, endpoint="https://n", base_model_ids=("m",), compute_price_per_1k=5),
        _event(BondAdded, 2, node=NODE, amount=10, total=10),
        _event(NodeSlashed, 3, node=NODE, beneficiary=PROVER, amount=4, reward=2),  # a dispute's part
    ]
    assert NodeSlashed in WATCHED_EVENTS["NodeRegistry"] and p.entity(events[2]) == f"node:{NODE}"
    with session() as s:
        for ev in events:
            p.apply(s, ev)
        s.commit()
        assert s.get(NodeRow, NODE).bond == 6
        p.apply(s, _event(NodeSlashed, 4, node=NODE, beneficiary=PROVER, amount=6, reward=3))  # the rest
        s.commit()
        assert s.get(NodeRow, NODE).bond == 0
        p.rebuild(s, f"node:{NODE}", events)  # the last slash reorged out
        s.commit()
        assert s.get(NodeRow, NODE).bond == 6
