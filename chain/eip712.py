"""EIP-712 vouchers and receipts: types, digests, signing, recovery and strict JSON.

The types and domain are fixed in docs/interfaces.md and must hash byte-for-byte like the
contracts (UsageEscrow.hashVoucher, ReceiptLog.hashReceipt). Struct hashes are encoded by hand
(every field is a static 32-byte word) because that is ~20x faster than a generic encoder and
receipts are hashed by the ten thousand; tests check them against eth_account's independent
`encode_typed_data` and against the contracts on anvil.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, Mapping, Union

from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_keys import keys
from eth_keys.exceptions import BadSignature, ValidationError as EthKeysValidationError
from eth_utils import is_hex_address, keccak, to_checksum_address

from chain.errors import ChainError
from chain.protocol import TOTAL_BPS

DOMAIN_NAME = "LoRA Node"
DOMAIN_VERSION = "1"

DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
VOUCHER_TYPE = "Voucher(address payer,address node,uint256 adapterId,uint256 computeValue,uint256 adapterValue)"
RECEIPT_TYPE = (
    "Receipt(bytes32 requestId,address payer,address node,uint256 adapterId,uint64 seq,"
    "uint32 promptTokens,uint32 completionTokens,uint256 computeCost,uint256 adapterCost,"
    "bytes32 outputHash,bytes32 attributionHash,uint64 timestamp)"
)
# A signer key's consent to sign vouchers for `payer` (UsageEscrow.authorizeSigner); the domain
# binds the chain id and the escrow address.
SIGNER_PROOF_TYPE = "SignerProof(address payer,uint256 deadline,uint256 nonce)"
DOMAIN_TYPEHASH = keccak(text=DOMAIN_TYPE)
SIGNER_PROOF_TYPEHASH = keccak(text=SIGNER_PROOF_TYPE)
VOUCHER_TYPEHASH = keccak(text=VOUCHER_TYPE)
RECEIPT_TYPEHASH = keccak(text=RECEIPT_TYPE)

# secp256k1 group order; signatures with s > N/2 are malleable twins and OpenZeppelin's
# ECDSA.recover rejects them, so we do too.
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SECP256K1_HALF_N = SECP256K1_N // 2
MAX_JSON_BYTES = 8192  # a voucher or receipt JSON is < 1.5 KB; refuse anything far bigger
MAX_ATTRIBUTIONS = 1024

PrivateKeyLike = Union[str, bytes, LocalAccount]


class TypedDataError(ChainError, ValueError):
    """A voucher, receipt, signature or their JSON is malformed (the caller sent bad input)."""


# --- field validation ----------------------------------------------------------------------


def _check_uint(name: str, value: Any, bits: int) -> int:
    # bool is an int subclass; True as an amount is always a bug
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypedDataError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= value < (1 << bits):
        raise TypedDataError(f"{name} out of range for uint{bits}: {value}")
    return value


def _check_address(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypedDataError(f"{name} must be a 0x-prefixed 20-byte hex address, got {value!r:.80}")
    checksummed = _checksum(value)
    if checksummed is None:
        raise TypedDataError(f"{name} must be a 0x-prefixed 20-byte hex address, got {value!r:.80}")
    if value != value.lower() and value[2:] != value[2:].upper() and checksummed != value:
        # mixed case that is not the EIP-55 checksum: probably a typo
        raise TypedDataError(f"{name} has a bad EIP-55 checksum: {value}")
    return checksummed


@lru_cache(maxsize=4096)  # the same payers and nodes recur in every receipt; EIP-55 costs a keccak
def _checksum(value: str) -> str | None:
    return to_checksum_address(value) if is_hex_address(value) else None


def _check_bytes32(name: str, value: Any) -> bytes:
    if isinstance(value, str):
        value = _hex_to_bytes(name, value)
    if not isinstance(value, (bytes, bytearray)):
        raise TypedDataError(f"{name} must be 32 bytes, got {type(value).__name__}")
    if len(value) != 32:
        raise TypedDataError(f"{name} must be 32 bytes, got {len(value)}")
    return bytes(value)


def _hex_to_bytes(name: str, value: str) -> bytes:
    if not value.startswith(("0x", "0X")):
        raise TypedDataError(f"{name} must be 0x-prefixed hex")
    try:
        return bytes.fromhex(value[2:])
    except ValueError as e:
        raise TypedDataError(f"{name} is not valid hex") from e


def _word(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _addr_word(address: str) -> bytes:
    return bytes(12) + bytes.fromhex(address[2:])


# --- the two structs ------------------------------------------------------------------------


@dataclass(frozen=True)
class Voucher:
    """Cumulative payment authorization for one lane (payer, node, adapter_id); adapter 0 = base model."""

    payer: str
    node: str
    adapter_id: int
    compute_value: int
    adapter_value: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "payer", _check_address("payer", self.payer))
        object.__setattr__(self, "node", _check_address("node", self.node))
        _check_uint("adapter_id", self.adapter_id, 256)
        _check_uint("compute_value", self.compute_value, 256)
        _check_uint("adapter_value", self.adapter_value, 256)
        # adapter_id 0 with adapter_value > 0 is well-typed but against protocol; the escrow
        # rejects it on chain and the node's metering refuses it, so it stays constructible here.

    def struct_hash(self) -> bytes:
        return keccak(
            VOUCHER_TYPEHASH
            + _addr_word(self.payer)
            + _addr_word(self.node)
            + _word(self.adapter_id)
            + _word(self.compute_value)
            + _word(self.adapter_value)
        )

    def message(self) -> dict:
        """The EIP-712 message dict (camelCase keys) as eth_account/wallets expect it."""
        return {
            "payer": self.payer,
            "node": self.node,
            "adapterId": self.adapter_id,
            "computeValue": self.compute_value,
            "adapterValue": self.adapter_value,
        }

    def to_json(self) -> dict:
        return _to_json(self, _VOUCHER_JSON)

    @classmethod
    def from_json(cls, obj: Mapping | str | bytes) -> "Voucher":
        return cls(**_from_json(obj, _VOUCHER_JSON, "voucher"))


@dataclass(frozen=True)
class Receipt:
    """A node's signed statement about one served request (see docs/interfaces.md)."""

    request_id: bytes
    payer: str
    node: str
    adapter_id: int
    seq: int
    prompt_tokens: int
    completion_tokens: int
    compute_cost: int
    adapter_cost: int
    output_hash: bytes
    attribution_hash: bytes
    timestamp: int

    def __post_init__(self) -> None:
        for f in fields(self):
            kind = _RECEIPT_KINDS[f.name]
            value = getattr(self, f.name)
            if kind == "address":
                object.__setattr__(self, f.name, _check_address(f.name, value))
            elif kind == "bytes32":
                object.__setattr__(self, f.name, _check_bytes32(f.name, value))
            else:
                _check_uint(f.name, value, int(kind[4:]))

    def struct_hash(self) -> bytes:
        return keccak(
            RECEIPT_TYPEHASH
            + self.request_id
            + _addr_word(self.payer)
            + _addr_word(self.node)
            + _word(self.adapter_id)
            + _word(self.seq)
            + _word(self.prompt_tokens)
            + _word(self.completion_tokens)
            + _word(self.compute_cost)
            + _word(self.adapter_cost)
            + self.output_hash
            + self.attribution_hash
            + _word(self.timestamp)
        )

    def message(self) -> dict:
        return {camel: getattr(self, snake) for snake, (camel, _) in _RECEIPT_JSON.items()}

    def to_json(self) -> dict:
        return _to_json(self, _RECEIPT_JSON)

    @classmethod
    def from_json(cls, obj: Mapping | str | bytes) -> "Receipt":
        return cls(**_from_json(obj, _RECEIPT_JSON, "receipt"))


# python field -> (JSON/EIP-712 name, solidity type)
_VOUCHER_JSON = {
    "payer": ("payer", "address"),
    "node": ("node", "address"),
    "adapter_id": ("adapterId", "uint256"),
    "compute_value": ("computeValue", "uint256"),
    "adapter_value": ("adapterValue", "uint256"),
}
_RECEIPT_JSON = {
    "request_id": ("requestId", "bytes32"),
    "payer": ("payer", "address"),
    "node": ("node", "address"),
    "adapter_id": ("adapterId", "uint256"),
    "seq": ("seq", "uint64"),
    "prompt_tokens": ("promptTokens", "uint32"),
    "completion_tokens": ("completionTokens", "uint32"),
    "compute_cost": ("computeCost", "uint256"),
    "adapter_cost": ("adapterCost", "uint256"),
    "output_hash": ("outputHash", "bytes32"),
    "attribution_hash": ("attributionHash", "bytes32"),
    "timestamp": ("timestamp", "uint64"),
}
_RECEIPT_KINDS = {k: t for k, (_, t) in _RECEIPT_JSON.items()}

EIP712_TYPES = {
    "Voucher": [{"name": c, "type": t} for c, t in _VOUCHER_JSON.values()],
    "Receipt": [{"name": c, "type": t} for c, t in _RECEIPT_JSON.values()],
}


# --- domain and digests ---------------------------------------------------------------------


def domain(chain_id: int, verifying_contract: str) -> dict:
    """The EIP-712 domain dict (for wallets / eth_account.sign_typed_data)."""
    return {
        "name": DOMAIN_NAME,
        "version": DOMAIN_VERSION,
        "chainId": _check_uint("chain_id", chain_id, 256),
        "verifyingContract": _check_address("verifying_contract", verifying_contract),
    }


def domain_separator(chain_id: int, verifying_contract: str) -> bytes:
    d = domain(chain_id, verifying_contract)
    return _domain_separator(d["chainId"], d["verifyingContract"])


@lru_cache(maxsize=64)  # a node hashes thousands of receipts under one or two domains
def _domain_separator(chain_id: int, verifying_contract: str) -> bytes:
    return keccak(
        DOMAIN_TYPEHASH
        + keccak(text=DOMAIN_NAME)
        + keccak(text=DOMAIN_VERSION)
        + _word(chain_id)
        + _addr_word(verifying_contract)
    )


def typed_digest(struct_hash: bytes, chain_id: int, verifying_contract: str) -> bytes:
    """keccak256("\\x19\\x01" ‖ domainSeparator ‖ structHash)."""
    return keccak(b"\x19\x01" + domain_separator(chain_id, verifying_contract) + struct_hash)


def voucher_digest(v: Voucher, chain_id: int, escrow: str) -> bytes:
    _check_type("voucher", v, Voucher)
    return typed_digest(v.struct_hash(), chain_id, escrow)


def receipt_digest(r: Receipt, chain_id: int, receipt_log: str) -> bytes:
    _check_type("receipt", r, Receipt)
    return typed_digest(r.struct_hash(), chain_id, receipt_log)


def typed_data(struct: Voucher | Receipt, chain_id: int, verifying_contract: str) -> dict:
    """The full EIP-712 JSON (eth_signTypedData_v4 shape) for a wallet to sign."""
    primary = "Voucher" if isinstance(struct, Voucher) else "Receipt"
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            primary: EIP712_TYPES[primary],
        },
        "primaryType": primary,
        "domain": domain(chain_id, verifying_contract),
        "message": struct.message(),
    }


def _check_type(name: str, value: Any, cls: type) -> None:
    if not isinstance(value, cls):
        raise TypedDataError(f"{name} must be a {cls.__name__}, got {type(value).__name__}")


# --- signatures -----------------------------------------------------------------------------


def _private_key_bytes(private_key: PrivateKeyLike) -> bytes:
    if isinstance(private_key, LocalAccount):
        return bytes(private_key.key)
    if isinstance(private_key, str):
        private_key = _hex_to_bytes("private key", private_key)
    if not isinstance(private_key, (bytes, bytearray)) or len(private_key) != 32:
        raise TypedDataError("private key must be 32 bytes (hex string, bytes or LocalAccount)")
    return bytes(private_key)


def sign_digest(digest: bytes, private_key: PrivateKeyLike) -> bytes:
    """65-byte r ‖ s ‖ v signature (v ∈ {27, 28}, low s) over a 32-byte digest."""
    digest = _check_bytes32("digest", digest)
    try:
        # an account already holds its key object: re-deriving the public key cost as much as signing
        key_obj = getattr(private_key, "_key_obj", None)
        key = key_obj if isinstance(key_obj, keys.PrivateKey) else keys.PrivateKey(_private_key_bytes(private_key))
    except EthKeysValidationError as e:  # 0 or ≥ the curve order
        raise TypedDataError("private key is not a valid secp256k1 key") from e
    sig = key.sign_msg_hash(digest)
    return sig.r.to_bytes(32, "big") + sig.s.to_bytes(32, "big") + bytes([sig.v + 27])


def check_signature(sig: Any) -> bytes:
    """Validate a 65-byte signature the way OpenZeppelin's ECDSA.recover does; return it as bytes."""
    if isinstance(sig, str):
        sig = _hex_to_bytes("signature", sig)
    if not isinstance(sig, (bytes, bytearray)):
        raise TypedDataError(f"signature must be bytes or hex, got {type(sig).__name__}")
    if len(sig) != 65:
        raise TypedDataError(f"signature must be 65 bytes, got {len(sig)}")
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:64], "big")
    if sig[64] not in (27, 28):
        raise TypedDataError(f"signature v must be 27 or 28, got {sig[64]}")
    if not 0 < r < SECP256K1_N or not 0 < s < SECP256K1_N:
        raise TypedDataError("signature r/s out of range")
    if s > SECP256K1_HALF_N:
        raise TypedDataError("malleable signature: s is in the upper half of the curve order")
    return bytes(sig)


def recover_digest_signer(digest: bytes, sig: Any) -> str:
    digest = _check_bytes32("digest", digest)
    sig = check_signature(sig)
    try:
        signature = keys.Signature(signature_bytes=sig[:64] + bytes([sig[64] - 27]))
        address = signature.recover_public_key_from_msg_hash(digest).to_canonical_address()
    except (BadSignature, EthKeysValidationError) as e:
        raise TypedDataError(f"signature does not recover: {e}") from e
    # cached EIP-55 (a keccak): a node recovers the same few signers again and again
    checksummed = _checksum("0x" + address.hex())
    if checksummed is None:  # unreachable: 20 bytes always make a hex address
        raise TypedDataError("recovered public key has no address")
    return checksummed


def sign_voucher(v: Voucher, private_key: PrivateKeyLike, chain_id: int, escrow: str) -> bytes:
    return sign_digest(voucher_digest(v, chain_id, escrow), private_key)


def recover_voucher_signer(v: Voucher, sig: Any, chain_id: int, escrow: str) -> str:
    return recover_digest_signer(voucher_digest(v, chain_id, escrow), sig)


def signer_proof_digest(payer: str, deadline: int, nonce: int, chain_id: int, escrow: str) -> bytes:
    """What a signer key signs to consent to sign vouchers for `payer` until `deadline` (unix seconds),
    for its authorization number `nonce` (UsageEscrow.signerOf's nonce: one consent authorizes once)."""
    struct = keccak(
        SIGNER_PROOF_TYPEHASH
        + _addr_word(_check_address("payer", payer))
        + _word(_check_uint("deadline", deadline, 256))
        + _word(_check_uint("nonce", nonce, 256))
    )
    return typed_digest(struct, chain_id, escrow)


def sign_signer_proof(payer: str, deadline: int, nonce: int, signer_key: PrivateKeyLike, chain_id: int, escrow: str) -> bytes:
    """The signer key's proof for UsageEscrow.authorizeSigner(signer, deadline, proof) sent by `payer`."""
    return sign_digest(signer_proof_digest(payer, deadline, nonce, chain_id, escrow), signer_key)


def sign_receipt(r: Receipt, private_key: PrivateKeyLike, chain_id: int, receipt_log: str) -> bytes:
    return sign_digest(receipt_digest(r, chain_id, receipt_log), private_key)


def recover_receipt_signer(r: Receipt, sig: Any, chain_id: int, receipt_log: str) -> str:
    return recover_digest_signer(receipt_digest(r, chain_id, receipt_log), sig)


# --- receipt content hashes -----------------------------------------------------------------


def output_hash(text: str) -> bytes:
    """keccak256 of the UTF-8 bytes of the completion text."""
    if not isinstance(text, str):
        raise TypedDataError(f"text must be str, got {type(text).__name__}")
    try:
        return keccak(text.encode("utf-8"))
    except UnicodeEncodeError as e:  # lone surrogates have no UTF-8 form
        raise TypedDataError(f"text is not encodable as UTF-8: {e}") from e


def attribution_hash(ids: list[int] | tuple[int, ...], weights_bps: list[int] | tuple[int, ...]) -> bytes:
    """keccak256(abi.encode(uint256[] ids, uint256[] weightsBps)); ids strictly ascending.

    Weights are basis points of the completion attributed to each contribution: each ≤ 10,000
    and their sum ≤ 10,000 (the rest is unattributed). No attribution = two empty lists.
    """
    ids, weights_bps = list(ids), list(weights_bps)
    if len(ids) != len(weights_bps):
        raise TypedDataError(f"{len(ids)} contribution ids but {len(weights_bps)} weights")
    if len(ids) > MAX_ATTRIBUTIONS:
        raise TypedDataError(f"at most {MAX_ATTRIBUTIONS} attributions, got {len(ids)}")
    for i, (cid, w) in enumerate(zip(ids, weights_bps, strict=True)):
        _check_uint(f"ids[{i}]", cid, 256)
        _check_uint(f"weights_bps[{i}]", w, 256)
        if w > TOTAL_BPS:
            raise TypedDataError(f"weights_bps[{i}] = {w} exceeds {TOTAL_BPS}")
        if i and cid <= ids[i - 1]:
            raise TypedDataError("contribution ids must be strictly ascending")
    if sum(weights_bps) > TOTAL_BPS:
        raise TypedDataError(f"weights sum to {sum(weights_bps)} bps, more than {TOTAL_BPS}")
    return keccak(abi_encode(["uint256[]", "uint256[]"], [ids, weights_bps]))


NO_ATTRIBUTION_HASH = keccak(abi_encode(["uint256[]", "uint256[]"], [[], []]))


# --- JSON: hex strings for bytes/addresses, decimal strings for ints ------------------------


def _to_json(obj: Any, spec: dict) -> dict:
    out = {}
    for snake, (camel, kind) in spec.items():
        value = getattr(obj, snake)
        if kind == "address":
            out[camel] = value
        elif kind == "bytes32":
            out[camel] = "0x" + value.hex()
        else:
            out[camel] = str(value)
    return out


def _parse_json_obj(obj: Mapping | str | bytes, what: str) -> Mapping:
    if isinstance(obj, (str, bytes, bytearray)):
        if len(obj) > MAX_JSON_BYTES:
            raise TypedDataError(f"{what} JSON is larger than {MAX_JSON_BYTES} bytes")
        try:
            obj = json.loads(obj)
        except ValueError as e:
            raise TypedDataError(f"{what} is not valid JSON: {e}") from e
    if not isinstance(obj, Mapping):
        raise TypedDataError(f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def _from_json(obj: Mapping | str | bytes, spec: dict, what: str, extra: tuple[str, ...] = ()) -> dict:
    obj = _parse_json_obj(obj, what)
    expected = {camel for camel, _ in spec.values()} | set(extra)
    unknown = set(obj) - expected
    missing = expected - set(obj) - set(extra)
    if unknown:
        raise TypedDataError(f"{what} has unknown fields: {sorted(map(str, unknown))[:5]}")
    if missing:
        raise TypedDataError(f"{what} is missing fields: {sorted(missing)}")
    kwargs: dict[str, str | int] = {}
    for snake, (camel, kind) in spec.items():
        value = obj[camel]
        if not isinstance(value, str):
            raise TypedDataError(f"{what}.{camel} must be a string, got {type(value).__name__}")
        if kind in ("address", "bytes32"):
            kwargs[snake] = value
        else:
            kwargs[snake] = _parse_uint_str(f"{what}.{camel}", value, int(kind[4:]))
    return kwargs


def _parse_uint_str(name: str, value: str, bits: int) -> int:
    # canonical decimal only: no sign, no spaces, no leading zeros, no underscores, bounded length
    if not value.isascii() or not value.isdigit() or (len(value) > 1 and value[0] == "0"):
        raise TypedDataError(f"{name} must be a canonical decimal string, got {value!r:.80}")
    if len(value) > 78:  # 2**256 has 78 digits; stops huge-int parsing early
        raise TypedDataError(f"{name} out of range for uint{bits}")
    return _check_uint(name, int(value), bits)


@dataclass(frozen=True)
class SignedVoucher:
    """A voucher plus its payer-side signature, as sent in the X-Payment-Voucher header."""

    voucher: Voucher
    signature: bytes

    def __post_init__(self) -> None:
        _check_type("voucher", self.voucher, Voucher)
        object.__setattr__(self, "signature", check_signature(self.signature))

    def signer(self, chain_id: int, escrow: str) -> str:
        return recover_voucher_signer(self.voucher, self.signature, chain_id, escrow)

    def to_json(self) -> dict:
        return {**self.voucher.to_json(), "signature": "0x" + self.signature.hex()}

    @classmethod
    def from_json(cls, obj: Mapping | str | bytes) -> "SignedVoucher":
        obj = _parse_json_obj(obj, "signed voucher")
        kwargs = _from_json(obj, _VOUCHER_JSON, "signed voucher", extra=("signature",))
        return cls(Voucher(**kwargs), _required_sig(obj, "signed voucher"))


@dataclass(frozen=True)
class SignedReceipt:
    """A receipt plus the node's signature, as returned to the client."""

    receipt: Receipt
    signature: bytes

    def __post_init__(self) -> None:
        _check_type("receipt", self.receipt, Receipt)
        object.__setattr__(self, "signature", check_signature(self.signature))

    def signer(self, chain_id: int, receipt_log: str) -> str:
        return recover_receipt_signer(self.receipt, self.signature, chain_id, receipt_log)

    def to_json(self) -> dict:
        return {**self.receipt.to_json(), "signature": "0x" + self.signature.hex()}

    @classmethod
    def from_json(cls, obj: Mapping | str | bytes) -> "SignedReceipt":
        obj = _parse_json_obj(obj, "signed receipt")
        kwargs = _from_json(obj, _RECEIPT_JSON, "signed receipt", extra=("signature",))
        return cls(Receipt(**kwargs), _required_sig(obj, "signed receipt"))


def _required_sig(obj: Mapping, what: str) -> bytes:
    if "signature" not in obj:
        raise TypedDataError(f"{what} is missing fields: ['signature']")
    sig = obj["signature"]
    if not isinstance(sig, str):
        raise TypedDataError(f"{what}.signature must be a hex string")
    return check_signature(sig)


def address_of(private_key: PrivateKeyLike) -> str:
    """Checksummed address of a private key (convenience for tests and CLIs)."""
    return Account.from_key(_private_key_bytes(private_key)).address
