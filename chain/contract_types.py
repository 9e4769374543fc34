"""Frozen dataclasses of the protocol contracts' events and of their typed read results.

Event classes are named after their Solidity events; fields follow `Event`'s log position fields,
then the event's arguments in snake_case (see `snake`). A test checks every dataclass against
the ABI, so they cannot drift from the contracts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

# ------------------------------------------------------------------------------ events


@dataclass(frozen=True)
class Event:
    """Where a log came from; every event dataclass starts with these fields."""

    address: str
    block_number: int
    block_hash: bytes
    tx_hash: bytes
    log_index: int


@dataclass(frozen=True)
class DatasetCreated(Event):
    dataset_id: int
    curator: str
    name: str
    license: str
    metadata_cid: str


@dataclass(frozen=True)
class ContributionSubmitted(Event):
    contribution_id: int
    dataset_id: int
    contributor: str
    cid: str
    size_tokens: int


@dataclass(frozen=True)
class ContributionAccepted(Event):
    contribution_id: int
    dataset_id: int
    weight: int


@dataclass(frozen=True)
class ContributionRejected(Event):
    contribution_id: int
    dataset_id: int


@dataclass(frozen=True)
class DatasetRewarded(Event):
    dataset_id: int
    amount: int
    acc_reward_per_weight: int


@dataclass(frozen=True)
class ContributionHarvested(Event):
    contribution_id: int
    contributor: str
    amount: int


@dataclass(frozen=True)
class AdapterPublished(Event):
    adapter_id: int
    owner: str
    version: int
    base_model_id: str
    cid: str
    rank: int
    price_per_1k: int
    owner_bps: int
    dataset_ids: tuple[int, ...]
    dataset_bps: tuple[int, ...]


@dataclass(frozen=True)
class AdapterDeprecated(Event):
    adapter_id: int


@dataclass(frozen=True)
class NodeRegistered(Event):
    node: str
    endpoint: str
    base_model_ids: tuple[str, ...]
    compute_price_per_1k: int


@dataclass(frozen=True)
class NodeUpdated(Event):
    node: str
    endpoint: str
    base_model_ids: tuple[str, ...]
    compute_price_per_1k: int


@dataclass(frozen=True)
class BondAdded(Event):
    node: str
    amount: int
    total: int


@dataclass(frozen=True)
class NodeDeregistered(Event):
    node: str
    unbond_at: int


@dataclass(frozen=True)
class BondWithdrawn(Event):
    node: str
    amount: int


@dataclass(frozen=True)
class Credited(Event):
    account: str
    creditor: str
    amount: int


@dataclass(frozen=True)
class Claimed(Event):
    account: str
    amount: int


@dataclass(frozen=True)
class Deposited(Event):
    payer: str
    node: str
    from_: str
    amount: int


@dataclass(frozen=True)
class SignerAuthorized(Event):
    payer: str
    signer: str


@dataclass(frozen=True)
class SignerRevoked(Event):
    payer: str
    signer: str
    revoke_at: int


@dataclass(frozen=True)
class ThawStarted(Event):
    payer: str
    node: str
    amount: int
    thaw_end: int


@dataclass(frozen=True)
class Withdrawn(Event):
    payer: str
    node: str
    amount: int


@dataclass(frozen=True)
class VoucherRedeemed(Event):
    payer: str
    node: str
    adapter_id: int
    compute_paid: int
    adapter_paid: int


@dataclass(frozen=True)
class VoucherUnderfunded(Event):
    payer: str
    node: str
    adapter_id: int
    needed: int
    available: int


@dataclass(frozen=True)
class VoucherSkipped(Event):
    index: int
    payer: str
    reason: int  # UsageEscrow.SkipReason, see SKIP_REASONS


@dataclass(frozen=True)
class ProtocolFeeProposed(Event):
    recipient: str
    bps: int
    effective_at: int


@dataclass(frozen=True)
class NodeSlashed(Event):
    node: str
    beneficiary: str
    amount: int
    reward: int


@dataclass(frozen=True)
class NodeCondemned(Event):
    node: str
    beneficiary: str
    open_disputes: int
    until: int


@dataclass(frozen=True)
class AttributionSlashed(Event):
    node: str
    batch_seq: int
    receipt_digest: bytes
    fault: int  # AttributionPool.OUTSIDE_ADAPTER (1) or OVER_TOTAL (2)


@dataclass(frozen=True)
class DisputeOpened(Event):
    dispute_id: int
    node: str
    fisherman: str
    receipt_digest: bytes
    deadline: int


@dataclass(frozen=True)
class DisputeResolved(Event):
    dispute_id: int
    upheld: bool
    slashed: int


@dataclass(frozen=True)
class DisputeExpired(Event):
    dispute_id: int


@dataclass(frozen=True)
class OwnershipTransferStarted(Event):
    previous_owner: str
    new_owner: str


@dataclass(frozen=True)
class ProtocolFeeSet(Event):
    recipient: str
    bps: int


@dataclass(frozen=True)
class BatchCommitted(Event):
    node: str
    seq: int
    root: bytes
    count: int
    receipts_cid: str


@dataclass(frozen=True)
class Transfer(Event):
    from_: str
    to: str
    value: int


@dataclass(frozen=True)
class Approval(Event):
    owner: str
    spender: str
    value: int


@dataclass(frozen=True)
class OwnershipTransferred(Event):
    previous_owner: str
    new_owner: str


@dataclass(frozen=True)
class AttributionRefused(Event):
    contribution_id: int
    dataset_id: int
    amount: int


@dataclass(frozen=True)
class PoolFilled(Event):
    node: str
    dataset_id: int
    amount: int
    balance: int


@dataclass(frozen=True)
class BatchSettled(Event):
    node: str
    seq: int
    entries_hash: bytes  # AttributionPool.entriesHash of the settle call's entries
    entry_count: int


@dataclass(frozen=True)
class PoolDrained(Event):
    node: str
    seq: int
    dataset_id: int
    amount: int
    total_weight: int


@dataclass(frozen=True)
class PoolFlushed(Event):
    node: str
    dataset_id: int
    amount: int


EVENT_CLASSES: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (
        DatasetCreated,
        ContributionSubmitted,
        ContributionAccepted,
        ContributionRejected,
        DatasetRewarded,
        ContributionHarvested,
        AdapterPublished,
        AdapterDeprecated,
        NodeRegistered,
        NodeUpdated,
        BondAdded,
        NodeDeregistered,
        BondWithdrawn,
        Credited,
        Claimed,
        Deposited,
        SignerAuthorized,
        SignerRevoked,
        ThawStarted,
        Withdrawn,
        VoucherRedeemed,
        VoucherUnderfunded,
        VoucherSkipped,
        ProtocolFeeProposed,
        ProtocolFeeSet,
        NodeSlashed,
        NodeCondemned,
        AttributionSlashed,
        DisputeOpened,
        DisputeResolved,
        DisputeExpired,
        BatchCommitted,
        Transfer,
        Approval,
        OwnershipTransferred,
        OwnershipTransferStarted,
        AttributionRefused,
        PoolFilled,
        BatchSettled,
        PoolDrained,
        PoolFlushed,
    )
}
_RENAMES = {"from": "from_", "pricePer1k": "price_per_1k", "computePricePer1k": "compute_price_per_1k"}
EVENT_BASE_FIELDS = {f.name for f in fields(Event)}


def snake(name: str) -> str:
    """ABI argument name -> dataclass field name (datasetId -> dataset_id)."""
    return _RENAMES.get(name) or re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def event_fields(cls: type[Event]) -> list[str]:
    return [f.name for f in fields(cls) if f.name not in EVENT_BASE_FIELDS]


# ------------------------------------------------------------------------------ read results


@dataclass(frozen=True)
class AdapterInfo:
    adapter_id: int
    owner: str
    base_model_id: str
    cid: str
    rank: int
    price_per_1k: int
    owner_bps: int
    dataset_ids: tuple[int, ...]
    dataset_bps: tuple[int, ...]
    version: int
    deprecated: bool


@dataclass(frozen=True)
class AdapterPayout:
    owner: str
    count: int
    packed0: int
    packed1: int


@dataclass(frozen=True)
class DatasetInfo:
    dataset_id: int
    curator: str
    name: str
    license: str
    metadata_cid: str
    total_weight: int
    acc_reward_per_weight: int
    contribution_count: int


CONTRIBUTION_STATUS = ("none", "pending", "accepted", "rejected")


@dataclass(frozen=True)
class ContributionInfo:
    contribution_id: int
    contributor: str
    dataset_id: int
    cid: str
    size_tokens: int
    status: str  # one of CONTRIBUTION_STATUS
    weight: int


@dataclass(frozen=True)
class NodeInfo:
    node: str
    endpoint: str
    base_model_ids: tuple[str, ...]
    compute_price_per_1k: int
    bond: int
    unbond_at: int
    active: bool
    condemned: bool  # a proven fault's slash waits for the node's disputes
    condemned_by: str
    condemned_until: int  # disputes may still be opened until then; the slash executes after it


@dataclass(frozen=True)
class EscrowAccount:
    balance: int  # includes what is thawing
    thawing: int
    thaw_end: int


@dataclass(frozen=True)
class LaneCollected:
    compute: int
    adapter: int


@dataclass(frozen=True)
class SignerInfo:
    payer: str  # zero address if none
    revoke_at: int  # end of the revocation thaw; 0 = not revoked
    nonce: int  # authorizations so far: the nonce the key's next SignerProof names


@dataclass(frozen=True)
class DisputeInfo:
    dispute_id: int
    fisherman: str
    deadline: int
    open: bool
    node: str
    deposit: int
    receipt_digest: bytes


@dataclass(frozen=True)
class DisputeTerms:
    min_bond: int
    arbitrator: str
    dispute_window: int
    dispute_deposit: int
    receipts: str


# UsageEscrow.SkipReason, by value
SKIP_REASONS = ("wrong_node", "bad_value", "bad_signature", "unauthorized_signer", "stale", "unknown_adapter")


@dataclass(frozen=True)
class PoolBalance:
    balance: int
    since: int  # when the pool became non-empty (0 while empty)


@dataclass(frozen=True)
class ProtocolFee:
    recipient: str
    bps: int
