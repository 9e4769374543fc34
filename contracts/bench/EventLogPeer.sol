// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title EventLogPeer
/// @notice Benchmark peer only (never deployed for real): the "one event per inference in a
///         batched call" design. The node posts a batch of receipts; each becomes one log with
///         the receipt's fields. Payment is not even included (that only favours the peer).
contract EventLogPeer {
    /// @notice The receipt fields logged per inference.
    struct Rec {
        bytes32 requestId;
        address payer;
        uint256 adapterId;
        uint32 promptTokens;
        uint32 completionTokens;
        uint128 cost;
        bytes32 outputHash;
        bytes32 attributionHash;
    }

    /// @notice One inference logged.
    event InferenceLogged(
        bytes32 indexed requestId,
        address indexed payer,
        uint256 indexed adapterId,
        address node,
        uint32 promptTokens,
        uint32 completionTokens,
        uint128 cost,
        bytes32 outputHash,
        bytes32 attributionHash
    );

    /// @notice Log a batch of receipts, one event each.
    function logBatch(Rec[] calldata recs) external {
        uint256 n = recs.length;
        for (uint256 i; i < n; ++i) {
            Rec calldata r = recs[i];
            emit InferenceLogged(
                r.requestId, r.payer, r.adapterId, msg.sender, r.promptTokens, r.completionTokens, r.cost,
                r.outputHash, r.attributionHash
            );
        }
    }
}
