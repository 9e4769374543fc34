"""Chain sync: confirmed registry events into the DB and its projections, reorgs undone.

`chain.watcher.ChainWatcher` follows the chain; `store.SqlWatcherStore` keeps its events, block
ring and cursor in the node's DB; `projections.RegistryProjector` turns the events into rows.
`registry_watcher` wires the three (neither the store nor the projections import the watcher).
"""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from chain.artifacts import load_artifact
from chain.events import EventDecoder
from chain.watcher import ChainWatcher
from node.daemon.sync.projections import WATCHED_EVENTS, RegistryProjector
from node.daemon.sync.store import SqlWatcherStore

REGISTRY_CURSOR = "registries"  # the cursor row's name; existing databases have it


def registry_watcher(
    w3,
    session_factory: sessionmaker[Session],
    deployment,
    *,
    confirmations: int = 2,
    max_window: int = 2000,
    ring_size: int = 256,
    poll_s: float = 2.0,
) -> ChainWatcher:
    """The node's watcher of DatasetRegistry, AdapterRegistry and NodeRegistry.

    `deployment`: anything with `addresses[name]` and `blocks[name]` (chain.deploy.Deployment).
    Subscribe to its changes with `add_listener`.
    """
    contracts = {deployment.addresses[n]: load_artifact(n).abi_list for n in WATCHED_EVENTS}
    names = [cls.__name__ for classes in WATCHED_EVENTS.values() for cls in classes]
    decoder = EventDecoder(contracts, names)
    store = SqlWatcherStore(session_factory, decoder, RegistryProjector(), name=REGISTRY_CURSOR)
    start = min(int(deployment.blocks.get(n, 0)) for n in WATCHED_EVENTS)
    return ChainWatcher(
        w3,
        decoder,
        store,
        start_block=start,
        confirmations=confirmations,
        max_window=max_window,
        ring_size=ring_size,
        poll_s=poll_s,
        name=REGISTRY_CURSOR,
    )
