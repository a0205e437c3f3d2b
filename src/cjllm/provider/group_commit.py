"""Group commit of enqueues: many concurrent requests, one queue step.

    POST ─┐
    POST ─┼─> waiting ──(the step before has ended)──> Queue.enqueue_many(group) ──> each
    POST ─┘                                                                         its answer

Invariant: a request is answered only once the step that holds its item has ended, with the
answer :meth:`Queue.enqueue` would have given it alone (queued, already known, or
:class:`QueueFull`); a failed step (:class:`QueueUnavailable`) fails every request in it.
Nothing waits for company: a step starts as soon as the one before it ends, so an idle API
commits each request at once and a busy one commits, in one transaction or one Redis script,
every request that arrived while the previous step ran (as a database's write-ahead log
commits a group of transactions with one flush).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from cjllm.provider.queue import NewItem, Queue, QueueFull

MAX_GROUP = 500
"""Items per step at most: one step holds the SQLite write lock or the Redis server while it
runs, so a group is kept to a few milliseconds of work."""


class GroupCommit:
    """Enqueues for one queue, grouped (see the module docstring)."""

    def __init__(self, queue: Queue, max_group: int = MAX_GROUP) -> None:
        self.queue = queue
        self.max_group = max_group
        self._waiting: list[tuple[NewItem, asyncio.Future[tuple[str, bool]]]] = []
        self._step: asyncio.Task[None] | None = None
        self.steps = 0  # queue steps taken (a measure of grouping for tests and benchmarks)

    async def enqueue(self, item: NewItem) -> tuple[str, bool]:
        """Queue ``item`` with whatever else is waiting; ``(queue_id, created)`` as
        :meth:`Queue.enqueue`. Raises :class:`QueueFull` or
        :class:`~cjllm.provider.queue.QueueUnavailable`."""
        answer: asyncio.Future[tuple[str, bool]] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, answer))
        if self._step is None:
            self._step = asyncio.create_task(self._commit())
        return await answer

    async def enqueue_many(self, items: Sequence[NewItem]) -> list[tuple[str, bool] | Exception]:
        """Queue ``items`` with whatever else is waiting (in order, in as few steps as
        :attr:`max_group` allows); each its answer as :meth:`enqueue` would give it, a
        refusal (:class:`QueueFull`, :class:`~cjllm.provider.queue.QueueUnavailable`) as the
        exception itself. For an in-process caller with a whole round in hand: one future
        per item instead of one task."""
        loop = asyncio.get_running_loop()
        answers: list[asyncio.Future[tuple[str, bool]]] = []
        for item in items:
            answer: asyncio.Future[tuple[str, bool]] = loop.create_future()
            self._waiting.append((item, answer))
            answers.append(answer)
        if self._step is None and answers:
            self._step = asyncio.create_task(self._commit())
        results = await asyncio.gather(*answers, return_exceptions=True)
        out: list[tuple[str, bool] | Exception] = []
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # cancelled
            out.append(result)
        return out

    async def _commit(self) -> None:
        try:
            while self._waiting:
                group = self._waiting[: self.max_group]
                del self._waiting[: self.max_group]
                await self._commit_group(group)
        finally:
            self._step = None

    async def _commit_group(
        self, group: Sequence[tuple[NewItem, asyncio.Future[tuple[str, bool]]]]
    ) -> None:
        self.steps += 1
        try:
            answers = await self.queue.enqueue_many([item for item, _ in group])
        except asyncio.CancelledError:
            for _, waiter in group:
                waiter.cancel()
            raise
        except Exception as exc:  # QueueUnavailable, or a bug: each request sees the cause
            for _, waiter in group:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        for (_, waiter), answer in zip(group, answers, strict=True):
            if waiter.done():  # its request went away (a client that disconnected)
                continue
            if isinstance(answer, QueueFull):
                waiter.set_exception(answer)
            else:
                waiter.set_result(answer)
