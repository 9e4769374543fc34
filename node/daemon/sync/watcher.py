"""Chain watcher: contract events of confirmed blocks → `chain_events` + projections, with reorgs undone.

Per step:
1. target = head − confirmations; nothing to do when the cursor is there.
2. The cursor block's hash must still be canonical; if not, walk the ring of recent block hashes
   (`chain_blocks`) back to the newest block whose hash still matches (common ancestor), delete the
   events above it and rebuild the projections they touched.
3. eth_getLogs over an adaptive window (halved on provider errors, doubled after successes).
4. Events, their projections, the window's block hashes and the cursor commit in ONE transaction:
   a crash leaves either all of a window or none, so a restart resumes without gaps or duplicates.

The watcher is generic: a `Decoder` turns raw logs into `DecodedEvent`s, a `Projector` names the
entity each event belongs to, applies it, and rebuilds an entity from its remaining events.
`node.daemon.sync.projections.RegistryProjector` is the projector of the three registries.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

from eth_utils import event_abi_to_log_topic
from hexbytes import HexBytes
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from node.db.models import ChainBlock, ChainCursor, ChainEvent
from node.errors import NodeError

log = logging.getLogger(__name__)


class WatcherError(NodeError):
    """The watcher could not make progress (RPC down, provider refusing even 1-block windows)."""


@dataclass(frozen=True)
class DecodedEvent:
    name: str
    args: dict  # JSON-safe: bytes as 0x hex, addresses checksummed, ints as ints
    address: str
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int


class Decoder(Protocol):
    addresses: list[str]

    def topics(self) -> list[str]: ...

    def decode(self, log: dict) -> DecodedEvent | None: ...


class Projector(Protocol):
    def entity(self, ev: DecodedEvent) -> str | None:
        """Projection key of `ev` (e.g. "adapter:3"), or None to ignore the event."""

    def apply(self, session: Session, ev: DecodedEvent) -> None:
        """Apply one new event to the projection rows."""

    def rebuild(self, session: Session, entity: str, events: list[DecodedEvent]) -> None:
        """Recompute `entity` from its remaining events (oldest first) after a reorg removed some."""


def _json_safe(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray, HexBytes)):
        return "0x" + bytes(v).hex()
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, dict) or hasattr(v, "items"):
        return {k: _json_safe(x) for k, x in v.items()}
    return v


def _hex(v: Any) -> str:
    return "0x" + bytes(v).hex() if isinstance(v, (bytes, bytearray, HexBytes)) else str(v)


class AbiEventDecoder:
    """Decodes the logs of known contracts with their ABIs (from `artifacts/`)."""

    def __init__(self, w3, contracts: dict[str, list[dict]], names: Iterable[str] | None = None):
        """`contracts`: address → ABI. `names`: restrict to these event names (default: all)."""
        self.addresses = [w3.to_checksum_address(a) for a in contracts]
        self._by_topic: dict[tuple[str, str], Any] = {}
        wanted = set(names) if names is not None else None
        for addr, abi in contracts.items():
            contract = w3.eth.contract(address=w3.to_checksum_address(addr), abi=abi)
            for item in abi:
                if item.get("type") != "event" or (wanted is not None and item["name"] not in wanted):
                    continue
                topic = "0x" + event_abi_to_log_topic(item).hex()
                self._by_topic[(w3.to_checksum_address(addr), topic)] = contract.events[item["name"]]()

    def topics(self) -> list[str]:
        return sorted({t for _, t in self._by_topic})

    def decode(self, log: dict) -> DecodedEvent | None:
        if not log.get("topics") or log.get("removed"):
            return None
        key = (log["address"], _hex(log["topics"][0]))
        event = self._by_topic.get(key)
        if event is None:
            return None
        data = event.process_log(log)
        return DecodedEvent(
            name=data["event"], args=_json_safe(dict(data["args"])), address=log["address"],
            block_number=int(log["blockNumber"]), block_hash=_hex(log["blockHash"]),
            tx_hash=_hex(log["transactionHash"]), log_index=int(log["logIndex"]),
        )


@dataclass
class SyncResult:
    from_block: int
    to_block: int  # new cursor
    events: int
    reorg_depth: int = 0  # blocks undone this step (0 = none)
    caught_up: bool = False


def _row_event(r: ChainEvent) -> DecodedEvent:
    return DecodedEvent(r.name, r.args, r.address, r.block_number, r.block_hash, r.tx_hash, r.log_index)


class ChainWatcher:
    """Follows confirmed blocks. `sync_once()` (async) / `step()` (blocking) do one window;
    `run(stop_event)` loops until the event is set, surviving RPC outages."""

    def __init__(
        self,
        w3,
        session_factory: sessionmaker[Session],
        decoder: Decoder,
        projector: Projector,
        *,
        start_block: int = 0,
        confirmations: int = 2,
        max_window: int = 2000,
        ring_size: int = 256,
        poll_s: float = 2.0,
        name: str = "registries",
        on_change: Callable[[SyncResult], None] | None = None,
    ):
        if ring_size <= confirmations:
            raise ValueError("ring_size must exceed confirmations")
        self.w3 = w3
        self.sessions = session_factory
        self.decoder = decoder
        self.projector = projector
        self.start_block = max(0, int(start_block))
        self.confirmations = int(confirmations)
        self.max_window = int(max_window)
        self.window = int(max_window)
        self._successes = 0
        self.ring_size = int(ring_size)
        self.poll_s = poll_s
        self.name = name
        self.on_change = on_change
        self.last_error: str | None = None
        self.reorgs = 0  # count, for metrics/tests

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
        return list(self.w3.eth.get_logs({
            "fromBlock": frm, "toBlock": to, "address": self.decoder.addresses, "topics": [self.decoder.topics()],
        }))

    # -- cursor ---------------------------------------------------------------------------------------
    def cursor(self) -> tuple[int, str | None]:
        """(last fully applied block, its hash); (start_block − 1, None) before the first window."""
        with self.sessions() as s:
            c = s.get(ChainCursor, self.name)
            return (c.block_number, c.block_hash) if c else (self.start_block - 1, None)

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
            except Exception as e:  # noqa: BLE001 - providers raise anything: HTTP, RPC, timeouts
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
        events = [ev for ev in (self.decoder.decode(lg) for lg in logs) if ev is not None]
        events.sort(key=lambda e: (e.block_number, e.log_index))
        if cur_hash is not None and frm <= to:
            # The window must extend the block we stopped at; otherwise a reorg hit in between.
            parent_of_first = self._block(frm)[1]
            if parent_of_first != cur_hash:
                raise WatcherError(f"block {frm} does not extend cursor {cur}; reorg in progress, retrying")
        self._commit(events, to, to_hash, to_parent)
        res = SyncResult(frm, to, len(events), depth, caught_up=(to == target))
        if (events or depth) and self.on_change is not None:
            self.on_change(res)
        return res

    def _commit(self, events: list[DecodedEvent], to: int, to_hash: str, to_parent: str) -> None:
        with self.sessions.begin() as s:
            for ev in events:
                entity = self.projector.entity(ev)
                if entity is None:
                    continue
                s.add(ChainEvent(block_number=ev.block_number, block_hash=ev.block_hash, tx_hash=ev.tx_hash,
                                 log_index=ev.log_index, address=ev.address, name=ev.name, entity=entity,
                                 args=ev.args))
                self.projector.apply(s, ev)
            # ring: the window end plus every block that had events (all canonical at `to`)
            ring = {to: (to_hash, to_parent)}
            for ev in events:
                ring.setdefault(ev.block_number, (ev.block_hash, ""))
            for n, (h, p) in ring.items():
                s.merge(ChainBlock(number=n, hash=h, parent_hash=p))
            c = s.get(ChainCursor, self.name)
            if c is None:
                s.add(ChainCursor(name=self.name, block_number=to, block_hash=to_hash))
            else:
                c.block_number, c.block_hash = to, to_hash
            s.flush()
            keep = s.scalars(select(ChainBlock.number).order_by(ChainBlock.number.desc()).offset(self.ring_size)
                             .limit(1)).first()
            if keep is not None:
                s.execute(delete(ChainBlock).where(ChainBlock.number <= keep))

    # -- reorgs -----------------------------------------------------------------------------------------
    def _check_reorg(self) -> int:
        cur, cur_hash = self.cursor()
        if cur_hash is None:
            return 0
        if self._hash_or_none(cur) == cur_hash:
            return 0
        ancestor = self._common_ancestor(cur)
        log.warning("reorg: block %d hash changed; rolling back to %d", cur, ancestor)
        self._rollback_to(ancestor)
        self.reorgs += 1
        return cur - ancestor

    def _common_ancestor(self, cur: int) -> int:
        with self.sessions() as s:
            ring = list(s.execute(select(ChainBlock.number, ChainBlock.hash).order_by(ChainBlock.number.desc())))
        for n, h in ring:
            if n > cur:
                continue
            if self._hash_or_none(n) == h:
                return n
        # Deeper than the ring: start over from the first block (correct, only slower).
        log.error("reorg deeper than the ring of %d blocks: resyncing from block %d", self.ring_size,
                  self.start_block)
        return self.start_block - 1

    def _rollback_to(self, ancestor: int) -> None:
        """Delete events above `ancestor`, rebuild the entities they touched, move the cursor (one tx)."""
        with self.sessions.begin() as s:
            undone = list(s.scalars(select(ChainEvent).where(ChainEvent.block_number > ancestor)))
            entities = sorted({e.entity for e in undone})
            s.execute(delete(ChainEvent).where(ChainEvent.block_number > ancestor))
            s.execute(delete(ChainBlock).where(ChainBlock.number > ancestor))
            for entity in entities:
                remaining = s.scalars(select(ChainEvent).where(ChainEvent.entity == entity)
                                      .order_by(ChainEvent.block_number, ChainEvent.log_index))
                self.projector.rebuild(s, entity, [_row_event(r) for r in remaining])
            c = s.get(ChainCursor, self.name)
            if ancestor < self.start_block:
                s.delete(c)
            else:
                anc = s.get(ChainBlock, ancestor)
                c.block_number, c.block_hash = ancestor, anc.hash

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
                log.warning("chain watcher: %s (retry in %.1fs)", e, backoff)
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
        except Exception:  # noqa: BLE001
            return None


def _is_connection_error(e: Exception) -> bool:
    """The RPC is unreachable: a smaller window will not help (other provider errors halve it)."""
    text = str(e).lower()
    return isinstance(e, (ConnectionError, OSError)) and "timed out" not in text and "timeout" not in text


def registry_watcher(w3, session_factory: sessionmaker[Session], deployment, *, confirmations: int = 2,
                     max_window: int = 2000, ring_size: int = 256, poll_s: float = 2.0,
                     on_change: Callable[[SyncResult], None] | None = None) -> ChainWatcher:
    """The node's watcher of DatasetRegistry, AdapterRegistry and NodeRegistry.

    `deployment`: anything with `addresses[name]` and `blocks[name]` (chain.deploy.Deployment).
    """
    from chain.artifacts import load_artifact
    from node.daemon.sync.projections import WATCHED_EVENTS, RegistryProjector

    contracts = {deployment.addresses[n]: load_artifact(n).abi_list for n in WATCHED_EVENTS}
    names = [e for evs in WATCHED_EVENTS.values() for e in evs]
    start = min(int(deployment.blocks.get(n, 0)) for n in WATCHED_EVENTS)
    return ChainWatcher(w3, session_factory, AbiEventDecoder(w3, contracts, names), RegistryProjector(),
                        start_block=start, confirmations=confirmations, max_window=max_window,
                        ring_size=ring_size, poll_s=poll_s, on_change=on_change)
