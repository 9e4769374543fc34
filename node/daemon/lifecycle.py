"""Adapter lifecycle on this node: registered → fetching → verified → loaded | failed(reason);
deprecated on chain → unloaded; another base model → ignored.

The chain watcher writes the adapter rows; this module moves them through the states:
fetch through `node.ipfs.fetch_verified` (every byte CID-checked, size-capped) into the verified
cache, validate the PEFT folder against the served base model (`inference.adapters`), register it
in the engine. Every state change is a DB write, so the API sees it and a restart resumes from it
(`fetching`/`verified` left by a crash start over; `loaded` is registered again in the new engine).
Loaded adapters are pinned in the cache: the engine reads their weights lazily from that folder.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from chain.protocol import adapter_model_name
from node.db.models import Adapter, AdapterState

log = logging.getLogger(__name__)

S = AdapterState


class AdapterHost(Protocol):
    """What the lifecycle needs of `inference.engine.Engine`."""

    def register_adapter(self, adapter_id: str, folder: Any) -> Any: ...

    def unregister_adapter(self, adapter_id: str) -> None: ...

    def adapters(self) -> list[str]: ...


def engine_validator(engine) -> Callable[[Path], Any]:
    """`validate_adapter` bound to the engine's base model, rank cap and LoRA target modules
    (an engine without the base model in memory, the vLLM gateway, brings its own)."""
    own = getattr(engine, "validate_adapter", None)
    if own is not None:
        return own
    from inference.adapters import validate_adapter

    def validate(folder: Path):
        return validate_adapter(
            folder,
            engine.base.model.config,
            base_model_id=engine.model_id,
            max_rank=engine.config.max_rank,
            allowed_targets=engine.config.target_modules,
        )

    return validate


@dataclass(frozen=True)
class AdapterStatus:
    id: int
    model: str
    state: str
    reason: str | None
    base_model: str
    cid: str


class AdapterLifecycle:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        engine: AdapterHost,
        backends: Sequence[Any],
        cache,
        *,
        base_model_id: str,
        max_adapter_bytes: int,
        validate: Callable[[Path], Any] | None = None,
        prefetch: bool = True,
        concurrency: int = 2,
        max_attempts: int = 3,
        retry_after_s: float = 30.0,
        fetch_timeout_s: float = 120.0,
        poll_s: float = 5.0,
    ):
        self.sessions = session_factory
        self.engine = engine
        self.backends = list(backends)
        self.cache = cache
        self.base_model_id = base_model_id
        self.max_adapter_bytes = max_adapter_bytes
        self.validate = validate or engine_validator(engine)
        self.prefetch = prefetch
        self.max_attempts = max_attempts
        self.retry_after_s = retry_after_s
        self.fetch_timeout_s = fetch_timeout_s
        self.poll_s = poll_s
        self._sem = asyncio.Semaphore(concurrency)
        self._loaded: dict[int, str] = {}  # adapter id → CID registered in the engine
        self._inflight: dict[int, asyncio.Task] = {}
        self._wake = asyncio.Event()
        self._wanted: set[int] = set()  # asked for by the API while prefetch is off
        self._loop: asyncio.AbstractEventLoop | None = None
        self.loads = 0  # counters for metrics
        self.unloads = 0
        self.failures = 0

    # -- public ----------------------------------------------------------------------------------------
    def notify(self, *_: Any) -> None:
        """Wake the loop (the watcher calls this when adapter rows changed). Thread-safe: the
        watcher's step runs in a worker thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)
        else:
            self._wake.set()

    def status(self, adapter_id: int | None = None) -> list[AdapterStatus]:
        with self.sessions() as s:
            q = select(Adapter).order_by(Adapter.id)
            if adapter_id is not None:
                q = q.where(Adapter.id == int(adapter_id))
            return [
                AdapterStatus(a.id, adapter_model_name(a.id), a.state, a.failure_reason, a.base_model, a.cid)
                for a in s.scalars(q)
            ]

    def is_loaded(self, adapter_id: int) -> bool:
        return adapter_id in self._loaded

    async def ensure_loaded(self, adapter_id: int, timeout: float | None = None) -> AdapterStatus | None:
        """Load one adapter now (on demand when prefetch is off); returns its final status (None: unknown)."""
        self._wanted.add(int(adapter_id))
        await self.run_once()
        task = self._inflight.get(int(adapter_id))
        if task is not None:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        st = self.status(adapter_id)
        return st[0] if st else None

    async def run_once(self) -> None:
        """One reconciliation pass: unload what must go, start fetches for what should load."""
        with self.sessions() as s:
            rows = {
                a.id: (a.state, a.cid, a.base_model, a.deprecated, a.attempts, a.updated_at) for a in s.scalars(select(Adapter))
            }
        # 1. engine registrations the DB no longer backs (row gone, deprecated, new CID)
        for aid, cid in list(self._loaded.items()):
            row = rows.get(aid)
            if row is None or row[3] or row[1] != cid or row[0] != S.LOADED.value:
                if aid not in self._inflight:
                    self._unload(aid)
        # 2. rows to move along
        now = time.time()
        for aid, (state, cid, base, deprecated, attempts, updated) in rows.items():
            if aid in self._inflight:
                continue
            if deprecated:
                if state != S.DEPRECATED.value:
                    self._set(aid, cid, S.DEPRECATED, "deprecated on chain")
                continue
            if base != self.base_model_id:
                if state != S.IGNORED.value:
                    self._set(
                        aid, cid, S.IGNORED, f"base model {base!r} is not served by this node (it serves {self.base_model_id!r})"
                    )
                continue
            if state == S.LOADED.value and self._loaded.get(aid) == cid:
                continue
            if state == S.FAILED.value:
                if attempts >= self.max_attempts or now - updated < self.retry_after_s:
                    continue
            elif state == S.REGISTERED.value and not (self.prefetch or aid in self._wanted):
                continue
            # registered / fetching or verified left by a crash / loaded in the DB but not in this engine
            self._inflight[aid] = asyncio.create_task(self._bring_up(aid, cid))

    async def run(self, stop_event: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        while not stop_event.is_set():
            try:
                await self.run_once()
            except Exception:  # a DB hiccup must not end the loop
                log.exception("adapter lifecycle pass failed")
            self._wake.clear()
            waiter = asyncio.ensure_future(self._wake.wait())
            stopper = asyncio.ensure_future(stop_event.wait())
            await asyncio.wait({waiter, stopper}, timeout=self.poll_s, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
        await self.drain()

    async def drain(self) -> None:
        """Wait for the fetches in flight (tests, shutdown)."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight.values()), return_exceptions=True)

    # -- one adapter ------------------------------------------------------------------------------
    async def _bring_up(self, aid: int, cid: str) -> None:
        try:
            async with self._sem:
                if aid in self._loaded:
                    self._unload(aid)  # an older version is registered: replace it
                if not self._set(aid, cid, S.FETCHING, None, attempt=True):
                    return
                try:
                    from node.ipfs import fetch_verified

                    path = await asyncio.wait_for(
                        fetch_verified(self.backends, cid, self.max_adapter_bytes, self.cache), self.fetch_timeout_s
                    )
                except asyncio.TimeoutError:
                    self._fail(aid, cid, f"fetch timed out after {self.fetch_timeout_s:.0f}s")
                    return
                except Exception as e:  # noqa: BLE001 - IPFS errors carry the reason (integrity, not found...)
                    self._fail(aid, cid, f"fetch failed: {type(e).__name__}: {e}")
                    return
                try:
                    await asyncio.to_thread(self.validate, Path(path))
                except Exception as e:  # noqa: BLE001 - AdapterValidationError has `.reason`
                    self._fail(aid, cid, f"invalid adapter: {getattr(e, 'reason', e)}", permanent=True)
                    return
                if not self._set(aid, cid, S.VERIFIED, None, local_path=str(path)):
                    return
                self.cache.pin(cid)  # the engine loads weights lazily from this folder
                try:
                    await asyncio.to_thread(self.engine.register_adapter, adapter_model_name(aid), path)
                except Exception as e:  # noqa: BLE001 - any engine refusal fails this adapter alone, never the loop
                    self.cache.unpin(cid)
                    self._fail(aid, cid, f"engine refused it: {getattr(e, 'reason', e)}", permanent=True)
                    return
                self._loaded[aid] = cid
                if not self._set(aid, cid, S.LOADED, None):
                    self._unload(aid)  # the row changed under us (reorg, new version): next pass redoes it
                    return
                self.loads += 1
                self._wanted.discard(aid)
                log.info("adapter %d (%s) loaded", aid, cid)
        finally:
            self._inflight.pop(aid, None)

    def _unload(self, aid: int) -> None:
        cid = self._loaded.pop(aid, None)
        try:
            self.engine.unregister_adapter(adapter_model_name(aid))
        except Exception as e:  # noqa: BLE001 - already gone is fine
            log.debug("unregister %d: %s", aid, e)
        if cid is not None:
            try:
                self.cache.unpin(cid)
            except Exception:  # noqa: BLE001 - unpinning is best effort: the cache evicts unpinned folders anyway
                pass
        self.unloads += 1
        log.info("adapter %d unloaded", aid)

    def _fail(self, aid: int, cid: str, reason: str, permanent: bool = False) -> None:
        self.failures += 1
        log.warning("adapter %d (%s): %s", aid, cid, reason)
        self._set(aid, cid, S.FAILED, reason[:2000], exhaust=permanent)

    def _set(
        self,
        aid: int,
        cid: str,
        state: AdapterState,
        reason: str | None,
        *,
        attempt: bool = False,
        exhaust: bool = False,
        local_path: str | None = None,
    ) -> bool:
        """Write a state if the row still describes the same content (else a reorg/new version won)."""
        with self.sessions.begin() as s:
            row = s.get(Adapter, aid)
            if row is None or row.cid != cid:
                return False
            if row.deprecated and state not in (S.DEPRECATED,):
                return False
            row.state, row.failure_reason = state.value, reason
            if attempt:
                row.attempts += 1
            if exhaust:
                row.attempts = max(row.attempts, self.max_attempts)
            if local_path is not None:
                row.local_path = local_path
            row.updated_at = time.time()
            return True
