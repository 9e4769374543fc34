"""Generic chain watcher: the events of confirmed blocks, handed to a store, with reorgs undone.

Per step:
1. target = head − confirmations; nothing to do when the cursor is there.
2. The cursor block's hash must still be canonical; if not, walk the store's ring of recent block
   hashes back to the newest block whose hash still matches (common ancestor) and let the store
   roll back to it.
3. eth_getLogs over an adaptive window (halved on provider errors, regrown after successes),
   decoded by `chain.events.EventDecoder` into typed events.
4. The store commits the window's events, its block hashes and the new cursor atomically, so a
   crash leaves either all of a window or none and a restart resumes without gaps or duplicates.

What the events mean and where they are kept is the store's business (`WatcherStore`); listeners
(`add_listener`) hear about every step that applied events or undid a reorg.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from hexbytes import HexBytes

from chain.contract_types import Event
from chain.errors import ChainError
from chain.events import EventDecoder

log = logging.getLogger(__name__)


class WatcherError(ChainError):
    """The watcher could not make progress (RPC down, provider refusing even 1-block windows, reorg under way)."""


@dataclass(frozen=True)
class BlockRef:
    number: int
    hash: str  # 0x hex
    parent_hash: str  # 0x hex; "" when not known


class WatcherStore(Protocol):
    """Where a watcher's events, ring of recent block hashes and cursor live."""

    def cursor(self) -> BlockRef | None:
        """The last fully applied block, None before the first window."""

    def recent_blocks(self) -> list[tuple[int, str]]:
        """The ring: (number, hash) of recently applied blocks, newest first."""

    def commit(self, events: list[Event], blocks: list[BlockRef], cursor: BlockRef, ring_size: int) -> None:
        """Atomically: apply `events` (oldest first), add `blocks` to the ring keeping its newest
        `ring_size` entries, and move the cursor."""

    def rollback_to(self, ancestor: int | None) -> None:
        """Atomically: undo every event above block `ancestor` and move the cursor there (to the ring's
        hash of that block); `ancestor` None = undo everything and clear the cursor."""


@dataclass
class SyncResult:
    from_block: int
    to_block: int  # new cursor
    events: int
    reorg_depth: int = 0  # blocks undone this step (0 = none)
    caught_up: bool = False


Listener = Callable[[SyncResult], Any]


def _hex(v: Any) -> str:
    return "0x" + bytes(HexBytes(v)).hex()


class ChainWatcher:
    """Follows confirmed blocks. `sync_once()` (async) / `step()` (blocking) do one window;
    `run(stop_event)` loops until the event is set, surviving RPC outages."""

    def __init__(
        self,
        w3,
        decoder: EventDecoder,
        store: WatcherStore,
        *,
        start_block: int = 0,
        confirmations: int = 2,
        max_window: int = 2000,
        ring_size: int = 256,
        poll_s: float = 2.0,
        name: str = "watcher",
    ):
        if ring_size <= confirmations:
            raise ValueError("ring_size must exceed confirmations")
        if max_window < 1:
            raise ValueError("max_window must be at least 1 block")
        self.w3 = w3
        self.decoder = decoder
        self.store = store
        self.start_block = max(0, int(start_block))
        self.confirmations = int(confirmations)
        self.max_window = int(max_window)
        self.window = int(max_window)
        self._successes = 0
        self.ring_size = int(ring_size)
        self.poll_s = poll_s
        self.name = name
        self._listeners: list[Listener] = []
        self.last_error: str | None = None
        self.reorgs = 0  # count, for metrics/tests

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(SyncResult)` after each step that applied events or undid a reorg. It runs in
        the watcher's worker thread; an exception from it fails that step (after the commit)."""
        self._listeners.append(listener)

    # -- chain reads (overridable in tests) -------------------------------------------------------
    def _head(self) -> int:
        return int(self.w3.eth.block_number)

    def _block(self, n: int) -> tuple[str, str]:
        b = self.w3.eth.get_block(n)
        return _hex(b["hash"]), _hex(b["parentHash"])

    def _hash_or_none(self, n: int) -> str | None:
        """Hash of block `n`, None when the chain is shorter now (a reorg/rollback removed it)."""
        from web3.exceptions import BlockNotFound

        try:
            return self._block(n)[0]
        except BlockNotFound:
            return None

    def _get_logs(self, frm: int, to: int) -> list[dict]:
        return list(
            self.w3.eth.get_logs(
                {
                    "fromBlock": frm,
                    "toBlock": to,
                    "address": self.decoder.addresses,
                    "topics": [self.decoder.topics()],
                }
            )
        )

    # -- cursor ---------------------------------------------------------------------------------------
    def cursor(self) -> tuple[int, str | None]:
        """(last fully applied block, its hash); (start_block − 1, None) before the first window."""
        c = self.store.cursor()
        return (c.number, c.hash) if c is not None else (self.start_block - 1, None)

    # -- one step -----------------------------------------------------------------------------------------
    def step(self) -> SyncResult:
        """Undo a reorg if there was one, then apply one getLogs window. Blocking (web3 sync calls)."""
        depth = self._check_reorg()
        cur, cur_hash = self.cursor()
        target = self._head() - self.confirmations
        if target <= cur:
            return SyncResult(cur, cur, 0, depth, caught_up=True)
        frm = cur + 1
        while True:
            to = min(target, frm + self.window - 1)
            try:
                to_hash_before = self._block(to)[0]
                logs = self._get_logs(frm, to)
                to_hash, to_parent = self._block(to)
            except Exception as e:  # providers raise anything: HTTP, RPC, timeouts
                if self.window == 1 or _is_connection_error(e):
                    raise WatcherError(f"getLogs {frm}..{to} failed: {e}") from e
                self.window, self._successes = max(1, self.window // 2), 0
                log.info("getLogs %d..%d failed (%s); window now %d blocks", frm, to, e, self.window)
                continue
            if to_hash != to_hash_before:
                raise WatcherError(f"block {to} changed during getLogs (reorg in progress); retrying later")
            break
        # Regrow slowly: doubling after every success would hit the provider's cap again at once.
        self._successes += 1
        if self.window < self.max_window and self._successes >= 8:
            self.window, self._successes = min(self.max_window, self.window * 2), 0
        events = self.decoder.decode_all(logs)
        events.sort(key=lambda e: (e.block_number, e.log_index))
        if cur_hash is not None and frm <= to:
            # The window must extend the block we stopped at; otherwise a reorg hit in between.
            parent_of_first = self._block(frm)[1]
            if parent_of_first != cur_hash:
                raise WatcherError(f"block {frm} does not extend cursor {cur}; reorg in progress, retrying")
        # ring: the window end plus every block that had events (all canonical at `to`)
        end = BlockRef(to, to_hash, to_parent)
        blocks = {to: end}
        for ev in events:
            blocks.setdefault(ev.block_number, BlockRef(ev.block_number, _hex(ev.block_hash), ""))
        self.store.commit(events, list(blocks.values()), end, self.ring_size)
        res = SyncResult(frm, to, len(events), depth, caught_up=(to == target))
        if events or depth:
            for listener in tuple(self._listeners):  # one may be added meanwhile, from the event loop
                listener(res)
        return res

    # -- reorgs -----------------------------------------------------------------------------------------
    def _check_reorg(self) -> int:
        cur, cur_hash = self.cursor()
        if cur_hash is None:
            return 0
        if self._hash_or_none(cur) == cur_hash:
            return 0
        ancestor = self._common_ancestor(cur)
        log.warning("reorg: block %d hash changed; rolling back to %d", cur, ancestor)
        self.store.rollback_to(ancestor if ancestor >= self.start_block else None)
        self.reorgs += 1
        return cur - ancestor

    def _common_ancestor(self, cur: int) -> int:
        for n, h in self.store.recent_blocks():
            if n > cur:
                continue
            if self._hash_or_none(n) == h:
                return n
        # Deeper than the ring: start over from the first block (correct, only slower).
        log.error("reorg deeper than the ring of %d blocks: resyncing from block %d", self.ring_size, self.start_block)
        return self.start_block - 1

    # -- loop -------------------------------------------------------------------------------------------------
    async def sync_once(self) -> SyncResult:
        """One step in a worker thread (web3 calls block)."""
        return await asyncio.to_thread(self.step)

    async def sync_until_caught_up(self, max_steps: int = 10_000) -> SyncResult:
        res = await self.sync_once()
        for _ in range(max_steps):
            if res.caught_up:
                break
            res = await self.sync_once()
        return res

    async def run(self, stop_event: asyncio.Event) -> None:
        """Follow the chain until `stop_event` is set. RPC errors back off (up to 30 s) and retry."""
        backoff = self.poll_s
        while not stop_event.is_set():
            try:
                res = await self.sync_once()
                self.last_error = None
                backoff = self.poll_s
                delay = 0 if not res.caught_up else self.poll_s
            except Exception as e:  # noqa: BLE001 - keep following; the error is visible via last_error
                self.last_error = str(e)
                log.warning("chain watcher %s: %s (retry in %.1fs)", self.name, e, backoff)
                delay, backoff = backoff, min(30.0, backoff * 2)
            if delay:
                try:
                    await asyncio.wait_for(stop_event.wait(), timeout=delay)
                except asyncio.TimeoutError:
                    pass
            else:
                await asyncio.sleep(0)

    def lag_blocks(self) -> int | None:
        """Blocks between the confirmed head and the cursor (metrics); None when the RPC is down."""
        try:
            return max(0, self._head() - self.confirmations - self.cursor()[0])
        except Exception:  # noqa: BLE001 - any RPC failure means "unknown"
            return None


def _is_connection_error(e: Exception) -> bool:
    """The RPC is unreachable: a smaller window will not help (other provider errors halve it)."""
    text = str(e).lower()
    return isinstance(e, (ConnectionError, OSError)) and "timed out" not in text and "timeout" not in text
