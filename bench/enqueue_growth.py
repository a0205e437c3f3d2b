"""SQLite enqueue rate, empty queue vs a long one (run: python bench/enqueue_growth.py).

Enqueues ``--n`` comparisons into an empty SQLite queue file, then fills it to ``--queued``
waiting comparisons (plain inserts in one transaction, untimed) and enqueues ``--n`` more.
Prints both rates and their ratio from one run: with running totals the capacity check
reads two numbers, so the ratio stays near 1 however long the queue is.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

from cjllm.provider.queue import NewItem
from cjllm.provider.sqlite_queue import SQLiteQueue

PAYLOAD = '{"comparison": "' + "x" * 2000 + '"}'


def item(i: int) -> NewItem:
    now = time.time()
    return NewItem(
        str(uuid.uuid4()),
        str(uuid.uuid4()),
        f"key-{i % 20}",
        10,
        500,
        100_000,
        PAYLOAD,
        now,
        now + 3600,
    )


def fill(conn: sqlite3.Connection, queued: int) -> None:
    """``queued`` waiting items, inserted directly (the triggers keep the totals)."""
    rows = []
    for i in range(queued):
        new = item(i)
        rows.append(
            (
                new.queue_id,
                new.correlation_id,
                new.key,
                new.payload,
                new.size_bytes,
                new.enqueued_at,
            )
        )
    conn.executemany(
        "INSERT INTO items (queue_id, correlation_id, key, hint, tokens, budget, payload,"
        " size_bytes, state, enqueued_at, available_at, expires_at, updated_at)"
        " VALUES (?, ?, ?, 10, 500, 100000, ?, ?, 'queued', ?6, ?6, ?6 + 3600, ?6)",
        rows,
    )


async def rate(queue: SQLiteQueue, n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        await queue.enqueue(item(i))
    return n / (time.perf_counter() - started)


async def main(n: int, queued: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        queue = SQLiteQueue(str(Path(tmp) / "q.sqlite"), max_items=10**7, max_bytes=10**12)
        try:
            empty = await rate(queue, n)
            queue._write(lambda c: fill(c, queued))
            full = await rate(queue, n)
        finally:
            await queue.close()
    print(f"enqueues/s, empty queue:          {empty:8.0f}")
    print(f"enqueues/s, {queued:,} queued:  {full:8.0f}")
    print(f"ratio (long / empty):             {full / empty:8.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--queued", type=int, default=20_000)
    args = parser.parse_args()
    asyncio.run(main(args.n, args.queued))
