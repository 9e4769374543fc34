"""chain.eip712 against eth_account's independent EIP-712 encoder, plus signing and strict JSON."""

from __future__ import annotations

import json

import pytest
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak, to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st

from chain.devchain import DEV_PRIVATE_KEYS
from chain.eip712 import (
    NO_ATTRIBUTION_HASH,
    SECP256K1_N,
    Receipt,
    SignedReceipt,
    SignedVoucher,
    TypedDataError,
    Voucher,
    attribution_hash,
    domain,
    output_hash,
    receipt_digest,
    recover_receipt_signer,
    recover_voucher_signer,
    sign_receipt,
    sign_voucher,
    typed_data,
    voucher_digest,
)

KEY = DEV_PRIVATE_KEYS[1]
SIGNER = Account.from_key(KEY).address
ESCROW = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
LOG = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"

addresses = st.binary(min_size=20, max_size=20).map(lambda b: to_checksum_address(b))
u256 = st.integers(0, 2**256 - 1)
u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)
b32 = st.binary(min_size=32, max_size=32)
chain_ids = st.integers(1, 2**64)

vouchers = st.builds(Voucher, addresses, addresses, u256, u256, u256)
receipts = st.builds(Receipt, b32, addresses, addresses, u256, u64, u32, u32, u256, u256, b32, b32, u64)


def reference_digest(struct, chain_id: int, contract: str) -> bytes:
    """eth_account's generic EIP-712 implementation: an encoder independent of ours."""
    full = typed_data(struct, chain_id, contract)
    msg = encode_typed_data(full_message=full)
    return keccak(b"\x19" + msg.version + msg.header + msg.body)


def sample_voucher(**kw) -> Voucher:
    base = dict(payer=SIGNER, node=ESCROW, adapter_id=7, compute_value=10**18, adapter_value=123)
    return Voucher(**{**base, **kw})


def sample_receipt(**kw) -> Receipt:
    base = dict(
        request_id=b"\x01" * 32,
        payer=SIGNER,
        node=LOG,
        adapter_id=3,
        seq=1,
        prompt_tokens=12,
        completion_tokens=34,
        compute_cost=5,
        adapter_cost=6,
        output_hash=output_hash("hi"),
        attribution_hash=attribution_hash([1, 4], [2500, 500]),
        timestamp=1_700_000_000,
    )
    return Receipt(**{**base, **kw})


@settings(max_examples=60, deadline=None)
@given(v=vouchers, chain_id=chain_ids, contract=addresses)
def test_voucher_digest_matches_eth_account(v, chain_id, contract):
    assert voucher_digest(v, chain_id, contract) == reference_digest(v, chain_id, contract)


@settings(max_examples=60, deadline=None)
@given(r=receipts, chain_id=chain_ids, contract=addresses)
def test_receipt_digest_matches_eth_account(r, chain_id, contract):
    assert receipt_digest(r, chain_id, contract) == reference_digest(r, chain_id, contract)


def test_sign_recover_round_trip_and_eth_account_agrees():
    v = sample_voucher()
    sig = sign_voucher(v, KEY, 31337, ESCROW)
    assert len(sig) == 65 and sig[64] in (27, 28)
    assert recover_voucher_signer(v, sig, 31337, ESCROW) == SIGNER
    # eth_account signing the same typed data yields the same (deterministic RFC 6979) signature
    theirs = Account.sign_typed_data(KEY, full_message=typed_data(v, 31337, ESCROW))
    assert bytes(theirs.signature) == sig

    r = sample_receipt()
    rsig = sign_receipt(r, Account.from_key(KEY), 31337, LOG)  # LocalAccount works too
    assert recover_receipt_signer(r, rsig, 31337, LOG) == SIGNER


@pytest.mark.parametrize(
    "change",
    [dict(payer=ESCROW), dict(node=SIGNER), dict(adapter_id=8), dict(compute_value=10**18 + 1), dict(adapter_value=124)],
)
def test_tampered_voucher_recovers_another_signer(change):
    sig = sign_voucher(sample_voucher(), KEY, 31337, ESCROW)
    assert recover_voucher_signer(sample_voucher(**change), sig, 31337, ESCROW) != SIGNER


@pytest.mark.parametrize(
    "change",
    [
        dict(request_id=b"\x02" * 32),
        dict(payer=ESCROW),
        dict(node=SIGNER),
        dict(adapter_id=4),
        dict(seq=2),
        dict(prompt_tokens=13),
        dict(completion_tokens=35),
        dict(compute_cost=4),
        dict(adapter_cost=7),
        dict(output_hash=output_hash("hj")),
        dict(attribution_hash=NO_ATTRIBUTION_HASH),
        dict(timestamp=1_700_000_001),
    ],
)
def test_tampered_receipt_recovers_another_signer(change):
    sig = sign_receipt(sample_receipt(), KEY, 31337, LOG)
    assert recover_receipt_signer(sample_receipt(**change), sig, 31337, LOG) != SIGNER


def test_domain_separation():
    v = sample_voucher()
    sig = sign_voucher(v, KEY, 31337, ESCROW)
    assert recover_voucher_signer(v, sig, 1, ESCROW) != SIGNER
    assert recover_voucher_signer(v, sig, 31337, LOG) != SIGNER
    # the same fields as a receipt-log domain never collide with the escrow domain
    assert voucher_digest(v, 31337, ESCROW) != voucher_digest(v, 31337, LOG)
    assert domain(31337, ESCROW.lower())["verifyingContract"] == ESCROW


def test_signature_validation():
    v = sample_voucher()
    sig = sign_voucher(v, KEY, 31337, ESCROW)
    with pytest.raises(TypedDataError, match="65 bytes"):
        recover_voucher_signer(v, sig[:64], 31337, ESCROW)
    with pytest.raises(TypedDataError, match="65 bytes"):
        recover_voucher_signer(v, sig + b"\x00", 31337, ESCROW)
    with pytest.raises(TypedDataError, match="v must be 27 or 28"):
        recover_voucher_signer(v, sig[:64] + bytes([sig[64] - 27]), 31337, ESCROW)
    # the malleable twin (s' = n - s, v flipped) recovers the same key but must be refused,
    # exactly like OpenZeppelin ECDSA.recover
    s = int.from_bytes(sig[32:64], "big")
    twin = sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])
    with pytest.raises(TypedDataError, match="malleable"):
        recover_voucher_signer(v, twin, 31337, ESCROW)
    with pytest.raises(TypedDataError, match="r/s out of range"):
        recover_voucher_signer(v, bytes(64) + b"\x1b", 31337, ESCROW)
    with pytest.raises(TypedDataError, match="bytes or hex"):
        recover_voucher_signer(v, 12345, 31337, ESCROW)
    assert recover_voucher_signer(v, "0x" + sig.hex(), 31337, ESCROW) == SIGNER


@pytest.mark.parametrize("key", [bytes(32), SECP256K1_N.to_bytes(32, "big"), b"\x01" * 31, "0x1234", 12345])
def test_bad_private_keys_are_refused(key):
    with pytest.raises(TypedDataError, match="private key"):
        sign_voucher(sample_voucher(), key, 31337, ESCROW)


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(payer="0x1234"), "20-byte hex address"),
        (dict(payer=b"\x00" * 20), "20-byte hex address"),
        (dict(payer=SIGNER[:-1] + ("A" if SIGNER[-1] != "A" else "B")), "hex address|checksum"),
        (dict(node="0x" + "aB" * 20), "checksum"),
        (dict(adapter_id=-1), "out of range"),
        (dict(compute_value=2**256), "out of range"),
        (dict(adapter_value=1.5), "must be an int"),
        (dict(adapter_value=True), "must be an int"),
        (dict(compute_value="100"), "must be an int"),
    ],
)
def test_voucher_rejects_bad_fields(kw, msg):
    with pytest.raises(TypedDataError, match=msg):
        sample_voucher(**kw)


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(seq=2**64), "uint64"),
        (dict(prompt_tokens=2**32), "uint32"),
        (dict(request_id=b"\x01" * 31), "32 bytes"),
        (dict(output_hash="0x1234"), "32 bytes"),
        (dict(attribution_hash="12" * 32), "0x-prefixed"),
        (dict(attribution_hash="0x" + "zz" * 32), "not valid hex"),
        (dict(timestamp=-5), "out of range"),
    ],
)
def test_receipt_rejects_bad_fields(kw, msg):
    with pytest.raises(TypedDataError, match=msg):
        sample_receipt(**kw)


def test_hex_bytes_are_normalised():
    r = sample_receipt(request_id="0x" + "ab" * 32)
    assert r.request_id == bytes.fromhex("ab" * 32)
    assert r == sample_receipt(request_id=bytes.fromhex("ab" * 32))
    with pytest.raises(TypedDataError, match="must be a Voucher"):
        voucher_digest(r, 1, ESCROW)


def test_attribution_hash():
    assert attribution_hash([], []) == NO_ATTRIBUTION_HASH
    expected = keccak(abi_encode(["uint256[]", "uint256[]"], [[1, 9], [100, 200]]))
    assert attribution_hash([1, 9], [100, 200]) == expected
    assert attribution_hash((1, 9), (100, 200)) == expected
    with pytest.raises(TypedDataError, match="ascending"):
        attribution_hash([9, 1], [100, 200])
    with pytest.raises(TypedDataError, match="ascending"):
        attribution_hash([1, 1], [100, 200])
    with pytest.raises(TypedDataError, match="2 contribution ids but 1"):
        attribution_hash([1, 2], [100])
    with pytest.raises(TypedDataError, match="exceeds"):
        attribution_hash([1], [10_001])
    with pytest.raises(TypedDataError, match="sum to"):
        attribution_hash([1, 2], [6000, 6000])
    with pytest.raises(TypedDataError, match="at most"):
        attribution_hash(list(range(2000)), [0] * 2000)


def test_output_hash():
    assert output_hash("héllo") == keccak("héllo".encode())
    assert output_hash("") == keccak(b"")
    with pytest.raises(TypedDataError, match="UTF-8"):
        output_hash("\ud800")
    with pytest.raises(TypedDataError, match="must be str"):
        output_hash(b"bytes")


@settings(max_examples=40, deadline=None)
@given(v=vouchers, r=receipts)
def test_json_round_trip(v, r):
    assert Voucher.from_json(v.to_json()) == v
    assert Voucher.from_json(json.dumps(v.to_json())) == v
    assert Receipt.from_json(r.to_json()) == r
    assert all(isinstance(x, str) for x in r.to_json().values())


def test_signed_json_round_trip():
    v = sample_voucher()
    sv = SignedVoucher(v, sign_voucher(v, KEY, 31337, ESCROW))
    back = SignedVoucher.from_json(json.dumps(sv.to_json()))
    assert back == sv and back.signer(31337, ESCROW) == SIGNER
    r = sample_receipt()
    sr = SignedReceipt(r, sign_receipt(r, KEY, 31337, LOG))
    assert SignedReceipt.from_json(sr.to_json()).signer(31337, LOG) == SIGNER


@pytest.mark.parametrize(
    "mutate, msg",
    [
        (lambda d: d.update(computeValue=5), "must be a string"),
        (lambda d: d.update(computeValue="-5"), "canonical decimal"),
        (lambda d: d.update(computeValue="0x10"), "canonical decimal"),
        (lambda d: d.update(computeValue="007"), "canonical decimal"),
        (lambda d: d.update(computeValue=" 7"), "canonical decimal"),
        (lambda d: d.update(computeValue="١٢"), "canonical decimal"),  # non-ASCII digits
        (lambda d: d.update(computeValue=str(2**256)), "out of range"),
        (lambda d: d.update(computeValue="9" * 5000), "out of range"),
        (lambda d: d.update(payer="nope"), "hex address"),
        (lambda d: d.pop("node"), "missing fields"),
        (lambda d: d.update(extra="1"), "unknown fields"),
        (lambda d: d.update(signature="0x" + "00" * 64), "65 bytes"),
        (lambda d: d.pop("signature"), "missing fields"),
        (lambda d: d.update(signature=1), "hex string"),
    ],
)
def test_signed_voucher_json_rejects_bad_input(mutate, msg):
    v = sample_voucher()
    d = SignedVoucher(v, sign_voucher(v, KEY, 31337, ESCROW)).to_json()
    mutate(d)
    with pytest.raises(TypedDataError, match=msg):
        SignedVoucher.from_json(d)


@pytest.mark.parametrize(
    "raw, msg",
    [("[1,2]", "JSON object"), ("{not json", "not valid JSON"), ("x" * 10_000, "larger than"), (42, "JSON object")],
)
def test_json_rejects_non_objects(raw, msg):
    with pytest.raises(TypedDataError, match=msg):
        Voucher.from_json(raw)


def test_receipt_json_rejects_bad_bytes32():
    d = sample_receipt().to_json()
    d["outputHash"] = "0x" + "00" * 33
    with pytest.raises(TypedDataError, match="32 bytes"):
        Receipt.from_json(d)
    d = sample_receipt().to_json()
    d["seq"] = str(2**64)
    with pytest.raises(TypedDataError, match="uint64"):
        Receipt.from_json(d)
