"""Contribution bytes -> token ids, with the checks untrusted content needs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from inference.attribution.errors import (
    ContributionTooLargeError,
    EmptyContributionError,
    NotUtf8Error,
)

# Tokenize in pieces of about this many characters, cut at a newline: bounds the tokenizer's
# per-call memory (HF encodings keep offsets etc., ~100 B/token) on multi-MB contributions.
_CHUNK_CHARS = 1 << 18


def read_contribution(path: Path, cid: str, max_bytes: int) -> bytes:
    """Read a contribution file, refusing it before reading everything when over `max_bytes`."""
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ContributionTooLargeError(cid, f"over the cap of {max_bytes} bytes")
    return data


def decode_contribution(data: bytes, cid: str, max_bytes: int) -> str:
    """Strict UTF-8 decode with the size cap and emptiness checks."""
    if len(data) > max_bytes:
        raise ContributionTooLargeError(cid, f"{len(data)} bytes is over the cap of {max_bytes}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NotUtf8Error(cid, f"not UTF-8 text (invalid byte at offset {e.start})") from e
    if not text.strip():
        raise EmptyContributionError(cid, "no text (empty or only whitespace)")
    return text


def _chunks(text: str) -> list[str]:
    out, start = [], 0
    while start < len(text):
        end = min(len(text), start + _CHUNK_CHARS)
        if end < len(text):
            cut = text.rfind("\n", start, end)
            end = cut + 1 if cut > start else end
        out.append(text[start:end])
        start = end
    return out


def tokenize(tokenizer, text: str) -> np.ndarray:
    """Token ids (n,) uint32 of `text`, no special tokens. Uses the fast backend when present."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pieces = _chunks(text)
    if backend is not None:
        encs = backend.encode_batch(pieces, add_special_tokens=False)
        ids = [e.ids for e in encs]
    else:
        ids = [tokenizer.encode(p, add_special_tokens=False) for p in pieces]
    flat = np.concatenate([np.asarray(part, dtype=np.int64) for part in ids] or [np.zeros(0, np.int64)])
    if flat.size and (flat.min() < 0 or flat.max() >= 2**32 - 1):
        raise ValueError("token ids out of uint32 range")
    return flat.astype(np.uint32)


def tokenizer_fingerprint(tokenizer) -> str:
    """Hex sha256 identifying the tokenizer: an index built with other token ids is useless."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h = hashlib.sha256()
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        for tok, i in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
            h.update(f"{i}\t{tok}\n".encode())
    return h.hexdigest()
