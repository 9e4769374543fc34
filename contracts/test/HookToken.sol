// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @notice Test-only hostile payment token: after every transfer to a hooked address it calls
///         `onTokenTransfer` there (like ERC-777 hooks), giving the recipient a chance to re-enter
///         the contract that is paying it.
contract HookToken is ERC20 {
    mapping(address => bool) private _hooked;

    constructor() ERC20("Hook Token", "HOOK") {}

    /// @notice Anyone mints (test token).
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /// @notice Make transfers to `who` call its `onTokenTransfer` hook.
    function setHooked(address who, bool on) external {
        _hooked[who] = on;
    }

    function _update(address from, address to, uint256 value) internal override {
        super._update(from, to, value);
        if (_hooked[to]) ITokenHook(to).onTokenTransfer(from, value);
    }
}

/// @notice The hook HookToken calls on hooked recipients.
interface ITokenHook {
    /// @notice Called after `amount` tokens arrived from `from`.
    function onTokenTransfer(address from, uint256 amount) external;
}
