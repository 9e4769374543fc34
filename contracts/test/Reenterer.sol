// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ITokenHook} from "./HookToken.sol";

/// @notice Test-only attacker: a contract account that can call anything (`exec`) and, when
///         HookToken pays it, tries once to re-enter `target` with `reentryData`. It records the
///         outcome instead of reverting, so a test sees whether the re-entry was stopped.
contract Reenterer is ITokenHook {
    address public target;
    bytes public reentryData;
    bool public attempted;
    bool public reentrySucceeded;
    bytes public reentryError;
    uint256 public received;

    /// @notice Set what to re-enter on the next payment.
    function arm(address target_, bytes calldata data) external {
        target = target_;
        reentryData = data;
        attempted = false;
    }

    /// @notice Call `to` with `data` as this contract; bubbles reverts.
    function exec(address to, bytes calldata data) external returns (bytes memory ret) {
        bool ok;
        (ok, ret) = to.call(data);
        if (!ok) {
            assembly {
                revert(add(ret, 32), mload(ret))
            }
        }
    }

    /// @inheritdoc ITokenHook
    function onTokenTransfer(address, uint256 amount) external {
        received += amount;
        if (target == address(0) || attempted) return;
        attempted = true;
        (bool ok, bytes memory ret) = target.call(reentryData);
        reentrySucceeded = ok;
        reentryError = ret;
    }
}
