"""The SQLite queue's tables, and how a row becomes a :class:`QueuedItem`.

- ``items``: one row per comparison (its state, lease, tries and what they spent);
- ``totals``: one row with the count and bytes of *active* (queued or processing) items,
  kept in the same transaction as every change to ``items`` (by triggers, and by the
  enqueue step for the rows it inserts: :mod:`cjllm.provider.sqlite_enqueue`), so the
  capacity check at enqueue reads two numbers instead of counting the queue;
- ``outbox``: callbacks recorded with their item's final state, until the bus takes them;
- ``outbox_dead``: outbox entries that can never be published, with the reason.

The script is idempotent and runs in one write transaction when a queue is opened; a file
made before ``totals`` existed gets its totals counted once, then kept.
"""

from __future__ import annotations

import sqlite3

from cjllm.contracts import QueueItemState
from cjllm.provider.queue import QueuedItem, Spent

ACTIVE = ("queued", "processing")

SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue_id TEXT NOT NULL UNIQUE,
    correlation_id TEXT NOT NULL UNIQUE,
    key TEXT NOT NULL,
    hint INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    budget INTEGER NOT NULL,
    payload TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    enqueued_at REAL NOT NULL,
    available_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL,
    bundle_id TEXT,
    last_error TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS items_by_key ON items (state, key, enqueued_at, seq);
CREATE INDEX IF NOT EXISTS items_by_age
    ON items (state, enqueued_at, seq, available_at, expires_at, key);
CREATE INDEX IF NOT EXISTS items_by_lease ON items (state, lease_until);
CREATE INDEX IF NOT EXISTS items_by_expiry ON items (state, expires_at);
CREATE INDEX IF NOT EXISTS items_by_update ON items (state, updated_at);
CREATE TABLE IF NOT EXISTS totals (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    items INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
DROP TRIGGER IF EXISTS totals_on_insert;  -- inserts move the totals themselves, once a step
CREATE TRIGGER IF NOT EXISTS totals_on_delete AFTER DELETE ON items
    WHEN old.state IN ('queued', 'processing')
BEGIN
    UPDATE totals SET items = items - 1, bytes = bytes - old.size_bytes WHERE id = 1;
END;
CREATE TRIGGER IF NOT EXISTS totals_on_state AFTER UPDATE OF state ON items
    WHEN (old.state IN ('queued', 'processing')) != (new.state IN ('queued', 'processing'))
BEGIN
    UPDATE totals SET
        items = items + CASE WHEN new.state IN ('queued', 'processing') THEN 1 ELSE -1 END,
        bytes = bytes + CASE WHEN new.state IN ('queued', 'processing')
                             THEN new.size_bytes ELSE -old.size_bytes END
    WHERE id = 1;
END;
CREATE TABLE IF NOT EXISTS learned (
    key TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    entry_id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    message_key TEXT NOT NULL,
    envelope BLOB NOT NULL,
    visible_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_by_visibility ON outbox (visible_at);
CREATE TABLE IF NOT EXISTS outbox_dead (
    entry_id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    message_key TEXT NOT NULL,
    envelope BLOB NOT NULL,
    reason TEXT NOT NULL,
    dead_at REAL NOT NULL
);
COMMIT;
"""


def count_totals_once(conn: sqlite3.Connection) -> None:
    """Fill ``totals`` from the items if it is empty (a new file, or one made before it
    existed); from then on the triggers keep it. Run in a write transaction."""
    if conn.execute("SELECT 1 FROM totals").fetchone() is None:
        conn.execute(
            "INSERT INTO totals (id, items, bytes) SELECT 1, COUNT(*), COALESCE(SUM(size_bytes),"
            " 0) FROM items WHERE state IN ('queued', 'processing')"
        )


def item_from_row(row: sqlite3.Row) -> QueuedItem:
    return QueuedItem(
        queue_id=row["queue_id"],
        correlation_id=row["correlation_id"],
        key=row["key"],
        hint=row["hint"],
        tokens=row["tokens"],
        budget=row["budget"],
        payload=row["payload"],
        state=QueueItemState(row["state"]),
        attempts=row["attempts"],
        enqueued_at=row["enqueued_at"],
        available_at=row["available_at"],
        expires_at=row["expires_at"],
        updated_at=row["updated_at"],
        lease_owner=row["lease_owner"],
        lease_until=row["lease_until"],
        bundle_id=row["bundle_id"],
        last_error=row["last_error"],
        spent=Spent(row["prompt_tokens"], row["completion_tokens"], row["cost"]),
    )
