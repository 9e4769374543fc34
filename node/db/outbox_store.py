"""`chain.outbox.OutboxStore` on the node's DB (SQLAlchemy; SQLite or Postgres): the one durable store.

The nonce and state rules (and their messages) are `chain.outbox_store`'s; this module only maps
them onto rows.

Each method is one DB transaction, so a crash leaves an intent either before or after a step:
that is what lets the outbox rebroadcast exactly the bytes it signed and never reuse a nonce
(the unique (sender, nonce) constraint enforces it in the DB too).

`on_step(name, intent_id)` is called at the three points where a crash matters most (tests kill
the process there): "signed" (signed bytes stored, not yet sent), "broadcast" (sent, not yet
recorded as sent) and "mined" (mined on chain, not yet recorded).
"""

from __future__ import annotations

from typing import Callable

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from chain.outbox_store import (
    Attempt,
    Intent,
    IntentStatus,
    check_open,
    check_signing,
    finished_status,
    no_intent,
    nonce_taken,
)
from node.db.models import OutboxAttempt, OutboxIntent

OPEN = tuple(status.value for status in IntentStatus if status.is_open)


def _intent(s: Session, row: OutboxIntent) -> Intent:
    attempts = tuple(
        Attempt(bytes(a.tx_hash), bytes(a.raw), int(a.max_fee_per_gas), int(a.max_priority_fee_per_gas), a.signed_at)
        for a in s.scalars(select(OutboxAttempt).where(OutboxAttempt.intent_id == row.id).order_by(OutboxAttempt.n))
    )
    return Intent(
        id=row.id,
        key=row.key,
        sender=row.sender,
        params=dict(row.params),
        status=IntentStatus(row.status),
        created_at=row.created_at,
        nonce=row.nonce,
        attempts=attempts,
        sent_at=row.sent_at,
        tx_hash=bytes(row.tx_hash) if row.tx_hash is not None else None,
        block_number=row.block_number,
        gas_used=row.gas_used,
        error=row.error,
    )


class SqlOutboxStore:
    def __init__(self, session_factory: sessionmaker[Session], on_step: Callable[[str, int], None] | None = None):
        self.sessions = session_factory
        self.on_step = on_step

    def _step(self, name: str, intent_id: int) -> None:
        if self.on_step is not None:
            self.on_step(name, intent_id)

    def add(self, key: str, sender: str, params: dict, now: float) -> tuple[int, bool]:
        with self.sessions.begin() as s:
            existing = s.scalar(select(OutboxIntent.id).where(OutboxIntent.key == key))
            if existing is not None:
                return existing, False
            row = OutboxIntent(key=key, sender=sender, params=dict(params), status=IntentStatus.QUEUED.value, created_at=now)
            s.add(row)
            s.flush()
            return row.id, True

    def get(self, intent_id: int) -> Intent | None:
        with self.sessions() as s:
            row = s.get(OutboxIntent, intent_id)
            return None if row is None else _intent(s, row)

    def get_by_key(self, key: str) -> Intent | None:
        with self.sessions() as s:
            row = s.scalar(select(OutboxIntent).where(OutboxIntent.key == key))
            return None if row is None else _intent(s, row)

    def open_intents(self, sender: str) -> list[Intent]:
        with self.sessions() as s:
            rows = s.scalars(
                select(OutboxIntent).where(OutboxIntent.sender == sender, OutboxIntent.status.in_(OPEN)).order_by(OutboxIntent.id)
            )
            return [_intent(s, r) for r in rows]

    def highest_nonce(self, sender: str) -> int | None:
        with self.sessions() as s:
            return s.scalar(select(func.max(OutboxIntent.nonce)).where(OutboxIntent.sender == sender))

    def finished_from_nonce(self, sender: str, nonce: int) -> list[Intent]:
        with self.sessions() as s:
            rows = s.scalars(
                select(OutboxIntent)
                .where(OutboxIntent.sender == sender, OutboxIntent.nonce >= nonce, OutboxIntent.status.not_in(OPEN))
                .order_by(OutboxIntent.nonce)
            )
            return [_intent(s, r) for r in rows]

    def record_signed(self, intent_id: int, nonce: int, attempt: Attempt) -> None:
        sender = None  # kept outside the session: a rolled-back row cannot be read
        try:
            with self.sessions.begin() as s:
                row = self._require(s, intent_id, lock=True)
                sender = row.sender
                check_signing(intent_id, IntentStatus(row.status), row.nonce, nonce)
                if (
                    row.nonce is None
                    and s.scalar(select(OutboxIntent.id).where(OutboxIntent.sender == row.sender, OutboxIntent.nonce == nonce))
                    is not None
                ):
                    raise nonce_taken(row.sender, nonce)
                n = s.scalar(select(func.count()).where(OutboxAttempt.intent_id == intent_id)) or 0
                row.nonce, row.status, row.sent_at = nonce, IntentStatus.SIGNED.value, None
                s.flush()
                s.add(
                    OutboxAttempt(
                        intent_id=intent_id,
                        n=n,
                        tx_hash=bytes(attempt.tx_hash),
                        raw=bytes(attempt.raw),
                        max_fee_per_gas=attempt.max_fee_per_gas,
                        max_priority_fee_per_gas=attempt.max_priority_fee_per_gas,
                        signed_at=attempt.signed_at,
                    )
                )
        except IntegrityError as e:
            if sender is None:  # not the nonce: nothing was written before the row was read
                raise
            # the unique (sender, nonce) constraint: another writer took the nonce between the check and the flush
            raise nonce_taken(sender, nonce) from e
        self._step("signed", intent_id)

    def mark_sent(self, intent_id: int, now: float) -> None:
        self._step("broadcast", intent_id)
        with self.sessions.begin() as s:
            row = self._require(s, intent_id)
            check_open(intent_id, IntentStatus(row.status), "marked sent")
            row.status = IntentStatus.SENT.value
            if row.sent_at is None:
                row.sent_at = now
            row.error = None

    def note_error(self, intent_id: int, error: str) -> None:
        with self.sessions.begin() as s:
            self._require(s, intent_id).error = error

    def finish(self, intent_id, status, *, tx_hash=None, block_number=None, gas_used=None, error=None) -> None:
        final = finished_status(status)
        if final == IntentStatus.MINED:
            self._step("mined", intent_id)
        with self.sessions.begin() as s:
            row = self._require(s, intent_id)
            check_open(intent_id, IntentStatus(row.status), "finished again")
            row.status = final.value
            row.tx_hash = bytes(tx_hash) if tx_hash is not None else None
            row.block_number, row.gas_used, row.error = block_number, gas_used, error

    @staticmethod
    def _require(s: Session, intent_id: int, lock: bool = False) -> OutboxIntent:
        row = s.get(OutboxIntent, intent_id, with_for_update=lock)
        if row is None:
            raise no_intent(intent_id)
        return row
