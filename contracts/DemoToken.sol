// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title DemoToken
/// @notice The payment asset deployed on development chains only. Real deployments pass an
///         existing ERC20 (e.g. a stablecoin) to the protocol contracts instead.
contract DemoToken is ERC20, ERC20Permit, Ownable {
    /// @param initialOwner receives minting rights.
    constructor(address initialOwner) ERC20("LoRA Node Demo Token", "LND") ERC20Permit("LoRA Node Demo Token") Ownable(initialOwner) {}

    /// @notice Mint `amount` tokens to `to`. Only the owner (the dev-chain deployer) may mint.
    /// @param to recipient.
    /// @param amount amount in the token's smallest unit (18 decimals).
    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }
}
