"""CIDs and the multiformats they are made of: unsigned varints, multihash (sha2-256),
multibase (base58btc for CIDv0 and `z`, base32 lower for `b`)."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from node.ipfs.errors import BlockHashMismatch, InvalidCID

CODEC_RAW = 0x55
CODEC_DAG_PB = 0x70
MH_SHA2_256 = 0x12
SHA256_LEN = 32

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}


def encode_varint(n: int) -> bytes:
    if n < 0:
        raise ValueError("varint must be non-negative")
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def decode_varint(buf: bytes | memoryview, pos: int = 0) -> tuple[int, int]:
    """Decode an unsigned LEB128 varint at `pos`; returns (value, next position)."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58[r])
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + "".join(reversed(out))


def b58decode(s: str) -> bytes:
    n = 0
    for c in s:
        try:
            n = n * 58 + _B58_INDEX[c]
        except KeyError:
            raise InvalidCID(f"invalid base58 character {c!r}") from None
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    pad = len(s) - len(s.lstrip("1"))
    return b"\0" * pad + body


def b32encode(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def b32decode(s: str) -> bytes:
    try:
        return base64.b32decode(s.upper() + "=" * (-len(s) % 8))
    except ValueError as e:
        raise InvalidCID(f"invalid base32: {e}") from e


@dataclass(frozen=True, slots=True)
class CID:
    """A content identifier: version (0 or 1), codec (dag-pb or raw) and a sha2-256 multihash."""

    version: int
    codec: int
    digest: bytes  # the raw 32-byte sha2-256 digest

    def __post_init__(self) -> None:
        if self.version not in (0, 1):
            raise InvalidCID(f"unsupported CID version {self.version}")
        if self.version == 0 and self.codec != CODEC_DAG_PB:
            raise InvalidCID("CIDv0 is always dag-pb")
        if self.codec not in (CODEC_RAW, CODEC_DAG_PB):
            raise InvalidCID(f"unsupported codec 0x{self.codec:x} (only dag-pb and raw)")
        if len(self.digest) != SHA256_LEN:
            raise InvalidCID("digest must be 32 bytes (sha2-256)")

    # --- construction -------------------------------------------------------------
    @classmethod
    def of(cls, version: int, codec: int, block: bytes | memoryview) -> "CID":
        return cls(version, codec, hashlib.sha256(block).digest())

    @classmethod
    def parse(cls, text: str) -> "CID":
        """Parse a CID string: CIDv0 (`Qm…`, base58btc) or CIDv1 in base32 (`b…`) or base58btc (`z…`)."""
        if not isinstance(text, str) or not text:
            raise InvalidCID("empty CID")
        text = text.strip()
        if len(text) == 46 and text.startswith("Qm"):
            mh = b58decode(text)
            return cls._from_multihash(0, CODEC_DAG_PB, mh)
        prefix, body = text[0], text[1:]
        if prefix == "b":
            raw = b32decode(body)
        elif prefix == "B":
            raw = b32decode(body.lower())
        elif prefix == "z":
            raw = b58decode(body)
        else:
            raise InvalidCID(f"unsupported multibase prefix {prefix!r} in {text[:20]!r}")
        cid, end = cls.from_bytes(raw)
        if end != len(raw):
            raise InvalidCID("trailing bytes after CID")
        return cid

    @classmethod
    def from_bytes(cls, buf: bytes | memoryview, pos: int = 0) -> tuple["CID", int]:
        """Decode a binary CID at `pos` (CIDv0 = bare multihash); returns (cid, next position)."""
        try:
            if buf[pos] == MH_SHA2_256 and pos + 1 < len(buf) and buf[pos + 1] == SHA256_LEN:
                end = pos + 2 + SHA256_LEN
                if end > len(buf):
                    raise InvalidCID("truncated CIDv0")
                return cls(0, CODEC_DAG_PB, bytes(buf[pos + 2 : end])), end
            version, pos = decode_varint(buf, pos)
            if version != 1:
                raise InvalidCID(f"unsupported CID version {version}")
            codec, pos = decode_varint(buf, pos)
            mh_code, pos = decode_varint(buf, pos)
            mh_len, pos = decode_varint(buf, pos)
        except (IndexError, ValueError) as e:
            if isinstance(e, InvalidCID):
                raise
            raise InvalidCID(f"malformed CID bytes: {e}") from e
        if mh_code != MH_SHA2_256 or mh_len != SHA256_LEN:
            raise InvalidCID(f"unsupported multihash 0x{mh_code:x}/{mh_len} (only sha2-256)")
        end = pos + SHA256_LEN
        if end > len(buf):
            raise InvalidCID("truncated CID digest")
        return cls(1, codec, bytes(buf[pos:end])), end

    @classmethod
    def _from_multihash(cls, version: int, codec: int, mh: bytes) -> "CID":
        if len(mh) != 2 + SHA256_LEN or mh[0] != MH_SHA2_256 or mh[1] != SHA256_LEN:
            raise InvalidCID("CIDv0 must be a sha2-256 multihash")
        return cls(version, codec, mh[2:])

    # --- encoding -----------------------------------------------------------------
    @property
    def multihash(self) -> bytes:
        return bytes((MH_SHA2_256, SHA256_LEN)) + self.digest

    def to_bytes(self) -> bytes:
        if self.version == 0:
            return self.multihash
        return b"\x01" + encode_varint(self.codec) + self.multihash

    def __str__(self) -> str:
        if self.version == 0:
            return b58encode(self.multihash)
        return "b" + b32encode(self.to_bytes())

    def to_v1(self) -> "CID":
        return CID(1, self.codec, self.digest)

    def verify(self, block: bytes | memoryview) -> None:
        """Raise `BlockHashMismatch` unless `block` hashes to this CID."""
        if hashlib.sha256(block).digest() != self.digest:
            raise BlockHashMismatch(f"block does not hash to {self}")
