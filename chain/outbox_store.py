"""Storage for the transaction outbox: the record types, the `OutboxStore` protocol, and two stores.

The node backs the protocol with its SQLAlchemy DB; `SqliteOutboxStore` is a standalone
crash-safe store (stdlib sqlite3, WAL, one transaction per call) and `InMemoryOutboxStore` is
for tests and throw-away chains. Every write is atomic: a crash leaves either the old or the new
row, never half of one — that is what lets the outbox rebroadcast exactly the bytes it signed.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
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
        """Status → SENT; sent_at → now if it was None; clears a transient error."""

    def note_error(self, intent_id: int, error: str) -> None:
        """Remember a transient error on an open intent (status unchanged)."""

    def finish(
        self, intent_id: int, status: IntentStatus, *, tx_hash: bytes | None = None,
        block_number: int | None = None, gas_used: int | None = None, error: str | None = None,
    ) -> None:
        """Status → MINED or FAILED with the outcome."""


# --- in memory ------------------------------------------------------------------------------


class InMemoryOutboxStore:
    """A dict-backed store: same rules as the SQL stores, lost when the process exits."""

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
        rows = [r for r in self._rows.values() if r.sender == sender and r.nonce is not None and r.nonce >= nonce
                and not r.status.is_open]
        return sorted(rows, key=lambda r: r.nonce)

    def record_signed(self, intent_id: int, nonce: int, attempt: Attempt) -> None:
        with self._lock:
            row = self._require(intent_id)
            _check_nonce_assignment(row, nonce)
            if row.nonce is None and any(
                r.sender == row.sender and r.nonce == nonce for r in self._rows.values()
            ):
                raise OutboxError(f"nonce {nonce} of {row.sender} is already assigned")
            self._rows[intent_id] = replace(
                row, nonce=nonce, attempts=row.attempts + (attempt,), status=IntentStatus.SIGNED, sent_at=None
            )

    def mark_sent(self, intent_id: int, now: float) -> None:
        with self._lock:
            row = self._require(intent_id)
            self._rows[intent_id] = replace(
                row, status=IntentStatus.SENT, sent_at=row.sent_at if row.sent_at is not None else now, error=None
            )

    def note_error(self, intent_id: int, error: str) -> None:
        with self._lock:
            self._rows[intent_id] = replace(self._require(intent_id), error=error)

    def finish(self, intent_id, status, *, tx_hash=None, block_number=None, gas_used=None, error=None) -> None:
        with self._lock:
            self._rows[intent_id] = replace(
                self._require(intent_id), status=IntentStatus(status), tx_hash=tx_hash,
                block_number=block_number, gas_used=gas_used, error=error,
            )

    def _require(self, intent_id: int) -> Intent:
        row = self._rows.get(intent_id)
        if row is None:
            raise OutboxError(f"no intent {intent_id}")
        return row


def _check_nonce_assignment(row: Intent, nonce: int) -> None:
    if not row.status.is_open:
        raise OutboxError(f"intent {row.id} is {row.status.value}; it cannot be signed again")
    if row.nonce is not None and row.nonce != nonce:
        raise OutboxError(f"intent {row.id} holds nonce {row.nonce}; a replacement must reuse it, not {nonce}")


# --- SQLite ---------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox_intent (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    sender TEXT NOT NULL,
    params TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    nonce INTEGER,
    sent_at REAL,
    tx_hash BLOB,
    block_number INTEGER,
    gas_used INTEGER,
    error TEXT,
    UNIQUE (sender, nonce)
);
CREATE INDEX IF NOT EXISTS outbox_intent_open ON outbox_intent (sender, status);
CREATE TABLE IF NOT EXISTS outbox_attempt (
    intent_id INTEGER NOT NULL REFERENCES outbox_intent(id),
    n INTEGER NOT NULL,
    tx_hash BLOB NOT NULL UNIQUE,
    raw BLOB NOT NULL,
    max_fee_per_gas TEXT NOT NULL,
    max_priority_fee_per_gas TEXT NOT NULL,
    signed_at REAL NOT NULL,
    PRIMARY KEY (intent_id, n)
);
"""


class SqliteOutboxStore:
    """A standalone durable store in one SQLite file (WAL; synchronous=FULL so a commit survives power loss)."""

    def __init__(self, path: str | Path) -> None:
        self._path = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def _tx(self):
        return _Tx(self._db, self._lock)

    def add(self, key: str, sender: str, params: dict, now: float) -> tuple[int, bool]:
        with self._tx() as db:
            row = db.execute("SELECT id FROM outbox_intent WHERE key = ?", (key,)).fetchone()
            if row:
                return row[0], False
            cur = db.execute(
                "INSERT INTO outbox_intent (key, sender, params, status, created_at) VALUES (?, ?, ?, ?, ?)",
                (key, sender, json.dumps(params, sort_keys=True), IntentStatus.QUEUED.value, now),
            )
            return cur.lastrowid, True

    def get(self, intent_id: int) -> Intent | None:
        with self._tx() as db:
            rows = self._load(db, "WHERE id = ?", (intent_id,))
        return rows[0] if rows else None

    def get_by_key(self, key: str) -> Intent | None:
        with self._tx() as db:
            rows = self._load(db, "WHERE key = ?", (key,))
        return rows[0] if rows else None

    def open_intents(self, sender: str) -> list[Intent]:
        with self._tx() as db:
            return self._load(db, "WHERE sender = ? AND status IN ('queued', 'signed', 'sent') ORDER BY id", (sender,))

    def highest_nonce(self, sender: str) -> int | None:
        with self._tx() as db:
            return db.execute("SELECT MAX(nonce) FROM outbox_intent WHERE sender = ?", (sender,)).fetchone()[0]

    def finished_from_nonce(self, sender: str, nonce: int) -> list[Intent]:
        with self._tx() as db:
            return self._load(db, "WHERE sender = ? AND nonce >= ? AND status IN ('mined', 'failed') ORDER BY nonce",
                              (sender, nonce))

    def record_signed(self, intent_id: int, nonce: int, attempt: Attempt) -> None:
        with self._tx() as db:
            rows = self._load(db, "WHERE id = ?", (intent_id,))
            if not rows:
                raise OutboxError(f"no intent {intent_id}")
            row = rows[0]
            _check_nonce_assignment(row, nonce)
            try:
                db.execute(
                    "UPDATE outbox_intent SET nonce = ?, status = 'signed', sent_at = NULL WHERE id = ?",
                    (nonce, intent_id),
                )
            except sqlite3.IntegrityError as e:
                raise OutboxError(f"nonce {nonce} of {row.sender} is already assigned") from e
            db.execute(
                "INSERT INTO outbox_attempt VALUES (?, ?, ?, ?, ?, ?, ?)",
                (intent_id, len(row.attempts), attempt.tx_hash, attempt.raw, str(attempt.max_fee_per_gas),
                 str(attempt.max_priority_fee_per_gas), attempt.signed_at),
            )

    def mark_sent(self, intent_id: int, now: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE outbox_intent SET status = 'sent', sent_at = COALESCE(sent_at, ?), error = NULL WHERE id = ?",
                (now, intent_id),
            )

    def note_error(self, intent_id: int, error: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE outbox_intent SET error = ? WHERE id = ?", (error, intent_id))

    def finish(self, intent_id, status, *, tx_hash=None, block_number=None, gas_used=None, error=None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE outbox_intent SET status = ?, tx_hash = ?, block_number = ?, gas_used = ?, error = ? WHERE id = ?",
                (IntentStatus(status).value, tx_hash, block_number, gas_used, error, intent_id),
            )

    @staticmethod
    def _load(db: sqlite3.Connection, where: str, args: tuple) -> list[Intent]:
        rows = db.execute(
            "SELECT id, key, sender, params, status, created_at, nonce, sent_at, tx_hash, block_number, gas_used, error "
            f"FROM outbox_intent {where}",
            args,
        ).fetchall()
        out = []
        for r in rows:
            attempts = tuple(
                Attempt(bytes(a[0]), bytes(a[1]), int(a[2]), int(a[3]), a[4])
                for a in db.execute(
                    "SELECT tx_hash, raw, max_fee_per_gas, max_priority_fee_per_gas, signed_at "
                    "FROM outbox_attempt WHERE intent_id = ? ORDER BY n",
                    (r[0],),
                )
            )
            out.append(
                Intent(
                    id=r[0], key=r[1], sender=r[2], params=json.loads(r[3]), status=IntentStatus(r[4]),
                    created_at=r[5], nonce=r[6], attempts=attempts, sent_at=r[7],
                    tx_hash=bytes(r[8]) if r[8] is not None else None, block_number=r[9], gas_used=r[10], error=r[11],
                )
            )
        return out


class _Tx:
    """BEGIN IMMEDIATE … COMMIT under a thread lock; ROLLBACK on any exception."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock) -> None:
        self._db, self._lock = db, lock

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise
        return self._db

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self._lock.release()
