"""Content-addressed disk cache of verified files and folders.

    <root>/entries/<cid>   a verified file or folder, moved in by one atomic rename
    <root>/tmp/            private work folders of fetches in flight (same filesystem as entries)
    <root>/pins/<cid>      marker: never evicted

Eviction keeps the total size under `max_bytes`, oldest access first, never a pinned entry nor
the entry just added. Entries are only ever written by `commit`, so a failed or tampered
fetch leaves nothing behind.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from pathlib import Path

from node.ipfs.cid import CID
from node.ipfs.errors import IpfsError


def _tree_size(path: Path) -> int:
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


class ContentCache:
    def __init__(self, root: str | os.PathLike, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.entries_dir = self.root / "entries"
        self.tmp_dir = self.root / "tmp"
        self.pins_dir = self.root / "pins"
        for d in (self.entries_dir, self.tmp_dir, self.pins_dir):
            d.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(cid: str) -> str:
        return str(CID.parse(cid))  # normalised spelling; also refuses anything that is not a CID

    def path_of(self, cid: str) -> Path | None:
        """The cached path of `cid`, or None; marks it as recently used."""
        path = self.entries_dir / self.key(cid)
        if not os.path.lexists(path):
            return None
        now = time.time()
        os.utime(path, (now, now), follow_symlinks=False)
        return path

    @contextmanager
    def workdir(self):
        """A private temporary folder for one fetch, removed afterwards whatever happens."""
        work = self.tmp_dir / f"fetch-{secrets.token_hex(8)}"
        work.mkdir()
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def commit(self, cid: str, src: Path) -> Path:
        """Move verified content `src` (inside a `workdir`) into the cache as `cid`; then evict."""
        key = self.key(cid)
        dest = self.entries_dir / key
        try:
            os.rename(src, dest)
        except OSError as e:
            if not os.path.lexists(dest):
                raise IpfsError(f"could not move {src} into the cache at {dest}") from e
            # Already cached by a concurrent fetch: same CID, same verified bytes.
        now = time.time()
        os.utime(dest, (now, now), follow_symlinks=False)
        self.evict(keep={key})
        return dest

    # --- pins and eviction ----------------------------------------------------------------
    def pin(self, cid: str) -> None:
        (self.pins_dir / self.key(cid)).touch()

    def unpin(self, cid: str) -> None:
        try:
            (self.pins_dir / self.key(cid)).unlink()
        except FileNotFoundError:
            pass

    def is_pinned(self, cid: str) -> bool:
        return (self.pins_dir / self.key(cid)).exists()

    def entries(self) -> list[tuple[str, int, float]]:
        """(cid, bytes, last use) of every entry."""
        out = []
        for p in self.entries_dir.iterdir():
            out.append((p.name, _tree_size(p), p.lstat().st_mtime))
        return out

    def total_bytes(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def remove(self, cid: str) -> None:
        path = self.entries_dir / self.key(cid)
        if path.is_dir() and not path.is_symlink():
            # Rename first so a reader never sees a half-deleted folder under the CID's name.
            doomed = self.tmp_dir / f"evict-{secrets.token_hex(8)}"
            os.rename(path, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        elif os.path.lexists(path):
            path.unlink()

    def evict(self, keep: AbstractSet[str] = frozenset()) -> list[str]:
        """Remove least recently used unpinned entries until the cache fits `max_bytes`."""
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        removed = []
        pins = {p.name for p in self.pins_dir.iterdir()}
        for name, size, _ in sorted(entries, key=lambda e: e[2]):
            if total <= self.max_bytes:
                break
            if name in pins or name in keep:
                continue
            self.remove(name)
            total -= size
            removed.append(name)
        return removed
