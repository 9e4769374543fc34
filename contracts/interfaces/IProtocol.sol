// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @dev A settle entry (AttributionPool.settle, DatasetRegistry.payAttributed) is one word, high bits
///      first: datasetId (32) | contributionId (96) | weight (128). Contribution 0 is the dataset's
///      unattributed weight. `entry >> SETTLE_KEY_SHIFT` is the (datasetId, contributionId) key, so
///      sorted keys are sorted entries.
uint256 constant SETTLE_KEY_SHIFT = 128;
/// @dev `entry >> SETTLE_DATASET_SHIFT` is the entry's dataset id.
uint256 constant SETTLE_DATASET_SHIFT = 224;

/// @notice What UsageEscrow and DatasetRegistry need of RewardVault.
interface IRewardVault {
    /// @notice Add `amounts[i]` to the claimable balance of `to[i]`; tokens were sent in before.
    function credit(address[] calldata to, uint256[] calldata amounts) external;
}

/// @notice What AdapterRegistry and AttributionPool need of DatasetRegistry.
interface IDatasetRegistry {
    /// @notice Whether dataset `datasetId` exists.
    function datasetExists(uint256 datasetId) external view returns (bool);

    /// @notice Split `amounts[i]` (already in the vault) over dataset `datasetIds[i]`'s contributions.
    function distribute(uint256[] calldata datasetIds, uint256[] calldata amounts) external;

    /// @notice Pay `amount` (already in the vault, drained from a pool) to dataset `datasetId` over
    ///         `entries`, one dataset's settle words (datasetId 32 | contributionId 96 | weight 128)
    ///         whose weights sum to `totalWeight`: contribution c is credited
    ///         floor(amount * weight / totalWeight) if accepted in `datasetId`; the unattributed
    ///         entry (contributionId 0), refused credits and rounding are split by accepted weight.
    function payAttributed(uint256 datasetId, uint256 amount, uint256 totalWeight, uint256[] calldata entries)
        external;

    /// @notice Dataset of `contributionId` (0 if unknown) and whether it is accepted now.
    function datasetOf(uint256 contributionId) external view returns (uint256 datasetId, bool accepted);
}

/// @notice What UsageEscrow needs of AttributionPool.
interface IAttributionPool {
    /// @notice Add `amounts[i]` (already in the vault) to the pool of (`node`, `datasetIds[i]`).
    function fill(address node, uint256[] calldata datasetIds, uint256[] calldata amounts) external;

    /// @notice Settle `node`'s committed batch `seq` with `entries` (as `settle`), the pools named in
    ///         them drained together with what `amounts` adds to them now; the rest of `amounts` fills.
    function fillAndSettle(
        address node,
        uint256[] calldata datasetIds,
        uint256[] calldata amounts,
        uint64 seq,
        uint256[] calldata entries
    ) external;
}

/// @notice What UsageEscrow needs of AdapterRegistry: the payout split in packed form.
interface IAdapterRegistry {
    /// @notice Owner and packed dataset splits of adapter `adapterId` (owner is zero if unknown).
    /// @return owner the adapter owner (receives the owner share and rounding dust).
    /// @return count number of dataset splits (0..10).
    /// @return packed0 splits 0..4, each 48 bits: datasetId (32 bits, high) | bps (16 bits, low).
    /// @return packed1 splits 5..9, same layout.
    function payoutOf(uint256 adapterId)
        external
        view
        returns (address owner, uint256 count, uint256 packed0, uint256 packed1);
}

/// @notice What UsageEscrow and AttributionPool need of NodeRegistry: whether a node is staked enough
///         to redeem (and so to settle attribution: it has a bond to lose for lying).
interface INodeRegistry {
    /// @notice Whether `node` holds at least the minimum bond (and may therefore redeem vouchers).
    function canRedeem(address node) external view returns (bool);
}

/// @notice What NodeRegistry (receipt digests for slashing, commit times) and AttributionPool (batch
///         roots) need of ReceiptLog.
interface IReceiptLog {
    /// @notice Same fields and order as ReceiptLog.Receipt (ABI-identical).
    struct Receipt {
        bytes32 requestId;
        address payer;
        address node;
        uint256 adapterId;
        uint64 seq;
        uint32 promptTokens;
        uint32 completionTokens;
        uint256 computeCost;
        uint256 adapterCost;
        bytes32 outputHash;
        bytes32 attributionHash;
        uint64 timestamp;
    }

    /// @notice EIP-712 digest of `r` (what the node signs).
    function hashReceipt(Receipt calldata r) external view returns (bytes32);

    /// @notice Timestamp of `node`'s last committed batch (0 if none).
    function lastCommitAt(address node) external view returns (uint64);

    /// @notice Root of `node`'s batch `seq` (zero if not committed).
    function batchRoot(address node, uint64 seq) external view returns (bytes32);
}

/// @notice What NodeRegistry needs of AttributionPool: the one-leaf proof of an attribution lie.
interface IAttributionFaults {
    /// @notice Non-zero when committed receipt `r` provably misattributes (see AttributionPool).
    function attributionFault(
        IReceiptLog.Receipt calldata r,
        uint64 batchSeq,
        bytes32[] calldata proof,
        uint256[] calldata ids,
        uint256[] calldata bps
    ) external view returns (uint8 fault);
}
