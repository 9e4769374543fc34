"""Per-adapter attribution for receipts: an `inference.attribution.Attributor` over the accepted
contributions of the datasets each adapter registered, their content fetched and CID-verified from
IPFS. Built in the background; until an adapter's attributor is ready its receipts carry an empty
attribution (never a delayed answer). Rebuilt when the set of accepted contributions changes.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from node.db.models import Adapter, Contribution, ContributionStatus

log = logging.getLogger(__name__)

MAX_CONTRIBUTION_BYTES = 16 << 20


class AttributionService:
    def __init__(self, sessions: sessionmaker[Session], backends: Sequence[Any], cache, tokenizer, data_dir: Path,
                 *, poll_s: float = 5.0, max_bytes: int = MAX_CONTRIBUTION_BYTES) -> None:
        from inference.attribution import IndexStore

        self.sessions = sessions
        self.backends = list(backends)
        self.cache = cache
        self.store = IndexStore(Path(data_dir), tokenizer, max_bytes=max_bytes)
        self.poll_s = poll_s
        self.max_bytes = max_bytes
        self._ready: dict[int, tuple[frozenset, Any]] = {}  # adapter id -> (members, Attributor)
        self._wanted: set[int] = set()
        self._wake = asyncio.Event()

    def attributor_for(self, adapter_id: int):
        """The adapter's attributor if built (called on the request path: never blocks)."""
        hit = self._ready.get(adapter_id)
        if hit is None and adapter_id not in self._wanted:
            self._wanted.add(adapter_id)
            self._wake.set()
        return hit[1] if hit else None

    def _members(self, adapter_id: int) -> list[tuple[int, int, str]]:
        """(contribution id, dataset id, content CID) of the accepted contributions behind an adapter."""
        with self.sessions() as s:
            row = s.get(Adapter, adapter_id)
            if row is None:
                return []
            datasets = [int(d) for d, bps in (row.dataset_splits or []) if int(bps) > 0]
            if not datasets:
                return []
            q = select(Contribution).where(Contribution.dataset_id.in_(datasets),
                                           Contribution.status == ContributionStatus.ACCEPTED.value)
            return sorted((c.id, c.dataset_id, c.content_cid) for c in s.scalars(q))

    async def refresh(self, adapter_id: int) -> None:
        from inference.attribution import Attributor
        from node.ipfs import fetch_verified

        members = await asyncio.to_thread(self._members, adapter_id)
        key = frozenset(members)
        if adapter_id in self._ready and self._ready[adapter_id][0] == key:
            return
        attributor = Attributor(self.store)
        for cid_id, ds, cid in members:
            try:
                path = await fetch_verified(self.backends, cid, self.max_bytes, self.cache)
                await asyncio.to_thread(attributor.add_file, cid_id, ds, cid, path)
            except Exception as e:  # noqa: BLE001 - one bad contribution must not block the others
                log.warning("contribution %s (%s) not indexed for adapter %s: %s", cid_id, cid, adapter_id, e)
        self._ready[adapter_id] = (key, attributor)

    async def run(self, stop_event: asyncio.Event) -> None:
        while not stop_event.is_set():
            for aid in list(self._wanted):
                try:
                    await self.refresh(aid)
                except Exception:  # noqa: BLE001 - a DB hiccup must not end the loop
                    log.exception("attribution refresh of adapter %s failed", aid)
            self._wake.clear()
            waiter = asyncio.ensure_future(self._wake.wait())
            stopper = asyncio.ensure_future(stop_event.wait())
            await asyncio.wait({waiter, stopper}, timeout=self.poll_s, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
