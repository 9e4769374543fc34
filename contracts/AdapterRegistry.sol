// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IAdapterRegistry, IDatasetRegistry} from "./interfaces/IProtocol.sol";

/// @title AdapterRegistry
/// @notice LoRA adapters: base model id, IPFS folder CID (`adapter_config.json` +
///         `adapter_model.safetensors`), rank, price per 1K tokens, and an attribution split
///         (owner bps + per-dataset bps summing to 10,000) fixed at registration. Owners publish
///         new versions (CID, rank, price) and deprecate; only the owner changes an adapter.
///         `AdapterPublished` carries the whole record, so a watcher needs no extra reads.
contract AdapterRegistry is IAdapterRegistry {
    /// @notice An adapter as returned by `getAdapter`.
    struct AdapterView {
        address owner;
        string baseModelId;
        string cid;
        uint16 rank;
        uint128 pricePer1k;
        uint16 ownerBps;
        uint256[] datasetIds;
        uint16[] datasetBps;
        uint32 version;
        bool deprecated;
    }

    /// @notice The adapter does not exist.
    error AdapterRegistryUnknownAdapter(uint256 adapterId);
    /// @notice Only the adapter's owner may change it.
    error AdapterRegistryNotOwner(uint256 adapterId, address caller);
    /// @notice The adapter is deprecated and can no longer change.
    error AdapterRegistryDeprecated(uint256 adapterId);
    /// @notice ownerBps + sum(datasetBps) must equal 10,000.
    error AdapterRegistryBpsSum(uint256 sum);
    /// @notice Each dataset's bps must be positive.
    error AdapterRegistryZeroDatasetBps(uint256 datasetId);
    /// @notice `datasetIds` and `datasetBps` differ in length.
    error AdapterRegistryLengthMismatch(uint256 ids, uint256 bps);
    /// @notice At most MAX_DATASETS datasets per adapter.
    error AdapterRegistryTooManyDatasets(uint256 count);
    /// @notice Dataset ids must be strictly ascending (no duplicates).
    error AdapterRegistryDatasetsNotAscending(uint256 datasetId);
    /// @notice The dataset does not exist in DatasetRegistry.
    error AdapterRegistryUnknownDataset(uint256 datasetId);
    /// @notice Rank must be in 1..MAX_RANK.
    error AdapterRegistryInvalidRank(uint256 rank);
    /// @notice A required string is empty or longer than MAX_STRING bytes.
    error AdapterRegistryInvalidString(string field);
    /// @notice The DatasetRegistry address is zero.
    error AdapterRegistryZeroAddress();

    /// @notice An adapter was registered (version 1) or got a new version; the full record.
    event AdapterPublished(
        uint256 indexed adapterId,
        address indexed owner,
        uint32 version,
        string baseModelId,
        string cid,
        uint16 rank,
        uint128 pricePer1k,
        uint16 ownerBps,
        uint256[] datasetIds,
        uint16[] datasetBps
    );
    /// @notice The owner deprecated an adapter: nodes should stop serving it.
    event AdapterDeprecated(uint256 indexed adapterId);

    /// @notice Basis points in a whole.
    uint16 public constant BPS = 10_000;
    /// @notice Most dataset splits per adapter (two packed words of five).
    uint256 public constant MAX_DATASETS = 10;
    /// @notice Largest LoRA rank accepted.
    uint256 public constant MAX_RANK = 1024;
    /// @notice Largest length of any string argument, in bytes.
    uint256 public constant MAX_STRING = 256;

    struct Adapter {
        // slot 0, the one UsageEscrow reads: owner | ownerBps | datasetCount | version | rank | deprecated
        address owner;
        uint16 ownerBps;
        uint8 datasetCount;
        uint32 version;
        uint16 rank;
        bool deprecated;
        uint256 packed0; // dataset splits 0..4: (datasetId << 16 | bps) every 48 bits
        uint256 packed1; // dataset splits 5..9
        uint128 pricePer1k;
        string baseModelId;
        string cid;
    }

    IDatasetRegistry private immutable _datasets;
    uint256 private _adapterCount;
    mapping(uint256 adapterId => Adapter) private _adapters;

    /// @param datasets_ DatasetRegistry, checked for every dataset in a split.
    constructor(IDatasetRegistry datasets_) {
        if (address(datasets_) == address(0)) revert AdapterRegistryZeroAddress();
        _datasets = datasets_;
    }

    /// @notice Register an adapter owned by the caller, at version 1.
    /// @param baseModelId id of the base model it was trained on (1..256 bytes).
    /// @param cid IPFS folder CID (1..256 bytes).
    /// @param rank LoRA rank (1..MAX_RANK).
    /// @param pricePer1k adapter price per 1,000 tokens, in the payment token's smallest unit.
    /// @param ownerBps owner share of the adapter part, in bps.
    /// @param datasetIds datasets credited, strictly ascending, at most MAX_DATASETS.
    /// @param datasetBps each dataset's share in bps (positive); ownerBps + sum = 10,000.
    /// @return adapterId the new id (1, 2, 3, ...).
    function register(
        string calldata baseModelId,
        string calldata cid,
        uint16 rank,
        uint128 pricePer1k,
        uint16 ownerBps,
        uint256[] calldata datasetIds,
        uint16[] calldata datasetBps
    ) external returns (uint256 adapterId) {
        _checkString(baseModelId, "baseModelId");
        _checkString(cid, "cid");
        _checkRank(rank);
        (uint256 packed0, uint256 packed1) = _packSplits(ownerBps, datasetIds, datasetBps);
        adapterId = ++_adapterCount;
        Adapter storage a = _adapters[adapterId];
        a.owner = msg.sender;
        a.ownerBps = ownerBps;
        a.datasetCount = uint8(datasetIds.length); // <= MAX_DATASETS
        a.version = 1;
        a.rank = rank;
        a.packed0 = packed0;
        a.packed1 = packed1;
        a.pricePer1k = pricePer1k;
        a.baseModelId = baseModelId;
        a.cid = cid;
        _emitPublished(adapterId, a);
    }

    /// @notice Publish a new version of an adapter (new weights, rank or price); splits stay fixed.
    /// @param adapterId the adapter (caller must own it; not deprecated).
    /// @param cid new IPFS folder CID.
    /// @param rank new LoRA rank.
    /// @param pricePer1k new price per 1,000 tokens.
    /// @return version the new version number.
    function publishVersion(uint256 adapterId, string calldata cid, uint16 rank, uint128 pricePer1k)
        external
        returns (uint32 version)
    {
        Adapter storage a = _ownedLive(adapterId);
        _checkString(cid, "cid");
        _checkRank(rank);
        version = a.version + 1;
        a.version = version;
        a.rank = rank;
        a.pricePer1k = pricePer1k;
        a.cid = cid;
        _emitPublished(adapterId, a);
    }

    /// @notice Deprecate an adapter for good. Vouchers already signed for it still redeem.
    /// @param adapterId the adapter (caller must own it).
    function deprecate(uint256 adapterId) external {
        Adapter storage a = _ownedLive(adapterId);
        a.deprecated = true;
        emit AdapterDeprecated(adapterId);
    }

    /// @notice Adapter `adapterId` (reverts if unknown).
    function getAdapter(uint256 adapterId) external view returns (AdapterView memory) {
        Adapter storage a = _adapters[adapterId];
        if (a.owner == address(0)) revert AdapterRegistryUnknownAdapter(adapterId);
        (uint256[] memory ids, uint16[] memory bps) = _unpackSplits(a);
        return AdapterView(
            a.owner, a.baseModelId, a.cid, a.rank, a.pricePer1k, a.ownerBps, ids, bps, a.version, a.deprecated
        );
    }

    /// @inheritdoc IAdapterRegistry
    function payoutOf(uint256 adapterId)
        external
        view
        returns (address owner, uint256 count, uint256 packed0, uint256 packed1)
    {
        Adapter storage a = _adapters[adapterId];
        owner = a.owner;
        count = a.datasetCount;
        if (count != 0) packed0 = a.packed0;
        if (count > 5) packed1 = a.packed1; // skip the second cold read when unused
    }

    /// @notice Number of adapters registered (ids are 1..count).
    function adapterCount() external view returns (uint256) {
        return _adapterCount;
    }

    /// @notice The DatasetRegistry used to check splits.
    function datasets() external view returns (IDatasetRegistry) {
        return _datasets;
    }

    // ---------------------------------------------------------------- internal

    function _ownedLive(uint256 adapterId) private view returns (Adapter storage a) {
        a = _adapters[adapterId];
        if (a.owner == address(0)) revert AdapterRegistryUnknownAdapter(adapterId);
        if (a.owner != msg.sender) revert AdapterRegistryNotOwner(adapterId, msg.sender);
        if (a.deprecated) revert AdapterRegistryDeprecated(adapterId);
    }

    function _packSplits(uint16 ownerBps, uint256[] calldata ids, uint16[] calldata bps)
        private
        view
        returns (uint256 packed0, uint256 packed1)
    {
        uint256 n = ids.length;
        if (n != bps.length) revert AdapterRegistryLengthMismatch(n, bps.length);
        if (n > MAX_DATASETS) revert AdapterRegistryTooManyDatasets(n);
        uint256 sum = ownerBps;
        uint256 prev = 0; // ids start at 1, so the first id is always > prev
        for (uint256 i; i < n; ++i) {
            uint256 id = ids[i];
            if (id <= prev) revert AdapterRegistryDatasetsNotAscending(id);
            // DatasetRegistry ids never exceed 2^32 - 1, so an existing id fits its 32 bits.
            if (!_datasets.datasetExists(id)) revert AdapterRegistryUnknownDataset(id);
            if (bps[i] == 0) revert AdapterRegistryZeroDatasetBps(id);
            prev = id;
            sum += bps[i];
            uint256 entry = (id << 16) | bps[i];
            if (i < 5) packed0 |= entry << (48 * i);
            else packed1 |= entry << (48 * (i - 5));
        }
        if (sum != BPS) revert AdapterRegistryBpsSum(sum);
    }

    function _unpackSplits(Adapter storage a) private view returns (uint256[] memory ids, uint16[] memory bps) {
        uint256 n = a.datasetCount;
        ids = new uint256[](n);
        bps = new uint16[](n);
        for (uint256 i; i < n; ++i) {
            uint256 word = i < 5 ? a.packed0 : a.packed1;
            uint256 entry = word >> (48 * (i % 5));
            ids[i] = uint32(entry >> 16);
            bps[i] = uint16(entry);
        }
    }

    function _emitPublished(uint256 adapterId, Adapter storage a) private {
        (uint256[] memory ids, uint16[] memory bps) = _unpackSplits(a);
        emit AdapterPublished(
            adapterId, a.owner, a.version, a.baseModelId, a.cid, a.rank, a.pricePer1k, a.ownerBps, ids, bps
        );
    }

    function _checkRank(uint256 rank) private pure {
        if (rank == 0 || rank > MAX_RANK) revert AdapterRegistryInvalidRank(rank);
    }

    function _checkString(string calldata s, string memory field) private pure {
        uint256 len = bytes(s).length;
        if (len == 0 || len > MAX_STRING) revert AdapterRegistryInvalidString(field);
    }
}
