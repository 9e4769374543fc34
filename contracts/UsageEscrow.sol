// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {IAdapterRegistry, IAttributionPool, IRewardVault} from "./interfaces/IProtocol.sol";

/// @title UsageEscrow
/// @notice Payers deposit the payment token and sign cumulative EIP-712 vouchers per lane
///         (payer, node, adapter). A node redeems many vouchers per call; each pays only its
///         increase over what the lane already collected, so replays and lower totals pay nothing.
///         The compute part goes to the node; the adapter part pays the protocol fee first, then
///         splits per the adapter's registered bps between its owner (who also gets rounding dust)
///         and its datasets (their parts fill the node's AttributionPool, which pays them out by the
///         attribution of the node's committed receipts). Everything paid moves to RewardVault in one
///         transfer per call.
///         Withdrawals wait a thawing period, during which redemptions still draw on the balance.
///         The payment token must be a plain ERC20 (no fee on transfer, no rebasing): balances are
///         booked at the amounts transferred.
contract UsageEscrow is EIP712, Ownable, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice A cumulative voucher: the payer owes the node `computeValue + adapterValue` in total on this lane.
    struct Voucher {
        address payer;
        address node;
        uint256 adapterId; // 0 = the base model: adapterValue must be 0
        uint256 computeValue;
        uint256 adapterValue;
    }

    /// @notice `signatures` and `vouchers` differ in length, or both are empty.
    error UsageEscrowBadBatch(uint256 vouchers, uint256 signatures);
    /// @notice Voucher `index` names another node than the caller.
    error UsageEscrowNotVoucherNode(uint256 index, address node);
    /// @notice Voucher `index` was signed by a key the payer has not authorized.
    error UsageEscrowUnauthorizedSigner(uint256 index, address signer, address payer);
    /// @notice Voucher `index` is for the base model (adapterId 0) but carries an adapter value.
    error UsageEscrowAdapterValueForBaseModel(uint256 index);
    /// @notice Voucher `index` pays an adapter that is not registered.
    error UsageEscrowUnknownAdapter(uint256 index, uint256 adapterId);
    /// @notice Voucher `index` has a value above 2^128 - 1.
    error UsageEscrowValueTooLarge(uint256 index);
    /// @notice A zero amount or zero address was given.
    error UsageEscrowZeroAmount();
    /// @notice A zero address was given.
    error UsageEscrowZeroAddress();
    /// @notice The amount exceeds the payer's balance.
    error UsageEscrowInsufficientBalance(uint256 balance, uint256 amount);
    /// @notice The signer is already authorized for `payer`.
    error UsageEscrowSignerTaken(address signer, address payer);
    /// @notice The signer is not authorized for the caller.
    error UsageEscrowNotYourSigner(address signer);
    /// @notice Nothing is thawing for the caller.
    error UsageEscrowNothingThawing(address payer);
    /// @notice The thawing period ends at `thawEnd`.
    error UsageEscrowStillThawing(uint64 thawEnd);
    /// @notice The protocol fee exceeds MAX_PROTOCOL_FEE_BPS.
    error UsageEscrowFeeTooHigh(uint256 bps);

    /// @notice `from` deposited `amount` for `payer`.
    event Deposited(address indexed payer, address indexed from, uint256 amount);
    /// @notice `payer` authorized `signer` to sign its vouchers.
    event SignerAuthorized(address indexed payer, address indexed signer);
    /// @notice `payer` revoked `signer`.
    event SignerRevoked(address indexed payer, address indexed signer);
    /// @notice `payer` started thawing `amount`, withdrawable from `thawEnd`.
    event ThawStarted(address indexed payer, uint256 amount, uint64 thawEnd);
    /// @notice `payer` withdrew `amount`.
    event Withdrawn(address indexed payer, uint256 amount);
    /// @notice A voucher paid its lane's increase.
    event VoucherRedeemed(
        address indexed payer, address indexed node, uint256 indexed adapterId, uint256 computePaid, uint256 adapterPaid
    );
    /// @notice A voucher's increase exceeded the payer's balance; it paid nothing and the lane is unchanged.
    event VoucherUnderfunded(
        address indexed payer, address indexed node, uint256 indexed adapterId, uint256 needed, uint256 available
    );
    /// @notice The owner set the protocol fee.
    event ProtocolFeeSet(address indexed recipient, uint16 bps);

    /// @notice EIP-712 type hash of Voucher.
    bytes32 public constant VOUCHER_TYPEHASH =
        keccak256("Voucher(address payer,address node,uint256 adapterId,uint256 computeValue,uint256 adapterValue)");
    /// @notice Hard maximum of the protocol fee, in bps of the adapter part.
    uint16 public constant MAX_PROTOCOL_FEE_BPS = 1_000;
    uint256 private constant BPS = 10_000;
    /// @dev Owner and dataset credits are merged with equal entries among the last DEDUP_WINDOW
    ///      (bounded work per voucher; a duplicate left unmerged only costs a warm write).
    uint256 private constant DEDUP_WINDOW = 8;

    struct Account {
        uint128 balance; // slot 0: balance | thawEnd; the only slot a redemption touches
        uint64 thawEnd;
        uint128 thawing; // slot 1
    }

    struct Lane {
        uint128 compute; // one slot per lane: both cumulative values collected so far
        uint128 adapter;
    }

    /// @dev In-memory credits gathered over one redeem call.
    struct Credits {
        address[] to;
        uint256[] toAmounts;
        uint256 toLen;
        uint256[] dsIds;
        uint256[] dsAmounts;
        uint256 dsLen;
        uint256 fee;
        uint256 feeBps;
    }

    IERC20 private immutable _token;
    IAdapterRegistry private immutable _adapters;
    IAttributionPool private immutable _pool;
    IRewardVault private immutable _vault;
    uint64 private immutable _thawSeconds;

    address private _feeRecipient; // one slot: recipient | bps
    uint16 private _feeBps;
    mapping(address payer => Account) private _accounts;
    mapping(address signer => address payer) private _signerPayer;
    mapping(bytes32 laneKey => Lane) private _lanes;

    /// @param token_ the payment token.
    /// @param adapters_ AdapterRegistry (splits).
    /// @param pool_ AttributionPool (receives the dataset parts, per node).
    /// @param vault_ RewardVault (receives every payment).
    /// @param thawSeconds_ how long a withdrawal thaws.
    /// @param feeBps_ initial protocol fee in bps (<= MAX_PROTOCOL_FEE_BPS).
    /// @param owner_ owner (sets the fee) and initial fee recipient.
    constructor(
        IERC20 token_,
        IAdapterRegistry adapters_,
        IAttributionPool pool_,
        IRewardVault vault_,
        uint64 thawSeconds_,
        uint16 feeBps_,
        address owner_
    ) EIP712("LoRA Node", "1") Ownable(owner_) {
        if (
            address(token_) == address(0) || address(adapters_) == address(0) || address(pool_) == address(0)
                || address(vault_) == address(0)
        ) revert UsageEscrowZeroAddress();
        if (feeBps_ > MAX_PROTOCOL_FEE_BPS) revert UsageEscrowFeeTooHigh(feeBps_);
        _token = token_;
        _adapters = adapters_;
        _pool = pool_;
        _vault = vault_;
        _thawSeconds = thawSeconds_;
        _feeRecipient = owner_;
        _feeBps = feeBps_;
    }

    // ---------------------------------------------------------------- payers

    /// @notice Deposit `amount` for the caller (needs an allowance).
    /// @param amount tokens to deposit (positive).
    function deposit(uint256 amount) external nonReentrant {
        _deposit(msg.sender, amount);
    }

    /// @notice Deposit `amount` for `payer`, paid by the caller (needs an allowance).
    /// @param payer the account credited.
    /// @param amount tokens to deposit (positive).
    function depositFor(address payer, uint256 amount) external nonReentrant {
        if (payer == address(0)) revert UsageEscrowZeroAddress();
        _deposit(payer, amount);
    }

    /// @notice Let `signer` sign vouchers on the caller's behalf (the payer's own key always may).
    /// @param signer a key not yet authorized for any payer.
    function authorizeSigner(address signer) external {
        if (signer == address(0)) revert UsageEscrowZeroAddress();
        address current = _signerPayer[signer];
        if (current != address(0)) revert UsageEscrowSignerTaken(signer, current);
        _signerPayer[signer] = msg.sender;
        emit SignerAuthorized(msg.sender, signer);
    }

    /// @notice Revoke `signer`; vouchers it signed no longer redeem.
    /// @param signer a key authorized for the caller.
    function revokeSigner(address signer) external {
        if (_signerPayer[signer] != msg.sender) revert UsageEscrowNotYourSigner(signer);
        delete _signerPayer[signer];
        emit SignerRevoked(msg.sender, signer);
    }

    /// @notice Start thawing `amount` of the caller's balance (replaces any thaw in progress and restarts the clock).
    /// @param amount tokens to thaw (1..balance).
    function startThaw(uint256 amount) external {
        Account storage a = _accounts[msg.sender];
        if (amount == 0) revert UsageEscrowZeroAmount();
        if (amount > a.balance) revert UsageEscrowInsufficientBalance(a.balance, amount);
        uint64 end = uint64(block.timestamp) + _thawSeconds;
        a.thawing = uint128(amount); // <= balance < 2^128
        a.thawEnd = end;
        emit ThawStarted(msg.sender, amount, end);
    }

    /// @notice Withdraw what thawed (capped by the balance left after redemptions during the thaw).
    /// @return amount tokens sent to the caller.
    function withdraw() external nonReentrant returns (uint256 amount) {
        Account storage a = _accounts[msg.sender];
        uint256 thawing = a.thawing;
        if (thawing == 0) revert UsageEscrowNothingThawing(msg.sender);
        if (block.timestamp < a.thawEnd) revert UsageEscrowStillThawing(a.thawEnd);
        uint256 balance = a.balance;
        amount = thawing < balance ? thawing : balance;
        a.balance = uint128(balance - amount);
        a.thawing = 0;
        a.thawEnd = 0;
        emit Withdrawn(msg.sender, amount);
        if (amount != 0) _token.safeTransfer(msg.sender, amount);
    }

    // ---------------------------------------------------------------- nodes

    /// @notice Redeem vouchers naming the caller as node. Each pays its lane's increase; replays and
    ///         lower totals pay nothing; an underfunded voucher pays nothing and emits VoucherUnderfunded.
    /// @param vouchers cumulative vouchers, any lanes, any order.
    /// @param signatures 65-byte ECDSA signatures of `hashVoucher(vouchers[i])` by the payer or its signer.
    /// @return total tokens moved from payers' balances to RewardVault.
    function redeem(Voucher[] calldata vouchers, bytes[] calldata signatures)
        external
        nonReentrant
        returns (uint256 total)
    {
        uint256 n = vouchers.length;
        if (n == 0 || n != signatures.length) revert UsageEscrowBadBatch(n, signatures.length);
        Credits memory c;
        c.to = new address[](n + 2);
        c.toAmounts = new uint256[](n + 2);
        c.dsIds = new uint256[](16);
        c.dsAmounts = new uint256[](16);
        c.feeBps = _feeBps;
        uint256 computeTotal;
        for (uint256 i; i < n; ++i) {
            (uint256 dc, uint256 da) = _redeemOne(vouchers[i], signatures[i], i);
            if (da != 0) _splitAdapter(c, vouchers[i].adapterId, da, i);
            computeTotal += dc;
            total += dc + da;
        }
        if (total == 0) return 0;
        _addTo(c, msg.sender, computeTotal);
        _addTo(c, _feeRecipient, c.fee);
        // One transfer for the whole call, then bookkeeping in the vault and the dataset accumulators.
        _token.safeTransfer(address(_vault), total);
        address[] memory to = c.to;
        uint256[] memory toAmounts = c.toAmounts;
        uint256[] memory dsIds = c.dsIds;
        uint256[] memory dsAmounts = c.dsAmounts;
        (uint256 toLen, uint256 dsLen) = (c.toLen, c.dsLen);
        assembly ("memory-safe") {
            // shrink the arrays to the entries used (lengths only ever decrease here)
            mstore(to, toLen)
            mstore(toAmounts, toLen)
            mstore(dsIds, dsLen)
            mstore(dsAmounts, dsLen)
        }
        _vault.credit(to, toAmounts);
        if (dsLen != 0) _pool.fill(msg.sender, dsIds, dsAmounts);
    }

    // ---------------------------------------------------------------- owner

    /// @notice Set the protocol fee (bps of the adapter part) and its recipient.
    /// @param recipient credited with the fee in RewardVault (non-zero).
    /// @param bps fee in bps, at most MAX_PROTOCOL_FEE_BPS.
    function setProtocolFee(address recipient, uint16 bps) external onlyOwner {
        if (recipient == address(0)) revert UsageEscrowZeroAddress();
        if (bps > MAX_PROTOCOL_FEE_BPS) revert UsageEscrowFeeTooHigh(bps);
        _feeRecipient = recipient;
        _feeBps = bps;
        emit ProtocolFeeSet(recipient, bps);
    }

    // ---------------------------------------------------------------- views

    /// @notice EIP-712 digest of `v` under this contract's domain (what the payer signs).
    function hashVoucher(Voucher calldata v) external view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(VOUCHER_TYPEHASH, v)));
    }

    /// @notice Cumulative values lane (payer, node, adapterId) has collected.
    function collected(address payer, address node, uint256 adapterId)
        external
        view
        returns (uint256 compute, uint256 adapter)
    {
        Lane storage l = _lanes[_laneKey(payer, node, adapterId)];
        return (l.compute, l.adapter);
    }

    /// @notice Escrow account of `payer`: balance (thawing included), amount thawing, thaw end.
    function accountOf(address payer) external view returns (uint256 balance, uint256 thawing, uint64 thawEnd) {
        Account storage a = _accounts[payer];
        return (a.balance, a.thawing, a.thawEnd);
    }

    /// @notice The payer `signer` signs for (zero if none).
    function payerOfSigner(address signer) external view returns (address) {
        return _signerPayer[signer];
    }

    /// @notice Protocol fee recipient and bps.
    function protocolFee() external view returns (address recipient, uint16 bps) {
        return (_feeRecipient, _feeBps);
    }

    /// @notice Thawing period in seconds.
    function thawSeconds() external view returns (uint64) {
        return _thawSeconds;
    }

    /// @notice Contracts fixed at deployment.
    function peers() external view returns (IERC20 token, IAdapterRegistry adapters, IAttributionPool pool, IRewardVault vault) {
        return (_token, _adapters, _pool, _vault);
    }

    // ---------------------------------------------------------------- internal

    function _deposit(address payer, uint256 amount) private {
        if (amount == 0) revert UsageEscrowZeroAmount();
        Account storage a = _accounts[payer];
        uint256 balance = a.balance + amount;
        if (balance > type(uint128).max) revert UsageEscrowValueTooLarge(0);
        a.balance = uint128(balance);
        emit Deposited(payer, msg.sender, amount);
        _token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @dev Verify one voucher, advance its lane and debit the payer. Returns the increases paid.
    function _redeemOne(Voucher calldata v, bytes calldata sig, uint256 i) private returns (uint256 dc, uint256 da) {
        if (v.node != msg.sender) revert UsageEscrowNotVoucherNode(i, v.node);
        if (v.adapterId == 0 && v.adapterValue != 0) revert UsageEscrowAdapterValueForBaseModel(i);
        if ((v.computeValue | v.adapterValue) > type(uint128).max) revert UsageEscrowValueTooLarge(i);
        address payer = v.payer;
        address signer = ECDSA.recoverCalldata(_hashTypedDataV4(keccak256(abi.encode(VOUCHER_TYPEHASH, v))), sig);
        // recover never returns zero, so a zero payer only passes through an unset _signerPayer entry: refuse it
        if (signer != payer && (_signerPayer[signer] != payer || payer == address(0))) {
            revert UsageEscrowUnauthorizedSigner(i, signer, payer);
        }

        Lane storage lane = _lanes[_laneKey(payer, msg.sender, v.adapterId)];
        (uint256 cOld, uint256 aOld) = (lane.compute, lane.adapter);
        uint256 cNew = v.computeValue;
        uint256 aNew = v.adapterValue;
        unchecked {
            // each subtraction only runs when the minuend is larger
            dc = cNew > cOld ? cNew - cOld : 0;
            da = aNew > aOld ? aNew - aOld : 0;
        }
        if (dc == 0 && da == 0) return (0, 0); // replay or lower total: nothing to pay
        Account storage acct = _accounts[payer];
        uint256 balance = acct.balance;
        uint256 need = dc + da; // both < 2^128
        if (need > balance) {
            emit VoucherUnderfunded(payer, msg.sender, v.adapterId, need, balance);
            return (0, 0);
        }
        unchecked {
            acct.balance = uint128(balance - need); // need <= balance
        }
        lane.compute = uint128(dc != 0 ? cNew : cOld); // values < 2^128, checked above
        lane.adapter = uint128(da != 0 ? aNew : aOld);
        emit VoucherRedeemed(payer, msg.sender, v.adapterId, dc, da);
    }

    /// @dev Protocol fee first, then dataset shares by bps of the rest; the owner gets the remainder.
    function _splitAdapter(Credits memory c, uint256 adapterId, uint256 amount, uint256 i) private view {
        (address owner, uint256 count, uint256 p0, uint256 p1) = _adapters.payoutOf(adapterId);
        if (owner == address(0)) revert UsageEscrowUnknownAdapter(i, adapterId);
        uint256 fee = amount * c.feeBps / BPS;
        uint256 rest = amount - fee;
        uint256 given = 0;
        for (uint256 j; j < count; ++j) {
            uint256 entry = (j < 5 ? p0 : p1) >> (48 * (j % 5));
            uint256 share = rest * uint16(entry) / BPS;
            if (share != 0) {
                _addDataset(c, uint32(entry >> 16), share);
                given += share;
            }
        }
        c.fee += fee;
        _addTo(c, owner, rest - given); // sum of shares <= rest: bps sum to <= 10,000
    }

    function _addTo(Credits memory c, address who, uint256 amount) private pure {
        if (amount == 0) return;
        uint256 len = c.toLen;
        uint256 stop = len > DEDUP_WINDOW ? len - DEDUP_WINDOW : 0;
        for (uint256 k = len; k > stop;) {
            unchecked {
                --k; // k > stop >= 0
            }
            if (c.to[k] == who) {
                c.toAmounts[k] += amount;
                return;
            }
        }
        // capacity n + 2: each voucher adds at most one owner, plus the node and the fee recipient
        c.to[len] = who;
        c.toAmounts[len] = amount;
        c.toLen = len + 1;
    }

    function _addDataset(Credits memory c, uint256 datasetId, uint256 amount) private pure {
        uint256 len = c.dsLen;
        uint256 stop = len > DEDUP_WINDOW ? len - DEDUP_WINDOW : 0;
        for (uint256 k = len; k > stop;) {
            unchecked {
                --k; // k > stop >= 0
            }
            if (c.dsIds[k] == datasetId) {
                c.dsAmounts[k] += amount;
                return;
            }
        }
        if (len == c.dsIds.length) {
            // grow by doubling: copy into fresh arrays
            uint256[] memory ids = new uint256[](len * 2);
            uint256[] memory amounts = new uint256[](len * 2);
            for (uint256 k; k < len; ++k) {
                ids[k] = c.dsIds[k];
                amounts[k] = c.dsAmounts[k];
            }
            c.dsIds = ids;
            c.dsAmounts = amounts;
        }
        c.dsIds[len] = datasetId;
        c.dsAmounts[len] = amount;
        c.dsLen = len + 1;
    }

    function _laneKey(address payer, address node, uint256 adapterId) private pure returns (bytes32) {
        return keccak256(abi.encode(payer, node, adapterId));
    }
}
