"""Adapter residency tiers: slots (N, in the bank on the device) <- host LRU (M) <- verified disk.

- Disk: registered adapters (a validated local folder + its spec). Reading and re-checking the
  file happens on a background loader thread, so the scheduler keeps decoding meanwhile.
- Host: an LRU of loaded `AdapterWeights` (pinned memory on CUDA, so slot copies are async DMA).
- Slots: the `LoraSlotBank`'s preallocated buffers. Copying host -> slot is issued by the
  scheduler thread between steps (the bank is not thread-safe and a slot must never change under
  a running forward): a memcpy of a few MB on CPU, and on CUDA an async copy on a side stream whose
  event the scheduler polls before admitting the waiting request.

Eviction only touches slots with no running request (refcount 0), that are not pinned, and whose
adapter no waiting request wants (`protect`), least recently used first. Re-registering an id
bumps its version: a stale copy in a slot or the host tier is never reused.

One owner thread (the scheduler) calls acquire/release/poll; register/unregister/pin/unpin may
come from any thread (a lock guards the shared maps).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from inference.errors import EngineError, SlotsExhausted, UnknownAdapter

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    adapter_id: str
    folder: Path
    spec: object
    version: int
    pinned: bool = False


@dataclass
class _Slot:
    key: tuple[str, int] | None = None  # (adapter id, version) held or being loaded
    ready: bool = False
    refcount: int = 0  # running requests routed to this slot
    last_used: float = 0.0
    event: torch.cuda.Event | None = None  # CUDA event of a pending copy


@dataclass
class TierCounters:
    disk_loads: int = 0  # disk -> host
    slot_loads: int = 0  # host -> slot
    slot_evictions: int = 0
    host_evictions: int = 0
    slot_hits: int = 0  # acquire found the adapter ready in a slot
    slot_misses: int = 0  # acquire had to start a slot load
    host_hits: int = 0  # slot load found the weights in host memory
    host_misses: int = 0  # slot load had to read the disk
    load_failures: int = 0
    load_seconds: list = field(default_factory=list)  # recent disk->slot latencies
    read_seconds: list = field(default_factory=list)  # recent loader-thread times (read + verify)
    copy_seconds: list = field(default_factory=list)  # recent host->slot copy times (issue time on CUDA)


class AdapterTiers:
    def __init__(
        self,
        bank,
        *,
        host_cache_size: int,
        loader: Callable[[Path, Any], object],  # the spec is opaque here: whatever the loader takes
        pin_memory: bool = False,
        loader_threads: int = 1,
    ):
        """bank: a LoraSlotBank; loader(folder, spec) -> AdapterWeights (reads + re-checks the file)."""
        self.bank = bank
        self.num_slots = bank.num_slots
        self.host_cache_size = host_cache_size
        self._loader = loader
        self._pin = pin_memory and torch.cuda.is_available()
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        self._version = 0
        self._slots = [_Slot() for _ in range(self.num_slots)]
        self._slot_of: dict[tuple[str, int], int] = {}
        self._host: OrderedDict[tuple[str, int], object] = OrderedDict()
        self._inflight: dict[tuple[str, int], float] = {}  # disk loads running -> start time
        self._want_slot: dict[tuple[str, int], int] = {}  # disk load -> slot reserved for it
        self._done: queue.Queue = queue.Queue()
        self._done_cv = threading.Condition()  # notified when a background load lands in _done
        self._failed: dict[str, str] = {}  # adapter id -> reason of its last failed load
        self._pool = ThreadPoolExecutor(max_workers=loader_threads, thread_name_prefix="adapter-loader")
        self._copy_stream = torch.cuda.Stream() if bank.device.type == "cuda" else None
        self.counters = TierCounters()
        self.on_load_done: Callable[[], None] | None = None  # wakes the scheduler

    # ------------------------------------------------------------ registry (any thread)

    def register(self, adapter_id: str, folder: Path, spec) -> None:
        with self._lock:
            old = self._entries.get(adapter_id)
            self._version += 1
            self._entries[adapter_id] = _Entry(adapter_id, Path(folder), spec, self._version, pinned=old.pinned if old else False)
            self._failed.pop(adapter_id, None)
            if old is not None:
                self._host.pop((adapter_id, old.version), None)

    def unregister(self, adapter_id: str) -> None:
        with self._lock:
            entry = self._entries.pop(adapter_id, None)
            if entry is None:
                raise UnknownAdapter(f"adapter {adapter_id!r} is not registered")
            self._host.pop((adapter_id, entry.version), None)
            # its slot (if any) is freed once no running request uses it: it is no longer
            # matched by any key, and idle slots with an unknown key are the first evicted

    def is_registered(self, adapter_id: str) -> bool:
        return adapter_id in self._entries

    def spec(self, adapter_id: str):
        entry = self._entries.get(adapter_id)
        if entry is None:
            raise UnknownAdapter(f"adapter {adapter_id!r} is not registered")
        return entry.spec

    def registered(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def failure(self, adapter_id: str) -> str | None:
        return self._failed.get(adapter_id)

    def pin(self, adapter_id: str) -> None:
        """Keep the adapter resident in a slot and in host memory (loaded by the next poll)."""
        with self._lock:
            entry = self._entries.get(adapter_id)
            if entry is None:
                raise UnknownAdapter(f"adapter {adapter_id!r} is not registered")
            if entry.pinned:
                return
            pinned = sum(e.pinned for e in self._entries.values())
            if pinned + 1 > self.num_slots - 1:
                raise SlotsExhausted(
                    f"cannot pin {adapter_id!r}: {pinned} of {self.num_slots} slots are pinned and one "
                    "must stay free for unpinned adapters"
                )
            entry.pinned = True

    def unpin(self, adapter_id: str) -> None:
        with self._lock:
            entry = self._entries.get(adapter_id)
            if entry is None:
                raise UnknownAdapter(f"adapter {adapter_id!r} is not registered")
            entry.pinned = False

    # ------------------------------------------------------------ owner thread

    def acquire(self, adapter_id: str, protect: AbstractSet[str] = frozenset()) -> int | None:
        """The slot holding `adapter_id`, ready for routing (refcount taken), or None while it is
        loading; starts the load if needed. Raises UnknownAdapter if it is not registered."""
        with self._lock:
            entry = self._entries.get(adapter_id)
            if entry is None:
                raise UnknownAdapter(f"adapter {adapter_id!r} is not registered")
            key = (adapter_id, entry.version)
            s = self._slot_of.get(key)
            if s is not None:
                slot = self._slots[s]
                if slot.ready:
                    slot.refcount += 1
                    slot.last_used = time.monotonic()
                    self.counters.slot_hits += 1
                    return s
                return None  # copy in flight
            if key in self._want_slot:
                return None
            self._start_slot_load(entry, protect)
            return None

    def release(self, slot: int) -> None:
        with self._lock:
            st = self._slots[slot]
            st.refcount = max(0, st.refcount - 1)
            st.last_used = time.monotonic()

    def poll(self) -> list[tuple[str, str]]:
        """Finish background work: completed disk loads go to the host tier and into their
        reserved slot; CUDA copies that completed become ready; pinned adapters get a slot.
        Returns [(adapter_id, reason)] of loads that failed (their waiting requests must fail)."""
        failed: list[tuple[str, str]] = []
        while True:
            try:
                key, weights, err, t0 = self._done.get_nowait()
            except queue.Empty:
                break
            with self._lock:
                self._inflight.pop(key, None)
                s = self._want_slot.pop(key, None)
                current = self._entries.get(key[0])
                stale = current is None or current.version != key[1]
                if err is not None:
                    self.counters.load_failures += 1
                    self._failed[key[0]] = err
                    failed.append((key[0], err))
                    if s is not None:
                        self._free_slot(s, key)
                    continue
                self.counters.disk_loads += 1
                if not stale:
                    self._host_put(key, weights)
                if s is not None:
                    if stale:
                        self._free_slot(s, key)
                    else:
                        self._copy_into(s, key, weights, t0)
        with self._lock:
            for st in self._slots:
                if st.key is not None and not st.ready and st.event is not None and st.event.query():
                    st.ready, st.event = True, None
            for entry in self._entries.values():
                if entry.pinned and (entry.adapter_id, entry.version) not in self._slot_of:
                    if (entry.adapter_id, entry.version) not in self._want_slot:
                        self._start_slot_load(entry, set())
        return failed

    def prefetch(self, adapter_id: str) -> None:
        """Bring an adapter into host memory without taking a slot (no-op if already there)."""
        with self._lock:
            entry = self._entries.get(adapter_id)
            if entry is None:
                return
            key = (adapter_id, entry.version)
            if key in self._host or key in self._inflight or key in self._slot_of:
                return
            self._submit_disk_load(entry, key)

    def wait(self, timeout: float) -> bool:
        """Block until a background load has finished (the next `poll` takes it) or `timeout`
        seconds pass; returns whether one has. For owners that have nothing else to do: no
        sleep-and-poll loop."""
        with self._done_cv:
            return self._done_cv.wait_for(lambda: not self._done.empty(), timeout)

    @property
    def pending(self) -> bool:
        """Whether any load is still in flight (the scheduler then polls instead of sleeping)."""
        return bool(self._inflight) or any(s.key is not None and not s.ready for s in self._slots)

    # ------------------------------------------------------------ internals (lock held)

    def _start_slot_load(self, entry: _Entry, protect) -> None:
        key = (entry.adapter_id, entry.version)
        s = self._pick_slot(protect)
        if s is None:
            self.prefetch(entry.adapter_id)  # no slot free yet: at least have it in host memory
            return
        self.counters.slot_misses += 1
        old = self._slots[s].key
        if old is not None:
            self._slot_of.pop(old, None)
            self.counters.slot_evictions += 1
        self._slots[s] = _Slot(key=key, ready=False, last_used=time.monotonic())
        self._slot_of[key] = s
        weights = self._host.get(key)
        if weights is not None:
            self._host.move_to_end(key)
            self.counters.host_hits += 1
            self._copy_into(s, key, weights, time.perf_counter())
            return
        self.counters.host_misses += 1
        self._want_slot[key] = s
        if key not in self._inflight:
            self._submit_disk_load(entry, key)

    def _free_slot(self, s: int, key) -> None:
        self._slot_of.pop(key, None)
        self._slots[s] = _Slot()

    def _pick_slot(self, protect) -> int | None:
        """An empty slot, else the least recently used evictable one."""
        best, best_t = None, None
        for s, st in enumerate(self._slots):
            if st.key is None:
                return s
            if st.refcount or not st.ready:
                continue
            entry = self._entries.get(st.key[0])
            live = entry is not None and entry.version == st.key[1]
            if live and entry is not None and (entry.pinned or st.key[0] in protect):
                continue
            t = st.last_used if live else -1.0  # stale slots go first
            if best_t is None or t < best_t:
                best, best_t = s, t
        return best

    def _submit_disk_load(self, entry: _Entry, key) -> None:
        self._inflight[key] = time.perf_counter()
        t0 = self._inflight[key]
        folder, spec = entry.folder, entry.spec

        def work():
            try:
                t_read = time.perf_counter()
                w = self._loader(folder, spec)
                if self._pin:
                    w = _pin_weights(w)
                result = (key, w, None, t0)
                _keep_recent(self.counters.read_seconds, time.perf_counter() - t_read)
            except Exception as e:  # noqa: BLE001 - reported to the scheduler, which fails the waiting requests
                log.warning("loading adapter %s failed: %s", key[0], e)
                result = (key, None, f"{type(e).__name__}: {e}", t0)
            with self._done_cv:
                self._done.put(result)
                self._done_cv.notify_all()
            cb = self.on_load_done
            if cb is not None:
                cb()

        self._pool.submit(work)

    def _copy_into(self, s: int, key, weights, t0: float) -> None:
        t_copy = time.perf_counter()
        event = self.bank.load_slot(s, weights, copy_stream=self._copy_stream)
        _keep_recent(self.counters.copy_seconds, time.perf_counter() - t_copy)
        self.counters.slot_loads += 1
        st = self._slots[s]
        st.key, st.event = key, event
        st.ready = event is None
        _keep_recent(self.counters.load_seconds, time.perf_counter() - t0)

    def _host_put(self, key, weights) -> None:
        self._host[key] = weights
        self._host.move_to_end(key)
        while len(self._host) > self.host_cache_size:
            victim = next((k for k in self._host if not self._is_pinned(k)), None)
            if victim is None:
                break
            del self._host[victim]
            self.counters.host_evictions += 1

    def _is_pinned(self, key) -> bool:
        e = self._entries.get(key[0])
        return e is not None and e.version == key[1] and e.pinned

    # ------------------------------------------------------------ reporting

    def stats(self) -> dict:
        with self._lock:
            c = self.counters
            slot_total = c.slot_hits + c.slot_misses
            host_total = c.host_hits + c.host_misses
            return {
                "registered": len(self._entries),
                "pinned": sum(e.pinned for e in self._entries.values()),
                "slots": self.num_slots,
                "slots_resident": sum(1 for s in self._slots if s.key is not None and s.ready),
                "slots_in_use": sum(1 for s in self._slots if s.refcount),
                "host_capacity": self.host_cache_size,
                "host_resident": len(self._host),
                "loads_in_flight": len(self._inflight),
                "disk_loads": c.disk_loads,
                "slot_loads": c.slot_loads,
                "slot_evictions": c.slot_evictions,
                "host_evictions": c.host_evictions,
                "slot_hit_rate": c.slot_hits / slot_total if slot_total else None,
                "host_hit_rate": c.host_hits / host_total if host_total else None,
                "load_failures": c.load_failures,
                "resident_adapters": sorted(
                    s.key[0] for s in self._slots if s.key is not None and s.ready and self._is_live(s.key)
                ),
            }

    def _is_live(self, key) -> bool:
        e = self._entries.get(key[0])
        return e is not None and e.version == key[1]

    def slot_of(self, adapter_id: str) -> int | None:
        """The ready slot of an adapter, if any (for tests and stats)."""
        with self._lock:
            e = self._entries.get(adapter_id)
            if e is None:
                return None
            s = self._slot_of.get((adapter_id, e.version))
            return s if s is not None and self._slots[s].ready else None

    def in_host(self, adapter_id: str) -> bool:
        with self._lock:
            e = self._entries.get(adapter_id)
            return e is not None and (adapter_id, e.version) in self._host

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _keep_recent(xs: list, x: float, n: int = 1000) -> None:
    xs.append(x)
    del xs[:-n]


def _pin_weights(w):
    """Copy an adapter's tensors into page-locked memory (async host->device copies)."""
    from dataclasses import replace

    if hasattr(w, "pin_memory"):  # PackedAdapter: one buffer
        return w.pin_memory()
    pairs = {k: type(p)(p.a.pin_memory(), p.b.pin_memory()) for k, p in w.pairs.items()}
    return replace(w, pairs=pairs)


__all__ = ["AdapterTiers", "TierCounters", "EngineError"]
