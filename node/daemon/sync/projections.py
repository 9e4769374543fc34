"""Projection of DatasetRegistry / AdapterRegistry / NodeRegistry events into DB rows.

Each event belongs to one entity ("dataset:1", "contribution:4", "adapter:3", "node:0xabc…").
`apply` folds one new event into its row; `rebuild` recomputes a row from the entity's remaining
events after a reorg. Adapter rows also carry this node's lifecycle state, which a rebuild keeps
unless the on-chain content changed (new CID → fetch again; deprecation undone → load again).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from node.db.models import (
    Adapter,
    AdapterState,
    Contribution,
    ContributionStatus,
    Dataset,
    NodeRow,
)
from node.daemon.sync.watcher import DecodedEvent

DATASET_EVENTS = ("DatasetCreated", "ContributionSubmitted", "ContributionAccepted", "ContributionRejected")
ADAPTER_EVENTS = ("AdapterPublished", "AdapterDeprecated")
NODE_EVENTS = ("NodeRegistered", "NodeUpdated", "NodeDeregistered", "BondAdded", "BondWithdrawn")
WATCHED_EVENTS = {"DatasetRegistry": DATASET_EVENTS, "AdapterRegistry": ADAPTER_EVENTS, "NodeRegistry": NODE_EVENTS}


class RegistryProjector:
    def entity(self, ev: DecodedEvent) -> str | None:
        a = ev.args
        if ev.name == "DatasetCreated":
            return f"dataset:{a['datasetId']}"
        if ev.name.startswith("Contribution") and ev.name in DATASET_EVENTS:
            return f"contribution:{a['contributionId']}"
        if ev.name in ADAPTER_EVENTS:
            return f"adapter:{a['adapterId']}"
        if ev.name in NODE_EVENTS:
            return f"node:{a['node'].lower()}"
        return None

    # -- apply ------------------------------------------------------------------------------------
    def apply(self, s: Session, ev: DecodedEvent) -> None:
        getattr(self, f"_on_{ev.name}")(s, ev)

    def _on_DatasetCreated(self, s: Session, ev: DecodedEvent) -> None:
        a = ev.args
        s.merge(Dataset(id=a["datasetId"], curator=a["curator"], name=a["name"], license=a["license"],
                        metadata_cid=a["metadataCid"], block_number=ev.block_number))

    def _on_ContributionSubmitted(self, s: Session, ev: DecodedEvent) -> None:
        a = ev.args
        s.merge(Contribution(id=a["contributionId"], dataset_id=a["datasetId"], contributor=a["contributor"],
                             content_cid=a["cid"], size_tokens=a["sizeTokens"],
                             status=ContributionStatus.PENDING.value, weight=0, block_number=ev.block_number))

    def _on_ContributionAccepted(self, s: Session, ev: DecodedEvent) -> None:
        c = s.get(Contribution, ev.args["contributionId"])
        if c is not None:
            c.status, c.weight = ContributionStatus.ACCEPTED.value, ev.args["weight"]

    def _on_ContributionRejected(self, s: Session, ev: DecodedEvent) -> None:
        c = s.get(Contribution, ev.args["contributionId"])
        if c is not None:
            c.status, c.weight = ContributionStatus.REJECTED.value, 0

    def _on_AdapterPublished(self, s: Session, ev: DecodedEvent) -> None:
        a = ev.args
        row = s.get(Adapter, a["adapterId"])
        if row is None:
            row = Adapter(id=a["adapterId"], state=AdapterState.REGISTERED.value, attempts=0, deprecated=False)
            s.add(row)
        elif row.cid != a["cid"]:
            _reset_lifecycle(row)  # a new version: new weights to fetch and verify
        row.owner = a["owner"]
        row.base_model = a["baseModelId"]
        row.cid = a["cid"]
        row.rank = a["rank"]
        row.price_per_1k = a["pricePer1k"]
        row.owner_bps = a["ownerBps"]
        row.dataset_splits = [[int(i), int(b)] for i, b in zip(a["datasetIds"], a["datasetBps"])]
        row.block_number = ev.block_number

    def _on_AdapterDeprecated(self, s: Session, ev: DecodedEvent) -> None:
        row = s.get(Adapter, ev.args["adapterId"])
        if row is not None:
            row.deprecated = True  # the lifecycle unloads it and sets state `deprecated`

    def _on_NodeRegistered(self, s: Session, ev: DecodedEvent) -> None:
        a = ev.args
        row = s.get(NodeRow, a["node"]) or NodeRow(operator=a["node"], bond=0)
        row.endpoint, row.base_models, row.price_per_1k = a["endpoint"], list(a["baseModelIds"]), a["computePricePer1k"]
        row.active, row.block_number = True, ev.block_number
        s.merge(row)

    _on_NodeUpdated = _on_NodeRegistered

    def _on_NodeDeregistered(self, s: Session, ev: DecodedEvent) -> None:
        row = s.get(NodeRow, ev.args["node"])
        if row is not None:
            row.active = False

    def _on_BondAdded(self, s: Session, ev: DecodedEvent) -> None:
        row = s.get(NodeRow, ev.args["node"])
        if row is not None:
            row.bond = ev.args["total"]

    def _on_BondWithdrawn(self, s: Session, ev: DecodedEvent) -> None:
        row = s.get(NodeRow, ev.args["node"])
        if row is not None:
            row.bond = 0

    # -- rebuild after a reorg ----------------------------------------------------------------------
    def rebuild(self, s: Session, entity: str, events: list[DecodedEvent]) -> None:
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

    def _rebuild_adapter(self, s: Session, adapter_id: int, events: list[DecodedEvent]) -> None:
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
        if before is not None and before[1] and not row.deprecated:
            _reset_lifecycle(row)  # deprecation undone: serve it again


def _node_row(s: Session, key: str) -> NodeRow | None:
    from sqlalchemy import func, select

    return s.scalars(select(NodeRow).where(func.lower(NodeRow.operator) == key)).first()


def _reset_lifecycle(row: Adapter) -> None:
    row.state = AdapterState.REGISTERED.value
    row.failure_reason = None
    row.local_path = None
    row.attempts = 0
