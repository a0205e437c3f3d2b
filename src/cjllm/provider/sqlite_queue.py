"""The SQLite queue backend: the embedded default, safe for several processes on one file.

The stdlib ``sqlite3`` runs in a worker thread (one connection per queue object, WAL mode,
a busy timeout). Every state change is one ``BEGIN IMMEDIATE`` transaction, which takes the
database's write lock up front: a claim reads the ready key's oldest items and leases them
with one ``UPDATE … WHERE seq IN (…) RETURNING`` before any other writer can look, so two
processes never get the same item. Finishing an item and recording its callback in the
``outbox`` table happen in one transaction. The tables are in :mod:`cjllm.provider.sqlite_schema`.

Writers take turns on a side lock as well (:mod:`cjllm.provider.sqlite_turns`); the enqueue
step is :mod:`cjllm.provider.sqlite_enqueue`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from cjllm.provider.bundling import Candidate, pick_bundle
from cjllm.provider.queue import (
    DeadLetter,
    Depth,
    Finished,
    NewItem,
    OutboxEntry,
    QueuedItem,
    QueueFull,
    QueueUnavailable,
    Retry,
)
from cjllm.provider.sqlite_enqueue import enqueue
from cjllm.provider.sqlite_schema import ACTIVE, SCHEMA, count_totals_once, item_from_row
from cjllm.provider.sqlite_turns import WriterTurns

T = TypeVar("T")

# keys tried per claim (oldest heads first) and items read per key at most
MAX_KEYS_PER_CLAIM = 100
MAX_SCAN_PER_KEY = 1000
_IN_CHUNK = 500  # ids per ``IN (…)`` list, well below SQLite's variable limit
BUSY_TIMEOUT = 30.0  # seconds a write waits for its turn, then as long for SQLite's lock


class SQLiteQueue:
    """SQLite backend of :class:`cjllm.provider.queue.Queue`. ``busy_timeout``: seconds a
    write waits for its writer turn (:mod:`cjllm.provider.sqlite_turns`), and then for
    SQLite's write lock, before it fails with ``QueueUnavailable``."""

    def __init__(
        self, path: str, *, max_items: int, max_bytes: int, busy_timeout: float = BUSY_TIMEOUT
    ) -> None:
        self.path = path
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._turns = WriterTurns(path, busy_timeout)
        self._conn = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        self._conn.row_factory = sqlite3.Row
        self._conn.execute(f"PRAGMA busy_timeout = {round(busy_timeout * 1000)}")
        if path != ":memory:":
            self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")
        with self._lock:
            self._conn.executescript(SCHEMA)
        self._write(count_totals_once)

    # ------------------------------------------------------------------ plumbing

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one write transaction (the database write lock is taken first)."""
        with self._lock, self._turns.hold():
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            return fn(self._conn)

    async def _run(self, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(fn)
        except sqlite3.OperationalError as exc:
            # the transaction was rolled back: nothing changed
            raise QueueUnavailable(
                f"SQLite queue {self.path}: {exc}", may_have_applied=False
            ) from exc

    # ------------------------------------------------------------------ enqueue

    async def enqueue(self, item: NewItem) -> tuple[str, bool]:
        (answer,) = await self.enqueue_many([item])
        if isinstance(answer, QueueFull):
            raise answer
        return answer

    async def enqueue_many(self, items: Sequence[NewItem]) -> list[tuple[str, bool] | QueueFull]:
        if not items:
            return []
        return await self._run(
            lambda: self._write(lambda c: enqueue(c, items, self.max_items, self.max_bytes))
        )

    # ------------------------------------------------------------------ claim

    async def claim(
        self, owner: str, bundle_id: str, now: float, lease_until: float, linger: float
    ) -> list[QueuedItem]:
        def claim(c: sqlite3.Connection) -> list[QueuedItem]:
            picked: list[str] = []
            tried: set[str] = set()
            # eligible items oldest first (an index walk, read only as far as needed): each
            # key is tried when its oldest eligible item comes up, as its bundle's head
            ages = c.execute(
                "SELECT key FROM items INDEXED BY items_by_age"
                " WHERE state = 'queued' AND available_at <= ? AND expires_at > ?"
                " AND key NOT LIKE 'batch:%'"  # the batch lane goes to jobs (job_plan.py)
                " ORDER BY enqueued_at, seq",
                (now, now),
            )
            try:
                for (key,) in ages:
                    if key in tried:
                        continue
                    tried.add(key)
                    rows = c.execute(
                        "SELECT queue_id, hint, tokens, budget, enqueued_at, available_at"
                        " FROM items INDEXED BY items_by_key"
                        " WHERE state = 'queued' AND key = ? AND available_at <= ?"
                        " AND expires_at > ? ORDER BY enqueued_at, seq LIMIT ?",
                        (key, now, now, MAX_SCAN_PER_KEY),
                    )
                    picked = pick_bundle((Candidate(*row) for row in rows), now, linger)
                    rows.close()
                    if picked or len(tried) >= MAX_KEYS_PER_CLAIM:
                        break
            finally:
                ages.close()
            if not picked:
                return []
            return self._lease(c, picked, owner, bundle_id, now, lease_until)

        return await self._run(lambda: self._write(claim))

    @staticmethod
    def _lease(
        c: sqlite3.Connection,
        queue_ids: Sequence[str],
        owner: str,
        bundle_id: str | None,
        now: float,
        lease_until: float,
    ) -> list[QueuedItem]:
        marks = ",".join("?" * len(queue_ids))
        rows = c.execute(
            "UPDATE items SET state = 'processing', lease_owner = ?, lease_until = ?,"
            f" bundle_id = ?, updated_at = ? WHERE queue_id IN ({marks}) RETURNING *",
            (owner, lease_until, bundle_id, now, *queue_ids),
        ).fetchall()
        order = {qid: i for i, qid in enumerate(queue_ids)}
        return sorted((item_from_row(r) for r in rows), key=lambda it: order[it.queue_id])

    async def extend(self, owner: str, queue_ids: Sequence[str], lease_until: float) -> int:
        marks = ",".join("?" * len(queue_ids))

        def extend(c: sqlite3.Connection) -> int:
            cur = c.execute(
                "UPDATE items SET lease_until = ? WHERE +state = 'processing'"
                f" AND lease_owner = ? AND queue_id IN ({marks})",  # + : by queue_id, see finish
                (lease_until, owner, *queue_ids),
            )
            return cur.rowcount

        return await self._run(lambda: self._write(extend))

    # ------------------------------------------------------------------ finish / retry

    async def finish(self, finished: Sequence[Finished], now: float) -> list[str]:
        def finish(c: sqlite3.Connection) -> list[str]:
            first: dict[str, Finished] = {}
            for f in finished:
                first.setdefault(f.queue_id, f)  # a repeat would find its item final
            by_state: dict[str, list[str]] = {}
            for f in first.values():
                by_state.setdefault(f.state.value, []).append(f.queue_id)
            live: set[str] = set()  # the items still active, now final
            # "+state": found by queue_id, not by a state index — without table statistics
            # SQLite walked every active item (a whole round's) for each bundle's 25
            for state, ids in by_state.items():
                for k in range(0, len(ids), _IN_CHUNK):
                    chunk = ids[k : k + _IN_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    live.update(
                        r[0]
                        for r in c.execute(
                            "UPDATE items SET state = ?, updated_at = ?, lease_until = NULL,"
                            f" payload = '' WHERE queue_id IN ({marks}) AND +state IN (?, ?)"
                            " RETURNING queue_id",
                            (state, now, *chunk, *ACTIVE),
                        )
                    )
            done = [f for q, f in first.items() if q in live]
            c.executemany(
                "INSERT INTO outbox (topic, message_key, envelope, visible_at) VALUES (?, ?, ?, ?)",
                [(f.topic, f.message_key, f.envelope, now) for f in done],
            )
            return [f.queue_id for f in done]

        return await self._run(lambda: self._write(finish))

    async def retry(self, owner: str, retries: Sequence[Retry], now: float) -> list[str]:
        def retry(c: sqlite3.Connection) -> list[str]:
            done: list[str] = []
            for r in retries:
                cur = c.execute(
                    "UPDATE items SET state = 'queued', lease_owner = NULL, lease_until = NULL,"
                    " available_at = ?, hint = ?, attempts = attempts + ?, last_error = ?,"
                    " updated_at = ?, prompt_tokens = prompt_tokens + ?,"
                    " completion_tokens = completion_tokens + ?, cost = cost + ?"
                    " WHERE queue_id = ? AND state = 'processing' AND lease_owner = ?",
                    (
                        r.available_at,
                        r.hint,
                        int(r.count_attempt),
                        r.error,
                        now,
                        r.spent.prompt_tokens,
                        r.spent.completion_tokens,
                        r.spent.cost,
                        r.queue_id,
                        owner,
                    ),
                )
                if cur.rowcount:
                    done.append(r.queue_id)
            return done

        return await self._run(lambda: self._write(retry))

    async def recover_leases(self, now: float, expired_by: float | None = None) -> int:
        def recover(c: sqlite3.Connection) -> int:
            cur = c.execute(
                "UPDATE items SET state = 'queued', lease_owner = NULL, lease_until = NULL,"
                " attempts = attempts + 1, last_error = 'lease expired (worker lost)',"
                " available_at = ?, updated_at = ? WHERE state = 'processing' AND lease_until <= ?",
                (now, now, now if expired_by is None else expired_by),
            )
            return cur.rowcount

        return await self._run(lambda: self._write(recover))

    async def claim_expired(
        self, owner: str, now: float, lease_until: float, limit: int
    ) -> list[QueuedItem]:
        def claim(c: sqlite3.Connection) -> list[QueuedItem]:
            ids = [
                r[0]
                for r in c.execute(
                    "SELECT queue_id FROM items WHERE state = 'queued' AND expires_at <= ?"
                    " ORDER BY expires_at LIMIT ?",
                    (now, limit),
                )
            ]
            return self._lease(c, ids, owner, None, now, lease_until) if ids else []

        return await self._run(lambda: self._write(claim))

    # ------------------------------------------------------------------ outbox

    async def claim_outbox(self, now: float, visible_until: float, limit: int) -> list[OutboxEntry]:
        def claim(c: sqlite3.Connection) -> list[OutboxEntry]:
            rows = c.execute(
                "UPDATE outbox SET visible_at = ? WHERE entry_id IN (SELECT entry_id FROM outbox"
                " WHERE visible_at <= ? ORDER BY entry_id LIMIT ?)"
                " RETURNING entry_id, topic, message_key, envelope",
                (visible_until, now, limit),
            ).fetchall()
            rows.sort(key=lambda r: r[0])
            return [OutboxEntry(str(r[0]), r[1], r[2], bytes(r[3])) for r in rows]

        return await self._run(lambda: self._write(claim))

    async def delete_outbox(self, entry_ids: Sequence[str]) -> None:
        if not entry_ids:
            return
        marks = ",".join("?" * len(entry_ids))
        ids = [int(e) for e in entry_ids]

        def delete(c: sqlite3.Connection) -> None:
            c.execute(f"DELETE FROM outbox WHERE entry_id IN ({marks})", ids)

        await self._run(lambda: self._write(delete))

    async def dead_letter_outbox(self, reasons: Mapping[str, str], now: float) -> None:
        if not reasons:
            return

        def bury(c: sqlite3.Connection) -> None:
            for entry_id, reason in reasons.items():
                c.execute(
                    "INSERT OR IGNORE INTO outbox_dead (entry_id, topic, message_key, envelope,"
                    " reason, dead_at) SELECT entry_id, topic, message_key, envelope, ?, ?"
                    " FROM outbox WHERE entry_id = ?",
                    (reason, now, int(entry_id)),
                )
                c.execute("DELETE FROM outbox WHERE entry_id = ?", (int(entry_id),))

        await self._run(lambda: self._write(bury))

    async def dead_letters(self, limit: int) -> list[DeadLetter]:
        def read(c: sqlite3.Connection) -> list[DeadLetter]:
            rows = c.execute(
                "SELECT entry_id, topic, message_key, envelope, reason, dead_at FROM outbox_dead"
                " ORDER BY dead_at, entry_id LIMIT ?",
                (limit,),
            ).fetchall()
            return [DeadLetter(str(r[0]), r[1], r[2], bytes(r[3]), r[4], r[5]) for r in rows]

        return await self._run(lambda: self._read(read))

    # ------------------------------------------------------------------ reads and upkeep

    async def get(self, queue_id: str) -> QueuedItem | None:
        def get(c: sqlite3.Connection) -> QueuedItem | None:
            row = c.execute("SELECT * FROM items WHERE queue_id = ?", (queue_id,)).fetchone()
            return None if row is None else item_from_row(row)

        return await self._run(lambda: self._read(get))

    async def remember(self, key: str, value: str) -> None:
        def remember(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO learned (key, value, updated_at) VALUES (?, ?, ?) ON CONFLICT (key)"
                " DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                (key, value, time.time()),
            )

        await self._run(lambda: self._write(remember))

    async def recall(self, key: str) -> str | None:
        def recall(c: sqlite3.Connection) -> str | None:
            row = c.execute("SELECT value FROM learned WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row[0])

        return await self._run(lambda: self._read(recall))

    async def depth(self, now: float) -> Depth:
        def depth(c: sqlite3.Connection) -> Depth:
            counts: dict[str, Any] = {
                "queued": 0,
                "delayed": 0,
                "processing": 0,
                "bytes": 0,
            }
            # counted on an index alone (items_by_age holds state and available_at); the
            # active items' bytes are kept in totals (reading each row for its size took
            # ~30 ms a call with 10,000 items active, once a second: docs/performance.md)
            for state, delayed, n in c.execute(
                "SELECT state, available_at > ?, COUNT(*) FROM items"
                " WHERE state IN (?, ?) GROUP BY 1, 2",
                (now, *ACTIVE),
            ):
                counts[state] += n
                if state == "queued" and delayed:
                    counts["delayed"] += n
            counts["bytes"] = c.execute("SELECT bytes FROM totals WHERE id = 1").fetchone()[0]
            outbox = c.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            dead = c.execute("SELECT COUNT(*) FROM outbox_dead").fetchone()[0]
            return Depth(
                counts["queued"],
                counts["delayed"],
                counts["processing"],
                counts["bytes"],
                outbox,
                dead,
            )

        return await self._run(lambda: self._read(depth))

    async def purge(self, before: float) -> int:
        def purge(c: sqlite3.Connection) -> int:
            cur = c.execute(
                "DELETE FROM items WHERE state IN ('completed', 'failed', 'expired')"
                " AND updated_at < ?",
                (before,),
            )
            return cur.rowcount

        return await self._run(lambda: self._write(purge))

    async def close(self) -> None:
        with self._lock:
            self._conn.close()
            self._turns.close()
