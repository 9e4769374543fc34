"""Engine-native packed adapter files: one cold load = one mapping, an identity check (or a
hash), a few slot copies.

A PEFT file holds two tensors per (layer, module): 420 for a rank-16 adapter on the seven modules
of a 30-layer model, each read, converted, scaled and copied on its own. When an adapter is
registered (verification time) the engine writes a derived copy, in the engine's dtype, laid
out like the slot bank (inference.lora):

    <kind>.A      [n, r, in]    the kind's layers stacked; r = the kind's largest rank (zero-padded)
    <kind>.BT     [n, r, out]   B transposed, the module's scaling already folded in
    <kind>.layers [n] int64     which decoder layers the n rows belong to (ascending)

so a slot load is two copies per module kind (14 for seven kinds) instead of 420.

The file is a safetensors file (nothing else is ever read) and it is derived data: the engine
keeps its SHA-256 and size in memory from the moment it wrote it. A load maps the file
copy-on-write, checks it (below), and only then parses it; the loaded tensors are views of the
mapping, so the host tier holds page-cache pages, not a second copy. A file that is missing,
resized, altered or unreadable is rebuilt from the verified PEFT folder (which load_adapter_weights
re-checks), never used.

Verify once (PackedStore): after a load whose bytes hashed right, the store keeps the file's
identity (device, inode, size, mtime, ctime; fstat before and after the check on the same fd),
and a later load of an unchanged identity skips the hash. Sound because the kernel sets a file's
ctime on every change and user space cannot set it, so any write, truncation, rename-over or
chmod after the verified read shows. Conditions: the folder is private (owned by this user, no
group/other write: the default mkdtemp folder is 0700; otherwise every load hashes), and the
identity is trusted only once the ctime is older than CTIME_SETTLED_NS (2 s), since timestamps are
only as fine as the file system's (a clock tick on kernels before multigrain timestamps, 1-2 s on
some file systems) and a change within the same tick could otherwise keep the ctime.

Written, so verified: the store also keeps the identity of each file it writes (stat after the
rename), under the same rules. The bytes are the ones it hashed as it wrote them, so a first load
after registration checks the identity instead of hashing. What this admits beyond verify-once: a
change made within the same timestamp tick as our write, to a randomly named file in our 0700
folder. A second registration of a folder whose weights file is unchanged shares the packed file,
and with it the verified identity (bench-engine's Zipf phase registers 1,000 ids over 64 folders).

Why a mapping: read() into fresh memory faults in every 4 KiB page (5,121 faults for 20 MB). In a
process holding the model, that measured 10-14 ms per 20 MB file (quiet 2-core machine, loader
thread), against 0.1-0.3 ms to map the same cached file and 1-2 ms for the slot copy out of it.
What the mapping gives up: the loaded weights are not memory the process owns. The store itself
never writes a file in place (new files get new names; release unlinks, and an unlinked file
stays mapped), so nothing the node does reaches a mapping. A process that rewrites or truncates a
file in place changes the weights or crashes the node with SIGBUS; in the private folder only
the node's user (or root) can, which is out of scope as for every file the node reads (it could
as well write the node's memory), as is silent media corruption.

SHA-256 alone is ~25 ms for 20 MB here, so a hashed load hashes 2 MiB chunks of the mapping in
parallel (a digest of the chunk digests), which pays where a core is free. Earlier measurements
(read() path, 19.5 MB shape-B adapter, busy shared machine, bench-engine --quick): hashed cold
load p50 54 ms against 198 ms for the per-tensor PEFT path in the same process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import secrets
import shutil
import struct
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from inference.adapters import SUPPORTED_MODULES, WEIGHTS_NAME, AdapterSpec, AdapterWeights, load_adapter_weights
from inference.errors import AdapterValidationError

log = logging.getLogger(__name__)

FORMAT = "loranode-packed-v1"
_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "I64": torch.int64}
_NAMES = {v: k for k, v in _DTYPES.items()}
MAX_HEADER_BYTES = 1 << 20  # our headers are ~2 KB


class PackedFileError(Exception):
    """A packed file that does not match what the engine wrote (it is then rebuilt)."""


@dataclass(frozen=True)
class PackedKind:
    """One module kind of a packed adapter (all tensors views of the adapter's owned buffer)."""

    layers: torch.Tensor  # [n] int64, ascending
    a: torch.Tensor  # [n, r, in]
    bt: torch.Tensor  # [n, r, out], scaling folded in

    @property
    def rank(self) -> int:
        return self.a.shape[1]


@dataclass(frozen=True)
class PackedAdapter:
    """An adapter's weights in the slot bank's layout; `inference.lora.LoraSlotBank.load_slot`
    copies each kind with two copies. `buffer` owns every tensor's memory."""

    spec: AdapterSpec
    kinds: Mapping[str, PackedKind]
    dtype: torch.dtype
    buffer: torch.Tensor  # [bytes] uint8: the whole file

    @property
    def nbytes(self) -> int:
        return sum(k.a.numel() * k.a.element_size() + k.bt.numel() * k.bt.element_size() for k in self.kinds.values())

    def pin_memory(self) -> "PackedAdapter":
        """The same adapter in page-locked memory (async host->device slot copies)."""
        return _from_buffer(self.buffer.pin_memory(), self.spec)


@dataclass(frozen=True)
class PackedRef:
    """Where a packed file is and what it must hash to."""

    path: Path
    sha256: bytes
    size: int
    dtype: torch.dtype


def pack_tensors(weights: AdapterWeights) -> dict[str, torch.Tensor]:
    """The packed layout of loaded PEFT weights (no file)."""
    out: dict[str, torch.Tensor] = {}
    for kind in SUPPORTED_MODULES:
        keys = sorted(k for k in weights.pairs if k[1] == kind)
        if not keys:
            continue
        r = max(weights.pairs[k].rank for k in keys)
        first = weights.pairs[keys[0]]
        a = torch.zeros(len(keys), r, first.a.shape[1], dtype=weights.dtype)  # [n, r, in]
        bt = torch.zeros(len(keys), r, first.b.shape[0], dtype=weights.dtype)  # [n, r, out]
        for i, k in enumerate(keys):
            p = weights.pairs[k]
            a[i, : p.rank] = p.a
            bt[i, : p.rank] = p.b.T
        out[f"{kind}.layers"] = torch.tensor([k[0] for k in keys], dtype=torch.int64)
        out[f"{kind}.A"] = a
        out[f"{kind}.BT"] = bt
    return out


HASH_CHUNK = 1 << 21  # 2 MiB: chunks hashed in parallel while the next ones are read
_hash_pool: ThreadPoolExecutor | None = None
_hash_pool_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _hash_pool
    with _hash_pool_lock:
        if _hash_pool is None:  # hashlib releases the GIL on large buffers: real parallelism
            _hash_pool = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="packed-hash")
        return _hash_pool


def _chunk_digest(chunk) -> bytes:
    return hashlib.sha256(chunk).digest()


def _digest(chunk_digests: list[bytes], size: int) -> bytes:
    """SHA-256 over the SHA-256 of every HASH_CHUNK-byte chunk, then the size: a serial SHA-256
    of 20 MB costs ~25 ms here, chunks hash on all cores (and while the file is still being read)."""
    return hashlib.sha256(b"".join(chunk_digests) + struct.pack("<Q", size)).digest()


def content_digest(data) -> bytes:
    """The digest `read_packed` checks, of bytes already in memory."""
    view = memoryview(data).cast("B")
    futures = [_pool().submit(_chunk_digest, view[i : i + HASH_CHUNK]) for i in range(0, len(view), HASH_CHUNK)]
    return _digest([f.result() for f in futures], len(view))


def write_packed(weights: AdapterWeights, path: Path) -> PackedRef:
    """Write the packed file atomically (temp file + rename) and return its ref."""
    from safetensors.torch import save

    data = save(pack_tensors(weights), metadata={"format": FORMAT, "dtype": _NAMES[weights.dtype]})
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return PackedRef(path=path, sha256=content_digest(data), size=len(data), dtype=weights.dtype)


FileIdentity = tuple  # (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)
# A file's ctime is set by the kernel on every change and cannot be set from user space; it is
# only as fine as the file system's timestamps (1 s or 2 s on some, a clock tick on older
# kernels), so a verified identity is kept only once the ctime is older than this: any later
# change then gets a later ctime.
CTIME_SETTLED_NS = 2_000_000_000


def _identity(st: os.stat_result) -> FileIdentity:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def read_packed(
    ref: PackedRef, spec: AdapterSpec, verified: FileIdentity | None = None
) -> tuple[PackedAdapter, FileIdentity | None, bool]:
    """Map a packed file, check it, then parse it. Returns the adapter and, when the bytes were
    hashed and the file's ctime has settled, the identity a later read may check instead of hashing
    (`verified`; see PackedStore), and whether it hashed. Raises PackedFileError when it is not the
    file the engine wrote."""
    try:
        fd = os.open(ref.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise PackedFileError(f"cannot open {ref.path.name}: {e.strerror}") from e
    try:
        before = _identity(os.fstat(fd))
        size = before[2]
        if size != ref.size:
            raise PackedFileError(f"{ref.path.name} is {size} bytes, expected {ref.size}")
        if size < 8:
            raise PackedFileError("packed file too short")
        trusted = verified is not None and before == verified  # unchanged since written or hashed right
        try:
            # copy-on-write: nothing we do reaches the file, and the pages are the page cache's (no
            # fresh memory to fault in; see the module docstring for what this admits)
            mapping = mmap.mmap(fd, size, access=mmap.ACCESS_COPY)
        except OSError as e:
            raise PackedFileError(f"cannot map {ref.path.name}: {e.strerror}") from e
        view = memoryview(mapping)
        futures = [] if trusted else [_pool().submit(_chunk_digest, view[i : i + HASH_CHUNK]) for i in range(0, size, HASH_CHUNK)]
        digests = [fut.result() for fut in futures]
        after = _identity(os.fstat(fd))
    finally:
        os.close(fd)
    if after != before:
        raise PackedFileError(f"{ref.path.name} changed while being read")
    if not trusted and _digest(digests, size) != ref.sha256:
        raise PackedFileError(f"{ref.path.name} does not hash to what the engine wrote")
    settled = time.time_ns() - after[4] > CTIME_SETTLED_NS
    buf = torch.frombuffer(mapping, dtype=torch.uint8)  # [size] bytes; the tensor keeps the mapping alive
    return _from_buffer(buf, spec), (after if trusted or settled else None), not trusted


def _from_buffer(buf: torch.Tensor, spec: AdapterSpec) -> PackedAdapter:
    """Parse a safetensors file held in `buf` ([bytes] uint8) into views of it. Strict: every
    tensor in bounds, sizes consistent, names and shapes as the spec says."""
    raw = buf.numpy().data.cast("B")
    if len(raw) < 8:
        raise PackedFileError("packed file too short")
    (hlen,) = struct.unpack("<Q", raw[:8])
    if hlen > MAX_HEADER_BYTES or 8 + hlen > len(raw):
        raise PackedFileError("packed file header length out of bounds")
    try:
        header = json.loads(bytes(raw[8 : 8 + hlen]))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PackedFileError(f"packed file header is not JSON: {e}") from e
    if not isinstance(header, dict):
        raise PackedFileError("packed file header is not an object")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("dtype") not in _DTYPES:
        raise PackedFileError("not a packed adapter file of this version")
    dtype = _DTYPES[meta["dtype"]]
    base = 8 + hlen
    tensors: dict[str, torch.Tensor] = {}
    for name, info in header.items():
        try:
            tdtype = _DTYPES[info["dtype"]]
            shape = [int(d) for d in info["shape"]]
            start, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise PackedFileError(f"bad header entry {str(name)[:80]!r}") from e
        numel = 1
        for d in shape:
            if d < 0:
                raise PackedFileError(f"negative dimension in {name[:80]!r}")
            numel *= d
        itemsize = torch.empty(0, dtype=tdtype).element_size()
        if not 0 <= start <= end <= len(raw) - base or end - start != numel * itemsize or start % itemsize:
            raise PackedFileError(f"tensor {name[:80]!r} out of bounds")
        tensors[name] = buf[base + start : base + end].view(tdtype).view(shape)
    by_kind: dict[str, list] = {}
    for m in spec.modules:
        by_kind.setdefault(m.module, []).append(m)
    kinds: dict[str, PackedKind] = {}
    for kind, mods in by_kind.items():
        try:
            layers, a, bt = tensors.pop(f"{kind}.layers"), tensors.pop(f"{kind}.A"), tensors.pop(f"{kind}.BT")
        except KeyError as e:
            raise PackedFileError(f"packed file lacks {e}") from e
        r = max(m.rank for m in mods)
        n = len(mods)
        if (
            layers.dtype != torch.int64
            or tuple(layers.shape) != (n,)
            or a.dtype != dtype
            or bt.dtype != dtype
            or tuple(a.shape) != (n, r, mods[0].in_features)
            or tuple(bt.shape) != (n, r, mods[0].out_features)
            or layers.tolist() != [m.layer for m in mods]
        ):
            raise PackedFileError(f"packed tensors of {kind} do not match the adapter's spec")
        kinds[kind] = PackedKind(layers=layers, a=a, bt=bt)
    if tensors:
        raise PackedFileError(f"unexpected tensors in packed file: {sorted(tensors)[:3]}")
    return PackedAdapter(spec=spec, kinds=kinds, dtype=dtype, buffer=buf)


def _source_identity(folder: Path) -> FileIdentity | None:
    """The identity of a folder's PEFT weights file (None when it cannot be read: never shared)."""
    try:
        return _identity(os.stat(Path(folder) / WEIGHTS_NAME, follow_symlinks=False))
    except OSError:
        return None


def _private_folder(root: Path) -> bool:
    """Only this user may change files in `root`: owned by us, no write bit for group or others,
    not a symlink."""
    try:
        st = os.lstat(root)
    except OSError:
        return False
    import stat

    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


class PackedStore:
    """The engine's packed files: written at registration, read (verified) on cold loads,
    rebuilt from the PEFT folder when they do not verify. Files live in `root` (a private temp
    folder by default, removed by `close`); refs are keyed by (folder, spec), the registration's
    verified content."""

    def __init__(self, dtype: torch.dtype, root: str | os.PathLike | None = None):
        self.dtype = dtype
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="loranode-packed-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._refs: dict[tuple[str, AdapterSpec], PackedRef] = {}
        self._users: dict[tuple[str, AdapterSpec], int] = {}  # registrations sharing a file
        # verify-once: a file whose bytes hashed right keeps its identity here; later loads check
        # the identity instead of hashing, but only in a folder no other user can write
        self.trust_identity = _private_folder(self.root)
        self._verified: dict[Path, FileIdentity] = {}
        self._sources: dict[Path, FileIdentity] = {}  # packed file -> its PEFT weights file when packed
        self.hashed_loads = 0
        self._lock = threading.Lock()
        self.rebuilds = 0

    def register(self, folder: Path, spec: AdapterSpec, weights: AdapterWeights | None = None) -> PackedRef:
        """A registration of a verified folder: write its packed file (`weights` if already
        loaded) and count the user; `release` undoes one. A registration of a folder whose
        weights file is unchanged since another registration packed it (the same content under
        another adapter id) shares that file: no 20 MB rewrite, and its verified identity (verify
        once) stays. A folder whose weights file changed in place is packed again."""
        key = (str(folder), spec)
        source = _source_identity(folder)
        with self._lock:
            ref = self._refs.get(key) if self._users.get(key, 0) > 0 else None
            if ref is not None and source is not None and self._sources.get(ref.path) == source:
                self._users[key] += 1
                return ref
        ref = self._write(folder, spec, weights, source)
        with self._lock:
            self._users[key] = self._users.get(key, 0) + 1
        return ref

    def release(self, folder: Path, spec: AdapterSpec) -> None:
        """One registration less; the file goes with the last one."""
        key = (str(folder), spec)
        with self._lock:
            left = self._users.get(key, 0) - 1
            if left > 0:
                self._users[key] = left
                return
            self._users.pop(key, None)
            ref = self._refs.pop(key, None)
            if ref is not None:
                self._verified.pop(ref.path, None)
                self._sources.pop(ref.path, None)
        if ref is not None:
            ref.path.unlink(missing_ok=True)

    def _write(
        self, folder: Path, spec: AdapterSpec, weights: AdapterWeights | None, source: FileIdentity | None = None
    ) -> PackedRef:
        if weights is None:
            source = _source_identity(folder)  # taken before the read: a later change re-packs
            weights = load_adapter_weights(folder, spec, dtype=self.dtype)
        ref = write_packed(weights, self.root / f"{secrets.token_hex(12)}.safetensors")
        written = None
        if self.trust_identity:  # what we wrote is what the hash would check: see _read
            try:
                written = _identity(os.stat(ref.path, follow_symlinks=False))
            except OSError:
                written = None
        with self._lock:
            old = self._refs.get((str(folder), spec))
            self._refs[(str(folder), spec)] = ref
            if written is not None:
                self._verified[ref.path] = written
            if source is not None:
                self._sources[ref.path] = source
            if old is not None:
                self._verified.pop(old.path, None)
                self._sources.pop(old.path, None)
        if old is not None:
            old.path.unlink(missing_ok=True)
        return ref

    def load(self, folder: Path, spec: AdapterSpec) -> PackedAdapter:
        """The adapter's packed weights; a missing or unverifiable file is rebuilt first."""
        with self._lock:
            ref = self._refs.get((str(folder), spec))
        if ref is not None:
            try:
                return self._read((str(folder), spec), ref, spec)
            except PackedFileError as e:
                log.warning("packed copy of %s rebuilt: %s", folder, e)
        self.rebuilds += 1
        weights = load_adapter_weights(folder, spec, dtype=self.dtype)  # re-checks the PEFT file
        ref = self._write(folder, spec, weights)
        try:
            return self._read((str(folder), spec), ref, spec)
        except PackedFileError as e:  # our own fresh file: the disk is failing
            raise AdapterValidationError(f"packed copy could not be written and read back: {e}") from e

    def _read(self, key: tuple[str, AdapterSpec], ref: PackedRef, spec: AdapterSpec) -> PackedAdapter:
        with self._lock:
            verified = self._verified.pop(ref.path, None) if self.trust_identity else None
        if verified is not None and time.time_ns() - verified[4] <= CTIME_SETTLED_NS:
            verified = None  # too recent: a change within the same timestamp tick could hide
        try:
            packed, identity, hashed = read_packed(ref, spec, verified)  # a file that fails stays forgotten
        except PackedFileError:
            self.hashed_loads += 1  # a changed identity is hashed; unreadable files count alike
            raise
        self.hashed_loads += hashed
        if identity is not None and self.trust_identity:
            with self._lock:
                if self._refs.get(key) is ref:  # not released or rewritten meanwhile
                    self._verified[ref.path] = identity
        return packed

    def close(self) -> None:
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)
