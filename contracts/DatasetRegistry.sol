// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";
import {IDatasetRegistry, IRewardVault, SETTLE_KEY_SHIFT} from "./interfaces/IProtocol.sol";

/// @title DatasetRegistry
/// @notice Community datasets: a curator creates a dataset, contributors submit content (IPFS CID,
///         size in tokens), the curator accepts (with a weight) or rejects each contribution.
///         Rewards paid to a dataset are split over its accepted contributions by weight with a
///         reward-per-weight accumulator: O(1) per payment, no loop over contributors, and a
///         contribution accepted later earns nothing of what was paid before it. Payments made
///         while a dataset has no accepted weight go to its curator.
///         Payments arrive through AttributionPool: per committed receipt batch, part of a dataset's
///         payment is credited to the contributions the answers drew on (`payAttributed`), the rest
///         goes into the accumulator (`distribute`). A curator may reject an accepted contribution
///         later: it keeps what it earned until then, and earns nothing after.
contract DatasetRegistry is IDatasetRegistry {
    /// @notice Status of a contribution.
    enum Status {
        None,
        Pending,
        Accepted,
        Rejected
    }

    /// @notice A dataset as returned by `getDataset`.
    struct DatasetView {
        address curator;
        string name;
        string license;
        string metadataCid;
        uint256 totalWeight;
        uint256 accRewardPerWeight;
        uint256 contributionCount;
    }

    /// @notice A contribution as returned by `getContribution`.
    struct ContributionView {
        address contributor;
        uint256 datasetId;
        string cid;
        uint256 sizeTokens;
        Status status;
        uint256 weight;
    }

    /// @notice The dataset does not exist.
    error DatasetRegistryUnknownDataset(uint256 datasetId);
    /// @notice The contribution does not exist.
    error DatasetRegistryUnknownContribution(uint256 contributionId);
    /// @notice Only the dataset's curator may do this.
    error DatasetRegistryNotCurator(uint256 datasetId, address caller);
    /// @notice The contribution was already accepted or rejected.
    error DatasetRegistryNotPending(uint256 contributionId, Status status);
    /// @notice Only accepted contributions earn rewards.
    error DatasetRegistryNotAccepted(uint256 contributionId, Status status);
    /// @notice A weight must be in 1..MAX_WEIGHT.
    error DatasetRegistryInvalidWeight(uint256 weight);
    /// @notice A required string is empty or longer than MAX_STRING bytes.
    error DatasetRegistryInvalidString(string field);
    /// @notice A contribution's size must be in 1..2^64-1 tokens.
    error DatasetRegistryInvalidSize(uint256 sizeTokens);
    /// @notice Only AttributionPool may distribute rewards.
    error DatasetRegistryNotPool(address caller);
    /// @notice Array arguments differ in length.
    error DatasetRegistryLengthMismatch(uint256 a, uint256 b);
    /// @notice Dataset ids are packed into 32 bits elsewhere; no more can be created.
    error DatasetRegistryTooManyDatasets();
    /// @notice A constructor address is zero.
    error DatasetRegistryZeroAddress();

    /// @notice Dataset `datasetId` was created.
    event DatasetCreated(uint256 indexed datasetId, address indexed curator, string name, string license, string metadataCid);
    /// @notice A contribution was submitted to a dataset.
    event ContributionSubmitted(
        uint256 indexed contributionId, uint256 indexed datasetId, address indexed contributor, string cid, uint256 sizeTokens
    );
    /// @notice The curator accepted a contribution with `weight`.
    event ContributionAccepted(uint256 indexed contributionId, uint256 indexed datasetId, uint256 weight);
    /// @notice The curator rejected a contribution.
    event ContributionRejected(uint256 indexed contributionId, uint256 indexed datasetId);
    /// @notice `amount` was paid to a dataset; `accRewardPerWeight` is the accumulator after it.
    event DatasetRewarded(uint256 indexed datasetId, uint256 amount, uint256 accRewardPerWeight);
    /// @notice A batch named a contribution that is not accepted in `datasetId`; its `amount` went to the accumulator.
    event AttributionRefused(uint256 indexed contributionId, uint256 indexed datasetId, uint256 amount);
    /// @notice `amount` of a contribution's accrued reward was credited in RewardVault.
    event ContributionHarvested(uint256 indexed contributionId, address indexed contributor, uint256 amount);

    /// @notice Fixed-point scale of the reward-per-weight accumulator.
    uint256 public constant ACC_PRECISION = 1e24;
    /// @notice Largest weight a contribution can carry (keeps weight * accumulator far from overflow).
    uint256 public constant MAX_WEIGHT = type(uint64).max;
    /// @notice Largest length of any string argument, in bytes.
    uint256 public constant MAX_STRING = 256;

    struct Dataset {
        address curator; // slot 0: curator (160) | totalWeight (96)
        uint96 totalWeight;
        uint256 accRewardPerWeight; // slot 1
        uint256 contributionCount;
        string name;
        string license;
        string metadataCid;
    }

    struct Contribution {
        // slot 0: all a credit by payAttributed reads and writes, so one storage slot per credit
        uint32 datasetId;
        Status status;
        uint64 weight;
        uint128 attributed; // credited by payAttributed, not yet harvested
        address contributor; // slot 1: contributor (160) | sizeTokens (64)
        uint64 sizeTokens;
        uint256 rewardDebt; // weight * acc / PRECISION already accounted for
        string cid;
    }

    IRewardVault private immutable _vault;
    address private immutable _pool;

    uint256 private _datasetCount;
    uint256 private _contributionCount;
    mapping(uint256 datasetId => Dataset) private _datasets;
    mapping(uint256 contributionId => Contribution) private _contributions;

    /// @param vault_ RewardVault, where all rewards are held.
    /// @param pool_ AttributionPool, the only caller of `distribute` and `payAttributed`.
    constructor(IRewardVault vault_, address pool_) {
        if (address(vault_) == address(0) || pool_ == address(0)) revert DatasetRegistryZeroAddress();
        _vault = vault_;
        _pool = pool_;
    }

    // ---------------------------------------------------------------- curators and contributors

    /// @notice Create a dataset curated by the caller.
    /// @param name human-readable name (1..256 bytes).
    /// @param license license identifier, e.g. an SPDX id (1..256 bytes).
    /// @param metadataCid IPFS CID of the dataset description (may be empty).
    /// @return datasetId the new id (1, 2, 3, ...).
    function createDataset(string calldata name, string calldata license, string calldata metadataCid)
        external
        returns (uint256 datasetId)
    {
        _checkString(name, "name", false);
        _checkString(license, "license", false);
        _checkString(metadataCid, "metadataCid", true);
        datasetId = ++_datasetCount;
        if (datasetId > type(uint32).max) revert DatasetRegistryTooManyDatasets();
        Dataset storage d = _datasets[datasetId];
        d.curator = msg.sender;
        d.name = name;
        d.license = license;
        d.metadataCid = metadataCid;
        emit DatasetCreated(datasetId, msg.sender, name, license, metadataCid);
    }

    /// @notice Submit content to dataset `datasetId`; it waits for the curator's decision.
    /// @param datasetId the dataset.
    /// @param cid IPFS CID of the content (1..256 bytes).
    /// @param sizeTokens size of the content in tokens (1..2^64-1).
    /// @return contributionId the new id (1, 2, 3, ... across all datasets).
    function contribute(uint256 datasetId, string calldata cid, uint256 sizeTokens)
        external
        returns (uint256 contributionId)
    {
        Dataset storage d = _dataset(datasetId);
        _checkString(cid, "cid", false);
        if (sizeTokens == 0 || sizeTokens > type(uint64).max) revert DatasetRegistryInvalidSize(sizeTokens);
        contributionId = ++_contributionCount;
        Contribution storage c = _contributions[contributionId];
        c.contributor = msg.sender;
        c.datasetId = uint32(datasetId); // < 2^32, checked at creation
        c.status = Status.Pending;
        c.sizeTokens = uint64(sizeTokens);
        c.cid = cid;
        ++d.contributionCount;
        emit ContributionSubmitted(contributionId, datasetId, msg.sender, cid, sizeTokens);
    }

    /// @notice Accept a pending contribution with `weight`; it earns from later payments only.
    /// @param contributionId the contribution.
    /// @param weight its share weight (1..MAX_WEIGHT), e.g. its size in tokens.
    function accept(uint256 contributionId, uint256 weight) external {
        Contribution storage c = _pendingOfCurator(contributionId);
        if (weight == 0 || weight > MAX_WEIGHT) revert DatasetRegistryInvalidWeight(weight);
        Dataset storage d = _datasets[c.datasetId];
        c.status = Status.Accepted;
        c.weight = uint64(weight);
        // Starts at the current accumulator: nothing paid before acceptance is owed to it. Rounded up:
        // rounded down, a late contribution would be credited up to 1 unit paid before it arrived,
        // and the sum of claims could exceed what the vault holds.
        c.rewardDebt = Math.mulDiv(weight, d.accRewardPerWeight, ACC_PRECISION, Math.Rounding.Ceil);
        d.totalWeight += uint96(weight); // at most 2^32 * 2^64 contributions' weight: fits 96 bits
        emit ContributionAccepted(contributionId, c.datasetId, weight);
    }

    /// @notice Reject a pending contribution, or an accepted one later (it is paid what it earned
    ///         until now, then earns nothing more: neither from the accumulator nor by attribution).
    /// @param contributionId the contribution.
    function reject(uint256 contributionId) external {
        Contribution storage c = _contributions[contributionId];
        Status status = c.status;
        if (status == Status.None) revert DatasetRegistryUnknownContribution(contributionId);
        if (_datasets[c.datasetId].curator != msg.sender) revert DatasetRegistryNotCurator(c.datasetId, msg.sender);
        if (status == Status.Rejected) revert DatasetRegistryNotPending(contributionId, status);
        c.status = Status.Rejected; // before the vault call below (checks-effects-interactions)
        if (status == Status.Accepted) {
            Dataset storage d = _datasets[c.datasetId];
            uint256 accrued = uint256(c.weight) * d.accRewardPerWeight / ACC_PRECISION;
            uint256 debt = c.rewardDebt;
            // the debt was rounded up at acceptance, so it may exceed what has accrued since
            uint256 owed = (accrued > debt ? accrued - debt : 0) + c.attributed;
            if (accrued > debt) c.rewardDebt = accrued;
            c.attributed = 0;
            d.totalWeight -= uint96(c.weight);
            c.weight = 0;
            if (owed != 0) {
                emit ContributionHarvested(contributionId, c.contributor, owed);
                _creditOne(c.contributor, owed);
            }
        }
        emit ContributionRejected(contributionId, c.datasetId);
    }

    /// @notice Credit the accrued rewards of accepted contributions to their contributors in RewardVault.
    ///         Anyone may call it; rewards always go to each contribution's contributor.
    /// @param contributionIds contributions to harvest (unknown or unaccepted ones revert).
    /// @return total amount credited.
    function harvest(uint256[] calldata contributionIds) external returns (uint256 total) {
        uint256 n = contributionIds.length;
        address[] memory to = new address[](n);
        uint256[] memory amounts = new uint256[](n);
        for (uint256 i; i < n; ++i) {
            uint256 id = contributionIds[i];
            Contribution storage c = _contributions[id];
            if (c.status == Status.None) revert DatasetRegistryUnknownContribution(id);
            if (c.status != Status.Accepted) revert DatasetRegistryNotAccepted(id, c.status);
            uint256 accrued = uint256(c.weight) * _datasets[c.datasetId].accRewardPerWeight / ACC_PRECISION;
            uint256 debt = c.rewardDebt;
            // the debt was rounded up at acceptance, so it may exceed what has accrued since
            uint256 pending = (accrued > debt ? accrued - debt : 0) + c.attributed;
            if (accrued > debt) c.rewardDebt = accrued;
            c.attributed = 0;
            to[i] = c.contributor;
            amounts[i] = pending;
            total += pending;
            if (pending != 0) emit ContributionHarvested(id, c.contributor, pending);
        }
        if (total != 0) _vault.credit(to, amounts);
    }

    // ---------------------------------------------------------------- attribution pool

    /// @inheritdoc IDatasetRegistry
    function payAttributed(uint256 datasetId, uint256 amount, uint256 totalWeight, uint256[] calldata entries)
        external
    {
        if (msg.sender != _pool) revert DatasetRegistryNotPool(msg.sender);
        uint256 n = entries.length;
        uint256 given = 0;
        for (uint256 i; i < n;) {
            uint256 e = entries[i];
            uint256 id = uint96(e >> SETTLE_KEY_SHIFT);
            uint256 share;
            unchecked {
                ++i; // i < n
                // amount < 2^128 and weight < 2^128: no overflow. Shares are floored and the weights
                // sum to totalWeight (>= 1 when there are entries), so they sum to at most `amount`.
                share = amount * uint128(e) / totalWeight;
            }
            // the unattributed entry (contribution 0) is no contribution: its share stays below
            if (id == 0 || share == 0) continue;
            Contribution storage c = _contributions[id];
            // The hot loop of a settle: the contribution's slot 0 is read once and written once
            // (field by field, the compiler reads it three times). Layout, low bits first:
            // datasetId (0-31) | status (32-39) | weight (40-103) | attributed (104-231).
            uint256 word;
            assembly ("memory-safe") {
                word := sload(c.slot)
            }
            // Only a contribution accepted into this very dataset is credited (checked at payment
            // time, so a contribution rejected since the answer was served earns nothing more).
            // No event per credit (gas): AttributionPool's BatchSettled and PoolDrained determine
            // every credit, and only refusals (below) depart from them.
            if (uint8(word >> 32) == uint8(Status.Accepted) && uint32(word) == datasetId) {
                // checked: amounts come from a pool whose balance fits 128 bits
                uint128 attributed = uint128(word >> 104) + uint128(share);
                word = (word & ~(uint256(type(uint128).max) << 104)) | (uint256(attributed) << 104);
                assembly ("memory-safe") {
                    sstore(c.slot, word)
                }
                given += share;
            } else {
                emit AttributionRefused(id, datasetId, share);
            }
        }
        uint256 rest = amount - given; // checked: given <= amount (see above)
        if (rest != 0) {
            address curator = _accrue(datasetId, rest);
            if (curator != address(0)) _creditOne(curator, rest);
        }
    }

    /// @inheritdoc IDatasetRegistry
    function distribute(uint256[] calldata datasetIds, uint256[] calldata amounts) external {
        if (msg.sender != _pool) revert DatasetRegistryNotPool(msg.sender);
        uint256 n = datasetIds.length;
        if (n != amounts.length) revert DatasetRegistryLengthMismatch(n, amounts.length);
        address[] memory curators = new address[](n);
        uint256[] memory curatorAmounts = new uint256[](n);
        uint256 m;
        for (uint256 i; i < n; ++i) {
            uint256 amount = amounts[i];
            if (amount == 0) continue;
            address curator = _accrue(datasetIds[i], amount);
            if (curator != address(0)) {
                curators[m] = curator;
                curatorAmounts[m] = amount;
                unchecked {
                    ++m; // m <= i < n
                }
            }
        }
        if (m != 0) {
            assembly ("memory-safe") {
                // shrink both arrays to the m entries used
                mstore(curators, m)
                mstore(curatorAmounts, m)
            }
            _vault.credit(curators, curatorAmounts);
        }
    }

    // ---------------------------------------------------------------- views

    /// @inheritdoc IDatasetRegistry
    function datasetExists(uint256 datasetId) external view returns (bool) {
        return _datasets[datasetId].curator != address(0);
    }

    /// @notice Dataset `datasetId` (reverts if unknown).
    function getDataset(uint256 datasetId) external view returns (DatasetView memory) {
        Dataset storage d = _dataset(datasetId);
        return DatasetView(
            d.curator, d.name, d.license, d.metadataCid, d.totalWeight, d.accRewardPerWeight, d.contributionCount
        );
    }

    /// @notice Contribution `contributionId` (reverts if unknown).
    function getContribution(uint256 contributionId) external view returns (ContributionView memory) {
        Contribution storage c = _contributions[contributionId];
        if (c.status == Status.None) revert DatasetRegistryUnknownContribution(contributionId);
        return ContributionView(c.contributor, c.datasetId, c.cid, c.sizeTokens, c.status, c.weight);
    }

    /// @notice Reward accrued by an accepted contribution and not yet harvested (0 otherwise),
    ///         by accepted weight and by attribution together.
    function pendingReward(uint256 contributionId) external view returns (uint256) {
        Contribution storage c = _contributions[contributionId];
        if (c.status != Status.Accepted) return 0;
        uint256 accrued = uint256(c.weight) * _datasets[c.datasetId].accRewardPerWeight / ACC_PRECISION;
        return (accrued > c.rewardDebt ? accrued - c.rewardDebt : 0) + c.attributed;
    }

    /// @notice The part of `pendingReward` credited by attribution.
    function pendingAttributed(uint256 contributionId) external view returns (uint256) {
        return _contributions[contributionId].attributed;
    }

    /// @inheritdoc IDatasetRegistry
    function datasetOf(uint256 contributionId) external view returns (uint256 datasetId, bool accepted) {
        Contribution storage c = _contributions[contributionId];
        return (c.datasetId, c.status == Status.Accepted);
    }

    /// @notice Number of datasets created (ids are 1..count).
    function datasetCount() external view returns (uint256) {
        return _datasetCount;
    }

    /// @notice Number of contributions submitted (ids are 1..count).
    function contributionCount() external view returns (uint256) {
        return _contributionCount;
    }

    /// @notice RewardVault and AttributionPool fixed at deployment.
    function peers() external view returns (address vault, address pool) {
        return (address(_vault), _pool);
    }

    // ---------------------------------------------------------------- internal

    /// @dev Add `amount` to the dataset's accumulator. A dataset without accepted weight has nobody
    ///      to split over (later contributions must not take it): returns its curator, whom the
    ///      caller credits; zero otherwise.
    function _accrue(uint256 datasetId, uint256 amount) private returns (address curator) {
        Dataset storage d = _datasets[datasetId];
        uint256 weight = d.totalWeight;
        if (weight == 0) {
            emit DatasetRewarded(datasetId, amount, d.accRewardPerWeight);
            return d.curator;
        }
        // Flooring leaves < weight / ACC_PRECISION units of dust in the vault per payment.
        uint256 acc = d.accRewardPerWeight + amount * ACC_PRECISION / weight;
        d.accRewardPerWeight = acc;
        emit DatasetRewarded(datasetId, amount, acc);
        return address(0);
    }

    function _creditOne(address to, uint256 amount) private {
        address[] memory tos = new address[](1);
        uint256[] memory amounts = new uint256[](1);
        tos[0] = to;
        amounts[0] = amount;
        _vault.credit(tos, amounts);
    }

    function _dataset(uint256 datasetId) private view returns (Dataset storage d) {
        d = _datasets[datasetId];
        if (d.curator == address(0)) revert DatasetRegistryUnknownDataset(datasetId);
    }

    function _pendingOfCurator(uint256 contributionId) private view returns (Contribution storage c) {
        c = _contributions[contributionId];
        if (c.status == Status.None) revert DatasetRegistryUnknownContribution(contributionId);
        if (_datasets[c.datasetId].curator != msg.sender) revert DatasetRegistryNotCurator(c.datasetId, msg.sender);
        if (c.status != Status.Pending) revert DatasetRegistryNotPending(contributionId, c.status);
    }

    function _checkString(string calldata s, string memory field, bool mayBeEmpty) private pure {
        uint256 len = bytes(s).length;
        if ((len == 0 && !mayBeEmpty) || len > MAX_STRING) revert DatasetRegistryInvalidString(field);
    }
}
