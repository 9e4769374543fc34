"""The payer's chat state in SQLite: lane totals per (node, adapter) and every receipt.

Lane totals must survive the process: the node serves while a lane's voucher covers everything it
charged but the last request, so a second invocation that started from zero would be refused. A
stream is recorded as `pending` as soon as its id is known; if it never delivers its final event
(cut off, Ctrl-C), the next invocation fetches its receipt from the node (`/v1/receipts/{id}`) and
adds its cost. Amounts are decimal strings (uint256 does not fit SQLite integers).
One invocation at a time holds the state's lock file, so two chats never sign from the same totals.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from node.errors import NodeError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lanes (
    node TEXT NOT NULL, adapter_id INTEGER NOT NULL, compute TEXT NOT NULL, adapter TEXT NOT NULL,
    PRIMARY KEY (node, adapter_id));
CREATE TABLE IF NOT EXISTS receipts (
    request_id TEXT PRIMARY KEY, node TEXT NOT NULL, url TEXT NOT NULL, model TEXT NOT NULL,
    adapter_id INTEGER NOT NULL, status TEXT NOT NULL, max_tokens INTEGER NOT NULL,
    compute TEXT, adapter TEXT, receipt TEXT, created REAL NOT NULL);
"""


@dataclass(frozen=True)
class StoredReceipt:
    request_id: str
    node: str
    url: str
    model: str
    adapter_id: int
    status: str  # pending | paid | lost | refused
    max_tokens: int
    compute: int | None
    adapter: int | None
    receipt: dict | None
    created: float


class ChatStateError(NodeError):
    """The state file cannot be used (not SQLite, not ours, unreadable)."""


class ChatState:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.db = sqlite3.connect(self.path, isolation_level=None)
            self.db.executescript(_SCHEMA)
            cols = {r[1] for r in self.db.execute("PRAGMA table_info(receipts)")}
        except (sqlite3.Error, OSError) as e:
            raise ChatStateError(f"chat state {self.path} is unusable ({e}); move it away or pass --state") from None
        if not {"request_id", "status", "receipt", "max_tokens"} <= cols:
            self.db.close()
            raise ChatStateError(f"chat state {self.path} is not a loranode chat state; move it away or pass --state")

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def locked(self) -> Iterator["ChatState"]:
        """Exclusive use of the state by this process (blocks while another chat holds it)."""
        with open(self.path.with_suffix(".lock"), "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield self
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _tx(self):
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def lane_totals(self, node: str) -> dict[int, tuple[int, int]]:
        rows = self.db.execute("SELECT adapter_id, compute, adapter FROM lanes WHERE node = ?", (node,))
        return {aid: (int(c), int(a)) for aid, c, a in rows}

    def add_pending(self, request_id: str, *, node: str, url: str, model: str, adapter_id: int, max_tokens: int) -> None:
        with self._tx():
            self.db.execute(
                "INSERT OR IGNORE INTO receipts (request_id, node, url, model, adapter_id, status, max_tokens,"
                " created) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
                (request_id, node, url, model, adapter_id, max_tokens, time.time()),
            )

    def record_paid(
        self,
        request_id: str,
        *,
        node: str,
        url: str,
        model: str,
        adapter_id: int,
        max_tokens: int,
        totals: tuple[int, int],
        cost: tuple[int, int],
        receipt: dict,
    ) -> None:
        """The receipt and the lane's new totals, in one transaction."""
        with self._tx():
            self.db.execute(
                "INSERT OR REPLACE INTO lanes (node, adapter_id, compute, adapter) VALUES (?, ?, ?, ?)",
                (node, adapter_id, str(totals[0]), str(totals[1])),
            )
            self.db.execute(
                "INSERT INTO receipts (request_id, node, url, model, adapter_id, status, max_tokens, compute, adapter,"
                " receipt, created) VALUES (?, ?, ?, ?, ?, 'paid', ?, ?, ?, ?, ?) ON CONFLICT(request_id) DO UPDATE SET"
                " status = 'paid', compute = excluded.compute, adapter = excluded.adapter, receipt = excluded.receipt",
                (
                    request_id,
                    node,
                    url,
                    model,
                    adapter_id,
                    max_tokens,
                    str(cost[0]),
                    str(cost[1]),
                    json.dumps(receipt),
                    time.time(),
                ),
            )

    def mark(self, request_id: str, status: str, receipt: dict | None = None) -> None:
        """A pending request that ended without being paid: `lost` (the node has no receipt for it)
        or `refused` (its receipt failed the client's checks; `receipt` keeps it as evidence)."""
        with self._tx():
            self.db.execute(
                "UPDATE receipts SET status = ?, receipt = COALESCE(?, receipt) WHERE request_id = ? AND status = 'pending'",
                (status, json.dumps(receipt) if receipt else None, request_id),
            )

    def receipts(self, *, node: str | None = None, status: str | None = None) -> list[StoredReceipt]:
        q = "SELECT * FROM receipts WHERE 1=1"
        args: list[str] = []
        if node is not None:
            q, args = q + " AND node = ?", [*args, node]
        if status is not None:
            q, args = q + " AND status = ?", [*args, status]
        rows = self.db.execute(q + " ORDER BY created, request_id", args).fetchall()
        return [
            StoredReceipt(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                r[6],
                int(r[7]) if r[7] is not None else None,
                int(r[8]) if r[8] is not None else None,
                json.loads(r[9]) if r[9] else None,
                r[10],
            )
            for r in rows
        ]
