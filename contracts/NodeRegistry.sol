// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @title NodeRegistry
/// @notice Node operators register the node's endpoint URL, the base model ids it serves and its
///         compute price per 1K tokens, with an optional bond in the payment token. A deregistered
///         node gets its bond back after the unbonding period.
contract NodeRegistry is ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice A node as returned by `getNode`.
    struct NodeView {
        string endpoint;
        string[] baseModelIds;
        uint256 computePricePer1k;
        uint256 bond;
        uint64 unbondAt;
        bool active;
    }

    /// @notice The caller already has an active registration.
    error NodeRegistryAlreadyRegistered(address node);
    /// @notice The caller has no active registration.
    error NodeRegistryNotRegistered(address node);
    /// @notice A string is empty or longer than MAX_STRING bytes.
    error NodeRegistryInvalidString(string field);
    /// @notice Base model list must hold 1..MAX_BASE_MODELS ids.
    error NodeRegistryInvalidBaseModels(uint256 count);
    /// @notice The bond can only be withdrawn after deregistration.
    error NodeRegistryStillActive(address node);
    /// @notice The bond is locked until `unbondAt`.
    error NodeRegistryStillUnbonding(uint64 unbondAt);
    /// @notice There is no bond to withdraw, or a zero amount was given.
    error NodeRegistryNoBond(address node);
    /// @notice The token address is zero.
    error NodeRegistryZeroAddress();

    /// @notice A node registered or re-registered.
    event NodeRegistered(address indexed node, string endpoint, string[] baseModelIds, uint256 computePricePer1k);
    /// @notice A node changed its endpoint, models or price.
    event NodeUpdated(address indexed node, string endpoint, string[] baseModelIds, uint256 computePricePer1k);
    /// @notice A node's bond grew by `amount` to `total`.
    event BondAdded(address indexed node, uint256 amount, uint256 total);
    /// @notice A node deregistered; its bond unlocks at `unbondAt`.
    event NodeDeregistered(address indexed node, uint64 unbondAt);
    /// @notice A deregistered node withdrew its bond.
    event BondWithdrawn(address indexed node, uint256 amount);

    /// @notice Largest length of any string, in bytes.
    uint256 public constant MAX_STRING = 256;
    /// @notice Most base models one node may list.
    uint256 public constant MAX_BASE_MODELS = 16;

    struct Node {
        string endpoint;
        string[] baseModelIds;
        uint256 computePricePer1k;
        uint128 bond;
        uint64 unbondAt;
        bool active;
    }

    IERC20 private immutable _token;
    uint64 private immutable _unbondSeconds;
    mapping(address node => Node) private _nodes;

    /// @param token_ the payment token (bonds are held in it).
    /// @param unbondSeconds_ how long a bond stays locked after deregistration.
    constructor(IERC20 token_, uint64 unbondSeconds_) {
        if (address(token_) == address(0)) revert NodeRegistryZeroAddress();
        _token = token_;
        _unbondSeconds = unbondSeconds_;
    }

    /// @notice Register the caller as a node (again, after a deregistration: a bond still held carries over).
    /// @param endpoint the node's public HTTP(S) base URL (1..256 bytes).
    /// @param baseModelIds base model ids served (1..16, each 1..256 bytes).
    /// @param computePricePer1k compute price per 1,000 tokens in the token's smallest unit.
    /// @param bond tokens to lock as bond now (0 for none); needs an allowance.
    function register(
        string calldata endpoint,
        string[] calldata baseModelIds,
        uint256 computePricePer1k,
        uint256 bond
    ) external nonReentrant {
        Node storage n = _nodes[msg.sender];
        if (n.active) revert NodeRegistryAlreadyRegistered(msg.sender);
        _set(n, endpoint, baseModelIds, computePricePer1k);
        n.active = true;
        n.unbondAt = 0;
        emit NodeRegistered(msg.sender, endpoint, baseModelIds, computePricePer1k);
        if (bond != 0) _addBond(n, bond);
    }

    /// @notice Change the caller's endpoint, base models and price.
    /// @param endpoint new endpoint URL.
    /// @param baseModelIds new base model list.
    /// @param computePricePer1k new compute price per 1,000 tokens.
    function update(string calldata endpoint, string[] calldata baseModelIds, uint256 computePricePer1k) external {
        Node storage n = _nodes[msg.sender];
        if (!n.active) revert NodeRegistryNotRegistered(msg.sender);
        _set(n, endpoint, baseModelIds, computePricePer1k);
        emit NodeUpdated(msg.sender, endpoint, baseModelIds, computePricePer1k);
    }

    /// @notice Lock `amount` more tokens as the caller's bond (needs an allowance).
    /// @param amount tokens to add (positive).
    function addBond(uint256 amount) external nonReentrant {
        Node storage n = _nodes[msg.sender];
        if (!n.active) revert NodeRegistryNotRegistered(msg.sender);
        if (amount == 0) revert NodeRegistryNoBond(msg.sender);
        _addBond(n, amount);
    }

    /// @notice Deregister the caller; its bond unlocks after the unbonding period.
    function deregister() external {
        Node storage n = _nodes[msg.sender];
        if (!n.active) revert NodeRegistryNotRegistered(msg.sender);
        n.active = false;
        uint64 at = uint64(block.timestamp) + _unbondSeconds;
        n.unbondAt = at;
        emit NodeDeregistered(msg.sender, at);
    }

    /// @notice Withdraw the whole bond of a deregistered node after its unbonding period.
    /// @return amount tokens returned.
    function withdrawBond() external nonReentrant returns (uint256 amount) {
        Node storage n = _nodes[msg.sender];
        if (n.active) revert NodeRegistryStillActive(msg.sender);
        amount = n.bond;
        if (amount == 0) revert NodeRegistryNoBond(msg.sender);
        if (block.timestamp < n.unbondAt) revert NodeRegistryStillUnbonding(n.unbondAt);
        n.bond = 0;
        emit BondWithdrawn(msg.sender, amount);
        _token.safeTransfer(msg.sender, amount);
    }

    /// @notice Registration of `node` (all zero if it never registered).
    function getNode(address node) external view returns (NodeView memory) {
        Node storage n = _nodes[node];
        return NodeView(n.endpoint, n.baseModelIds, n.computePricePer1k, n.bond, n.unbondAt, n.active);
    }

    /// @notice Whether `node` is registered now.
    function isActive(address node) external view returns (bool) {
        return _nodes[node].active;
    }

    /// @notice The bond token and the unbonding period in seconds.
    function bondTerms() external view returns (IERC20 token, uint64 unbondSeconds) {
        return (_token, _unbondSeconds);
    }

    function _set(Node storage n, string calldata endpoint, string[] calldata models, uint256 price) private {
        _checkString(endpoint, "endpoint");
        uint256 m = models.length;
        if (m == 0 || m > MAX_BASE_MODELS) revert NodeRegistryInvalidBaseModels(m);
        delete n.baseModelIds;
        for (uint256 i; i < m; ++i) {
            _checkString(models[i], "baseModelId");
            n.baseModelIds.push(models[i]);
        }
        n.endpoint = endpoint;
        n.computePricePer1k = price;
    }

    function _addBond(Node storage n, uint256 amount) private {
        uint256 total = n.bond + amount;
        n.bond = SafeCast.toUint128(total);
        emit BondAdded(msg.sender, amount, total);
        _token.safeTransferFrom(msg.sender, address(this), amount);
    }

    function _checkString(string calldata s, string memory field) private pure {
        uint256 len = bytes(s).length;
        if (len == 0 || len > MAX_STRING) revert NodeRegistryInvalidString(field);
    }
}
