// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {IAdapterRegistry, IAttributionPool, INodeRegistry, IRewardVault} from "./interfaces/IProtocol.sol";

/// @title UsageEscrow
/// @notice Payers deposit the payment token for one node: an account per (payer, node), as in TAP's
///         escrow. Only that node can redeem it, and only while NodeRegistry says it is staked; moving
///         funds away goes through a thaw. Payers sign cumulative EIP-712 vouchers per lane
///         (payer, node, adapter). A node redeems many vouchers per call; each pays its lane's increase
///         over what the lane already collected (both components must be at least what was collected,
///         so replays, lower totals and component swaps pay nothing), capped by the account balance
///         (min(increase, available), like TAP's collectors). A bad voucher is skipped with
///         VoucherSkipped and never reverts the others.
///         Reward routing: the compute part goes to the node; the adapter part pays the protocol fee
///         first, then splits per the adapter's registered bps between its owner (who also gets rounding
///         dust) and its datasets (their parts fill the node's AttributionPool, which pays them out by the
///         attribution of the node's committed receipts). Everything paid moves to RewardVault in
///         one transfer per call, credited per recipient with RewardVault.credit.
///         The payment token must be a plain ERC20 (no fee on transfer, no rebasing): balances are
///         booked at the amounts transferred.
contract UsageEscrow is EIP712, Ownable2Step, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice A cumulative voucher: the payer owes the node `computeValue + adapterValue` in total on this lane.
    struct Voucher {
        address payer;
        address node;
        uint256 adapterId; // 0 = the base model: adapterValue must be 0
        uint256 computeValue;
        uint256 adapterValue;
    }

    /// @notice Why a voucher in a batch paid nothing.
    enum SkipReason {
        WrongNode, // names another node than the caller
        BadValue, // a value >= 2^128, an adapter value on the base model, or a zero payer
        BadSignature, // the signature does not recover
        UnauthorizedSigner, // the signer is not (or no longer) authorized by the payer
        Stale, // a component is below what the lane already collected
        UnknownAdapter // the adapter is not registered
    }

    /// @notice `signatures` and `vouchers` differ in length, or both are empty.
    error UsageEscrowBadBatch(uint256 vouchers, uint256 signatures);
    /// @notice The caller is not a node with at least NodeRegistry's minimum bond.
    error UsageEscrowNodeNotStaked(address node);
    /// @notice A balance would exceed 2^128 - 1.
    error UsageEscrowValueTooLarge(uint256 index);
    /// @notice A zero amount was given.
    error UsageEscrowZeroAmount();
    /// @notice A zero address was given.
    error UsageEscrowZeroAddress();
    /// @notice The amount exceeds the account's balance.
    error UsageEscrowInsufficientBalance(uint256 balance, uint256 amount);
    /// @notice The signer is already authorized for `payer` (or still thawing out of it).
    error UsageEscrowSignerTaken(address signer, address payer);
    /// @notice The signer proof is expired or was not signed by the signer key.
    error UsageEscrowBadSignerProof(address signer);
    /// @notice The signer is not authorized for the caller, or its revocation already started.
    error UsageEscrowNotYourSigner(address signer);
    /// @notice Nothing is thawing on the caller's account with `node`.
    error UsageEscrowNothingThawing(address payer, address node);
    /// @notice The thawing period ends at `thawEnd`.
    error UsageEscrowStillThawing(uint64 thawEnd);
    /// @notice The protocol fee exceeds MAX_PROTOCOL_FEE_BPS.
    error UsageEscrowFeeTooHigh(uint256 bps);
    /// @notice No fee change is pending, or it takes effect at `effectiveAt`.
    error UsageEscrowFeeNotReady(uint64 effectiveAt);

    /// @notice `from` deposited `amount` for `payer`, earmarked for `node`.
    event Deposited(address indexed payer, address indexed node, address indexed from, uint256 amount);
    /// @notice `payer` authorized `signer` to sign its vouchers.
    event SignerAuthorized(address indexed payer, address indexed signer);
    /// @notice `payer` revoked `signer`; vouchers it signed stay redeemable until `revokeAt`.
    event SignerRevoked(address indexed payer, address indexed signer, uint64 revokeAt);
    /// @notice `payer` started thawing `amount` of its account with `node`, withdrawable from `thawEnd`.
    event ThawStarted(address indexed payer, address indexed node, uint256 amount, uint64 thawEnd);
    /// @notice `payer` withdrew `amount` from its account with `node`.
    event Withdrawn(address indexed payer, address indexed node, uint256 amount);
    /// @notice A voucher paid its lane's increase (or what the account had, see VoucherUnderfunded).
    event VoucherRedeemed(
        address indexed payer, address indexed node, uint256 indexed adapterId, uint256 computePaid, uint256 adapterPaid
    );
    /// @notice A voucher's increase exceeded the account's balance: it paid `available`, the rest stays owed.
    event VoucherUnderfunded(
        address indexed payer, address indexed node, uint256 indexed adapterId, uint256 needed, uint256 available
    );
    /// @notice Voucher `index` of the batch paid nothing, for `reason`.
    event VoucherSkipped(uint256 indexed index, address indexed payer, SkipReason reason);
    /// @notice The owner proposed a protocol fee, applicable from `effectiveAt`.
    event ProtocolFeeProposed(address indexed recipient, uint16 bps, uint64 effectiveAt);
    /// @notice The protocol fee in force changed.
    event ProtocolFeeSet(address indexed recipient, uint16 bps);

    /// @notice EIP-712 type hash of Voucher.
    bytes32 public constant VOUCHER_TYPEHASH =
        keccak256("Voucher(address payer,address node,uint256 adapterId,uint256 computeValue,uint256 adapterValue)");
    /// @notice EIP-712 type hash of the signer's consent (the domain binds chain id and this escrow;
    ///         `nonce` is the key's count of authorizations so far, so one consent authorizes once).
    bytes32 public constant SIGNER_PROOF_TYPEHASH =
        keccak256("SignerProof(address payer,uint256 deadline,uint256 nonce)");
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

    struct Signer {
        address payer; // one slot: payer | end of the revocation thaw (0 = not revoked) | authorizations
        uint64 revokeAt;
        uint32 nonce; // authorizations so far: the next proof must name it
    }

    struct FeeChange {
        address recipient; // one slot: recipient | bps | effectiveAt (0 = none pending)
        uint16 bps;
        uint64 effectiveAt;
    }

    /// @dev An adapter's payout split, as AdapterRegistry.payoutOf returns it.
    struct Payout {
        address owner;
        uint256 count;
        uint256 packed0;
        uint256 packed1;
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
    INodeRegistry private immutable _nodes;
    uint64 private immutable _thawSeconds;

    address private _feeRecipient; // one slot: recipient | bps
    uint16 private _feeBps;
    FeeChange private _pendingFee;
    mapping(address payer => mapping(address node => Account)) private _accounts;
    mapping(address signer => Signer) private _signers;
    mapping(bytes32 laneKey => Lane) private _lanes;

    /// @param token_ the payment token.
    /// @param adapters_ AdapterRegistry (splits).
    /// @param pool_ AttributionPool (receives the dataset parts, per node).
    /// @param vault_ RewardVault (receives every payment).
    /// @param nodes_ NodeRegistry (only staked nodes redeem).
    /// @param thawSeconds_ how long a withdrawal, a signer revocation and a fee change wait.
    /// @param feeBps_ initial protocol fee in bps (<= MAX_PROTOCOL_FEE_BPS).
    /// @param owner_ owner (proposes fee changes) and initial fee recipient.
    constructor(
        IERC20 token_,
        IAdapterRegistry adapters_,
        IAttributionPool pool_,
        IRewardVault vault_,
        INodeRegistry nodes_,
        uint64 thawSeconds_,
        uint16 feeBps_,
        address owner_
    ) EIP712("LoRA Node", "1") Ownable(owner_) {
        if (
            address(token_) == address(0) || address(adapters_) == address(0) || address(pool_) == address(0)
                || address(vault_) == address(0) || address(nodes_) == address(0)
        ) revert UsageEscrowZeroAddress();
        if (feeBps_ > MAX_PROTOCOL_FEE_BPS) revert UsageEscrowFeeTooHigh(feeBps_);
        _token = token_;
        _adapters = adapters_;
        _pool = pool_;
        _vault = vault_;
        _nodes = nodes_;
        _thawSeconds = thawSeconds_;
        _feeRecipient = owner_;
        _feeBps = feeBps_;
    }

    // ---------------------------------------------------------------- payers

    /// @notice Deposit `amount` for the caller, earmarked for `node` (needs an allowance).
    /// @param node the only node that can redeem these funds.
    /// @param amount tokens to deposit (positive).
    function deposit(address node, uint256 amount) external nonReentrant {
        _deposit(msg.sender, node, amount);
    }

    /// @notice Deposit `amount` for `payer`, earmarked for `node`, paid by the caller (needs an allowance).
    /// @param payer the account credited.
    /// @param node the only node that can redeem these funds.
    /// @param amount tokens to deposit (positive).
    function depositFor(address payer, address node, uint256 amount) external nonReentrant {
        if (payer == address(0)) revert UsageEscrowZeroAddress();
        _deposit(payer, node, amount);
    }

    /// @notice Let `signer` sign vouchers on the caller's behalf (the payer's own key always may).
    /// @param signer a key not authorized for any payer (or whose revocation thaw has ended).
    /// @param deadline last timestamp at which `proof` is accepted.
    /// @param proof the signer key's EIP-712 signature of SignerProof(caller, deadline, nonce) under this
    ///        contract's domain, `nonce` being the key's authorizations so far (signerOf): nobody can
    ///        claim a key it does not hold, nor re-authorize a revoked key with its spent consent.
    function authorizeSigner(address signer, uint256 deadline, bytes calldata proof) external {
        if (signer == address(0)) revert UsageEscrowZeroAddress();
        Signer storage s = _signers[signer];
        if (s.payer != address(0) && (s.revokeAt == 0 || block.timestamp < s.revokeAt)) {
            revert UsageEscrowSignerTaken(signer, s.payer);
        }
        if (block.timestamp > deadline) revert UsageEscrowBadSignerProof(signer);
        uint32 nonce = s.nonce;
        bytes32 digest = _hashTypedDataV4(keccak256(abi.encode(SIGNER_PROOF_TYPEHASH, msg.sender, deadline, nonce)));
        (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecoverCalldata(digest, proof);
        if (err != ECDSA.RecoverError.NoError || recovered != signer) revert UsageEscrowBadSignerProof(signer);
        s.payer = msg.sender;
        s.revokeAt = 0;
        s.nonce = nonce + 1; // checked: 2^32 authorizations of one key cannot happen
        emit SignerAuthorized(msg.sender, signer);
    }

    /// @notice Start revoking `signer`: vouchers it signed stay redeemable for the thawing period,
    ///         so a node that served on them can still collect; afterwards they pay nothing.
    /// @param signer a key authorized for the caller and not being revoked.
    function revokeSigner(address signer) external {
        Signer storage s = _signers[signer];
        if (s.payer != msg.sender || s.revokeAt != 0) revert UsageEscrowNotYourSigner(signer);
        uint64 at = uint64(block.timestamp) + _thawSeconds;
        s.revokeAt = at;
        emit SignerRevoked(msg.sender, signer, at);
    }

    /// @notice Start thawing `amount` of the caller's account with `node` (replaces any thaw in progress and
    ///         restarts the clock). The node can still redeem from it until the withdrawal.
    /// @param node the node the account is earmarked for.
    /// @param amount tokens to thaw (1..balance).
    function startThaw(address node, uint256 amount) external {
        Account storage a = _accounts[msg.sender][node];
        if (amount == 0) revert UsageEscrowZeroAmount();
        if (amount > a.balance) revert UsageEscrowInsufficientBalance(a.balance, amount);
        uint64 end = uint64(block.timestamp) + _thawSeconds;
        a.thawing = uint128(amount); // <= balance < 2^128
        a.thawEnd = end;
        emit ThawStarted(msg.sender, node, amount, end);
    }

    /// @notice Withdraw what thawed (capped by the balance left after redemptions during the thaw).
    /// @param node the node the account is earmarked for.
    /// @return amount tokens sent to the caller.
    function withdraw(address node) external nonReentrant returns (uint256 amount) {
        Account storage a = _accounts[msg.sender][node];
        uint256 thawing = a.thawing;
        if (thawing == 0) revert UsageEscrowNothingThawing(msg.sender, node);
        if (block.timestamp < a.thawEnd) revert UsageEscrowStillThawing(a.thawEnd);
        uint256 balance = a.balance;
        amount = thawing < balance ? thawing : balance;
        a.balance = uint128(balance - amount);
        a.thawing = 0;
        a.thawEnd = 0;
        emit Withdrawn(msg.sender, node, amount);
        if (amount != 0) _token.safeTransfer(msg.sender, amount);
    }

    // ---------------------------------------------------------------- nodes

    /// @notice Redeem vouchers naming the caller as node, from the payers' accounts earmarked for it.
    ///         Each pays min(its lane's increase, the account's balance); replays pay nothing; a bad
    ///         voucher pays nothing and emits VoucherSkipped. Only a staked node may call.
    /// @param vouchers cumulative vouchers, any lanes, any order.
    /// @param signatures 65-byte ECDSA signatures of `hashVoucher(vouchers[i])` by the payer or its signer.
    /// @return total tokens moved from payers' accounts to RewardVault.
    function redeem(Voucher[] calldata vouchers, bytes[] calldata signatures)
        external
        nonReentrant
        returns (uint256 total)
    {
        Credits memory c;
        (total, c) = _redeem(vouchers, signatures);
        if (c.dsLen != 0) _pool.fill(msg.sender, c.dsIds, c.dsAmounts);
    }

    /// @notice `redeem`, then settle the caller's committed batch `seq` in AttributionPool with
    ///         `entries`, in one transaction: the dataset parts these vouchers pay are drained with
    ///         the pools they would have filled (AttributionPool.fillAndSettle), which saves booking
    ///         them in storage and a second transaction. Same rules as `redeem` and `settle`; if the
    ///         settle is refused, nothing is redeemed either.
    /// @param seq the batch to settle (AttributionPool.settledSeq(caller) + 1).
    /// @param entries its packed weights, as for AttributionPool.settle.
    function redeemAndSettle(
        Voucher[] calldata vouchers,
        bytes[] calldata signatures,
        uint64 seq,
        uint256[] calldata entries
    ) external nonReentrant returns (uint256 total) {
        Credits memory c;
        (total, c) = _redeem(vouchers, signatures);
        _pool.fillAndSettle(msg.sender, c.dsIds, c.dsAmounts, seq, entries);
    }

    // ---------------------------------------------------------------- owner

    /// @notice Propose a protocol fee (bps of the adapter part) and its recipient. It applies only after
    ///         the thawing period (applyProtocolFee), so vouchers signed under the old fee can be redeemed
    ///         under it. A new proposal replaces a pending one.
    /// @param recipient credited with the fee in RewardVault (non-zero).
    /// @param bps fee in bps, at most MAX_PROTOCOL_FEE_BPS.
    function proposeProtocolFee(address recipient, uint16 bps) external onlyOwner {
        if (recipient == address(0)) revert UsageEscrowZeroAddress();
        if (bps > MAX_PROTOCOL_FEE_BPS) revert UsageEscrowFeeTooHigh(bps);
        uint64 at = uint64(block.timestamp) + _thawSeconds;
        _pendingFee = FeeChange(recipient, bps, at);
        emit ProtocolFeeProposed(recipient, bps, at);
    }

    /// @notice Put the proposed protocol fee in force once its delay has passed (anyone may call).
    function applyProtocolFee() external {
        FeeChange memory f = _pendingFee;
        if (f.effectiveAt == 0 || block.timestamp < f.effectiveAt) revert UsageEscrowFeeNotReady(f.effectiveAt);
        delete _pendingFee;
        _feeRecipient = f.recipient;
        _feeBps = f.bps;
        emit ProtocolFeeSet(f.recipient, f.bps);
    }

    // ---------------------------------------------------------------- views

    /// @notice EIP-712 digest of `v` under this contract's domain (what the payer signs).
    function hashVoucher(Voucher calldata v) external view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(VOUCHER_TYPEHASH, v)));
    }

    /// @notice EIP-712 digest a signer key signs to consent to sign for `payer` until `deadline`, for its
    ///         authorization number `nonce` (signerOf's nonce when it is authorized).
    function hashSignerProof(address payer, uint256 deadline, uint256 nonce) external view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(SIGNER_PROOF_TYPEHASH, payer, deadline, nonce)));
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

    /// @notice Account of `payer` earmarked for `node`: balance (thawing included), amount thawing, thaw end.
    function accountOf(address payer, address node)
        external
        view
        returns (uint256 balance, uint256 thawing, uint64 thawEnd)
    {
        Account storage a = _accounts[payer][node];
        return (a.balance, a.thawing, a.thawEnd);
    }

    /// @notice The payer `signer` signs for (zero if none), the end of its revocation thaw (0 if not
    ///         revoked) and its authorizations so far (the nonce its next SignerProof must name).
    function signerOf(address signer) external view returns (address payer, uint64 revokeAt, uint32 nonce) {
        Signer storage s = _signers[signer];
        return (s.payer, s.revokeAt, s.nonce);
    }

    /// @notice Whether vouchers of `payer` signed by `signer` redeem now.
    function isAuthorized(address payer, address signer) external view returns (bool) {
        return _authorized(payer, signer);
    }

    /// @notice Protocol fee recipient and bps in force.
    function protocolFee() external view returns (address recipient, uint16 bps) {
        return (_feeRecipient, _feeBps);
    }

    /// @notice The proposed protocol fee and when it may apply (effectiveAt 0: none pending).
    function pendingProtocolFee() external view returns (address recipient, uint16 bps, uint64 effectiveAt) {
        FeeChange memory f = _pendingFee;
        return (f.recipient, f.bps, f.effectiveAt);
    }

    /// @notice Thawing period in seconds.
    function thawSeconds() external view returns (uint64) {
        return _thawSeconds;
    }

    /// @notice Contracts fixed at deployment.
    function peers()
        external
        view
        returns (IERC20 token, IAdapterRegistry adapters, IAttributionPool pool, IRewardVault vault, INodeRegistry nodes)
    {
        return (_token, _adapters, _pool, _vault, _nodes);
    }

    // ---------------------------------------------------------------- internal

    function _deposit(address payer, address node, uint256 amount) private {
        if (node == address(0)) revert UsageEscrowZeroAddress();
        if (amount == 0) revert UsageEscrowZeroAmount();
        Account storage a = _accounts[payer][node];
        uint256 balance = a.balance + amount;
        if (balance > type(uint128).max) revert UsageEscrowValueTooLarge(0);
        a.balance = uint128(balance);
        emit Deposited(payer, node, msg.sender, amount);
        _token.safeTransferFrom(msg.sender, address(this), amount);
    }

    function _authorized(address payer, address signer) private view returns (bool) {
        if (signer == payer) return true;
        Signer storage s = _signers[signer];
        uint64 revokeAt = s.revokeAt;
        return s.payer == payer && (revokeAt == 0 || block.timestamp < revokeAt);
    }

    /// @dev Verify one voucher, advance its lane, debit the account and book the split.
    ///      Returns the compute and adapter amounts paid (both 0 when skipped).
    /// @dev The body of `redeem`: pay every voucher, move the total to the vault and credit it there;
    ///      returns in `c.dsIds`/`c.dsAmounts` (shrunk to `c.dsLen`) the dataset parts for the pools.
    function _redeem(Voucher[] calldata vouchers, bytes[] calldata signatures)
        private
        returns (uint256 total, Credits memory c)
    {
        uint256 n = vouchers.length;
        if (n == 0 || n != signatures.length) revert UsageEscrowBadBatch(n, signatures.length);
        if (!_nodes.canRedeem(msg.sender)) revert UsageEscrowNodeNotStaked(msg.sender);
        c.to = new address[](n + 2);
        c.toAmounts = new uint256[](n + 2);
        c.dsIds = new uint256[](16);
        c.dsAmounts = new uint256[](16);
        c.feeBps = _feeBps;
        uint256 computeTotal;
        for (uint256 i; i < n; ++i) {
            (uint256 dc, uint256 da) = _redeemOne(c, vouchers[i], signatures[i], i);
            computeTotal += dc;
            total += dc + da;
        }
        uint256[] memory dsIds = c.dsIds;
        uint256[] memory dsAmounts = c.dsAmounts;
        uint256 dsLen = c.dsLen; // 0 when nothing was paid (a dataset part is part of the total)
        assembly ("memory-safe") {
            // shrink both arrays to the entries used (lengths only ever decrease here)
            mstore(dsIds, dsLen)
            mstore(dsAmounts, dsLen)
        }
        if (total == 0) return (0, c);
        _addTo(c, msg.sender, computeTotal);
        _addTo(c, _feeRecipient, c.fee);
        // One transfer for the whole call, then bookkeeping in the vault (the pools are the caller's).
        _token.safeTransfer(address(_vault), total);
        address[] memory to = c.to;
        uint256[] memory toAmounts = c.toAmounts;
        uint256 toLen = c.toLen;
        assembly ("memory-safe") {
            mstore(to, toLen)
            mstore(toAmounts, toLen)
        }
        _vault.credit(to, toAmounts);
    }

    function _redeemOne(Credits memory c, Voucher calldata v, bytes calldata sig, uint256 i)
        private
        returns (uint256 dc, uint256 da)
    {
        if (!_verify(v, sig, i)) return (0, 0);
        address payer = v.payer;
        Lane storage lane = _lanes[_laneKey(payer, msg.sender, v.adapterId)];
        (uint256 cOld, uint256 aOld) = (lane.compute, lane.adapter);
        // Both components monotone: (100, 0) then (0, 100) must not collect 200.
        if (v.computeValue < cOld || v.adapterValue < aOld) return _skip(i, payer, SkipReason.Stale);
        unchecked {
            dc = v.computeValue - cOld; // checked just above
            da = v.adapterValue - aOld;
        }
        if (dc == 0 && da == 0) return (0, 0); // a replay: nothing to pay
        Payout memory p = Payout(address(0), 0, 0, 0); // read only when da != 0
        if (da != 0) {
            (p.owner, p.count, p.packed0, p.packed1) = _adapters.payoutOf(v.adapterId);
            if (p.owner == address(0)) return _skip(i, payer, SkipReason.UnknownAdapter);
        }
        Account storage acct = _accounts[payer][msg.sender];
        uint256 balance = acct.balance;
        if (dc + da > balance) {
            // Pay what there is, pro rata; the lane records only what was paid, so the same voucher
            // collects the rest after a deposit. dc + da < 2^129: no overflow.
            emit VoucherUnderfunded(payer, msg.sender, v.adapterId, dc + da, balance);
            if (balance == 0) return (0, 0);
            da = da * balance / (dc + da);
            dc = balance - da;
        }
        unchecked {
            acct.balance = uint128(balance - dc - da); // dc + da <= balance
            lane.compute = uint128(cOld + dc); // <= computeValue < 2^128
            lane.adapter = uint128(aOld + da); // <= adapterValue < 2^128
        }
        if (da != 0) _splitAdapter(c, p, da);
        emit VoucherRedeemed(payer, msg.sender, v.adapterId, dc, da);
    }

    /// @dev Whether voucher `i` is well-formed, for the caller, and signed by the payer or a key it authorized.
    function _verify(Voucher calldata v, bytes calldata sig, uint256 i) private returns (bool) {
        address payer = v.payer;
        SkipReason reason;
        if (v.node != msg.sender) {
            reason = SkipReason.WrongNode;
        } else if (
            (v.adapterId == 0 && v.adapterValue != 0) || (v.computeValue | v.adapterValue) > type(uint128).max
                || payer == address(0)
        ) {
            reason = SkipReason.BadValue;
        } else {
            (address signer, ECDSA.RecoverError err,) =
                ECDSA.tryRecoverCalldata(_hashTypedDataV4(keccak256(abi.encode(VOUCHER_TYPEHASH, v))), sig);
            if (err != ECDSA.RecoverError.NoError) {
                reason = SkipReason.BadSignature;
            } else if (!_authorized(payer, signer)) {
                reason = SkipReason.UnauthorizedSigner;
            } else {
                return true;
            }
        }
        _skip(i, payer, reason);
        return false;
    }

    function _skip(uint256 i, address payer, SkipReason reason) private returns (uint256, uint256) {
        emit VoucherSkipped(i, payer, reason);
        return (0, 0);
    }

    /// @dev Protocol fee first, then dataset shares by bps of the rest; the owner gets the remainder.
    function _splitAdapter(Credits memory c, Payout memory p, uint256 amount) private pure {
        uint256 fee = amount * c.feeBps / BPS;
        uint256 rest = amount - fee;
        uint256 given = 0;
        for (uint256 j; j < p.count; ++j) {
            uint256 entry = (j < 5 ? p.packed0 : p.packed1) >> (48 * (j % 5));
            uint256 share = rest * uint16(entry) / BPS;
            if (share != 0) {
                _addDataset(c, uint32(entry >> 16), share);
                given += share;
            }
        }
        c.fee += fee;
        _addTo(c, p.owner, rest - given); // sum of shares <= rest: bps sum to <= 10,000
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
