"""The job table in the SQLite queue's own database file.

Three tables beside ``items``: ``batch_jobs`` (one row per job), ``batch_job_lines``
(``custom_id`` → the queue ids of that line, in bundle order) and ``batch_job_batches``
(which CJ batches a job serves). Recording a job leases its items and writes these rows in
one ``BEGIN IMMEDIATE`` transaction of the queue's connection, so an item is never leased to
a job that was not written, nor written into a job without being leased to it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from cjllm.provider.job_plan import LANE_PREFIX, LaneGroup
from cjllm.provider.jobs import (
    OPEN_STATES,
    UPDATABLE,
    BatchJob,
    JobLineRecord,
    JobState,
    NewJob,
    item_owner,
)
from cjllm.provider.queue import QueuedItem
from cjllm.provider.sqlite_queue import SQLiteQueue
from cjllm.provider.sqlite_schema import item_from_row

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batch_jobs (
    job_id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    mode TEXT NOT NULL,
    state TEXT NOT NULL,
    n_lines INTEGER NOT NULL,
    n_items INTEGER NOT NULL,
    created_at REAL NOT NULL,
    next_check_at REAL NOT NULL,
    poll_interval REAL NOT NULL DEFAULT 0,
    vendor_id TEXT,
    vendor_status TEXT,
    counts TEXT NOT NULL DEFAULT '{}',
    attempted_at REAL,
    lines_sent INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    submitted_at REAL,
    ended_at REAL,
    settled_at REAL,
    adopted INTEGER NOT NULL DEFAULT 0,
    excluded TEXT NOT NULL DEFAULT '[]',
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    cancel_sent INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    cj_batch_ids TEXT NOT NULL DEFAULT '[]',
    lease_owner TEXT,
    lease_until REAL
);
CREATE INDEX IF NOT EXISTS batch_jobs_due ON batch_jobs (state, next_check_at);
CREATE TABLE IF NOT EXISTS batch_job_lines (
    job_id TEXT NOT NULL,
    line_no INTEGER NOT NULL,
    custom_id TEXT NOT NULL,
    queue_ids TEXT NOT NULL,
    PRIMARY KEY (job_id, line_no)
);
CREATE TABLE IF NOT EXISTS batch_job_batches (
    cj_batch_id TEXT NOT NULL,
    job_id TEXT NOT NULL,
    PRIMARY KEY (cj_batch_id, job_id)
);
"""

CHUNK = 500  # ids per IN (…) list, well under SQLite's variable limit
_JSON_FIELDS = ("counts", "excluded")
_BOOL_FIELDS = ("adopted", "cancel_sent")
_OPEN = tuple(s.value for s in OPEN_STATES)


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), CHUNK):
        yield ids[start : start + CHUNK]


def _marks(ids: Sequence[str]) -> str:
    return ",".join("?" * len(ids))


def _key_range(group: str | None) -> tuple[str, str]:
    """Keys of one lane group (or the whole lane) as a half-open range (index friendly)."""
    prefix = LANE_PREFIX if group is None else group + ":"
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _job(row: sqlite3.Row) -> BatchJob:
    return BatchJob(
        job_id=row["job_id"],
        provider=row["provider"],
        model=row["model"],
        mode=row["mode"],
        state=JobState(row["state"]),
        n_lines=row["n_lines"],
        n_items=row["n_items"],
        created_at=row["created_at"],
        next_check_at=row["next_check_at"],
        poll_interval=row["poll_interval"],
        vendor_id=row["vendor_id"],
        vendor_status=row["vendor_status"],
        counts=json.loads(row["counts"]),
        attempted_at=row["attempted_at"],
        lines_sent=row["lines_sent"],
        attempts=row["attempts"],
        submitted_at=row["submitted_at"],
        ended_at=row["ended_at"],
        settled_at=row["settled_at"],
        adopted=bool(row["adopted"]),
        excluded=tuple(json.loads(row["excluded"])),
        cancel_requested=bool(row["cancel_requested"]),
        cancel_sent=bool(row["cancel_sent"]),
        error=row["error"],
        cj_batch_ids=tuple(json.loads(row["cj_batch_ids"])),
        lease_owner=row["lease_owner"],
        lease_until=row["lease_until"],
    )


def _column(name: str, value: Any) -> Any:
    if name in _JSON_FIELDS:
        return json.dumps(list(value) if name == "excluded" else dict(value))
    if name in _BOOL_FIELDS:
        return int(bool(value))
    if isinstance(value, JobState):
        return value.value
    return value


class SQLiteJobs:
    """SQLite backend of :class:`cjllm.provider.jobs.JobTable`."""

    def __init__(self, queue: SQLiteQueue) -> None:
        # the job table shares the queue's connection, lock and transactions on purpose
        self.queue = queue
        with queue._lock:
            queue._conn.executescript(_SCHEMA)

    # ------------------------------------------------------------------ the batch lane

    async def lane_groups(self, now: float) -> list[LaneGroup]:
        low, high = _key_range(None)

        def groups(c: sqlite3.Connection) -> list[LaneGroup]:
            rows = c.execute(
                "SELECT substr(key, 1, length(key) - 65) AS grp, COUNT(*),"
                " MIN(enqueued_at), MAX(enqueued_at) FROM items"
                " WHERE state = 'queued' AND key >= ? AND key < ?"
                " AND available_at <= ? AND expires_at > ? GROUP BY grp",
                (low, high, now, now),
            ).fetchall()
            return [LaneGroup(r[0], r[1], r[2], r[3]) for r in rows]

        return await self.queue._run(lambda: self.queue._read(groups))

    async def lane_items(
        self, group: str | None, now: float, limit: int, *, available_only: bool = True
    ) -> list[QueuedItem]:
        low, high = _key_range(group)
        when = " AND available_at <= ? AND expires_at > ?" if available_only else ""
        args: tuple[Any, ...] = (low, high, now, now) if available_only else (low, high)

        def items(c: sqlite3.Connection) -> list[QueuedItem]:
            rows = c.execute(
                "SELECT * FROM items WHERE state = 'queued' AND key >= ? AND key < ?"
                f"{when} ORDER BY enqueued_at, seq LIMIT ?",
                (*args, limit),
            ).fetchall()
            return [item_from_row(r) for r in rows]

        return await self.queue._run(lambda: self.queue._read(items))

    # ------------------------------------------------------------------ recording

    async def record(self, job: NewJob, now: float) -> bool:
        owner = item_owner(job.job_id)
        wanted = job.queue_ids

        def record(c: sqlite3.Connection) -> bool:
            ready = 0
            for ids in _chunks(wanted):
                ready += c.execute(
                    f"SELECT COUNT(*) FROM items WHERE queue_id IN ({_marks(ids)})"
                    " AND state = 'queued' AND available_at <= ? AND expires_at > ?",
                    (*ids, now, now),
                ).fetchone()[0]
            if ready != len(set(wanted)):
                return False
            for number, line in enumerate(job.lines):
                for ids in _chunks(line.queue_ids):
                    c.execute(
                        "UPDATE items SET state = 'processing', lease_owner = ?, lease_until = ?,"
                        f" bundle_id = ?, updated_at = ? WHERE queue_id IN ({_marks(ids)})",
                        (owner, job.hold_until, line.custom_id, now, *ids),
                    )
                c.execute(
                    "INSERT INTO batch_job_lines (job_id, line_no, custom_id, queue_ids)"
                    " VALUES (?, ?, ?, ?)",
                    (job.job_id, number, line.custom_id, json.dumps(list(line.queue_ids))),
                )
            c.execute(
                "INSERT INTO batch_jobs (job_id, provider, model, mode, state, n_lines, n_items,"
                " created_at, next_check_at, cj_batch_ids, lease_owner, lease_until)"
                " VALUES (?, ?, ?, ?, 'recorded', ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.job_id,
                    job.provider,
                    job.model,
                    job.mode,
                    len(job.lines),
                    len(wanted),
                    job.created_at,
                    now,
                    json.dumps(list(job.cj_batch_ids)),
                    job.lease_owner,
                    job.lease_until,
                ),
            )
            c.executemany(
                "INSERT OR IGNORE INTO batch_job_batches (cj_batch_id, job_id) VALUES (?, ?)",
                [(b, job.job_id) for b in job.cj_batch_ids],
            )
            return True

        return await self.queue._run(lambda: self.queue._write(record))

    async def take(
        self, queue_ids: Sequence[str], owner: str, now: float, lease_until: float
    ) -> list[QueuedItem]:
        def take(c: sqlite3.Connection) -> list[QueuedItem]:
            out: list[QueuedItem] = []
            for ids in _chunks(queue_ids):
                rows = c.execute(
                    "UPDATE items SET state = 'processing', lease_owner = ?, lease_until = ?,"
                    f" updated_at = ? WHERE queue_id IN ({_marks(ids)}) AND +state = 'queued'"
                    " RETURNING *",
                    (owner, lease_until, now, *ids),
                ).fetchall()
                out += [item_from_row(r) for r in rows]
            return out

        return await self.queue._run(lambda: self.queue._write(take))

    # ------------------------------------------------------------------ claiming and updating

    async def claim(self, owner: str, now: float, lease_until: float, limit: int) -> list[BatchJob]:
        def claim(c: sqlite3.Connection) -> list[BatchJob]:
            rows = c.execute(
                "UPDATE batch_jobs SET lease_owner = ?, lease_until = ? WHERE job_id IN"
                " (SELECT job_id FROM batch_jobs WHERE state IN (?, ?) AND next_check_at <= ?"
                " AND (lease_owner IS NULL OR lease_until <= ?) ORDER BY next_check_at LIMIT ?)"
                " RETURNING *",
                (owner, lease_until, *_OPEN, now, now, limit),
            ).fetchall()
            return sorted((_job(r) for r in rows), key=lambda j: j.next_check_at)

        return await self.queue._run(lambda: self.queue._write(claim))

    async def update(
        self, job_id: str, owner: str, changes: Mapping[str, Any], *, release: bool = True
    ) -> bool:
        unknown = set(changes) - UPDATABLE
        if unknown:
            raise ValueError(f"job fields not updatable: {sorted(unknown)}")
        sets = [f"{name} = ?" for name in changes]
        values = [_column(name, value) for name, value in changes.items()]
        if release:
            sets += ["lease_owner = NULL", "lease_until = NULL"]

        def update(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                f"UPDATE batch_jobs SET {', '.join(sets)} WHERE job_id = ? AND lease_owner = ?",
                (*values, job_id, owner),
            )
            return cur.rowcount == 1

        return await self.queue._run(lambda: self.queue._write(update))

    async def release_leases(self, owner: str | None = None) -> int:
        def release(c: sqlite3.Connection) -> int:
            where = "lease_owner IS NOT NULL" if owner is None else "lease_owner = ?"
            args: tuple[str, ...] = () if owner is None else (owner,)
            cur = c.execute(
                f"UPDATE batch_jobs SET lease_owner = NULL, lease_until = NULL WHERE {where}", args
            )
            return cur.rowcount

        return await self.queue._run(lambda: self.queue._write(release))

    async def request_cancel(self, job_ids: Sequence[str], now: float) -> None:
        def cancel(c: sqlite3.Connection) -> None:
            for ids in _chunks(job_ids):
                c.execute(
                    "UPDATE batch_jobs SET cancel_requested = 1,"
                    " next_check_at = MIN(next_check_at, ?)"
                    f" WHERE job_id IN ({_marks(ids)}) AND state IN (?, ?)",
                    (now, *ids, *_OPEN),
                )

        await self.queue._run(lambda: self.queue._write(cancel))

    # ------------------------------------------------------------------ reads and upkeep

    async def lines(self, job_id: str) -> list[JobLineRecord]:
        def lines(c: sqlite3.Connection) -> list[JobLineRecord]:
            rows = c.execute(
                "SELECT custom_id, queue_ids FROM batch_job_lines WHERE job_id = ?"
                " ORDER BY line_no",
                (job_id,),
            ).fetchall()
            return [JobLineRecord(r[0], tuple(json.loads(r[1]))) for r in rows]

        return await self.queue._run(lambda: self.queue._read(lines))

    async def items(self, queue_ids: Sequence[str]) -> list[QueuedItem]:
        def items(c: sqlite3.Connection) -> list[QueuedItem]:
            out: list[QueuedItem] = []
            for ids in _chunks(queue_ids):
                rows = c.execute(
                    f"SELECT * FROM items WHERE queue_id IN ({_marks(ids)})", tuple(ids)
                ).fetchall()
                out += [item_from_row(r) for r in rows]
            return out

        return await self.queue._run(lambda: self.queue._read(items))

    async def get(self, job_id: str) -> BatchJob | None:
        def get(c: sqlite3.Connection) -> BatchJob | None:
            row = c.execute("SELECT * FROM batch_jobs WHERE job_id = ?", (job_id,)).fetchone()
            return None if row is None else _job(row)

        return await self.queue._run(lambda: self.queue._read(get))

    async def jobs(
        self, *, cj_batch_id: str | None = None, open_only: bool = False
    ) -> list[BatchJob]:
        where, args = [], []
        if cj_batch_id is not None:
            where.append("job_id IN (SELECT job_id FROM batch_job_batches WHERE cj_batch_id = ?)")
            args.append(cj_batch_id)
        if open_only:
            where.append("state IN (?, ?)")
            args += list(_OPEN)
        clause = f" WHERE {' AND '.join(where)}" if where else ""

        def jobs(c: sqlite3.Connection) -> list[BatchJob]:
            rows = c.execute(
                f"SELECT * FROM batch_jobs{clause} ORDER BY created_at, job_id", args
            ).fetchall()
            return [_job(r) for r in rows]

        return await self.queue._run(lambda: self.queue._read(jobs))

    async def vendor_ids(self) -> set[str]:
        def ids(c: sqlite3.Connection) -> set[str]:
            rows = c.execute("SELECT vendor_id, excluded FROM batch_jobs").fetchall()
            known = {r[0] for r in rows if r[0]}
            for r in rows:
                known.update(json.loads(r[1]))
            return known

        return await self.queue._run(lambda: self.queue._read(ids))

    async def counts(self) -> dict[JobState, int]:
        def counts(c: sqlite3.Connection) -> dict[JobState, int]:
            out = dict.fromkeys(JobState, 0)
            for state, n in c.execute("SELECT state, COUNT(*) FROM batch_jobs GROUP BY state"):
                out[JobState(state)] = n
            return out

        return await self.queue._run(lambda: self.queue._read(counts))

    async def purge(self, before: float) -> int:
        def purge(c: sqlite3.Connection) -> int:
            ids = [
                r[0]
                for r in c.execute(
                    "SELECT job_id FROM batch_jobs WHERE state = 'settled' AND settled_at < ?",
                    (before,),
                )
            ]
            for chunk in _chunks(ids):
                marks = _marks(chunk)
                c.execute(f"DELETE FROM batch_job_lines WHERE job_id IN ({marks})", tuple(chunk))
                c.execute(f"DELETE FROM batch_job_batches WHERE job_id IN ({marks})", tuple(chunk))
                c.execute(f"DELETE FROM batch_jobs WHERE job_id IN ({marks})", tuple(chunk))
            return len(ids)

        return await self.queue._run(lambda: self.queue._write(purge))
