"""The durable comparison queue: the item record, its states, and the claim contract.

One interface, two backends chosen by ``CJLLM_QUEUE_URL``: SQLite (``sqlite:///path``, the
embedded default, safe for several processes on one file) and Redis (``redis://…``, many
workers on many hosts). The worker never needs to know which one it has.

Life of an item::

    enqueue ──> queued ──claim──> processing ──finish──> completed | failed | expired
                  ^                   │                   (+ its callback in the outbox,
                  └──retry / lease────┘                    in the same atomic step)
                     recovery

- **enqueue_many** queues a group of items in one atomic step (one transaction, one Redis
  script): the API's group commit (:mod:`cjllm.provider.group_commit`) sends every request
  that arrived while the previous step ran in the next one, so a busy API pays one commit
  for many requests. Each item gets its own answer (queued, known, or refused as over
  capacity), exactly as if it had been enqueued alone, in order.
- **claim** leases a *bundle*: up to the bundle size of a ready key's oldest items, in one
  atomic step, to one owner until ``lease_until``. Which items form a bundle is the rule in
  :func:`cjllm.provider.bundling.pick_bundle` (the Redis backend runs the same rule in Lua).
- **finish** is terminal and idempotent: it records the callback envelope in the outbox
  and marks the item done atomically, unless the item is already terminal (then it is a
  no-op, so a slow worker whose lease lapsed cannot produce a second callback once the
  item is done). It does not require the lease: an answer that arrives late is still good.
- **retry** returns a leased item to the queue (only for its current lease owner), with a
  not-before time, a new size hint (1 = send alone) and the usage its failed try spent.
- **recover_leases** returns items whose lease expired (their worker died) to the queue,
  counting the lost try as an attempt.
- **claim_expired** leases queued items past their TTL to the sweeper, which finishes them
  with an error callback through the same ``finish`` (a sweeper that dies mid-way loses
  nothing: the lease lapses and the next sweep takes them again).
- **remember** / **recall** keep small facts the workers learn about servers (the output
  mode a server accepts, :mod:`cjllm.provider.output_modes`), shared by every worker on
  the queue.
- The **outbox** is drained by a publisher: entries are leased (so two publishers do not
  both send an entry) and deleted only after the bus acknowledged them. An entry that can
  never be published (unreadable, refused by the bus for what it is) is moved to the
  outbox's **dead letters** with the reason, so it never holds up the others; it stays there
  for an operator (:meth:`Queue.dead_letters`).

Times are UNIX seconds passed in by the caller, so one clock decides for a whole step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlparse

from cjllm.contracts import EventEnvelope, QueueItemState

ACTIVE_STATES = (QueueItemState.QUEUED, QueueItemState.PROCESSING)
TERMINAL_STATES = (QueueItemState.COMPLETED, QueueItemState.FAILED, QueueItemState.EXPIRED)


class QueueFull(Exception):
    """The queue is over its item or byte capacity (the API answers 503 + ``Retry-After``)."""

    def __init__(self, limit: str, current: int, maximum: int) -> None:
        super().__init__(f"queue over capacity: {limit} {current} of {maximum}")
        self.limit = limit
        self.current = current
        self.maximum = maximum


class QueueUnavailable(Exception):
    """The queue backend could not be reached or refused the operation (the database file is
    locked for too long, Redis is down or does not answer in time).

    ``may_have_applied``: false when nothing changed for sure (SQLite rolls the step back);
    true when the step may still take effect (Redis runs a script that reached it even if its
    answer never came back). Either way the caller may try again: every step is idempotent
    for the same ids.
    """

    def __init__(self, message: str, *, may_have_applied: bool) -> None:
        super().__init__(message)
        self.may_have_applied = may_have_applied


@dataclass(frozen=True)
class Spent:
    """Usage charged to one comparison so far (failed tries included)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0

    def __add__(self, other: Spent) -> Spent:
        return Spent(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cost + other.cost,
        )


@dataclass(frozen=True)
class NewItem:
    """A comparison about to be queued.

    ``key`` is its compatibility key; ``hint`` its own bundle-size cap; ``tokens`` its
    estimated per-item input tokens and ``budget`` the per-call input-token room left after
    the shared prefix (equal for every item of a key). ``payload`` is the planned comparison
    as JSON (see :class:`cjllm.provider.bundling.PlannedComparison`).
    """

    queue_id: str
    correlation_id: str
    key: str
    hint: int
    tokens: int
    budget: int
    payload: str
    enqueued_at: float
    expires_at: float

    @property
    def size_bytes(self) -> int:
        return len(self.payload.encode("utf-8"))


@dataclass(frozen=True)
class QueuedItem:
    """An item as stored. ``attempts`` counts failed tries (and lost leases);
    ``lease_owner`` of a finished item is the worker that last held it."""

    queue_id: str
    correlation_id: str
    key: str
    hint: int
    tokens: int
    budget: int
    payload: str
    state: QueueItemState
    attempts: int
    enqueued_at: float
    available_at: float
    expires_at: float
    updated_at: float
    lease_owner: str | None = None
    lease_until: float | None = None
    bundle_id: str | None = None
    last_error: str | None = None
    spent: Spent = field(default_factory=Spent)


@dataclass(frozen=True)
class Finished:
    """One item's terminal state and the callback envelope recorded with it (``parsed``:
    the envelope as a model, when the caller has it, for an in-process publisher)."""

    queue_id: str
    state: QueueItemState
    topic: str
    message_key: str
    envelope: bytes
    parsed: EventEnvelope | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Retry:
    """Return a leased item to the queue, not before ``available_at``.

    ``hint`` replaces the item's bundle-size cap (1 = its next try goes out alone);
    ``count_attempt`` is false only when the item itself did nothing wrong (a bundle split
    because it was too large for the context, a worker shutting down).
    """

    queue_id: str
    available_at: float
    hint: int
    error: str
    count_attempt: bool = True
    spent: Spent = field(default_factory=Spent)


@dataclass(frozen=True)
class OutboxEntry:
    entry_id: str
    topic: str
    message_key: str
    envelope: bytes


@dataclass(frozen=True)
class DeadLetter:
    """An outbox entry set aside because it can never be published, and why."""

    entry_id: str
    topic: str
    message_key: str
    envelope: bytes
    reason: str
    dead_at: float


@dataclass(frozen=True)
class Depth:
    """Comparisons (not bundles) by state, plus what the capacity limits count."""

    queued: int
    delayed: int
    processing: int
    active_bytes: int
    outbox: int
    dead_letters: int = 0


class Queue(Protocol):
    """The durable queue. Both backends pass the same test suite (``tests/provider``)."""

    async def enqueue(self, item: NewItem) -> tuple[str, bool]:
        """Queue ``item``; return ``(queue_id, created)``.

        A correlation id already known returns the existing queue id with ``created``
        false (a client re-posting after a timeout gets one comparison, not two).
        Raises :class:`QueueFull` when over the item or byte capacity.
        """
        ...

    async def enqueue_many(self, items: Sequence[NewItem]) -> list[tuple[str, bool] | QueueFull]:
        """Queue ``items`` in one atomic step, each as :meth:`enqueue` would in turn: one
        answer per item, in order, a :class:`QueueFull` for an item over capacity (the
        others are still queued). An item repeating an earlier one's correlation id, in the
        queue or in this group, gets that item's queue id with ``created`` false.
        """
        ...

    async def claim(
        self, owner: str, bundle_id: str, now: float, lease_until: float, linger: float
    ) -> list[QueuedItem]:
        """Lease the next ready bundle to ``owner``; ``[]`` when no key is ready."""
        ...

    async def extend(self, owner: str, queue_ids: Sequence[str], lease_until: float) -> int:
        """Push out the lease of items still held by ``owner``; return how many."""
        ...

    async def finish(self, finished: Sequence[Finished], now: float) -> list[str]:
        """Make items terminal and record their callbacks; return the ids that changed."""
        ...

    async def retry(self, owner: str, retries: Sequence[Retry], now: float) -> list[str]:
        """Return items leased by ``owner`` to the queue; return the ids that changed."""
        ...

    async def recover_leases(self, now: float, expired_by: float | None = None) -> int:
        """Requeue items whose lease ended by ``expired_by`` (default ``now``: it expired),
        ready at ``now``; return how many. A later ``expired_by`` takes back leases a dead
        process still held (the embedded start-up, a crashed worker process)."""
        ...

    async def claim_expired(
        self, owner: str, now: float, lease_until: float, limit: int
    ) -> list[QueuedItem]:
        """Lease queued items past their TTL to ``owner`` (the sweeper)."""
        ...

    async def claim_outbox(self, now: float, visible_until: float, limit: int) -> list[OutboxEntry]:
        """Lease outbox entries to a publisher; unacknowledged ones reappear at
        ``visible_until``."""
        ...

    async def delete_outbox(self, entry_ids: Sequence[str]) -> None: ...

    async def dead_letter_outbox(self, reasons: Mapping[str, str], now: float) -> None:
        """Move outbox entries (id → reason) to the dead letters; they are never sent again."""
        ...

    async def dead_letters(self, limit: int) -> list[DeadLetter]:
        """The outbox's dead letters, oldest first."""
        ...

    async def get(self, queue_id: str) -> QueuedItem | None: ...

    async def remember(self, key: str, value: str) -> None:
        """Record what a worker learned (the last write wins)."""
        ...

    async def recall(self, key: str) -> str | None:
        """What was recorded under ``key``, or ``None``."""
        ...

    async def depth(self, now: float) -> Depth: ...

    async def purge(self, before: float) -> int:
        """Forget terminal items last updated before ``before``; return how many."""
        ...

    async def close(self) -> None: ...


def queue_from_url(
    url: str, *, max_items: int, max_bytes: int, retention_seconds: float = 24 * 3600
) -> Queue:
    """The queue backend for ``CJLLM_QUEUE_URL``.

    ``sqlite:///relative.sqlite``, ``sqlite:////abs/path.sqlite``, ``sqlite:///:memory:``;
    ``redis://host:port/db`` (add ``?prefix=name`` to share one Redis between queues).
    """
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        from cjllm.provider.sqlite_queue import SQLiteQueue

        path = url.split("://", 1)[1]
        if not path.startswith("/") or len(path) < 2:
            raise ValueError(f"CJLLM_QUEUE_URL: expected sqlite:///path, got {url!r}")
        return SQLiteQueue(path[1:], max_items=max_items, max_bytes=max_bytes)
    if scheme in ("redis", "rediss", "unix"):
        from cjllm.provider.redis_queue import RedisQueue

        return RedisQueue.from_url(
            url, max_items=max_items, max_bytes=max_bytes, retention_seconds=retention_seconds
        )
    raise ValueError(f"CJLLM_QUEUE_URL: unknown scheme {scheme!r} (use sqlite:/// or redis://)")
