"""On-disk cache of contribution indexes under a data dir, keyed by CID and tokenizer."""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from inference.attribution.errors import CidMismatchError, ContributionTooLargeError, IndexCacheError
from inference.attribution.index import ContributionIndex, check_cid
from inference.attribution.text import decode_contribution, tokenize, tokenizer_fingerprint

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_TOKENS = 16 * 1024 * 1024


@dataclass
class StoreStats:
    built: int = 0  # no usable cache file: tokenized and indexed
    loaded: int = 0  # verified cache file used
    rebuilt: int = 0  # cache file present but failed verification: rebuilt and replaced


class IndexStore:
    """Builds each contribution's index once and keeps it at
    `<data_dir>/attribution/<cid>.<tokenizer fp>.safetensors`.

    `max_bytes` / `max_tokens` cap what one contribution may cost (bytes are checked before
    decoding, tokens before the suffix array is built). `verify_cid(cid, data) -> bool`, when
    given (the node passes its CID code; `inference` cannot import it), is checked before any
    index is built or loaded, so an index is only ever tied to bytes that hash to its CID.
    """

    def __init__(
        self,
        data_dir: Path,
        tokenizer,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        verify_cid: Callable[[str, bytes], bool] | None = None,
    ):
        self.root = Path(data_dir) / "attribution"
        self.tokenizer = tokenizer
        self.tokenizer_fp = tokenizer_fingerprint(tokenizer)
        self.max_bytes = max_bytes
        self.max_tokens = max_tokens
        self.verify_cid = verify_cid
        self.stats = StoreStats()
        self._lock = threading.Lock()

    def path_for(self, cid: str) -> Path:
        return self.root / f"{check_cid(cid)}.{self.tokenizer_fp[:16]}.safetensors"

    def get_or_build(self, cid: str, data: bytes) -> ContributionIndex:
        """The verified index of `data` (the contribution's bytes, already checked against `cid`).

        Raises ContributionError subclasses for content that cannot be indexed.
        """
        path = self.path_for(cid)
        if len(data) > self.max_bytes:  # before hashing anything
            raise ContributionTooLargeError(cid, f"{len(data)} bytes is over the cap of {self.max_bytes}")
        if self.verify_cid is not None and not self.verify_cid(cid, data):
            raise CidMismatchError(cid, "content does not match its CID")
        source_sha256 = hashlib.sha256(data).hexdigest()
        had_file = path.exists()
        if had_file:
            try:
                idx = ContributionIndex.load(path, cid=cid, source_sha256=source_sha256, tokenizer_fp=self.tokenizer_fp)
                if idx.n_tokens > self.max_tokens:  # built under a larger cap than today's
                    raise ContributionTooLargeError(cid, f"{idx.n_tokens} tokens is over the cap of {self.max_tokens}")
                with self._lock:
                    self.stats.loaded += 1
                return idx
            except IndexCacheError as e:
                log.warning("rebuilding attribution index: %s", e)
        text = decode_contribution(data, cid, self.max_bytes)
        idx = ContributionIndex.build(cid, source_sha256, self.tokenizer_fp, tokenize(self.tokenizer, text), self.max_tokens)
        idx.save(path)
        with self._lock:
            if had_file:
                self.stats.rebuilt += 1
            else:
                self.stats.built += 1
        return idx

    def forget(self, cid: str) -> None:
        """Delete a contribution's cache file (e.g. once it is rejected everywhere)."""
        self.path_for(cid).unlink(missing_ok=True)
