// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {IAttributionFaults, INodeRegistry, IReceiptLog} from "./interfaces/IProtocol.sol";

/// @title NodeRegistry
/// @notice Node operators register the node's endpoint URL, the base model ids it serves and its
///         compute price per 1K tokens, and lock a bond in the payment token. Only a node with at
///         least `minBond` can redeem vouchers in UsageEscrow.
///         The bond answers for the node's receipts:
///         - equivocation: anyone who shows two receipts signed by the node with the same `seq` and
///           different digests slashes the whole bond and receives SLASH_REWARD_BPS of it;
///         - attribution: anyone who proves from one committed leaf that the node attributed an
///           answer outside its adapter's datasets, or more than all of it (AttributionPool's
///           `attributionFault`), slashes the whole bond likewise, once per receipt;
///         - while disputes are open, or within `disputeWindow` of the node's last commit, such a
///           proof only condemns the bond: the node redeems nothing more and adds no bond;
///           fishermen may still open disputes until the window ends; the disputes are ruled and
///           paid from the bond first, and the rest is slashed for the prover once the window has
///           passed and no dispute is open (when the last one closes, or by anyone with
///           `executeCondemnation`). So a node cannot escape its fishermen by having a colluder prove
///           its own fault, getting half of its bond back before they can dispute its last receipts;
///         - disputes: a fisherman disputes one signed receipt with a deposit; the arbitrator fixed at
///           deployment slashes (part to the fisherman, deposit returned) or rejects (deposit to the
///           node) before the dispute's deadline; past it, anyone closes it and the deposit returns.
///         The bond is withdrawn after deregistration and the unbonding period, never while a dispute
///         is open nor within the dispute window after the node's last ReceiptLog commit.
///         Slashed tokens not rewarded stay locked here for good (counted in `burned`).
contract NodeRegistry is INodeRegistry, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice A node as returned by `getNode`.
    struct NodeView {
        string endpoint;
        string[] baseModelIds;
        uint256 computePricePer1k;
        uint256 bond;
        uint64 unbondAt;
        bool active;
        bool condemned; // a proven fault's slash waits for the disputes
        address condemnedBy; // who proved it (zero unless condemned)
        uint64 condemnedUntil; // disputes may be opened until then; the slash executes after it
    }

    /// @notice A dispute as stored and returned by `getDispute`.
    struct Dispute {
        address fisherman; // slot 0: fisherman | deadline | open
        uint64 deadline;
        bool open;
        address node; // slot 1
        uint128 deposit; // slot 2
        bytes32 receiptDigest; // slot 3
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
    /// @notice The bond is locked until `unlockAt` (unbonding period or dispute window).
    error NodeRegistryStillUnbonding(uint64 unlockAt);
    /// @notice The bond is locked while `open` disputes against the node are unresolved.
    error NodeRegistryDisputeOpen(address node, uint256 open);
    /// @notice There is no bond to withdraw or slash, or a zero amount was given.
    error NodeRegistryNoBond(address node);
    /// @notice A constructor address is zero.
    error NodeRegistryZeroAddress();
    /// @notice The two receipts are not an equivocation (different nodes or seqs, or the same digest).
    error NodeRegistryNotEquivocation();
    /// @notice A receipt signature does not recover to the receipt's node.
    error NodeRegistryBadReceiptSignature(address node);
    /// @notice Only the arbitrator may resolve disputes.
    error NodeRegistryNotArbitrator(address caller);
    /// @notice The dispute does not exist or is already closed.
    error NodeRegistryDisputeClosed(uint256 disputeId);
    /// @notice The dispute's deadline `deadline` has passed (resolve) or not yet (expire).
    error NodeRegistryDisputeDeadline(uint64 deadline);
    /// @notice The leaf's attribution is not provably wrong from the leaf alone (dispute it instead).
    error NodeRegistryAttributionHonest(bytes32 receiptDigest);
    /// @notice The receipt `receiptDigest` was already slashed for its attribution.
    error NodeRegistryAlreadySlashed(bytes32 receiptDigest);
    /// @notice The node's bond is condemned by a proven fault (and, for a dispute, its window is over).
    error NodeRegistryCondemned(address node);
    /// @notice The condemned bond is slashed after `until` with no dispute open (`open` are).
    error NodeRegistryCondemnationPending(address node, uint64 until, uint256 open);

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
    /// @notice `amount` of `node`'s bond was slashed; `reward` of it went to `beneficiary`.
    event NodeSlashed(address indexed node, address indexed beneficiary, uint256 amount, uint256 reward);
    /// @notice `fisherman` disputed a receipt of `node` (digest `receiptDigest`).
    event DisputeOpened(
        uint256 indexed disputeId, address indexed node, address indexed fisherman, bytes32 receiptDigest, uint64 deadline
    );
    /// @notice `beneficiary` proved a fault of `node` while `openDisputes` disputes were open or before
    ///         `until` (the dispute window after its last commit): the bond is slashed for it
    ///         (NodeSlashed) after `until` once no dispute is open, the disputes being paid from it first.
    event NodeCondemned(address indexed node, address indexed beneficiary, uint256 openDisputes, uint64 until);
    /// @notice The arbitrator resolved a dispute: `upheld` (deposit back to the fisherman) or rejected (deposit to
    ///         the node); `slashed` is what left the bond, capped by it (0 when an upheld dispute finds it empty).
    event DisputeResolved(uint256 indexed disputeId, bool upheld, uint256 slashed);
    /// @notice A dispute passed its deadline unresolved; the deposit went back to the fisherman.
    event DisputeExpired(uint256 indexed disputeId);
    /// @notice Receipt `receiptDigest` of `node`, committed in batch `batchSeq`, was proven to
    ///         misattribute (`fault`: AttributionPool's OUTSIDE_ADAPTER or OVER_TOTAL); NodeSlashed follows.
    event AttributionSlashed(address indexed node, uint64 indexed batchSeq, bytes32 receiptDigest, uint8 fault);

    /// @notice Largest length of any string, in bytes.
    uint256 public constant MAX_STRING = 256;
    /// @notice Most base models one node may list.
    uint256 public constant MAX_BASE_MODELS = 16;
    /// @notice Share of a slashed amount paid to whoever proved the fault, in bps.
    uint256 public constant SLASH_REWARD_BPS = 5_000;

    struct Node {
        string endpoint;
        string[] baseModelIds;
        uint256 computePricePer1k;
        uint128 bond;
        uint64 unbondAt;
        bool active;
        uint32 openDisputes;
        bool condemned; // a proven fault waits for the disputes (_slashProven); same slot as bond
        address condemnedBy; // who proved it: rewarded when the condemned bond is slashed
        uint64 condemnedUntil; // end of the disputes' time: the node's dispute window at the proof
    }

    IERC20 private immutable _token;
    uint64 private immutable _unbondSeconds;
    uint128 private immutable _minBond;
    IReceiptLog private immutable _receipts;
    address private immutable _arbitrator;
    uint64 private immutable _disputeWindow;
    uint128 private immutable _disputeDeposit;
    IAttributionFaults private immutable _attribution;

    mapping(address node => Node) private _nodes;
    mapping(uint256 disputeId => Dispute) private _disputes;
    uint256 private _disputeCount;
    uint256 private _burned;
    mapping(bytes32 receiptDigest => bool) private _attributionSlashed;

    /// @param token_ the payment token (bonds and dispute deposits are held in it).
    /// @param unbondSeconds_ how long a bond stays locked after deregistration.
    /// @param minBond_ the bond a node needs to redeem vouchers (positive).
    /// @param receipts_ ReceiptLog (receipt digests and commit times).
    /// @param arbitrator_ the only address that resolves disputes.
    /// @param disputeWindow_ how long after its last commit a node's bond stays locked, and how long
    ///        the arbitrator has to resolve a dispute.
    /// @param disputeDeposit_ what a fisherman deposits to open a dispute.
    /// @param attribution_ AttributionPool (the one-leaf proof behind `slashAttribution`); deployed
    ///        after this contract, so its address is predicted (chain/deploy.py).
    constructor(
        IERC20 token_,
        uint64 unbondSeconds_,
        uint128 minBond_,
        IReceiptLog receipts_,
        address arbitrator_,
        uint64 disputeWindow_,
        uint128 disputeDeposit_,
        IAttributionFaults attribution_
    ) {
        if (
            address(token_) == address(0) || address(receipts_) == address(0) || arbitrator_ == address(0)
                || address(attribution_) == address(0)
        ) revert NodeRegistryZeroAddress();
        if (minBond_ == 0) revert NodeRegistryNoBond(address(0));
        _token = token_;
        _unbondSeconds = unbondSeconds_;
        _minBond = minBond_;
        _receipts = receipts_;
        _arbitrator = arbitrator_;
        _disputeWindow = disputeWindow_;
        _disputeDeposit = disputeDeposit_;
        _attribution = attribution_;
    }

    // ---------------------------------------------------------------- operators

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

    /// @notice Withdraw the whole bond of a deregistered node after its unbonding period, with no open
    ///         dispute and the dispute window after its last commit passed.
    /// @return amount tokens returned.
    function withdrawBond() external nonReentrant returns (uint256 amount) {
        Node storage n = _nodes[msg.sender];
        if (n.active) revert NodeRegistryStillActive(msg.sender);
        amount = n.bond;
        if (amount == 0) revert NodeRegistryNoBond(msg.sender);
        if (block.timestamp < n.unbondAt) revert NodeRegistryStillUnbonding(n.unbondAt);
        if (n.openDisputes != 0) revert NodeRegistryDisputeOpen(msg.sender, n.openDisputes);
        if (n.condemned) revert NodeRegistryCondemned(msg.sender);
        uint64 windowEnd = _receipts.lastCommitAt(msg.sender) + _disputeWindow;
        if (block.timestamp < windowEnd) revert NodeRegistryStillUnbonding(windowEnd);
        n.bond = 0;
        emit BondWithdrawn(msg.sender, amount);
        _token.safeTransfer(msg.sender, amount);
    }

    // ---------------------------------------------------------------- accountability

    /// @notice Prove that a node signed two different receipts with the same `seq`: its whole bond is
    ///         slashed and SLASH_REWARD_BPS of it goes to the caller (while disputes are open or within
    ///         the dispute window of its last commit, after them: see NodeCondemned). Anyone may call.
    /// @param a one receipt; `a.node` is the accused node.
    /// @param sigA the node's 65-byte signature of `a` (ReceiptLog's EIP-712 domain).
    /// @param b another receipt with the same node and seq and a different digest.
    /// @param sigB the node's signature of `b`.
    /// @return slashed tokens taken from the bond now (0 when condemned: see NodeCondemned).
    function slashEquivocation(
        IReceiptLog.Receipt calldata a,
        bytes calldata sigA,
        IReceiptLog.Receipt calldata b,
        bytes calldata sigB
    ) external nonReentrant returns (uint256 slashed) {
        address node = a.node;
        if (b.node != node || b.seq != a.seq) revert NodeRegistryNotEquivocation();
        bytes32 da = _signedBy(a, sigA);
        bytes32 db = _signedBy(b, sigB);
        if (da == db) revert NodeRegistryNotEquivocation();
        slashed = _slashProven(_nodes[node], node);
    }

    /// @notice Prove from one committed leaf that its node misattributed the answer: receipt `r` is
    ///         in `r.node`'s batch `batchSeq` and its attribution (`ids`, `bps`, hashing to
    ///         `r.attributionHash`) names a contribution outside the adapter's datasets (or none that
    ///         exists), or sums past 10,000 bps. The whole bond is slashed and SLASH_REWARD_BPS of it
    ///         goes to the caller (condemned first, like an equivocation: see NodeCondemned); each
    ///         receipt once. Anyone may call; other faults go to `openDispute`.
    /// @param r the committed receipt (no signature needed: the node committed its leaf).
    /// @param batchSeq the node's batch holding it.
    /// @param proof the leaf's Merkle proof in that batch.
    /// @param ids the receipt's attributed contribution ids, as hashed into `attributionHash`.
    /// @param bps their basis points, likewise.
    /// @return slashed tokens taken from the bond now (0 when condemned: see NodeCondemned).
    function slashAttribution(
        IReceiptLog.Receipt calldata r,
        uint64 batchSeq,
        bytes32[] calldata proof,
        uint256[] calldata ids,
        uint256[] calldata bps
    ) external nonReentrant returns (uint256 slashed) {
        bytes32 digest = _receipts.hashReceipt(r);
        if (_attributionSlashed[digest]) revert NodeRegistryAlreadySlashed(digest);
        uint8 fault = _attribution.attributionFault(r, batchSeq, proof, ids, bps); // reverts unless committed
        if (fault == 0) revert NodeRegistryAttributionHonest(digest);
        _attributionSlashed[digest] = true;
        emit AttributionSlashed(r.node, batchSeq, digest, fault);
        slashed = _slashProven(_nodes[r.node], r.node);
    }

    /// @notice Dispute a receipt the node signed (e.g. its output or attribution is wrong), depositing
    ///         `disputeDeposit` tokens (needs an allowance). The arbitrator must resolve it before
    ///         the deadline; the node's bond stays locked until then.
    /// @param r the disputed receipt.
    /// @param sig the node's signature of `r`.
    /// @return disputeId the new dispute's id (1, 2, ...).
    function openDispute(IReceiptLog.Receipt calldata r, bytes calldata sig)
        external
        nonReentrant
        returns (uint256 disputeId)
    {
        bytes32 digest = _signedBy(r, sig);
        Node storage n = _nodes[r.node];
        // a condemned node still answers to disputes until its window ends, and they are paid first
        if (n.condemned && block.timestamp > n.condemnedUntil) revert NodeRegistryCondemned(r.node);
        if (n.bond == 0) revert NodeRegistryNoBond(r.node);
        disputeId = ++_disputeCount;
        uint64 deadline = uint64(block.timestamp) + _disputeWindow;
        _disputes[disputeId] = Dispute(msg.sender, deadline, true, r.node, _disputeDeposit, digest);
        ++n.openDisputes;
        emit DisputeOpened(disputeId, r.node, msg.sender, digest, deadline);
        if (_disputeDeposit != 0) _token.safeTransferFrom(msg.sender, address(this), _disputeDeposit);
    }

    /// @notice The arbitrator's ruling, before the deadline: `slashAmount` > 0 upholds the dispute
    ///         (that much of the bond, capped by what is left of it, is slashed; the fisherman gets its
    ///         deposit back and SLASH_REWARD_BPS of the slash, even when nothing is left to slash);
    ///         0 rejects it (the deposit goes to the node).
    /// @param disputeId an open dispute.
    /// @param slashAmount tokens to slash (0 = reject).
    function resolveDispute(uint256 disputeId, uint256 slashAmount) external nonReentrant {
        if (msg.sender != _arbitrator) revert NodeRegistryNotArbitrator(msg.sender);
        Dispute storage d = _disputes[disputeId];
        if (!d.open) revert NodeRegistryDisputeClosed(disputeId);
        if (block.timestamp > d.deadline) revert NodeRegistryDisputeDeadline(d.deadline);
        d.open = false;
        Node storage n = _nodes[d.node];
        --n.openDisputes;
        uint256 deposit = d.deposit;
        uint256 slashed = slashAmount < n.bond ? slashAmount : n.bond;
        // Upheld is the ruling, not the amount: with the bond already gone (the node had itself
        // slashed for equivocation first, say) the fisherman still gets its deposit back.
        bool upheld = slashAmount != 0;
        emit DisputeResolved(disputeId, upheld, slashed);
        if (slashed != 0) _slash(n, d.node, d.fisherman, slashed);
        if (deposit != 0) _token.safeTransfer(upheld ? d.fisherman : d.node, deposit);
        _afterDisputeClosed(n, d.node);
    }

    /// @notice Close a dispute the arbitrator left unresolved past its deadline; the deposit goes back.
    /// @param disputeId an open dispute past its deadline.
    function expireDispute(uint256 disputeId) external nonReentrant {
        Dispute storage d = _disputes[disputeId];
        if (!d.open) revert NodeRegistryDisputeClosed(disputeId);
        if (block.timestamp <= d.deadline) revert NodeRegistryDisputeDeadline(d.deadline);
        d.open = false;
        Node storage n = _nodes[d.node];
        --n.openDisputes;
        emit DisputeExpired(disputeId);
        if (d.deposit != 0) _token.safeTransfer(d.fisherman, d.deposit);
        _afterDisputeClosed(n, d.node);
    }

    /// @notice Slash a condemned bond for its prover once its disputes' time is over (anyone may call;
    ///         closing the last dispute after that time does it too).
    /// @param node a condemned node, past `condemnedUntil`, with no dispute open.
    /// @return slashed tokens taken from the bond.
    function executeCondemnation(address node) external nonReentrant returns (uint256 slashed) {
        Node storage n = _nodes[node];
        if (!n.condemned || n.openDisputes != 0 || block.timestamp <= n.condemnedUntil) {
            revert NodeRegistryCondemnationPending(node, n.condemnedUntil, n.openDisputes);
        }
        return _executeCondemnation(n, node);
    }

    // ---------------------------------------------------------------- views

    /// @inheritdoc INodeRegistry
    function canRedeem(address node) external view returns (bool) {
        Node storage n = _nodes[node];
        return n.bond >= _minBond && !n.condemned; // one slot
    }

    /// @notice Registration of `node` (all zero if it never registered).
    function getNode(address node) external view returns (NodeView memory) {
        Node storage n = _nodes[node];
        return NodeView(
            n.endpoint,
            n.baseModelIds,
            n.computePricePer1k,
            n.bond,
            n.unbondAt,
            n.active,
            n.condemned,
            n.condemnedBy,
            n.condemnedUntil
        );
    }

    /// @notice Whether `node` is registered now.
    function isActive(address node) external view returns (bool) {
        return _nodes[node].active;
    }

    /// @notice Number of unresolved disputes against `node`.
    function openDisputes(address node) external view returns (uint256) {
        return _nodes[node].openDisputes;
    }

    /// @notice Dispute `disputeId` (all zero if it does not exist).
    function getDispute(uint256 disputeId) external view returns (Dispute memory) {
        return _disputes[disputeId];
    }

    /// @notice Number of disputes opened (ids are 1..count).
    function disputeCount() external view returns (uint256) {
        return _disputeCount;
    }

    /// @notice Whether receipt `receiptDigest` was already slashed for its attribution.
    function attributionSlashed(bytes32 receiptDigest) external view returns (bool) {
        return _attributionSlashed[receiptDigest];
    }

    /// @notice AttributionPool, whose `attributionFault` `slashAttribution` relies on.
    function attributionPool() external view returns (IAttributionFaults) {
        return _attribution;
    }

    /// @notice Slashed tokens locked here for good.
    function burned() external view returns (uint256) {
        return _burned;
    }

    /// @notice The bond token and the unbonding period in seconds.
    function bondTerms() external view returns (IERC20 token, uint64 unbondSeconds) {
        return (_token, _unbondSeconds);
    }

    /// @notice Accountability terms fixed at deployment.
    function disputeTerms()
        external
        view
        returns (uint256 minBond, address arbitrator, uint64 disputeWindow, uint256 disputeDeposit, IReceiptLog receipts)
    {
        return (_minBond, _arbitrator, _disputeWindow, _disputeDeposit, _receipts);
    }

    // ---------------------------------------------------------------- internal

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
        if (n.condemned) revert NodeRegistryCondemned(msg.sender);
        uint256 total = n.bond + amount;
        n.bond = SafeCast.toUint128(total);
        emit BondAdded(msg.sender, amount, total);
        _token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @dev A fault the caller proved: slash the whole bond for it now, or, while disputes are open or
    ///      the dispute window after the node's last commit runs, condemn it: disputes (open, or opened
    ///      until the window ends) are paid from the bond first, and the rest is slashed for the caller
    ///      after the window with no dispute open. Otherwise a node facing disputes, or about to, has a
    ///      colluder prove its own equivocation and gets half of its bond back, leaving nothing for
    ///      the fishermen.
    function _slashProven(Node storage n, address node) private returns (uint256 slashed) {
        if (n.condemned) revert NodeRegistryCondemned(node);
        uint256 bond = n.bond;
        if (bond == 0) revert NodeRegistryNoBond(node);
        uint256 open = n.openDisputes;
        uint64 until = _receipts.lastCommitAt(node) + _disputeWindow;
        if (open == 0 && block.timestamp > until) {
            _slash(n, node, msg.sender, bond);
            return bond;
        }
        n.condemned = true;
        n.condemnedBy = msg.sender;
        n.condemnedUntil = until;
        emit NodeCondemned(node, msg.sender, open, until);
        return 0;
    }

    /// @dev After a dispute of `node` closed: if it was the last and the disputes' time is over, slash
    ///      what a condemnation left of the bond.
    function _afterDisputeClosed(Node storage n, address node) private {
        if (n.openDisputes != 0 || !n.condemned || block.timestamp <= n.condemnedUntil) return;
        _executeCondemnation(n, node);
    }

    function _executeCondemnation(Node storage n, address node) private returns (uint256 slashed) {
        address beneficiary = n.condemnedBy;
        n.condemned = false;
        n.condemnedBy = address(0);
        n.condemnedUntil = 0;
        slashed = n.bond;
        if (slashed != 0) _slash(n, node, beneficiary, slashed);
    }

    /// @dev Take `amount` (<= bond) from the bond: SLASH_REWARD_BPS to `beneficiary`, the rest burned.
    function _slash(Node storage n, address node, address beneficiary, uint256 amount) private {
        n.bond -= uint128(amount); // amount <= bond < 2^128
        uint256 reward = amount * SLASH_REWARD_BPS / 10_000;
        _burned += amount - reward;
        emit NodeSlashed(node, beneficiary, amount, reward);
        if (reward != 0) _token.safeTransfer(beneficiary, reward);
    }

    /// @dev The digest of `r`, reverting unless `sig` is `r.node`'s signature of it.
    function _signedBy(IReceiptLog.Receipt calldata r, bytes calldata sig) private view returns (bytes32 digest) {
        digest = _receipts.hashReceipt(r);
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecoverCalldata(digest, sig);
        if (err != ECDSA.RecoverError.NoError || signer != r.node || signer == address(0)) {
            revert NodeRegistryBadReceiptSignature(r.node);
        }
    }

    function _checkString(string calldata s, string memory field) private pure {
        uint256 len = bytes(s).length;
        if (len == 0 || len > MAX_STRING) revert NodeRegistryInvalidString(field);
    }
}
