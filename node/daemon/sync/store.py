"""The chain watcher's store on the node's DB: `chain_events` rows, projections, block ring, cursor.

Events, their projections, the window's block hashes and the cursor commit in ONE transaction, so
a crash leaves either a whole window or none. Each stored event names the entity it belongs to
(e.g. "adapter:3"); after a reorg the entities whose events were undone are rebuilt from the
events that remain. What the events mean is the `Projector`'s business.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from chain.contract_types import Event
from chain.events import EventDecoder
from chain.watcher import BlockRef, WatcherError
from node.db.models import ChainBlock, ChainCursor, ChainEvent


class Projector(Protocol):
    def entity(self, ev: Event) -> str | None:
        """Projection key of `ev` (e.g. "adapter:3"), or None to ignore the event."""

    def apply(self, session: Session, ev: Event) -> None:
        """Apply one new event to the projection rows."""

    def rebuild(self, session: Session, entity: str, events: list[Event]) -> None:
        """Recompute `entity` from its remaining events (oldest first) after a reorg removed some."""


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


class SqlWatcherStore:
    """`chain.watcher.WatcherStore` on SQLAlchemy; `name` keys the cursor row."""

    def __init__(self, sessions: sessionmaker[Session], decoder: EventDecoder, projector: Projector, *, name: str):
        self.sessions = sessions
        self.decoder = decoder  # stored args are its JSON form (ABI argument names)
        self.projector = projector
        self.name = name

    def cursor(self) -> BlockRef | None:
        with self.sessions() as s:
            c = s.get(ChainCursor, self.name)
            return BlockRef(c.block_number, c.block_hash, "") if c else None

    def recent_blocks(self) -> list[tuple[int, str]]:
        with self.sessions() as s:
            return [(n, h) for n, h in s.execute(select(ChainBlock.number, ChainBlock.hash).order_by(ChainBlock.number.desc()))]

    def commit(self, events: list[Event], blocks: list[BlockRef], cursor: BlockRef, ring_size: int) -> None:
        with self.sessions.begin() as s:
            for ev in events:
                entity = self.projector.entity(ev)
                if entity is None:
                    continue
                s.add(
                    ChainEvent(
                        block_number=ev.block_number,
                        block_hash=_hex(ev.block_hash),
                        tx_hash=_hex(ev.tx_hash),
                        log_index=ev.log_index,
                        address=ev.address,
                        name=type(ev).__name__,
                        entity=entity,
                        args=self.decoder.to_json(ev),
                    )
                )
                self.projector.apply(s, ev)
            for b in blocks:
                s.merge(ChainBlock(number=b.number, hash=b.hash, parent_hash=b.parent_hash))
            c = s.get(ChainCursor, self.name)
            if c is None:
                s.add(ChainCursor(name=self.name, block_number=cursor.number, block_hash=cursor.hash))
            else:
                c.block_number, c.block_hash = cursor.number, cursor.hash
            s.flush()
            keep = s.scalars(select(ChainBlock.number).order_by(ChainBlock.number.desc()).offset(ring_size).limit(1)).first()
            if keep is not None:
                s.execute(delete(ChainBlock).where(ChainBlock.number <= keep))

    def rollback_to(self, ancestor: int | None) -> None:
        """Delete events above `ancestor`, rebuild the entities they touched, move the cursor (one tx)."""
        above = -1 if ancestor is None else ancestor
        with self.sessions.begin() as s:
            undone = list(s.scalars(select(ChainEvent).where(ChainEvent.block_number > above)))
            entities = sorted({e.entity for e in undone})
            s.execute(delete(ChainEvent).where(ChainEvent.block_number > above))
            s.execute(delete(ChainBlock).where(ChainBlock.number > above))
            for entity in entities:
                remaining = s.scalars(
                    select(ChainEvent).where(ChainEvent.entity == entity).order_by(ChainEvent.block_number, ChainEvent.log_index)
                )
                self.projector.rebuild(s, entity, [self._event(r) for r in remaining])
            c = s.get(ChainCursor, self.name)
            if ancestor is None:
                if c is not None:
                    s.delete(c)
            else:
                anc = s.get(ChainBlock, ancestor)
                if c is None or anc is None:
                    raise WatcherError(
                        f"cannot roll back to block {ancestor}: " + ("no cursor" if c is None else "the block is not in the ring")
                    )
                c.block_number, c.block_hash = ancestor, anc.hash

    def _event(self, row: ChainEvent) -> Event:
        return self.decoder.from_json(
            row.name,
            row.args,
            address=row.address,
            block_number=row.block_number,
            block_hash=row.block_hash,
            tx_hash=row.tx_hash,
            log_index=row.log_index,
        )
