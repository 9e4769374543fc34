// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {IRewardVault} from "./interfaces/IProtocol.sol";

/// @title RewardVault
/// @notice Holds every reward in the payment token and lets each address pull what it was credited.
///         Only two creditors exist, fixed at deployment: UsageEscrow (node, owner and fee shares)
///         and DatasetRegistry (contributor shares from its accumulator, curator fallbacks).
///         Creditors send tokens in first, then credit; the vault never pushes tokens.
contract RewardVault is IRewardVault, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice The caller is neither UsageEscrow nor DatasetRegistry.
    error RewardVaultNotCreditor(address caller);
    /// @notice `to` and `amounts` differ in length.
    error RewardVaultLengthMismatch(uint256 recipients, uint256 amounts);
    /// @notice The caller has nothing to claim.
    error RewardVaultNothingToClaim(address account);
    /// @notice A constructor address is zero.
    error RewardVaultZeroAddress();

    /// @notice `amount` was added to `account`'s claimable balance by `creditor`.
    event Credited(address indexed account, address indexed creditor, uint256 amount);
    /// @notice `account` pulled `amount` tokens.
    event Claimed(address indexed account, uint256 amount);

    IERC20 private immutable _token;
    address private immutable _escrow;
    address private immutable _datasets;

    mapping(address account => uint256) private _claimable;
    uint256 private _totalClaimable;

    /// @param token_ the payment token.
    /// @param escrow_ UsageEscrow (may be a predicted CREATE address).
    /// @param datasets_ DatasetRegistry (may be a predicted CREATE address).
    constructor(IERC20 token_, address escrow_, address datasets_) {
        if (address(token_) == address(0) || escrow_ == address(0) || datasets_ == address(0)) {
            revert RewardVaultZeroAddress();
        }
        _token = token_;
        _escrow = escrow_;
        _datasets = datasets_;
    }

    /// @inheritdoc IRewardVault
    function credit(address[] calldata to, uint256[] calldata amounts) external {
        if (msg.sender != _escrow && msg.sender != _datasets) revert RewardVaultNotCreditor(msg.sender);
        uint256 n = to.length;
        if (n != amounts.length) revert RewardVaultLengthMismatch(n, amounts.length);
        uint256 sum = 0;
        for (uint256 i; i < n; ++i) {
            uint256 amount = amounts[i];
            if (amount == 0) continue;
            _claimable[to[i]] += amount;
            sum += amount;
            emit Credited(to[i], msg.sender, amount);
        }
        _totalClaimable += sum;
    }

    /// @notice Transfer the caller's whole claimable balance to the caller.
    /// @return amount tokens transferred.
    function claim() external nonReentrant returns (uint256 amount) {
        amount = _claimable[msg.sender];
        if (amount == 0) revert RewardVaultNothingToClaim(msg.sender);
        // Effects before the interaction (CEI); the guard also blocks re-entry through the token.
        _claimable[msg.sender] = 0;
        _totalClaimable -= amount;
        emit Claimed(msg.sender, amount);
        _token.safeTransfer(msg.sender, amount);
    }

    /// @notice Tokens `account` can claim now.
    function claimable(address account) external view returns (uint256) {
        return _claimable[account];
    }

    /// @notice Sum of all claimable balances (the vault holds at least this plus undistributed dataset rewards).
    function totalClaimable() external view returns (uint256) {
        return _totalClaimable;
    }

    /// @notice The payment token.
    function token() external view returns (IERC20) {
        return _token;
    }

    /// @notice The two creditors fixed at deployment.
    function creditors() external view returns (address escrow, address datasets) {
        return (_escrow, _datasets);
    }
}
