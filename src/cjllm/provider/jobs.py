"""The durable job table: one record per provider batch job, kept in the queue's own store.

Life of a job (:mod:`cjllm.provider.batch_jobs` moves it along)::

    recorded ──submit──> submitted ──watch──> (vendor: ended) ──settle──> settled
       │  (items leased to it, lines written: one atomic step with the queue)
       └── found at the vendor after a crash ──> submitted (adopted)

- **record** leases a job's comparisons to the job (owner ``job:<id>``, held for
  ``batch_hold_seconds``) and writes the job, its lines (``custom_id`` → queue ids) and the
  CJ batches it serves, in one atomic step with the queue (SQLite: one transaction; Redis:
  one script). It refuses (nothing changes) when any of the comparisons is no longer queued,
  so two processes never put one comparison in two jobs.
- **claim** leases due jobs (``next_check_at`` reached, not settled) to one process, which
  submits a recorded job or looks at a submitted one; **update** writes what it learnt and
  gives the lease back — only while that process still holds the lease.
- Items stay leased to their job until it is settled: the sweeper's lease recovery never
  takes them back within ``batch_hold_seconds``, so a comparison inside a job at the vendor
  is never sent a second time.

Backends: :mod:`cjllm.provider.sqlite_jobs` and :mod:`cjllm.provider.redis_jobs`, chosen by
the queue they share a store with (:func:`job_table_for`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from cjllm.provider.job_plan import LaneGroup
from cjllm.provider.queue import Queue, QueuedItem


class JobState(StrEnum):
    RECORDED = "recorded"  # its items are leased to it; not (known to be) at the vendor yet
    SUBMITTED = "submitted"  # the vendor has it (its id is known); watched until it ends
    SETTLED = "settled"  # every item it held has its fate; nothing more to do


OPEN_STATES = (JobState.RECORDED, JobState.SUBMITTED)

# what :meth:`JobTable.update` may change (the rest is fixed when the job is recorded)
UPDATABLE = frozenset(
    {
        "state",
        "vendor_id",
        "vendor_status",
        "counts",
        "attempted_at",
        "lines_sent",
        "attempts",
        "submitted_at",
        "ended_at",
        "settled_at",
        "next_check_at",
        "poll_interval",
        "adopted",
        "excluded",
        "cancel_sent",
        "error",
    }
)


def item_owner(job_id: str) -> str:
    """The lease owner of a job's comparisons (any process may settle them in its name)."""
    return f"job:{job_id}"


@dataclass(frozen=True)
class JobLineRecord:
    custom_id: str
    queue_ids: tuple[str, ...]


@dataclass(frozen=True)
class NewJob:
    """A job about to be recorded. ``lease_owner`` (the recording process) holds it until
    ``lease_until`` so it can submit it at once; its items are held until ``hold_until``."""

    job_id: str
    provider: str
    model: str
    mode: str
    lines: Sequence[JobLineRecord]
    cj_batch_ids: Sequence[str]
    created_at: float
    hold_until: float
    lease_owner: str
    lease_until: float

    @property
    def queue_ids(self) -> list[str]:
        return [q for line in self.lines for q in line.queue_ids]


@dataclass(frozen=True)
class BatchJob:
    """A job as stored. ``attempted_at``: when a submission was first tried (from then on,
    the vendor may have it, so a retry looks for it first); ``lines_sent``: how many lines
    the last try sent; ``excluded``: vendor jobs found to be someone else's; ``adopted``:
    the vendor id was found by listing, not returned by a submission."""

    job_id: str
    provider: str
    model: str
    mode: str
    state: JobState
    n_lines: int
    n_items: int
    created_at: float
    next_check_at: float
    poll_interval: float = 0.0
    vendor_id: str | None = None
    vendor_status: str | None = None
    counts: Mapping[str, int] = field(default_factory=dict)
    attempted_at: float | None = None
    lines_sent: int = 0
    attempts: int = 0
    submitted_at: float | None = None
    ended_at: float | None = None
    settled_at: float | None = None
    adopted: bool = False
    excluded: tuple[str, ...] = ()
    cancel_requested: bool = False
    cancel_sent: bool = False
    error: str | None = None
    cj_batch_ids: tuple[str, ...] = ()
    lease_owner: str | None = None
    lease_until: float | None = None


class JobTable(Protocol):
    """The job table over one queue's store. Both backends pass ``tests/provider/test_jobs.py``."""

    async def lane_groups(self, now: float) -> list[LaneGroup]:
        """Batch-lane groups holding queued, available comparisons."""
        ...

    async def lane_items(
        self, group: str | None, now: float, limit: int, *, available_only: bool = True
    ) -> list[QueuedItem]:
        """Queued comparisons of one lane group (``None``: every group), oldest first."""
        ...

    async def record(self, job: NewJob, now: float) -> bool:
        """Lease the job's comparisons to it and write the job; False (nothing written) when
        any of them is no longer queued."""
        ...

    async def take(
        self, queue_ids: Sequence[str], owner: str, now: float, lease_until: float
    ) -> list[QueuedItem]:
        """Lease those of ``queue_ids`` still queued to ``owner`` (to give them up)."""
        ...

    async def claim(self, owner: str, now: float, lease_until: float, limit: int) -> list[BatchJob]:
        """Lease up to ``limit`` open jobs whose check is due and whose lease is free."""
        ...

    async def update(
        self, job_id: str, owner: str, changes: Mapping[str, Any], *, release: bool = True
    ) -> bool:
        """Apply ``changes`` (keys from :data:`UPDATABLE`) while ``owner`` holds the job's
        lease; give the lease back unless ``release`` is false. False: the lease was lost."""
        ...

    async def release_leases(self, owner: str | None = None) -> int:
        """Give back the job leases ``owner`` holds (a process stopping), or every job lease
        (``None``: a process that knows it is the only one, starting up)."""
        ...

    async def request_cancel(self, job_ids: Sequence[str], now: float) -> None:
        """Mark open jobs to be cancelled at the vendor, due for a look now."""
        ...

    async def lines(self, job_id: str) -> list[JobLineRecord]: ...

    async def items(self, queue_ids: Sequence[str]) -> list[QueuedItem]:
        """The queue's records of these comparisons (the ones still known)."""
        ...

    async def get(self, job_id: str) -> BatchJob | None: ...

    async def jobs(
        self, *, cj_batch_id: str | None = None, open_only: bool = False
    ) -> list[BatchJob]:
        """Jobs, oldest first: all, those serving one CJ batch, or only open ones."""
        ...

    async def vendor_ids(self) -> set[str]:
        """Every vendor job id the table knows (never adopt one of these twice)."""
        ...

    async def counts(self) -> dict[JobState, int]:
        """Jobs by state (settled ones until they are purged)."""
        ...

    async def purge(self, before: float) -> int:
        """Forget settled jobs settled before ``before``; return how many."""
        ...


def job_table_for(queue: Queue) -> JobTable:
    """The job table stored with ``queue`` (its SQLite file, or its Redis prefix)."""
    from cjllm.provider.redis_queue import RedisQueue
    from cjllm.provider.sqlite_queue import SQLiteQueue

    if isinstance(queue, SQLiteQueue):
        from cjllm.provider.sqlite_jobs import SQLiteJobs

        return SQLiteJobs(queue)
    if isinstance(queue, RedisQueue):
        from cjllm.provider.redis_jobs import RedisJobs

        return RedisJobs(queue)
    raise TypeError(f"no job table for a {type(queue).__name__}")
