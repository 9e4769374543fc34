"""One contribution's exact-match index: its token ids and their suffix array (8 bytes/token).

On disk it is a safetensors file (arrays `tokens`, `sa`, both uint32) whose metadata binds it to
where it came from: the contribution's CID, the sha256 of the contribution's bytes, the tokenizer
fingerprint and a sha256 over all of that plus the arrays. A file that does not verify is never
used (the store rebuilds it). The checksum catches corruption and mix-ups; the bytes it covers
were themselves verified against the CID by whoever fetched them (node.ipfs).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference.attribution.errors import ContributionTooLargeError, EmptyContributionError, IndexCacheError
from inference.attribution.suffix_array import build_suffix_array, matching_statistics

FORMAT_VERSION = "1"
_CID_RE = re.compile(r"^[A-Za-z0-9]{1,128}$")


def check_cid(cid: str) -> str:
    """A CID is used in file names: accept base-encoded CIDs only (no separators, no dots)."""
    if not isinstance(cid, str) or not _CID_RE.match(cid):
        raise ValueError(f"not a CID: {cid!r}")
    return cid


def _checksum(cid: str, source_sha256: str, tokenizer_fp: str, tokens: np.ndarray, sa: np.ndarray) -> str:
    h = hashlib.sha256()
    for part in (FORMAT_VERSION, cid, source_sha256, tokenizer_fp):
        h.update(part.encode() + b"\0")
    h.update(np.ascontiguousarray(tokens, dtype=np.uint32).tobytes())
    h.update(np.ascontiguousarray(sa, dtype=np.uint32).tobytes())
    return h.hexdigest()


@dataclass
class ContributionIndex:
    """Suffix array index over one contribution's tokens (n,) uint32 and sa (n,) uint32."""

    cid: str
    source_sha256: str
    tokenizer_fp: str
    tokens: np.ndarray
    sa: np.ndarray

    @classmethod
    def build(cls, cid: str, source_sha256: str, tokenizer_fp: str, tokens: np.ndarray, max_tokens: int) -> "ContributionIndex":
        check_cid(cid)
        if tokens.shape[0] == 0:
            raise EmptyContributionError(cid, "tokenizes to zero tokens")
        if tokens.shape[0] > max_tokens:
            raise ContributionTooLargeError(cid, f"{tokens.shape[0]} tokens is over the cap of {max_tokens}")
        tokens = np.ascontiguousarray(tokens, dtype=np.uint32)
        return cls(cid, source_sha256, tokenizer_fp, tokens, build_suffix_array(tokens))

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of the index arrays: 4 (token id) + 4 (suffix array entry) per token."""
        return self.tokens.nbytes + self.sa.nbytes

    def longest_matches(self, query: np.ndarray, k: int, cap: int) -> np.ndarray:
        """(m,) token ids -> (m,) int32 longest match starting at each position (0 if < k)."""
        return matching_statistics(self.tokens, self.sa, np.array([0, self.n_tokens]), query, k, cap)[0]

    # --- disk -----------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write atomically (temp file + rename), so a crash never leaves a half file in place."""
        from safetensors.numpy import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT_VERSION,
            "cid": self.cid,
            "source_sha256": self.source_sha256,
            "tokenizer_fp": self.tokenizer_fp,
            "checksum": _checksum(self.cid, self.source_sha256, self.tokenizer_fp, self.tokens, self.sa),
        }
        fd, tmp = tempfile.mkstemp(prefix=".idx-", dir=path.parent)
        os.close(fd)
        try:
            save_file({"tokens": self.tokens, "sa": self.sa}, tmp, metadata=meta)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: Path, *, cid: str, source_sha256: str, tokenizer_fp: str) -> "ContributionIndex":
        """Load and verify; raises IndexCacheError on any mismatch or damage."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                tokens = f.get_tensor("tokens")
                sa = f.get_tensor("sa")
        except Exception as e:  # safetensors raises several types for damaged headers/data
            raise IndexCacheError(f"{path}: unreadable index file ({e})") from e
        expected = {"format": FORMAT_VERSION, "cid": cid, "source_sha256": source_sha256, "tokenizer_fp": tokenizer_fp}
        for key, want in expected.items():
            if meta.get(key) != want:
                raise IndexCacheError(f"{path}: {key} is {meta.get(key)!r}, expected {want!r}")
        if tokens.dtype != np.uint32 or sa.dtype != np.uint32 or tokens.ndim != 1 or sa.shape != tokens.shape:
            raise IndexCacheError(f"{path}: arrays have the wrong dtype or shape")
        if meta.get("checksum") != _checksum(cid, source_sha256, tokenizer_fp, tokens, sa):
            raise IndexCacheError(f"{path}: checksum mismatch (file damaged or tampered)")
        return cls(cid, source_sha256, tokenizer_fp, tokens, sa)
