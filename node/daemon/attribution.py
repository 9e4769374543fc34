"""Builds and keeps one `inference.attribution.Attributor` per served adapter, off the request path.

An adapter's corpus is the ACCEPTED contributions of the datasets it registered on chain (the
adapter row's `dataset_splits`, the `contributions` rows the watcher projects). A background loop
(`run`) compares that set with what each ready attributor holds; when they differ it builds a new
attributor in a worker thread (contribution bytes through `fetch_verified`, so every block is
CID-checked and size-capped; each index built once and cached on disk by CID under
`<index_dir>/attribution/`, reloaded and re-verified on later builds) and swaps it in when ready.

`attributor_for(adapter_id)` is what the receipt issuer calls on every request: a dict lookup,
never a DB query and never a build. It returns None (the receipt carries no attribution and the
adapter's registered split applies) while nothing is ready, and also while a rebuild that DROPS
contributions is running: a contribution that left the accepted set (rejected, or its acceptance
undone by a reorg) must earn nothing from then on, so the old attributor is withdrawn at once.
A rebuild that only ADDS contributions keeps serving the old attributor until the new one is ready.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from inference.attribution import (
    AttributionConfig,
    Attributor,
    ContributionError,
    IndexStore,
)
from node.db.models import Adapter, AdapterState, Contribution, ContributionStatus

log = logging.getLogger(__name__)

DEFAULT_MAX_CONTRIBUTION_BYTES = 32 * 1024 * 1024

Member = tuple[int, int, str]  # (contribution id, dataset id, content CID)
Corpus = tuple[Member, ...]  # sorted by contribution id: the identity of an attributor's content


@dataclass
class _Ready:
    corpus: Corpus  # what the attributor was built from (the desired set at build time)
    attributor: Attributor | None  # None: no member could be indexed
    complete: bool  # False: some fetch failed transiently; retried after `retry_s`
    built_at: float


@dataclass
class ServiceStats:
    builds: int = 0  # attributors built and swapped in
    skipped: dict[int, str] = field(default_factory=dict)  # contribution id -> why it is not indexed
    last_build_s: float = 0.0
    last_build_tokens: int = 0


class AttributionService:
    """One attributor per adapter over its datasets' accepted contributions (module docstring)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        backends: Sequence[Any],
        cache,
        tokenizer,
        index_dir: Path,
        *,
        k: int = 8,
        max_contribution_bytes: int = DEFAULT_MAX_CONTRIBUTION_BYTES,
        config: AttributionConfig | None = None,
        poll_s: float = 5.0,
        retry_s: float = 30.0,
        fetch_timeout_s: float = 120.0,
    ):
        self.sessions = sessions
        self.backends = list(backends)
        self.cache = cache
        # The store refuses oversized content before hashing it; the node's CID check happened in
        # fetch_verified (every block hashed against its CID), so no verify_cid re-import here:
        # re-chunking would wrongly refuse content added with non-default import parameters.
        self.store = IndexStore(Path(index_dir), tokenizer, max_bytes=max_contribution_bytes)
        self.config = config or AttributionConfig(min_span_tokens=k, max_span_tokens=max(k, 128))
        self.max_contribution_bytes = max_contribution_bytes
        self.poll_s = poll_s
        self.retry_s = retry_s
        self.fetch_timeout_s = fetch_timeout_s
        self.stats = ServiceStats()
        self._ready: dict[int, _Ready] = {}
        self._withdrawn: set[int] = set()  # adapters whose corpus lost members: no attribution until rebuilt
        self._building: dict[int, tuple[Corpus, asyncio.Task]] = {}
        self._bad: dict[str, str] = {}  # CID -> permanent reason (never refetched)
        self._lock = threading.Lock()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._build_sem = asyncio.Semaphore(1)  # index builds are CPU-bound: one at a time

    # -- request path ----------------------------------------------------------------------------
    def attributor_for(self, adapter_id: int) -> Attributor | None:
        """The ready attributor of an adapter, or None. Never blocks (a dict lookup)."""
        adapter_id = int(adapter_id)
        with self._lock:
            if adapter_id in self._withdrawn:
                return None
            ready = self._ready.get(adapter_id)
        if ready is None:
            self.notify()  # first request for a just-loaded adapter: look for its corpus now
            return None
        return ready.attributor

    def metrics(self) -> dict[str, float]:
        """Numbers for Prometheus (`loranode_attribution_*`): readiness, memory, build throughput."""
        with self._lock:
            ready = dict(self._ready)
        unique = {id(r.attributor): r.attributor for r in ready.values() if r.attributor is not None}
        st, s = self.store.stats, self.stats
        return {
            "adapters_ready": sum(1 for r in ready.values() if r.attributor is not None),
            "index_bytes": sum(a.index_bytes for a in unique.values()),
            "corpus_token_count": sum(a.corpus_tokens for a in unique.values()),
            "contributions_skipped": len(s.skipped),
            "builds": s.builds,
            "indexes_built": st.built,
            "indexes_loaded": st.loaded,
            "indexes_rebuilt": st.rebuilt,
            "last_build_seconds": s.last_build_s,
            "last_build_tokens_per_s": s.last_build_tokens / s.last_build_s if s.last_build_s > 0 else 0.0,
        }

    def notify(self, *_: Any) -> None:
        """Wake the loop (the watcher calls this when chain rows changed). Thread-safe."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    # -- what each adapter should hold ---------------------------------------------------------------
    def desired(self) -> dict[int, Corpus]:
        """Loaded adapter id -> its datasets' accepted contributions, from the DB (blocking)."""
        with self.sessions() as s:
            adapters = {
                a.id: sorted({int(ds) for ds, _ in (a.dataset_splits or [])})
                for a in s.scalars(
                    select(Adapter).where(Adapter.state == AdapterState.LOADED.value, Adapter.deprecated.is_(False))
                )
            }
            wanted = sorted({ds for dss in adapters.values() for ds in dss})
            by_ds: dict[int, list[Member]] = {}
            if wanted:
                rows = s.execute(
                    select(Contribution.id, Contribution.dataset_id, Contribution.content_cid).where(
                        Contribution.dataset_id.in_(wanted), Contribution.status == ContributionStatus.ACCEPTED.value
                    )
                )
                for cid_id, ds, cid in rows:
                    by_ds.setdefault(int(ds), []).append((int(cid_id), int(ds), cid))
        return {aid: tuple(sorted(m for ds in dss for m in by_ds.get(ds, ()))) for aid, dss in adapters.items()}

    async def refresh(self) -> None:
        """One pass: drop adapters no longer loaded, start builds where the corpus changed."""
        want = await asyncio.to_thread(self.desired)
        now = time.time()
        with self._lock:
            for aid in [a for a in self._ready if a not in want]:  # unloaded, deprecated, gone
                del self._ready[aid]
                self._withdrawn.discard(aid)
        for aid in [a for a in self._building if a not in want]:
            self._building.pop(aid)[1].cancel()

        def fresh(r: _Ready | None, corpus: Corpus) -> bool:
            return r is not None and r.corpus == corpus and (r.complete or now - r.built_at < self.retry_s)

        for aid, corpus in want.items():
            ready = self._ready.get(aid)
            if fresh(ready, corpus):
                continue
            if ready is not None and not set(ready.corpus) <= set(corpus):
                with self._lock:  # a member left the accepted set: stop crediting it now
                    self._withdrawn.add(aid)
            building = self._building.get(aid)
            if building is not None and building[0] == corpus:
                continue
            if any(b[0] == corpus for a, b in self._building.items() if a != aid):
                continue  # another adapter is building this very corpus: shared when it is ready
            if building is not None:
                building[1].cancel()
            with self._lock:
                shared = next((r for a, r in self._ready.items() if a != aid and fresh(r, corpus)), None)
            if shared is not None:  # adapters on the same datasets share one index in memory
                with self._lock:
                    self._ready[aid] = shared
                    self._withdrawn.discard(aid)
                continue
            self._building[aid] = (corpus, asyncio.create_task(self._build(aid, corpus), name=f"attribution-{aid}"))

    async def run(self, stop_event: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        while not stop_event.is_set():
            self._wake.clear()  # before the pass: a notify() during it triggers another pass
            try:
                await self.refresh()
            except Exception:  # a DB hiccup must not end the loop
                log.exception("attribution refresh failed")
            waiter = asyncio.ensure_future(self._wake.wait())
            stopper = asyncio.ensure_future(stop_event.wait())
            await asyncio.wait({waiter, stopper}, timeout=self.poll_s, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
        await self.close()

    async def drain(self) -> None:
        """Wait for the builds in flight (tests)."""
        while self._building:
            await asyncio.gather(*[t for _, t in list(self._building.values())], return_exceptions=True)

    async def close(self) -> None:
        tasks = [t for _, t in self._building.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._building.clear()

    # -- one build -----------------------------------------------------------------------------------
    async def _build(self, aid: int, corpus: Corpus) -> None:
        try:
            async with self._build_sem:
                t0 = time.monotonic()
                att = Attributor(self.store, self.config)
                complete = True
                for contribution_id, dataset_id, cid in corpus:
                    ok = await self._add(att, contribution_id, dataset_id, cid)
                    complete = complete and ok is not None
                if att.contribution_ids():
                    await asyncio.to_thread(att.prepare)  # consolidate here, not on the first request
                ready = _Ready(corpus, att if att.contribution_ids() else None, complete, time.time())
                with self._lock:
                    self._ready[aid] = ready
                    self._withdrawn.discard(aid)
                self.stats.builds += 1
                self.stats.last_build_s = time.monotonic() - t0
                self.stats.last_build_tokens = att.corpus_tokens if ready.attributor else 0
                self.notify()  # adapters waiting for this corpus pick it up on the next pass
                log.info(
                    "attribution for adapter %d ready: %d/%d contributions, %d tokens, %.2fs",
                    aid,
                    len(att.contribution_ids()),
                    len(corpus),
                    att.corpus_tokens if ready.attributor else 0,
                    time.monotonic() - t0,
                )
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not go unseen; the next pass retries
            log.exception("building the attribution index of adapter %d failed", aid)
        finally:
            current = self._building.get(aid)
            if current is not None and current[0] == corpus:
                self._building.pop(aid, None)

    async def _add(self, att: Attributor, contribution_id: int, dataset_id: int, cid: str) -> bool | None:
        """Index one contribution. True: added; False: skipped for good (bad content);
        None: skipped for now (fetch failed; retried later)."""
        if cid in self._bad:
            self.stats.skipped[contribution_id] = self._bad[cid]
            return False
        from node.ipfs import IpfsError, fetch_verified

        try:
            path = await asyncio.wait_for(
                fetch_verified(self.backends, cid, self.max_contribution_bytes, self.cache), self.fetch_timeout_s
            )
        except asyncio.TimeoutError:
            self.stats.skipped[contribution_id] = f"fetch timed out after {self.fetch_timeout_s:.0f}s"
            return None
        except IpfsError as e:
            reason = f"fetch failed: {type(e).__name__}: {e}"
            self.stats.skipped[contribution_id] = reason
            log.warning("contribution %d (%s): %s", contribution_id, cid, reason)
            return None if _transient(e) else self._mark_bad(contribution_id, cid, reason)
        if await asyncio.to_thread(Path(path).is_dir):
            return self._mark_bad(contribution_id, cid, "a folder, not a text file")
        try:
            await asyncio.to_thread(att.add_file, contribution_id, dataset_id, cid, Path(path))
        except ContributionError as e:  # empty, not UTF-8, over the byte/token cap
            return self._mark_bad(contribution_id, cid, e.reason)
        self.stats.skipped.pop(contribution_id, None)
        return True

    def _mark_bad(self, contribution_id: int, cid: str, reason: str) -> bool:
        log.warning("contribution %d (%s) is not indexed: %s", contribution_id, cid, reason)
        self._bad[cid] = reason
        self.stats.skipped[contribution_id] = reason
        return False


def _transient(e: Exception) -> bool:
    """Fetch errors worth retrying later (not caused by the content itself)."""
    from node.ipfs import ContentTooLarge, InvalidCID, UnsafeEntry, UnsupportedContent

    # A hash mismatch is the source's fault (another source may be honest); a size over the cap
    # or an unusable CID is the content's, and will not change.
    permanent = (ContentTooLarge, InvalidCID, UnsafeEntry, UnsupportedContent)
    if isinstance(e, permanent):
        return False
    errors = getattr(e, "errors", None)  # AllBackendsFailed: [(backend name, error)]
    if errors:
        return not all(isinstance(err, permanent) for _, err in errors)
    return True
