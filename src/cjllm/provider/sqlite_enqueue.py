"""The SQLite queue's enqueue step: a group of items queued in one write transaction.

One ``SELECT`` finds the group's correlation ids already queued, one ``executemany`` inserts
the new rows and one ``UPDATE`` moves the active totals by what was added (the totals row is
kept by triggers for every other change to ``items``; an insert trigger would run one
``UPDATE`` per row). Every item gets the answer it would get alone, in order: its queue id,
the first queue id of its correlation id (``created`` false), or :class:`QueueFull`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from cjllm.provider.queue import NewItem, QueueFull

_INSERT = (
    "INSERT INTO items (queue_id, correlation_id, key, hint, tokens, budget, payload,"
    " size_bytes, state, enqueued_at, available_at, expires_at, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?)"
)


def enqueue(
    conn: sqlite3.Connection, items: Sequence[NewItem], max_items: int, max_bytes: int
) -> list[tuple[str, bool] | QueueFull]:
    """Queue ``items`` in order inside the caller's write transaction: duplicates and
    capacity are checked per item (the totals row is read once and kept in step)."""
    marks = ",".join("?" * len(items))
    known: dict[str, str] = dict(
        conn.execute(
            f"SELECT correlation_id, queue_id FROM items WHERE correlation_id IN ({marks})",
            [it.correlation_id for it in items],
        ).fetchall()
    )
    count, size = conn.execute("SELECT items, bytes FROM totals WHERE id = 1").fetchone()
    first_count, first_size = count, size
    answers: list[tuple[str, bool] | QueueFull] = []
    rows = []
    for item in items:
        if item.correlation_id in known:
            answers.append((known[item.correlation_id], False))
            continue
        size_bytes = item.size_bytes
        if count + 1 > max_items:
            answers.append(QueueFull("items", count, max_items))
        elif size + size_bytes > max_bytes:
            answers.append(QueueFull("bytes", size, max_bytes))
        else:
            known[item.correlation_id] = item.queue_id
            count, size = count + 1, size + size_bytes
            answers.append((item.queue_id, True))
            at = item.enqueued_at
            rows.append(
                (
                    item.queue_id,
                    item.correlation_id,
                    item.key,
                    item.hint,
                    item.tokens,
                    item.budget,
                    item.payload,
                    size_bytes,
                    at,
                    at,
                    item.expires_at,
                    at,
                )
            )
    if rows:
        conn.executemany(_INSERT, rows)
        conn.execute(
            "UPDATE totals SET items = items + ?, bytes = bytes + ? WHERE id = 1",
            (count - first_count, size - first_size),
        )
    return answers
