// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";

/// @title ReceiptLog
/// @notice Nodes commit batches of signed inference receipts: a per-node batch sequence
///         (exactly last + 1), the Merkle root of the batch, its receipt count and the IPFS CID of
///         the full receipts file. Anyone can check that a receipt was committed with
///         `verifyReceipt`. Leaves follow OpenZeppelin's StandardMerkleTree for the single value
///         `bytes32 digest` (the receipt's EIP-712 digest): keccak256(keccak256(abi.encode(digest))).
contract ReceiptLog is EIP712 {
    /// @notice A usage and attribution receipt, signed by the node (EIP-712, this contract's domain).
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

    /// @notice The batch sequence must be exactly the node's last + 1.
    error ReceiptLogWrongSequence(uint64 expected, uint64 given);
    /// @notice The root must be non-zero and the count positive.
    error ReceiptLogEmptyBatch();
    /// @notice The receipts CID must be 1..MAX_CID bytes.
    error ReceiptLogInvalidCid();

    /// @notice `node` committed batch `seq`.
    event BatchCommitted(address indexed node, uint64 indexed seq, bytes32 root, uint32 count, string receiptsCid);

    /// @notice EIP-712 type hash of Receipt.
    bytes32 public constant RECEIPT_TYPEHASH = keccak256(
        "Receipt(bytes32 requestId,address payer,address node,uint256 adapterId,uint64 seq,uint32 promptTokens,uint32 completionTokens,uint256 computeCost,uint256 adapterCost,bytes32 outputHash,bytes32 attributionHash,uint64 timestamp)"
    );
    /// @notice Longest receipts CID accepted, in bytes.
    uint256 public constant MAX_CID = 256;

    struct Last {
        uint64 seq; // one slot: last batch sequence | its commit time
        uint64 at;
    }

    mapping(address node => Last) private _last;
    mapping(address node => mapping(uint64 seq => bytes32)) private _roots;

    constructor() EIP712("LoRA Node", "1") {}

    /// @notice Commit the caller's next batch of receipts.
    /// @param seq batch sequence number, exactly lastSeq(caller) + 1 (the first is 1).
    /// @param root Merkle root (StandardMerkleTree, leaves as described above).
    /// @param count number of receipts in the batch (positive).
    /// @param receiptsCid IPFS CID of the full receipts file (1..256 bytes).
    function commitBatch(uint64 seq, bytes32 root, uint32 count, string calldata receiptsCid) external {
        uint64 expected = _last[msg.sender].seq + 1;
        if (seq != expected) revert ReceiptLogWrongSequence(expected, seq);
        if (root == bytes32(0) || count == 0) revert ReceiptLogEmptyBatch();
        uint256 len = bytes(receiptsCid).length;
        if (len == 0 || len > MAX_CID) revert ReceiptLogInvalidCid();
        // the commit time opens NodeRegistry's dispute window on the node's bond
        _last[msg.sender] = Last(seq, uint64(block.timestamp));
        _roots[msg.sender][seq] = root;
        emit BatchCommitted(msg.sender, seq, root, count, receiptsCid);
    }

    /// @notice Whether receipt `r` is in batch `batchSeq` committed by `r.node`.
    /// @param r the receipt.
    /// @param batchSeq the batch it claims to be in.
    /// @param proof StandardMerkleTree proof of the receipt's leaf.
    /// @return true iff the batch exists and the proof leads to its root.
    function verifyReceipt(Receipt calldata r, uint64 batchSeq, bytes32[] calldata proof) external view returns (bool) {
        bytes32 root = _roots[r.node][batchSeq];
        if (root == bytes32(0)) return false;
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(_digest(r)))));
        return MerkleProof.verifyCalldata(proof, root, leaf);
    }

    /// @notice EIP-712 digest of `r` under this contract's domain (what the node signs).
    function hashReceipt(Receipt calldata r) external view returns (bytes32) {
        return _digest(r);
    }

    /// @notice Last batch sequence committed by `node` (0 if none).
    function lastSeq(address node) external view returns (uint64) {
        return _last[node].seq;
    }

    /// @notice Timestamp of `node`'s last committed batch (0 if none).
    function lastCommitAt(address node) external view returns (uint64) {
        return _last[node].at;
    }

    /// @notice Root of `node`'s batch `seq` (zero if not committed).
    function batchRoot(address node, uint64 seq) external view returns (bytes32) {
        return _roots[node][seq];
    }

    function _digest(Receipt calldata r) private view returns (bytes32) {
        // All fields are static, so abi.encode(r) is the fields' 32-byte words in order: encodeData.
        return _hashTypedDataV4(keccak256(abi.encode(RECEIPT_TYPEHASH, r)));
    }
}
