// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @title PerInferencePeer
/// @notice Benchmark peer only (never deployed for real): the "one transaction per inference"
///         design. Each inference is its own call: the payer's signature over the inference is
///         checked, the payer's prepaid balance is debited, node and adapter owner are credited,
///         and the receipt is logged as an event. It is kept as lean as that design allows.
contract PerInferencePeer is EIP712 {
    /// @notice One inference as the payer signs it.
    struct Inference {
        bytes32 requestId;
        address payer;
        address node;
        address adapterOwner;
        uint256 adapterId;
        uint32 promptTokens;
        uint32 completionTokens;
        uint128 computeCost;
        uint128 adapterCost;
        bytes32 outputHash;
    }

    /// @notice The signature is not the payer's.
    error PerInferencePeerBadSignature();
    /// @notice The request id was settled already.
    error PerInferencePeerReplay(bytes32 requestId);
    /// @notice The payer's balance is too small.
    error PerInferencePeerInsufficient();

    /// @notice One inference settled.
    event InferenceSettled(
        bytes32 indexed requestId, address indexed payer, uint256 indexed adapterId, uint256 cost, bytes32 outputHash
    );

    bytes32 private constant INFERENCE_TYPEHASH = keccak256(
        "Inference(bytes32 requestId,address payer,address node,address adapterOwner,uint256 adapterId,uint32 promptTokens,uint32 completionTokens,uint128 computeCost,uint128 adapterCost,bytes32 outputHash)"
    );

    mapping(address => uint256) private _balance;
    mapping(address => uint256) private _credit;
    mapping(bytes32 => bool) private _settled;

    constructor() EIP712("PerInferencePeer", "1") {}

    /// @notice Prefund `payer` (benchmark setup; no token moves).
    function fund(address payer, uint256 amount) external {
        _balance[payer] += amount;
    }

    /// @notice Settle one inference.
    function settle(Inference calldata inf, bytes calldata sig) external {
        bytes32 digest = _hashTypedDataV4(keccak256(abi.encode(INFERENCE_TYPEHASH, inf)));
        if (ECDSA.recoverCalldata(digest, sig) != inf.payer) revert PerInferencePeerBadSignature();
        if (_settled[inf.requestId]) revert PerInferencePeerReplay(inf.requestId);
        _settled[inf.requestId] = true;
        uint256 cost = uint256(inf.computeCost) + inf.adapterCost;
        uint256 bal = _balance[inf.payer];
        if (bal < cost) revert PerInferencePeerInsufficient();
        _balance[inf.payer] = bal - cost;
        _credit[inf.node] += inf.computeCost;
        _credit[inf.adapterOwner] += inf.adapterCost;
        emit InferenceSettled(inf.requestId, inf.payer, inf.adapterId, cost, inf.outputHash);
    }

    /// @notice EIP-712 digest of `inf`.
    function hashInference(Inference calldata inf) external view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(INFERENCE_TYPEHASH, inf)));
    }
}
