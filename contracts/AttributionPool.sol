// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {
    IAdapterRegistry,
    IAttributionPool,
    IDatasetRegistry,
    INodeRegistry,
    IReceiptLog,
    SETTLE_DATASET_SHIFT,
    SETTLE_KEY_SHIFT
} from "./interfaces/IProtocol.sol";
import {ReceiptLog} from "./ReceiptLog.sol";

/// @title AttributionPool
/// @notice Pays dataset rewards by what the answers drew on. UsageEscrow fills one pool per
///         (node, dataset) with the dataset parts of the node's redemptions (the tokens are already in
///         RewardVault; this contract only books them). After committing receipt batch `seq` in
///         ReceiptLog, the node settles it here with integer weights computed from the batch's
///         receipts (docs/attribution-rewards.md): per dataset, one weight per contribution its
///         answers drew on and one for the part that drew on nothing. Settling drains each named
///         pool P: contribution c gets floor(P * w_c / W) with W the dataset's total weight, and what
///         is left (the unattributed weight's share plus rounding) is split by accepted weight, as
///         before attribution existed. So nothing is ever paid twice or more than was redeemed, and
///         nothing stays behind: a pool that no batch drains can be flushed by anyone after
///         `flushDelay` to the accepted-weight split. Only a node with a bond at stake directs money
///         (NodeRegistry.canRedeem): a condemned, slashed or unbonded node has nothing left to lose
///         for lying, so it cannot settle and anyone may flush its pools at once. Work is per entry
///         of a batch, never per receipt.
contract AttributionPool is IAttributionPool {
    struct Pool {
        uint128 balance; // one slot per (node, dataset)
        uint64 since; // when the pool last became non-empty (0 while empty)
        // Set by the first fill, never cleared: a drained pool's slot stays non-zero, so each later
        // refill writes it for 2,900 gas instead of 20,000 (at the cost of the 4,800 refund of zeroing it).
        bool used;
    }

    /// @notice Only UsageEscrow fills pools.
    error AttributionPoolNotEscrow(address caller);
    /// @notice Array arguments differ in length.
    error AttributionPoolLengthMismatch(uint256 a, uint256 b);
    /// @notice Batches are settled in order, each once: `expected` is the caller's next.
    error AttributionPoolWrongSequence(uint64 expected, uint64 given);
    /// @notice `node` has no bond at stake (NodeRegistry.canRedeem is false): it directs no dataset money.
    error AttributionPoolNodeNotAccountable(address node);
    /// @notice The caller has not committed batch `seq` in ReceiptLog.
    error AttributionPoolBatchNotCommitted(address node, uint64 seq);
    /// @notice More than MAX_ENTRIES entries.
    error AttributionPoolTooManyEntries(uint256 count);
    /// @notice Entries must be strictly ascending by (datasetId, contributionId), with non-zero dataset ids.
    error AttributionPoolUnsortedEntry(uint256 index);
    /// @notice An entry's weight must be in 1..MAX_WEIGHT.
    error AttributionPoolInvalidWeight(uint256 index, uint256 weight);
    /// @notice A pool would exceed 2^128 - 1.
    error AttributionPoolOverflow(address node, uint256 datasetId);
    /// @notice The pool is empty.
    error AttributionPoolNothingToFlush(address node, uint256 datasetId);
    /// @notice The pool may be flushed from `readyAt`.
    error AttributionPoolTooEarly(uint64 readyAt);
    /// @notice The attribution arrays do not hash to the receipt's attributionHash.
    error AttributionPoolAttributionMismatch();
    /// @notice The receipt is not in the batch (no such batch, or a wrong proof).
    error AttributionPoolReceiptNotCommitted();
    /// @notice A constructor address is zero.
    error AttributionPoolZeroAddress();

    /// @notice The pool of (`node`, `datasetId`) received `amount`; `balance` after it.
    event PoolFilled(address indexed node, uint256 indexed datasetId, uint256 amount, uint256 balance);
    /// @notice `node` settled batch `seq` with `entryCount` weights hashing to `entriesHash`
    ///         (`entriesHash(entries)`). The entries themselves are public in the settle call's calldata,
    ///         and an audit recomputes them from the receipts file; logging them again would cost gas.
    event BatchSettled(address indexed node, uint64 indexed seq, bytes32 entriesHash, uint256 entryCount);
    /// @notice Settling batch `seq` drained `amount` from the pool of (`node`, `datasetId`) over `totalWeight`.
    event PoolDrained(
        address indexed node, uint64 indexed seq, uint256 indexed datasetId, uint256 amount, uint256 totalWeight
    );
    /// @notice A pool no batch drained within `flushDelay` went to the accepted-weight split.
    event PoolFlushed(address indexed node, uint256 indexed datasetId, uint256 amount);

    /// @notice Most entries in one batch (bounds gas; 4,096 * MAX_WEIGHT cannot overflow).
    uint256 public constant MAX_ENTRIES = 4096;
    /// @notice Largest weight of one entry (pool * weight < 2^256).
    uint256 public constant MAX_WEIGHT = type(uint128).max;
    /// @dev A receipt's attribution bps sum to at most this (docs/protocol.md).
    uint256 private constant _TOTAL_BPS = 10_000;
    /// @notice `attributionFault` results.
    uint8 public constant NO_FAULT = 0;
    uint8 public constant OUTSIDE_ADAPTER = 1;
    uint8 public constant OVER_TOTAL = 2;

    IDatasetRegistry private immutable _datasets;
    address private immutable _escrow;
    ReceiptLog private immutable _receiptLog;
    IAdapterRegistry private immutable _adapters;
    INodeRegistry private immutable _nodes;
    uint64 private immutable _flushDelay;

    /// @dev Dataset parts UsageEscrow.redeemAndSettle redeems in the settling transaction.
    struct Redeemed {
        uint256[] datasetIds;
        uint256[] amounts;
    }

    mapping(address node => mapping(uint256 datasetId => Pool)) private _pools;
    mapping(address node => uint64) private _settledSeq;

    /// @param datasets_ DatasetRegistry (credits contributions, keeps the accepted-weight split).
    /// @param escrow_ UsageEscrow, the only caller of `fill`.
    /// @param receiptLog_ ReceiptLog, where settled batches must be committed.
    /// @param adapters_ AdapterRegistry (adapters' datasets, for `attributionFault`).
    /// @param nodes_ NodeRegistry (whether a node still has a bond at stake).
    /// @param flushDelay_ seconds after which an undrained pool may be flushed.
    constructor(
        IDatasetRegistry datasets_,
        address escrow_,
        ReceiptLog receiptLog_,
        IAdapterRegistry adapters_,
        INodeRegistry nodes_,
        uint64 flushDelay_
    ) {
        if (
            address(datasets_) == address(0) || escrow_ == address(0) || address(receiptLog_) == address(0)
                || address(adapters_) == address(0) || address(nodes_) == address(0)
        ) revert AttributionPoolZeroAddress();
        _datasets = datasets_;
        _escrow = escrow_;
        _receiptLog = receiptLog_;
        _adapters = adapters_;
        _nodes = nodes_;
        _flushDelay = flushDelay_;
    }

    /// @inheritdoc IAttributionPool
    function fill(address node, uint256[] calldata datasetIds, uint256[] calldata amounts) external {
        if (msg.sender != _escrow) revert AttributionPoolNotEscrow(msg.sender);
        uint256 n = datasetIds.length;
        if (n != amounts.length) revert AttributionPoolLengthMismatch(n, amounts.length);
        for (uint256 i; i < n; ++i) {
            _fillOne(node, datasetIds[i], amounts[i]);
        }
    }

    /// @inheritdoc IAttributionPool
    /// @dev UsageEscrow.redeemAndSettle: a dataset this batch names takes its part of `amounts`
    ///      straight into the drain (no pool write when its pool was empty); the others fill.
    function fillAndSettle(
        address node,
        uint256[] calldata datasetIds,
        uint256[] calldata amounts,
        uint64 seq,
        uint256[] calldata entries
    ) external {
        if (msg.sender != _escrow) revert AttributionPoolNotEscrow(msg.sender);
        uint256 n = datasetIds.length;
        if (n != amounts.length) revert AttributionPoolLengthMismatch(n, amounts.length);
        Redeemed memory r = Redeemed(datasetIds, amounts);
        // Parts of datasets the batch does not name fill their pools first (all writes before the
        // settle's calls); the settle drains the others with their pools.
        for (uint256 i; i < n; ++i) {
            if (r.amounts[i] != 0 && !_names(entries, datasetIds[i])) {
                _fillOne(node, datasetIds[i], r.amounts[i]);
                r.amounts[i] = 0;
            }
        }
        _settle(node, seq, entries, r);
    }

    /// @notice Settle the caller's committed batch `seq`: drain the pool of every dataset named in
    ///         `entries` by their weights. Batches go in order (seq = settledSeq + 1), each once, and
    ///         only while the caller has a bond at stake (NodeRegistry.canRedeem).
    /// @param seq the batch, committed by the caller in ReceiptLog.
    /// @param entries packed weights (datasetId << 224 | contributionId << 128 | weight), strictly
    ///        ascending by (datasetId, contributionId), datasetId >= 1, weight >= 1; contributionId 0
    ///        is a dataset's unattributed weight. Empty settles a batch that paid no dataset.
    function settle(uint64 seq, uint256[] calldata entries) external {
        _settle(msg.sender, seq, entries, Redeemed(new uint256[](0), new uint256[](0)));
    }

    /// @notice What BatchSettled logs of `entries`: keccak256 of the packed words, concatenated.
    function entriesHash(uint256[] calldata entries) public pure returns (bytes32) {
        return keccak256(abi.encodePacked(entries));
    }

    /// @notice Move the pool of (`node`, `datasetId`) to the accepted-weight split once it has waited
    ///         `flushDelay` since it became non-empty without a batch draining it, or at once when
    ///         `node` has no bond at stake (it may not settle). Anyone may call.
    function flush(address node, uint256 datasetId) external {
        Pool storage p = _pools[node][datasetId];
        uint256 amount = p.balance;
        if (amount == 0) revert AttributionPoolNothingToFlush(node, datasetId);
        uint64 readyAt = p.since + _flushDelay;
        if (block.timestamp < readyAt && _nodes.canRedeem(node)) revert AttributionPoolTooEarly(readyAt);
        p.balance = 0;
        p.since = 0;
        emit PoolFlushed(node, datasetId, amount);
        _datasets.payAttributed(datasetId, amount, 0, new uint256[](0));
    }

    // ---------------------------------------------------------------- views

    /// @notice Balance of the pool of (`node`, `datasetId`) and when it became non-empty (0 if empty).
    function poolOf(address node, uint256 datasetId) external view returns (uint256 balance, uint64 since) {
        Pool storage p = _pools[node][datasetId];
        return (p.balance, p.since);
    }

    /// @notice Last batch `node` settled here (0 if none).
    function settledSeq(address node) external view returns (uint64) {
        return _settledSeq[node];
    }

    /// @notice Seconds an undrained pool waits before `flush`.
    function flushDelay() external view returns (uint64) {
        return _flushDelay;
    }

    /// @notice Contracts fixed at deployment.
    function peers()
        external
        view
        returns (
            IDatasetRegistry datasets,
            address escrow,
            ReceiptLog receiptLog,
            IAdapterRegistry adapters,
            INodeRegistry nodes
        )
    {
        return (_datasets, _escrow, _receiptLog, _adapters, _nodes);
    }

    /// @notice Proof from one leaf, for NodeRegistry.slashAttribution (no arbitrator): what committed
    ///         receipt `r` provably gets wrong in its attribution, from the leaf alone. Reverts unless
    ///         `r` is in `r.node`'s batch `batchSeq` (by `proof`) and (`ids`, `bps`) hash to
    ///         `r.attributionHash` (so hostile arrays cost only their hash).
    /// @return fault OVER_TOTAL when the lists differ in length or the bps sum past 10,000 (the answer
    ///         is attributed more than once over); OUTSIDE_ADAPTER when some `ids[k]` is not a
    ///         contribution of one of the adapter's datasets (or does not exist); NO_FAULT otherwise.
    function attributionFault(
        ReceiptLog.Receipt calldata r,
        uint64 batchSeq,
        bytes32[] calldata proof,
        uint256[] calldata ids,
        uint256[] calldata bps
    ) external view returns (uint8 fault) {
        if (!_receiptLog.verifyReceipt(r, batchSeq, proof)) revert AttributionPoolReceiptNotCommitted();
        if (keccak256(abi.encode(ids, bps)) != r.attributionHash) revert AttributionPoolAttributionMismatch();
        uint256 n = ids.length;
        if (n != bps.length) return OVER_TOTAL;
        uint256 sum = 0;
        for (uint256 k; k < n; ++k) {
            if (bps[k] > _TOTAL_BPS) return OVER_TOTAL; // also keeps `sum` from overflowing
            sum += bps[k];
        }
        if (sum > _TOTAL_BPS) return OVER_TOTAL;
        (, uint256 count, uint256 p0, uint256 p1) = _adapters.payoutOf(r.adapterId);
        for (uint256 k; k < n; ++k) {
            (uint256 datasetId,) = _datasets.datasetOf(ids[k]);
            bool inside = false;
            for (uint256 j; j < count && !inside; ++j) {
                uint256 entry = (j < 5 ? p0 : p1) >> (48 * (j % 5));
                inside = datasetId != 0 && uint32(entry >> 16) == datasetId;
            }
            if (!inside) return OUTSIDE_ADAPTER;
        }
        return NO_FAULT;
    }

    // ---------------------------------------------------------------- internal

    /// @dev Settle `node`'s batch `seq` (see `settle`). `redeemed`: dataset parts being redeemed in
    ///      this transaction; a dataset's part is drained with its pool and zeroed there.
    function _settle(address node, uint64 seq, uint256[] calldata entries, Redeemed memory redeemed) private {
        uint64 expected = _settledSeq[node] + 1;
        if (seq != expected) revert AttributionPoolWrongSequence(expected, seq);
        if (_receiptLog.batchRoot(node, seq) == bytes32(0)) revert AttributionPoolBatchNotCommitted(node, seq);
        // Weights are the node's word, checked only by audits and disputes: a node whose bond is
        // condemned or gone would lie for free, so its pools go to the accepted-weight split (flush).
        if (!_nodes.canRedeem(node)) revert AttributionPoolNodeNotAccountable(node);
        uint256 n = entries.length;
        if (n > MAX_ENTRIES) revert AttributionPoolTooManyEntries(n);
        _settledSeq[node] = seq;
        uint256 i = 0;
        uint256 lastKey; // keys strictly ascending: so are dataset ids, from group to group
        while (i < n) {
            uint256 datasetId = entries[i] >> SETTLE_DATASET_SHIFT;
            if (datasetId == 0) revert AttributionPoolUnsortedEntry(i);
            (uint256 j, uint256 total) = _group(entries, i, lastKey);
            lastKey = entries[j - 1] >> SETTLE_KEY_SHIFT;
            _drain(node, seq, datasetId, entries[i:j], total, redeemed);
            i = j;
        }
        emit BatchSettled(node, seq, entriesHash(entries), n);
    }

    /// @dev The group of entries[i]'s dataset, entries[i:j], checked (keys ascending past `lastKey`,
    ///      weights >= 1), and the sum of its weights.
    function _group(uint256[] calldata entries, uint256 i, uint256 lastKey)
        private
        pure
        returns (uint256 j, uint256 total)
    {
        uint256 n = entries.length;
        uint256 datasetId = entries[i] >> SETTLE_DATASET_SHIFT;
        j = i;
        do {
            uint256 e = entries[j];
            uint256 key = e >> SETTLE_KEY_SHIFT;
            if (key <= lastKey) revert AttributionPoolUnsortedEntry(j);
            lastKey = key;
            uint256 w = uint128(e); // <= MAX_WEIGHT by its width
            if (w == 0) revert AttributionPoolInvalidWeight(j, w);
            unchecked {
                total += w; // <= 4,096 * 2^128: no overflow
                ++j; // j < n <= MAX_ENTRIES
            }
        } while (j < n && entries[j] >> SETTLE_DATASET_SHIFT == datasetId);
    }

    /// @dev Whether `entries` (ascending by dataset, which `_settle` checks: on unsorted entries it
    ///      reverts whatever this says) name `datasetId`. Binary search.
    function _names(uint256[] calldata entries, uint256 datasetId) private pure returns (bool) {
        uint256 lo = 0;
        uint256 hi = entries.length;
        while (lo < hi) {
            uint256 mid = (lo + hi) / 2;
            uint256 d = entries[mid] >> SETTLE_DATASET_SHIFT;
            if (d == datasetId) return true;
            if (d < datasetId) lo = mid + 1;
            else hi = mid;
        }
        return false;
    }

    /// @dev The sum of the parts of `datasetId` in `r`, each zeroed (UsageEscrow sends at most 16).
    function _take(Redeemed memory r, uint256 datasetId) private pure returns (uint256 sum) {
        uint256[] memory ids = r.datasetIds;
        uint256[] memory amounts = r.amounts;
        for (uint256 k; k < ids.length; ++k) {
            if (ids[k] == datasetId) {
                sum += amounts[k]; // checked: a revert, never a wrap
                amounts[k] = 0;
            }
        }
    }

    /// @dev Add `amount` to the pool of (`node`, `datasetId`).
    function _fillOne(address node, uint256 datasetId, uint256 amount) private {
        if (amount == 0) return;
        Pool storage p = _pools[node][datasetId];
        uint256 balance = uint256(p.balance) + amount;
        if (balance > type(uint128).max) revert AttributionPoolOverflow(node, datasetId);
        if (p.balance == 0) {
            p.since = uint64(block.timestamp);
            p.used = true;
        }
        p.balance = uint128(balance);
        emit PoolFilled(node, datasetId, amount, balance);
    }

    /// @dev Drain `node`'s pool of `datasetId`, with its part of `redeemed` (this transaction's), over
    ///      `group` (one dataset's entries, weights summing to `total`).
    function _drain(
        address node,
        uint64 seq,
        uint256 datasetId,
        uint256[] calldata group,
        uint256 total,
        Redeemed memory redeemed
    ) private {
        Pool storage p = _pools[node][datasetId];
        uint256 stored = p.balance;
        uint256 amount = stored + _take(redeemed, datasetId);
        // payAttributed multiplies the amount by weights < 2^128: it must fit 128 bits, as a pool does
        if (amount > type(uint128).max) revert AttributionPoolOverflow(node, datasetId);
        emit PoolDrained(node, seq, datasetId, amount, total);
        if (amount == 0) return;
        if (stored != 0) {
            p.balance = 0;
            p.since = 0;
        }
        // DatasetRegistry floors each contribution's share and splits the unattributed weight's share
        // and the rounding by accepted weight, so exactly `amount` leaves the pool.
        _datasets.payAttributed(datasetId, amount, total, group);
    }
}
