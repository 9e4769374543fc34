"""Storage for the transaction outbox: the record types, the `OutboxStore` protocol, the rules every
store enforces, and the in-memory reference store.

The durable store is the node's `node.db.outbox_store.SqlOutboxStore` (SQLAlchemy, SQLite or
Postgres); `InMemoryOutboxStore` is for fast tests and throw-away chains. Every write is atomic: a
crash leaves either the old or the new row, never half of one — that is what lets the outbox
rebroadcast exactly the bytes it signed. Both stores call the rule functions below, so they refuse
the same misuse with the same message.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from enum import Enum
from typing import Protocol, runtime_checkable

from chain.errors import ChainError


class OutboxError(ChainError):
    """The outbox was misused (bad params, a store inconsistency)."""


class IntentStatus(str, Enum):
    QUEUED = "queued"  # stored, no nonce yet
    SIGNED = "signed"  # nonce assigned and signed bytes stored; maybe never broadcast
    SENT = "sent"  # broadcast accepted at least once, waiting to be mined
    MINED = "mined"  # included with receipt status 1
    FAILED = "failed"  # reverted on chain, refused before signing, or its nonce was taken; see `error`

    @property
    def is_open(self) -> bool:
        return self in (IntentStatus.QUEUED, IntentStatus.SIGNED, IntentStatus.SENT)


@dataclass(frozen=True)
class Attempt:
    """One signed version of an intent's transaction (replacements share the nonce)."""

    tx_hash: bytes
    raw: bytes
    max_fee_per_gas: int
    max_priority_fee_per_gas: int
    signed_at: float


@dataclass(frozen=True)
class Intent:
    id: int
    key: str
    sender: str
    params: dict  # JSON-able: {"to": hex|None, "data": hex, "value": int, "gas": int|None}
    status: IntentStatus
    created_at: float
    nonce: int | None = None
    attempts: tuple[Attempt, ...] = ()
    sent_at: float | None = None  # when the newest attempt was first broadcast (stuck detection)
    tx_hash: bytes | None = None  # the attempt that was mined
    block_number: int | None = None
    gas_used: int | None = None
    error: str | None = None  # why it failed, or the last transient broadcast error while open


@runtime_checkable
class OutboxStore(Protocol):
    """What the outbox needs from a database. Each method is one atomic transaction."""

    def add(self, key: str, sender: str, params: dict, now: float) -> tuple[int, bool]:
        """Insert a QUEUED intent unless `key` exists; return (id, created)."""

    def get(self, intent_id: int) -> Intent | None: ...

    def get_by_key(self, key: str) -> Intent | None: ...

    def open_intents(self, sender: str) -> list[Intent]:
        """QUEUED, SIGNED and SENT intents of `sender`, oldest (lowest id) first."""

    def highest_nonce(self, sender: str) -> int | None:
        """Highest nonce ever assigned to an intent of `sender` (any status), None if none."""

    def finished_from_nonce(self, sender: str, nonce: int) -> list[Intent]:
        """MINED and FAILED intents of `sender` with a nonce >= `nonce`, lowest nonce first."""

    def record_signed(self, intent_id: int, nonce: int, attempt: Attempt) -> None:
        """Assign `nonce` (first time) and append `attempt`; status → SIGNED, sent_at → None.

        Must refuse a nonce already held by another intent of the same sender, and a nonce
        different from the one the intent already holds.
        """

    def mark_sent(self, intent_id: int, now: float) -> None:
        """Status → SENT; sent_at → now if it was None; clears a transient error. Open intents only."""

    def note_error(self, intent_id: int, error: str) -> None:
        """Remember a transient error on an intent (status unchanged)."""

    def finish(
        self,
        intent_id: int,
        status: IntentStatus,
        *,
        tx_hash: bytes | None = None,
        block_number: int | None = None,
        gas_used: int | None = None,
        error: str | None = None,
    ) -> None:
        """Status → MINED or FAILED with the outcome. Open intents only: a finished intent is final."""


# --- the rules (one home: every store calls these) ------------------------------------------


def no_intent(intent_id: int) -> OutboxError:
    return OutboxError(f"no intent {intent_id}")


def nonce_taken(sender: str, nonce: int) -> OutboxError:
    """A nonce is handed to one intent per sender, ever: two would race for one chain slot."""
    return OutboxError(f"nonce {nonce} of {sender} is already assigned")


def check_open(intent_id: int, status: IntentStatus, action: str) -> None:
    """MINED and FAILED are final: a finished intent is never signed, sent or finished again."""
    if not status.is_open:
        raise OutboxError(f"intent {intent_id} is {status.value}; it cannot be {action}")


def check_signing(intent_id: int, status: IntentStatus, held_nonce: int | None, nonce: int) -> None:
    """What `record_signed` needs of the intent itself (the per-sender uniqueness is `nonce_taken`)."""
    check_open(intent_id, status, "signed again")
    if held_nonce is not None and held_nonce != nonce:
        # a replacement must take the original's chain slot, or both could be mined
        raise OutboxError(f"intent {intent_id} holds nonce {held_nonce}; a replacement must reuse it, not {nonce}")


def finished_status(status: IntentStatus | str) -> IntentStatus:
    """The status `finish` may set: MINED or FAILED."""
    try:
        final = IntentStatus(status)
    except ValueError:
        final = None
    if final not in (IntentStatus.MINED, IntentStatus.FAILED):
        raise OutboxError(f"an intent finishes as mined or failed, not {status!r}")
    return final


# --- in memory ------------------------------------------------------------------------------


class InMemoryOutboxStore:
    """A dict-backed store: the same rules as the SQL store, lost when the process exits."""

    def __init__(self) -> None:
        self._rows: dict[int, Intent] = {}
        self._by_key: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, key: str, sender: str, params: dict, now: float) -> tuple[int, bool]:
        with self._lock:
            if key in self._by_key:
                return self._by_key[key], False
            intent_id = len(self._rows) + 1
            self._rows[intent_id] = Intent(intent_id, key, sender, dict(params), IntentStatus.QUEUED, now)
            self._by_key[key] = intent_id
            return intent_id, True

    def get(self, intent_id: int) -> Intent | None:
        return self._rows.get(intent_id)

    def get_by_key(self, key: str) -> Intent | None:
        i = self._by_key.get(key)
        return None if i is None else self._rows[i]

    def open_intents(self, sender: str) -> list[Intent]:
        return [r for _, r in sorted(self._rows.items()) if r.sender == sender and r.status.is_open]

    def highest_nonce(self, sender: str) -> int | None:
        nonces = [r.nonce for r in self._rows.values() if r.sender == sender and r.nonce is not None]
        return max(nonces) if nonces else None

    def finished_from_nonce(self, sender: str, nonce: int) -> list[Intent]:
        rows = [
            (r.nonce, r)
            for r in self._rows.values()
            if r.sender == sender and r.nonce is not None and r.nonce >= nonce and not r.status.is_open
        ]
        return [r for _, r in sorted(rows, key=lambda nr: nr[0])]

    def record_signed(self, intent_id: int, nonce: int, attempt: Attempt) -> None:
        with self._lock:
            row = self._require(intent_id)
            check_signing(intent_id, row.status, row.nonce, nonce)
            if row.nonce is None and any(r.sender == row.sender and r.nonce == nonce for r in self._rows.values()):
                raise nonce_taken(row.sender, nonce)
            self._rows[intent_id] = replace(
                row, nonce=nonce, attempts=row.attempts + (attempt,), status=IntentStatus.SIGNED, sent_at=None
            )

    def mark_sent(self, intent_id: int, now: float) -> None:
        with self._lock:
            row = self._require(intent_id)
            check_open(intent_id, row.status, "marked sent")
            self._rows[intent_id] = replace(
                row, status=IntentStatus.SENT, sent_at=row.sent_at if row.sent_at is not None else now, error=None
            )

    def note_error(self, intent_id: int, error: str) -> None:
        with self._lock:
            self._rows[intent_id] = replace(self._require(intent_id), error=error)

    def finish(self, intent_id, status, *, tx_hash=None, block_number=None, gas_used=None, error=None) -> None:
        final = finished_status(status)
        with self._lock:
            row = self._require(intent_id)
            check_open(intent_id, row.status, "finished again")
            self._rows[intent_id] = replace(
                row,
                status=final,
                tx_hash=tx_hash,
                block_number=block_number,
                gas_used=gas_used,
                error=error,
            )

    def _require(self, intent_id: int) -> Intent:
        row = self._rows.get(intent_id)
        if row is None:
            raise no_intent(intent_id)
        return row
