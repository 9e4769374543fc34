"""Projection of DatasetRegistry / AdapterRegistry / NodeRegistry events (the typed dataclasses of
`chain.contract_types`) into DB rows; `node.daemon.sync.store.SqlWatcherStore` calls it.

Each event belongs to one entity ("dataset:1", "contribution:4", "adapter:3", "node:0xabc…").
`apply` folds one new event into its row; `rebuild` recomputes a row from the entity's remaining
events after a reorg. Adapter rows also carry this node's lifecycle state, which a rebuild keeps
unless the on-chain content changed (new CID → fetch again; deprecation undone → load again).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from chain.contract_types import (
    AdapterDeprecated,
    AdapterPublished,
    BondAdded,
    BondWithdrawn,
    ContributionAccepted,
    ContributionRejected,
    ContributionSubmitted,
    DatasetCreated,
    Event,
    NodeDeregistered,
    NodeRegistered,
    NodeSlashed,
    NodeUpdated,
)
from node.db.models import (
    Adapter,
    AdapterState,
    Contribution,
    ContributionStatus,
    Dataset,
    NodeRow,
)

CONTRIBUTION_EVENTS = (ContributionSubmitted, ContributionAccepted, ContributionRejected)
DATASET_EVENTS = (DatasetCreated, *CONTRIBUTION_EVENTS)
ADAPTER_EVENTS = (AdapterPublished, AdapterDeprecated)
NODE_EVENTS = (NodeRegistered, NodeUpdated, NodeDeregistered, BondAdded, BondWithdrawn, NodeSlashed)
WATCHED_EVENTS = {"DatasetRegistry": DATASET_EVENTS, "AdapterRegistry": ADAPTER_EVENTS, "NodeRegistry": NODE_EVENTS}


class RegistryProjector:
    def entity(self, ev: Event) -> str | None:
        if isinstance(ev, DatasetCreated):
            return f"dataset:{ev.dataset_id}"
        if isinstance(ev, CONTRIBUTION_EVENTS):
            return f"contribution:{ev.contribution_id}"
        if isinstance(ev, ADAPTER_EVENTS):
            return f"adapter:{ev.adapter_id}"
        if isinstance(ev, NODE_EVENTS):
            return f"node:{ev.node.lower()}"
        return None

    # -- apply ------------------------------------------------------------------------------------
    def apply(self, s: Session, ev: Event) -> None:
        getattr(self, f"_on_{type(ev).__name__}")(s, ev)

    def _on_DatasetCreated(self, s: Session, ev: DatasetCreated) -> None:
        s.merge(
            Dataset(
                id=ev.dataset_id,
                curator=ev.curator,
                name=ev.name,
                license=ev.license,
                metadata_cid=ev.metadata_cid,
                block_number=ev.block_number,
            )
        )

    def _on_ContributionSubmitted(self, s: Session, ev: ContributionSubmitted) -> None:
        s.merge(
            Contribution(
                id=ev.contribution_id,
                dataset_id=ev.dataset_id,
                contributor=ev.contributor,
                content_cid=ev.cid,
                size_tokens=ev.size_tokens,
                status=ContributionStatus.PENDING.value,
                weight=0,
                block_number=ev.block_number,
            )
        )

    def _on_ContributionAccepted(self, s: Session, ev: ContributionAccepted) -> None:
        c = s.get(Contribution, ev.contribution_id)
        if c is not None:
            c.status, c.weight = ContributionStatus.ACCEPTED.value, ev.weight

    def _on_ContributionRejected(self, s: Session, ev: ContributionRejected) -> None:
        c = s.get(Contribution, ev.contribution_id)
        if c is not None:
            c.status, c.weight = ContributionStatus.REJECTED.value, 0

    def _on_AdapterPublished(self, s: Session, ev: AdapterPublished) -> None:
        row = s.get(Adapter, ev.adapter_id)
        if row is None:
            row = Adapter(id=ev.adapter_id, state=AdapterState.REGISTERED.value, attempts=0, deprecated=False)
            s.add(row)
        elif row.cid != ev.cid:
            _reset_lifecycle(row)  # a new version: new weights to fetch and verify
        row.owner = ev.owner
        row.base_model = ev.base_model_id
        row.cid = ev.cid
        row.rank = ev.rank
        row.price_per_1k = ev.price_per_1k
        row.owner_bps = ev.owner_bps
        row.dataset_splits = [[int(i), int(b)] for i, b in zip(ev.dataset_ids, ev.dataset_bps, strict=True)]
        row.block_number = ev.block_number

    def _on_AdapterDeprecated(self, s: Session, ev: AdapterDeprecated) -> None:
        row = s.get(Adapter, ev.adapter_id)
        if row is not None:
            row.deprecated = True  # the lifecycle unloads it and sets state `deprecated`

    def _on_NodeRegistered(self, s: Session, ev: NodeRegistered | NodeUpdated) -> None:
        row = s.get(NodeRow, ev.node) or NodeRow(operator=ev.node, bond=0)
        row.endpoint, row.base_models, row.price_per_1k = ev.endpoint, list(ev.base_model_ids), ev.compute_price_per_1k
        row.active, row.block_number = True, ev.block_number
        s.merge(row)

    _on_NodeUpdated = _on_NodeRegistered

    def _on_NodeDeregistered(self, s: Session, ev: NodeDeregistered) -> None:
        row = s.get(NodeRow, ev.node)
        if row is not None:
            row.active = False

    def _on_BondAdded(self, s: Session, ev: BondAdded) -> None:
        row = s.get(NodeRow, ev.node)
        if row is not None:
            row.bond = ev.total

    def _on_BondWithdrawn(self, s: Session, ev: BondWithdrawn) -> None:
        row = s.get(NodeRow, ev.node)
        if row is not None:
            row.bond = 0

    def _on_NodeSlashed(self, s: Session, ev: NodeSlashed) -> None:
        row = s.get(NodeRow, ev.node)
        if row is not None:  # the chain takes at most the bond: `amount` never exceeds it
            row.bond = max(0, int(row.bond) - ev.amount)

    # -- rebuild after a reorg ----------------------------------------------------------------------
    def rebuild(self, s: Session, entity: str, events: list[Event]) -> None:
        kind, _, key = entity.partition(":")
        if kind == "adapter":
            self._rebuild_adapter(s, int(key), events)
            return
        model = {"dataset": Dataset, "contribution": Contribution, "node": NodeRow}[kind]
        pk = key if kind == "node" else int(key)
        row = s.get(model, pk) if kind != "node" else _node_row(s, key)
        if row is not None:
            s.delete(row)
            s.flush()
        for ev in events:
            self.apply(s, ev)

    def _rebuild_adapter(self, s: Session, adapter_id: int, events: list[Event]) -> None:
        row = s.get(Adapter, adapter_id)
        if not events:
            if row is not None:
                s.delete(row)  # registration undone; the lifecycle unloads what is no longer in the DB
            return
        before = (row.cid, row.deprecated) if row is not None else None
        if row is not None:
            row.deprecated = False
        for ev in events:
            self.apply(s, ev)  # AdapterPublished resets the lifecycle when the CID differs
        row = s.get(Adapter, adapter_id)
        if before is not None and before[1]:
            if row is None:  # the events only update or insert the row
                raise RuntimeError(f"adapter {adapter_id} vanished while its events were re-applied")
            if not row.deprecated:
                _reset_lifecycle(row)  # deprecation undone: serve it again


def _node_row(s: Session, key: str) -> NodeRow | None:
    from sqlalchemy import func, select

    return s.scalars(select(NodeRow).where(func.lower(NodeRow.operator) == key)).first()


def _reset_lifecycle(row: Adapter) -> None:
    row.state = AdapterState.REGISTERED.value
    row.failure_reason = None
    row.local_path = None
    row.attempts = 0
