"""Typed web3.py bindings of the protocol contracts (ABIs from Hardhat artifacts).

One wrapper per contract. Reads return frozen dataclasses; every write `fn` comes as
`build_fn(sender, ...) -> dict` (unsigned tx params for the outbox, which adds nonce, gas and
fees) and `fn(account, ...) -> TxReceipt` (sign, send, wait). Reverts surface as
`chain.errors.ContractRevert(name, args)` decoded from the custom errors of every artifact.
Events decode into the frozen dataclasses of `chain.contract_types` (re-exported here) via `Contracts.decode_events(logs)`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Iterable, Mapping, Sequence

from eth_abi import decode as abi_decode
from eth_account.signers.local import LocalAccount
from eth_utils import function_abi_to_4byte_selector, keccak, to_checksum_address
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import ContractLogicError, Web3RPCError
from web3.types import TxReceipt

from chain import attribution_entries
from chain.artifacts import load_artifact
from chain.attribution_entries import AttributionEntry
from chain.contract_types import (  # noqa: F401  (re-exported: callers import them from here)
    Event,
    DatasetCreated,
    ContributionSubmitted,
    ContributionAccepted,
    ContributionRejected,
    DatasetRewarded,
    ContributionHarvested,
    AdapterPublished,
    AdapterDeprecated,
    NodeRegistered,
    NodeUpdated,
    BondAdded,
    NodeDeregistered,
    BondWithdrawn,
    Credited,
    Claimed,
    Deposited,
    SignerAuthorized,
    SignerRevoked,
    ThawStarted,
    Withdrawn,
    VoucherRedeemed,
    VoucherUnderfunded,
    VoucherSkipped,
    ProtocolFeeProposed,
    ProtocolFeeSet,
    NodeSlashed,
    DisputeOpened,
    DisputeResolved,
    DisputeExpired,
    OwnershipTransferStarted,
    SignerInfo,
    DisputeInfo,
    DisputeTerms,
    SKIP_REASONS,
    BatchCommitted,
    Transfer,
    Approval,
    OwnershipTransferred,
    AttributionRefused,
    PoolFilled,
    BatchSettled,
    PoolDrained,
    PoolFlushed,
    PoolBalance,
    AdapterInfo,
    AdapterPayout,
    DatasetInfo,
    ContributionInfo,
    NodeInfo,
    EscrowAccount,
    LaneCollected,
    ProtocolFee,
    CONTRIBUTION_STATUS,
    EVENT_CLASSES,
    event_fields,
    snake,
)
from chain.deploy import PROTOCOL_CONTRACTS, Deployment
from chain.eip712 import Receipt, Voucher, address_of, sign_signer_proof
from chain.errors import ChainError, ContractRevert

RECEIPT_TIMEOUT_S = 120
SIGNER_PROOF_TTL_S = 3600
_ERROR_SOURCES = ("DemoToken", *PROTOCOL_CONTRACTS)

# ------------------------------------------------------------------------------ revert decoding


@lru_cache(maxsize=1)
def _error_table() -> dict[bytes, tuple[str, list[str]]]:
    """4-byte selector -> (error name, input types), over every artifact's custom errors."""
    table: dict[bytes, tuple[str, list[str]]] = {
        bytes.fromhex("08c379a0"): ("Error", ["string"]),
        bytes.fromhex("4e487b71"): ("Panic", ["uint256"]),
    }
    for name in _ERROR_SOURCES:
        for entry in load_artifact(name).abi:
            if entry["type"] == "error":
                sel = function_abi_to_4byte_selector(entry)
                table[sel] = (entry["name"], [_abi_type(i) for i in entry["inputs"]])
    return table


def _abi_type(inp: dict) -> str:
    if inp["type"].startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in inp["components"]) + ")" + inp["type"][5:]
    return inp["type"]


def decode_revert(data: bytes | str | None) -> ContractRevert:
    """The ContractRevert that revert `data` encodes (name "Unknown" if it matches no known error)."""
    raw = bytes(HexBytes(data)) if data else b""
    entry = _error_table().get(raw[:4]) if len(raw) >= 4 else None
    if entry is None:
        return ContractRevert("Unknown", (), raw, f"revert with unknown data 0x{raw.hex()}")
    name, types = entry
    try:
        values = abi_decode(types, raw[4:]) if types else ()
    except Exception:  # noqa: BLE001 - malformed data from a hostile contract must not crash decoding
        return ContractRevert("Unknown", (), raw, f"malformed {name} revert data 0x{raw.hex()}")
    values = tuple(_norm(v) for v in values)
    return ContractRevert(name, values, raw)


def _revert_data(e: Exception) -> bytes | None:
    data = getattr(e, "data", None)
    if isinstance(data, dict):  # some providers nest it
        data = data.get("data")
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    if isinstance(data, str) and data.startswith("0x"):
        return bytes.fromhex(data[2:])
    return None


def _as_revert(e: Exception) -> Exception:
    data = _revert_data(e)
    if data is not None:
        return decode_revert(data)
    if isinstance(e, ContractLogicError):
        return ContractRevert("Unknown", (), b"", str(e))
    return e


def _norm(v: Any) -> Any:
    """ABI values to plain Python: checksum addresses, bytes, tuples."""
    if isinstance(v, str) and v.startswith("0x") and len(v) == 42:
        return to_checksum_address(v)
    if isinstance(v, (bytes, bytearray, HexBytes)):
        return bytes(v)
    if isinstance(v, (list, tuple)):
        return tuple(_norm(x) for x in v)
    if isinstance(v, Mapping):  # a struct decoded from an event: its fields in ABI order
        return tuple(_norm(x) for x in v.values())
    return v


# ------------------------------------------------------------------------------ wrappers

Sender = str | LocalAccount


class _Wrapper:
    """Shared plumbing: calls, tx building, sending, revert decoding, event decoding."""

    ARTIFACT: str = ""

    def __init__(self, w3: Web3, address: str):
        self.w3 = w3
        self.address = to_checksum_address(address)
        art = load_artifact(self.ARTIFACT)
        self.abi = art.abi_list
        self.contract = w3.eth.contract(address=self.address, abi=self.abi)
        self._chain_id: int | None = None
        self._events_by_topic = {}
        for entry in self.abi:
            if entry["type"] == "event" and entry["name"] in EVENT_CLASSES and not entry.get("anonymous"):
                sig = f"{entry['name']}({','.join(_abi_type(i) for i in entry['inputs'])})"
                self._events_by_topic[keccak(text=sig)] = entry["name"]

    # -- calls
    def _call(self, fn: str, *args: Any) -> Any:
        try:
            return getattr(self.contract.functions, fn)(*args).call()
        except (ContractLogicError, Web3RPCError) as e:
            raise _as_revert(e) from e

    # -- transactions
    def _build(self, sender: Sender, fn: str, *args: Any) -> dict:
        frm = sender.address if isinstance(sender, LocalAccount) else to_checksum_address(sender)
        data = self.contract.encode_abi(fn, args=list(args))
        if self._chain_id is None:
            self._chain_id = self.w3.eth.chain_id  # fixed for a Web3's lifetime; saves an RPC per tx
        return {"from": frm, "to": self.address, "data": data, "value": 0, "chainId": self._chain_id}

    def _send(self, account: LocalAccount, fn: str, *args: Any) -> TxReceipt:
        tx = self._build(account, fn, *args)
        return send_tx(self.w3, account, tx)

    # -- events
    def event_topics(self) -> list[bytes]:
        return list(self._events_by_topic)

    def decode_log(self, log: dict) -> Event | None:
        topics = log.get("topics") or []
        if not topics:
            return None
        name = self._events_by_topic.get(bytes(HexBytes(topics[0])))
        if name is None:
            return None
        ev = getattr(self.contract.events, name)().process_log(log)
        cls = EVENT_CLASSES[name]
        values = {snake(k): _norm(v) for k, v in ev["args"].items()}
        return cls(
            address=to_checksum_address(log["address"]),
            block_number=int(log["blockNumber"]),
            block_hash=bytes(HexBytes(log["blockHash"])),
            tx_hash=bytes(HexBytes(log["transactionHash"])),
            log_index=int(log["logIndex"]),
            **{f: values[f] for f in event_fields(cls)},
        )


def send_tx(w3: Web3, account: LocalAccount, tx: dict) -> TxReceipt:
    """Estimate, sign, send and wait; raise ContractRevert (decoded) if it would or did revert."""
    tx = dict(tx)
    tx.setdefault("from", account.address)
    try:
        gas = w3.eth.estimate_gas(tx)
    except (ContractLogicError, Web3RPCError) as e:
        raise _as_revert(e) from e
    tx["gas"] = gas + gas // 5 + 10_000  # margin: state can move between estimate and inclusion
    tx.setdefault("nonce", w3.eth.get_transaction_count(account.address, "pending"))
    if "maxFeePerGas" not in tx and "gasPrice" not in tx:
        tx["gasPrice"] = w3.eth.gas_price
    signed = account.sign_transaction(tx)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RECEIPT_TIMEOUT_S)
    if receipt["status"] != 1:
        # Replay at the block it failed in to learn why.
        call = {k: tx[k] for k in ("from", "to", "data", "value") if k in tx}
        try:
            w3.eth.call(call, receipt["blockNumber"] - 1)
        except (ContractLogicError, Web3RPCError) as e:
            raise _as_revert(e) from e
        raise ContractRevert("Unknown", (), b"", f"transaction {tx_hash.hex()} reverted (out of gas?)")
    return receipt


class TokenContract(_Wrapper):
    """The payment token (ERC20; DemoToken on dev chains adds `mint`)."""

    ARTIFACT = "DemoToken"

    def balance_of(self, who: str) -> int:
        return self._call("balanceOf", who)

    def allowance(self, owner: str, spender: str) -> int:
        return self._call("allowance", owner, spender)

    def total_supply(self) -> int:
        return self._call("totalSupply")

    def build_approve(self, sender: Sender, spender: str, amount: int) -> dict:
        return self._build(sender, "approve", spender, amount)

    def approve(self, account: LocalAccount, spender: str, amount: int) -> TxReceipt:
        return self._send(account, "approve", spender, amount)

    def build_transfer(self, sender: Sender, to: str, amount: int) -> dict:
        return self._build(sender, "transfer", to, amount)

    def transfer(self, account: LocalAccount, to: str, amount: int) -> TxReceipt:
        return self._send(account, "transfer", to, amount)

    def build_mint(self, sender: Sender, to: str, amount: int) -> dict:
        return self._build(sender, "mint", to, amount)

    def mint(self, account: LocalAccount, to: str, amount: int) -> TxReceipt:
        return self._send(account, "mint", to, amount)


class DatasetRegistryContract(_Wrapper):
    ARTIFACT = "DatasetRegistry"

    def build_create_dataset(self, sender: Sender, name: str, license: str, metadata_cid: str = "") -> dict:
        return self._build(sender, "createDataset", name, license, metadata_cid)

    def create_dataset(self, account: LocalAccount, name: str, license: str, metadata_cid: str = "") -> TxReceipt:
        return self._send(account, "createDataset", name, license, metadata_cid)

    def build_contribute(self, sender: Sender, dataset_id: int, cid: str, size_tokens: int) -> dict:
        return self._build(sender, "contribute", dataset_id, cid, size_tokens)

    def contribute(self, account: LocalAccount, dataset_id: int, cid: str, size_tokens: int) -> TxReceipt:
        return self._send(account, "contribute", dataset_id, cid, size_tokens)

    def build_accept(self, sender: Sender, contribution_id: int, weight: int) -> dict:
        return self._build(sender, "accept", contribution_id, weight)

    def accept(self, account: LocalAccount, contribution_id: int, weight: int) -> TxReceipt:
        return self._send(account, "accept", contribution_id, weight)

    def build_reject(self, sender: Sender, contribution_id: int) -> dict:
        return self._build(sender, "reject", contribution_id)

    def reject(self, account: LocalAccount, contribution_id: int) -> TxReceipt:
        return self._send(account, "reject", contribution_id)

    def build_harvest(self, sender: Sender, contribution_ids: Sequence[int]) -> dict:
        return self._build(sender, "harvest", list(contribution_ids))

    def harvest(self, account: LocalAccount, contribution_ids: Sequence[int]) -> TxReceipt:
        return self._send(account, "harvest", list(contribution_ids))

    def get_dataset(self, dataset_id: int) -> DatasetInfo:
        d = self._call("getDataset", dataset_id)
        return DatasetInfo(dataset_id, to_checksum_address(d[0]), d[1], d[2], d[3], d[4], d[5], d[6])

    def get_contribution(self, contribution_id: int) -> ContributionInfo:
        c = self._call("getContribution", contribution_id)
        return ContributionInfo(
            contribution_id, to_checksum_address(c[0]), c[1], c[2], c[3], CONTRIBUTION_STATUS[c[4]], c[5]
        )

    def dataset_exists(self, dataset_id: int) -> bool:
        return self._call("datasetExists", dataset_id)

    def pending_reward(self, contribution_id: int) -> int:
        return self._call("pendingReward", contribution_id)

    def pending_attributed(self, contribution_id: int) -> int:
        return self._call("pendingAttributed", contribution_id)

    def dataset_count(self) -> int:
        return self._call("datasetCount")

    def contribution_count(self) -> int:
        return self._call("contributionCount")


class AdapterRegistryContract(_Wrapper):
    ARTIFACT = "AdapterRegistry"

    def build_register(
        self,
        sender: Sender,
        base_model_id: str,
        cid: str,
        rank: int,
        price_per_1k: int,
        owner_bps: int,
        dataset_ids: Sequence[int] = (),
        dataset_bps: Sequence[int] = (),
    ) -> dict:
        return self._build(
            sender, "register", base_model_id, cid, rank, price_per_1k, owner_bps, list(dataset_ids), list(dataset_bps)
        )

    def register(
        self,
        account: LocalAccount,
        base_model_id: str,
        cid: str,
        rank: int,
        price_per_1k: int,
        owner_bps: int,
        dataset_ids: Sequence[int] = (),
        dataset_bps: Sequence[int] = (),
    ) -> TxReceipt:
        return self._send(
            account, "register", base_model_id, cid, rank, price_per_1k, owner_bps, list(dataset_ids), list(dataset_bps)
        )

    def build_publish_version(self, sender: Sender, adapter_id: int, cid: str, rank: int, price_per_1k: int) -> dict:
        return self._build(sender, "publishVersion", adapter_id, cid, rank, price_per_1k)

    def publish_version(self, account: LocalAccount, adapter_id: int, cid: str, rank: int, price_per_1k: int) -> TxReceipt:
        return self._send(account, "publishVersion", adapter_id, cid, rank, price_per_1k)

    def build_deprecate(self, sender: Sender, adapter_id: int) -> dict:
        return self._build(sender, "deprecate", adapter_id)

    def deprecate(self, account: LocalAccount, adapter_id: int) -> TxReceipt:
        return self._send(account, "deprecate", adapter_id)

    def get_adapter(self, adapter_id: int) -> AdapterInfo:
        a = self._call("getAdapter", adapter_id)
        return AdapterInfo(
            adapter_id, to_checksum_address(a[0]), a[1], a[2], a[3], a[4], a[5], tuple(a[6]), tuple(a[7]), a[8], a[9]
        )

    def payout_of(self, adapter_id: int) -> AdapterPayout:
        o, c, p0, p1 = self._call("payoutOf", adapter_id)
        return AdapterPayout(to_checksum_address(o), c, p0, p1)

    def adapter_count(self) -> int:
        return self._call("adapterCount")


class NodeRegistryContract(_Wrapper):
    ARTIFACT = "NodeRegistry"

    def build_register(
        self, sender: Sender, endpoint: str, base_model_ids: Sequence[str], compute_price_per_1k: int, bond: int = 0
    ) -> dict:
        return self._build(sender, "register", endpoint, list(base_model_ids), compute_price_per_1k, bond)

    def register(
        self, account: LocalAccount, endpoint: str, base_model_ids: Sequence[str], compute_price_per_1k: int, bond: int = 0
    ) -> TxReceipt:
        return self._send(account, "register", endpoint, list(base_model_ids), compute_price_per_1k, bond)

    def build_update(self, sender: Sender, endpoint: str, base_model_ids: Sequence[str], compute_price_per_1k: int) -> dict:
        return self._build(sender, "update", endpoint, list(base_model_ids), compute_price_per_1k)

    def update(
        self, account: LocalAccount, endpoint: str, base_model_ids: Sequence[str], compute_price_per_1k: int
    ) -> TxReceipt:
        return self._send(account, "update", endpoint, list(base_model_ids), compute_price_per_1k)

    def build_add_bond(self, sender: Sender, amount: int) -> dict:
        return self._build(sender, "addBond", amount)

    def add_bond(self, account: LocalAccount, amount: int) -> TxReceipt:
        return self._send(account, "addBond", amount)

    def build_deregister(self, sender: Sender) -> dict:
        return self._build(sender, "deregister")

    def deregister(self, account: LocalAccount) -> TxReceipt:
        return self._send(account, "deregister")

    def build_withdraw_bond(self, sender: Sender) -> dict:
        return self._build(sender, "withdrawBond")

    def withdraw_bond(self, account: LocalAccount) -> TxReceipt:
        return self._send(account, "withdrawBond")

    def get_node(self, node: str) -> NodeInfo:
        n = self._call("getNode", node)
        return NodeInfo(to_checksum_address(node), n[0], tuple(n[1]), n[2], n[3], n[4], n[5])

    def is_active(self, node: str) -> bool:
        return self._call("isActive", node)

    def can_redeem(self, node: str) -> bool:
        return self._call("canRedeem", node)

    def open_disputes(self, node: str) -> int:
        return self._call("openDisputes", node)

    def dispute_count(self) -> int:
        return self._call("disputeCount")

    def burned(self) -> int:
        return self._call("burned")

    def dispute_terms(self) -> DisputeTerms:
        m, a, w, d, r = self._call("disputeTerms")
        return DisputeTerms(m, to_checksum_address(a), w, d, to_checksum_address(r))

    def get_dispute(self, dispute_id: int) -> DisputeInfo:
        f, deadline, is_open, node, deposit, digest = self._call("getDispute", dispute_id)
        return DisputeInfo(dispute_id, to_checksum_address(f), deadline, is_open, to_checksum_address(node), deposit,
                           bytes(digest))

    def build_slash_equivocation(self, sender: Sender, a: Receipt, sig_a: bytes, b: Receipt, sig_b: bytes) -> dict:
        return self._build(sender, "slashEquivocation", _receipt_tuple(a), bytes(sig_a), _receipt_tuple(b), bytes(sig_b))

    def slash_equivocation(self, account: LocalAccount, a: Receipt, sig_a: bytes, b: Receipt, sig_b: bytes) -> TxReceipt:
        return self._send(account, "slashEquivocation", _receipt_tuple(a), bytes(sig_a), _receipt_tuple(b), bytes(sig_b))

    def build_open_dispute(self, sender: Sender, r: Receipt, sig: bytes) -> dict:
        return self._build(sender, "openDispute", _receipt_tuple(r), bytes(sig))

    def open_dispute(self, account: LocalAccount, r: Receipt, sig: bytes) -> TxReceipt:
        return self._send(account, "openDispute", _receipt_tuple(r), bytes(sig))

    def resolve_dispute(self, account: LocalAccount, dispute_id: int, slash_amount: int) -> TxReceipt:
        return self._send(account, "resolveDispute", dispute_id, slash_amount)

    def expire_dispute(self, account: LocalAccount, dispute_id: int) -> TxReceipt:
        return self._send(account, "expireDispute", dispute_id)


def _voucher_tuple(v: Voucher) -> tuple:
    return (v.payer, v.node, v.adapter_id, v.compute_value, v.adapter_value)


def _receipt_tuple(r: Receipt) -> tuple:
    return (
        r.request_id, r.payer, r.node, r.adapter_id, r.seq, r.prompt_tokens, r.completion_tokens,
        r.compute_cost, r.adapter_cost, r.output_hash, r.attribution_hash, r.timestamp,
    )


class UsageEscrowContract(_Wrapper):
    """Accounts are per (payer, node): every deposit, thaw and withdrawal names the node."""

    ARTIFACT = "UsageEscrow"

    def build_deposit(self, sender: Sender, node: str, amount: int) -> dict:
        return self._build(sender, "deposit", node, amount)

    def deposit(self, account: LocalAccount, node: str, amount: int) -> TxReceipt:
        return self._send(account, "deposit", node, amount)

    def build_deposit_for(self, sender: Sender, payer: str, node: str, amount: int) -> dict:
        return self._build(sender, "depositFor", payer, node, amount)

    def deposit_for(self, account: LocalAccount, payer: str, node: str, amount: int) -> TxReceipt:
        return self._send(account, "depositFor", payer, node, amount)

    def build_authorize_signer(self, sender: Sender, signer: str, deadline: int, proof: bytes) -> dict:
        return self._build(sender, "authorizeSigner", signer, deadline, bytes(proof))

    def authorize_signer(self, account: LocalAccount, signer: str, deadline: int, proof: bytes) -> TxReceipt:
        return self._send(account, "authorizeSigner", signer, deadline, bytes(proof))

    def signer_proof(self, payer: str, signer_key, deadline: int | None = None) -> tuple[str, int, bytes]:
        """(signer address, deadline, proof) for `payer` to authorize the key `signer_key`; the deadline
        defaults to an hour after the latest block."""
        if deadline is None:
            deadline = int(self.w3.eth.get_block("latest")["timestamp"]) + SIGNER_PROOF_TTL_S
        if self._chain_id is None:
            self._chain_id = self.w3.eth.chain_id
        proof = sign_signer_proof(payer, deadline, signer_key, self._chain_id, self.address)
        return address_of(signer_key), deadline, proof

    def authorize_signer_key(self, account: LocalAccount, signer_key, deadline: int | None = None) -> TxReceipt:
        """Authorize the key `signer_key` for `account` when both keys are at hand (signs the proof)."""
        signer, deadline, proof = self.signer_proof(account.address, signer_key, deadline)
        return self.authorize_signer(account, signer, deadline, proof)

    def build_revoke_signer(self, sender: Sender, signer: str) -> dict:
        return self._build(sender, "revokeSigner", signer)

    def revoke_signer(self, account: LocalAccount, signer: str) -> TxReceipt:
        return self._send(account, "revokeSigner", signer)

    def build_start_thaw(self, sender: Sender, node: str, amount: int) -> dict:
        return self._build(sender, "startThaw", node, amount)

    def start_thaw(self, account: LocalAccount, node: str, amount: int) -> TxReceipt:
        return self._send(account, "startThaw", node, amount)

    def build_withdraw(self, sender: Sender, node: str) -> dict:
        return self._build(sender, "withdraw", node)

    def withdraw(self, account: LocalAccount, node: str) -> TxReceipt:
        return self._send(account, "withdraw", node)

    def build_redeem(self, sender: Sender, vouchers: Sequence[Voucher], signatures: Sequence[bytes]) -> dict:
        return self._build(sender, "redeem", [_voucher_tuple(v) for v in vouchers], [bytes(s) for s in signatures])

    def redeem(self, account: LocalAccount, vouchers: Sequence[Voucher], signatures: Sequence[bytes]) -> TxReceipt:
        return self._send(account, "redeem", [_voucher_tuple(v) for v in vouchers], [bytes(s) for s in signatures])

    def build_propose_protocol_fee(self, sender: Sender, recipient: str, bps: int) -> dict:
        return self._build(sender, "proposeProtocolFee", recipient, bps)

    def propose_protocol_fee(self, account: LocalAccount, recipient: str, bps: int) -> TxReceipt:
        return self._send(account, "proposeProtocolFee", recipient, bps)

    def apply_protocol_fee(self, account: LocalAccount) -> TxReceipt:
        return self._send(account, "applyProtocolFee")

    def transfer_ownership(self, account: LocalAccount, new_owner: str) -> TxReceipt:
        return self._send(account, "transferOwnership", new_owner)

    def accept_ownership(self, account: LocalAccount) -> TxReceipt:
        return self._send(account, "acceptOwnership")

    def hash_voucher(self, v: Voucher) -> bytes:
        return bytes(self._call("hashVoucher", _voucher_tuple(v)))

    def hash_signer_proof(self, payer: str, deadline: int) -> bytes:
        return bytes(self._call("hashSignerProof", payer, deadline))

    def collected(self, payer: str, node: str, adapter_id: int) -> LaneCollected:
        return LaneCollected(*self._call("collected", payer, node, adapter_id))

    def account_of(self, payer: str, node: str) -> EscrowAccount:
        return EscrowAccount(*self._call("accountOf", payer, node))

    def signer_of(self, signer: str) -> SignerInfo:
        p, at = self._call("signerOf", signer)
        return SignerInfo(to_checksum_address(p), at)

    def is_authorized(self, payer: str, signer: str) -> bool:
        return self._call("isAuthorized", payer, signer)

    def protocol_fee(self) -> ProtocolFee:
        r, b = self._call("protocolFee")
        return ProtocolFee(to_checksum_address(r), b)

    def pending_protocol_fee(self) -> tuple[str, int, int]:
        r, b, at = self._call("pendingProtocolFee")
        return to_checksum_address(r), b, at

    def thaw_seconds(self) -> int:
        return self._call("thawSeconds")

    def owner(self) -> str:
        return to_checksum_address(self._call("owner"))

    def pending_owner(self) -> str:
        return to_checksum_address(self._call("pendingOwner"))


class ReceiptLogContract(_Wrapper):
    ARTIFACT = "ReceiptLog"

    def build_commit_batch(self, sender: Sender, seq: int, root: bytes, count: int, receipts_cid: str) -> dict:
        return self._build(sender, "commitBatch", seq, bytes(root), count, receipts_cid)

    def commit_batch(self, account: LocalAccount, seq: int, root: bytes, count: int, receipts_cid: str) -> TxReceipt:
        return self._send(account, "commitBatch", seq, bytes(root), count, receipts_cid)

    def hash_receipt(self, r: Receipt) -> bytes:
        return bytes(self._call("hashReceipt", _receipt_tuple(r)))

    def verify_receipt(self, r: Receipt, batch_seq: int, proof: Iterable[bytes]) -> bool:
        return self._call("verifyReceipt", _receipt_tuple(r), batch_seq, [bytes(HexBytes(p)) for p in proof])

    def last_seq(self, node: str) -> int:
        return self._call("lastSeq", node)

    def last_commit_at(self, node: str) -> int:
        return self._call("lastCommitAt", node)

    def batch_root(self, node: str, seq: int) -> bytes:
        return bytes(self._call("batchRoot", node, seq))




class AttributionPoolContract(_Wrapper):
    ARTIFACT = "AttributionPool"

    def build_settle(self, sender: Sender, seq: int, entries: Sequence[AttributionEntry]) -> dict:
        return self._build(sender, "settle", seq, attribution_entries.pack(entries))

    def settle(self, account: LocalAccount, seq: int, entries: Sequence[AttributionEntry]) -> TxReceipt:
        return self._send(account, "settle", seq, attribution_entries.pack(entries))

    def build_flush(self, sender: Sender, node: str, dataset_id: int) -> dict:
        return self._build(sender, "flush", node, dataset_id)

    def flush(self, account: LocalAccount, node: str, dataset_id: int) -> TxReceipt:
        return self._send(account, "flush", node, dataset_id)

    def pool_of(self, node: str, dataset_id: int) -> PoolBalance:
        return PoolBalance(*self._call("poolOf", node, dataset_id))

    def settled_seq(self, node: str) -> int:
        return self._call("settledSeq", node)

    def flush_delay(self) -> int:
        return self._call("flushDelay")

    def attribution_outside_adapter(self, r: Receipt, batch_seq: int, proof: Iterable[bytes],
                                    ids: Sequence[int], bps: Sequence[int]) -> bool:
        return self._call("attributionOutsideAdapter", _receipt_tuple(r), batch_seq,
                          [bytes(HexBytes(p)) for p in proof], list(ids), list(bps))


class RewardVaultContract(_Wrapper):
    ARTIFACT = "RewardVault"

    def build_claim(self, sender: Sender) -> dict:
        return self._build(sender, "claim")

    def claim(self, account: LocalAccount) -> TxReceipt:
        return self._send(account, "claim")

    def claimable(self, who: str) -> int:
        return self._call("claimable", who)

    def total_claimable(self) -> int:
        return self._call("totalClaimable")


class Contracts:
    """The deployed set, bound to one Web3: `.token .datasets .adapters .nodes .escrow .receipts .vault .pool`."""

    def __init__(self, w3: Web3, deployment: Deployment):
        chain_id = w3.eth.chain_id
        if chain_id != deployment.chain_id:
            raise ChainError(f"deployment is for chain {deployment.chain_id}, RPC is chain {chain_id}")
        a = deployment.addresses
        self.w3 = w3
        self.deployment = deployment
        self.chain_id = chain_id
        self.token = TokenContract(w3, a["PaymentToken"])
        self.datasets = DatasetRegistryContract(w3, a["DatasetRegistry"])
        self.adapters = AdapterRegistryContract(w3, a["AdapterRegistry"])
        self.nodes = NodeRegistryContract(w3, a["NodeRegistry"])
        self.escrow = UsageEscrowContract(w3, a["UsageEscrow"])
        self.receipts = ReceiptLogContract(w3, a["ReceiptLog"])
        self.vault = RewardVaultContract(w3, a["RewardVault"])
        self.pool = AttributionPoolContract(w3, a["AttributionPool"])
        self._by_address = {
            w.address: w
            for w in (self.token, self.datasets, self.adapters, self.nodes, self.escrow, self.receipts, self.vault,
                      self.pool)
        }

    def addresses(self) -> list[str]:
        """Addresses to pass to eth_getLogs."""
        return list(self._by_address)

    def event_topics(self) -> list[str]:
        """topic0 values (hex) of every event the wrappers decode, for eth_getLogs."""
        seen: dict[bytes, None] = {}
        for w in self._by_address.values():
            for t in w.event_topics():
                seen[t] = None
        return ["0x" + t.hex() for t in seen]

    def decode_events(self, logs: Iterable[dict]) -> list[Event]:
        """Decode logs of the deployed contracts into event dataclasses; other logs are skipped."""
        out: list[Event] = []
        for log in logs:
            w = self._by_address.get(to_checksum_address(log["address"]))
            if w is None:
                continue
            ev = w.decode_log(log)
            if ev is not None:
                out.append(ev)
        return out

    def events_of(self, receipt: TxReceipt) -> list[Event]:
        """Decoded events of one transaction receipt."""
        return self.decode_events(receipt["logs"])
