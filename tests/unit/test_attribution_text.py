"""Contribution bytes -> tokens: chunking, caps and a tokenizer without a fast backend."""

from __future__ import annotations

import numpy as np
import pytest

from inference.attribution.errors import ContributionTooLargeError, EmptyContributionError, NotUtf8Error
from inference.attribution.text import (
    _CHUNK_CHARS,
    _chunks,
    decode_contribution,
    read_contribution,
    tokenize,
    tokenizer_fingerprint,
)


class WordTokenizer:
    """A minimal slow-style tokenizer (encode/get_vocab only): exercises the non-HF-fast path.
    Word ids come from a fixed dict, so results are checkable by hand."""

    def __init__(self):
        self.vocab = {"alpha": 0, "beta": 1, "gamma": 2, "\n": 3}

    def encode(self, text, add_special_tokens=False):
        return [self.vocab[w] for w in text.replace("\n", " \n ").split(" ") if w]

    def get_vocab(self):
        return dict(self.vocab)


def test_chunks_cut_at_newlines_and_lose_nothing():
    line = "alpha beta gamma\n"
    text = line * (3 * _CHUNK_CHARS // len(line))
    parts = _chunks(text)
    assert "".join(parts) == text and len(parts) >= 3
    assert all(p.endswith("\n") for p in parts)
    one_line = "x" * (_CHUNK_CHARS * 2 + 5)  # no newline at all: hard cuts, still lossless
    assert "".join(_chunks(one_line)) == one_line


def test_slow_tokenizer_path_and_fingerprint():
    tok = WordTokenizer()
    ids = tokenize(tok, "alpha beta\ngamma alpha")
    assert ids.dtype == np.uint32 and ids.tolist() == [0, 1, 3, 2, 0]
    fp = tokenizer_fingerprint(tok)
    assert fp == tokenizer_fingerprint(WordTokenizer())
    other = WordTokenizer()
    other.vocab["delta"] = 4
    assert tokenizer_fingerprint(other) != fp


def test_decode_checks(tmp_path):
    assert decode_contribution("héllo".encode(), "bafkx", 100) == "héllo"
    with pytest.raises(NotUtf8Error, match="offset 1"):
        decode_contribution(b"h\xc3(", "bafkx", 100)
    with pytest.raises(NotUtf8Error):
        decode_contribution("hello".encode("utf-16"), "bafkx", 100)
    with pytest.raises(EmptyContributionError):
        decode_contribution(b"\n\n", "bafkx", 100)
    with pytest.raises(ContributionTooLargeError):
        decode_contribution(b"a" * 101, "bafkx", 100)
    f = tmp_path / "c.txt"
    f.write_bytes(b"a" * 100)
    assert read_contribution(f, "bafkx", 100) == b"a" * 100
    with pytest.raises(ContributionTooLargeError):
        read_contribution(f, "bafkx", 99)
