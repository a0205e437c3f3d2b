"""The worker: the life of a bundle, and the sweeper that looks after the queue.

    claim ──> call the provider once ──> validate every item ──> record callbacks ──> requeue
                                                                 (finish: terminal + outbox)

- **claim**: the queue leases the next ready bundle (DESIGN.md §6; the rule is in
  :mod:`cjllm.provider.bundling`). Several bundles are in flight at once
  (``worker_concurrency``); their leases are renewed while the call runs.
- **call**: one multi-comparison call through the adapter. A call-level failure
  (:class:`ProviderCallError`, an unreadable answer, a timeout) retries the whole bundle with
  exponential backoff that honours ``retry-after``; a bundle too large for the context is
  split in half without costing an attempt.
- **validate**: each item is answered-and-valid (→ success callback) or missing/invalid
  (→ requeued *alone*, hint 1; its neighbours keep their answers). Unknown ids are counted.
- **record**: callbacks go to the outbox in the same atomic step that finishes the item; the
  :class:`cjllm.provider.publisher.Publisher` sends them. After ``max_attempts`` failed
  tries an item gets an error callback instead of another retry.

The **sweeper** requeues items whose lease expired (their worker died), gives items past
their TTL an error callback, and forgets old terminal records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cjllm.contracts import QueueItemState
from cjllm.provider import results
from cjllm.provider.answers import MalformedOutput, Reconciled
from cjllm.provider.bundling import PlannedComparison, apportion, build_call
from cjllm.provider.calls import BundleCall, CallOutcome, LLMAdapter, ProviderCallError
from cjllm.provider.metrics import ProviderMetrics
from cjllm.provider.providers import Providers, ProviderUnavailable
from cjllm.provider.queue import (
    Finished,
    Queue,
    QueuedItem,
    QueueUnavailable,
    Retry,
    Spent,
)
from cjllm.settings import ProviderSettings

log = logging.getLogger(__name__)

CONTEXT_TOO_LARGE = "context_window_exceeded"
"""The :class:`ProviderCallError` code adapters raise for a call too large for the model."""

Entry = tuple[QueuedItem, PlannedComparison]


@dataclass
class Settlement:
    """What becomes of each item of a bundle: finished (with its metric label) or requeued
    (with its reason). Recorded with one ``finish`` and one ``retry`` queue step."""

    done: list[tuple[Finished, str]] = field(default_factory=list)
    retries: list[tuple[Retry, str]] = field(default_factory=list)


def backoff(attempt: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Seconds before try ``attempt + 1``: ``base * 2**(attempt-1)`` capped at ``cap``, with
    up to 25% jitter taken off, and never less than the provider's ``retry-after``."""
    delay = min(cap, base * 2.0 ** (attempt - 1)) * random.uniform(0.75, 1.0)
    return max(delay, retry_after or 0.0)


async def supervise(
    name: str, loop: Callable[[asyncio.Event], Awaitable[None]], stop: asyncio.Event
) -> None:
    """Run ``loop(stop)`` until ``stop`` is set; a loop that fails is logged and restarted.

    Every loop also checks ``stop`` itself rather than relying on being cancelled: on Python
    3.11 ``asyncio.wait_for`` (which redis-py uses for socket timeouts) can swallow a
    cancellation that lands as its inner await completes, and a loop would then run for ever.
    """
    while not stop.is_set():
        try:
            await loop(stop)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; restarting it in 1s", name)
            await nap(stop, 1.0)


async def nap(wakeup: asyncio.Event, seconds: float) -> None:
    """Sleep until ``wakeup`` is set or ``seconds`` pass (``asyncio.timeout``, not
    ``wait_for``, for the reason given in :func:`supervise`)."""
    try:
        async with asyncio.timeout(seconds):
            await wakeup.wait()
    except TimeoutError:
        pass


class Worker:
    """Claims bundles, makes one provider call per bundle, settles every item."""

    def __init__(
        self,
        queue: Queue,
        providers: Providers,
        settings: ProviderSettings,
        metrics: ProviderMetrics,
        *,
        owner: str | None = None,
        on_recorded: Callable[[], None] | None = None,
    ) -> None:
        self.queue = queue
        self.providers = providers
        self.settings = settings
        self.metrics = metrics
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._on_recorded = on_recorded
        self._wakeup = asyncio.Event()

    def notify(self) -> None:
        """Something was queued: look for a ready bundle now rather than at the next poll."""
        self._wakeup.set()

    # ------------------------------------------------------------------ the claim loop

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and process bundles until ``stop``, ``worker_concurrency`` at a time."""
        slots = asyncio.Semaphore(self.settings.worker_concurrency)
        in_flight: set[asyncio.Task[None]] = set()

        def done(task: asyncio.Task[None]) -> None:
            in_flight.discard(task)
            slots.release()
            if not task.cancelled() and task.exception() is not None:
                log.error("bundle failed", exc_info=task.exception())

        try:
            while not stop.is_set():
                await slots.acquire()
                try:
                    claimed = await self.claim()
                except QueueUnavailable as exc:  # bundles in flight carry on meanwhile
                    slots.release()
                    log.warning("cannot claim (%s); trying again in 1s", exc)
                    await nap(stop, 1.0)
                    continue
                if not claimed:
                    slots.release()
                    await self._idle()
                    continue
                task = asyncio.create_task(self.process(claimed))
                in_flight.add(task)
                task.add_done_callback(done)
        finally:
            for task in list(in_flight):
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def claim(self) -> list[QueuedItem]:
        now = time.time()
        return await self.queue.claim(
            self.owner,
            uuid.uuid4().hex,
            now,
            now + self.settings.lease_seconds,
            self.settings.linger_seconds,
        )

    async def _idle(self) -> None:
        await nap(self._wakeup, self.settings.poll_interval_seconds)
        self._wakeup.clear()

    # ------------------------------------------------------------------ one bundle

    async def process(self, claimed: Sequence[QueuedItem]) -> None:
        """The life of one claimed bundle, from the provider call to every item's fate."""
        entries = [(item, PlannedComparison.from_json(item.payload)) for item in claimed]
        worn = [e for e in entries if e[0].attempts >= self.settings.max_attempts]
        if worn:  # its leases lapsed too often (a bundle that kills workers)
            await self._give_up(worn, "retries_exhausted", "lost its lease too many times")
            entries = [e for e in entries if e not in worn]
        if not entries:
            return
        call = build_call(claimed[0].bundle_id or uuid.uuid4().hex, [p for _, p in entries])
        try:
            async with self._leases_kept([item.queue_id for item, _ in entries]):
                adapter = self._adapter(call.provider)
                outcome = await self._call(adapter, call)
        except ProviderCallError as exc:
            await self._call_failed(entries, call, exc)
            return
        except asyncio.CancelledError:
            await asyncio.shield(self._release(entries))
            raise
        await self._settle(entries, call, adapter, outcome)

    def _adapter(self, provider: str) -> LLMAdapter:
        try:
            return self.providers.get(provider)
        except ProviderUnavailable as exc:
            raise ProviderCallError("provider_unavailable", str(exc), retryable=False) from exc

    async def _call(self, adapter: LLMAdapter, call: BundleCall) -> CallOutcome:
        labels = (adapter.name, call.model)
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.settings.call_timeout_seconds):
                outcome = await adapter.call_bundle(call)
        except TimeoutError as exc:
            self.metrics.provider_calls.labels(*labels, "timeout").inc()
            raise ProviderCallError(
                "timeout",
                f"no answer within {self.settings.call_timeout_seconds}s",
                retryable=True,
            ) from exc
        except MalformedOutput as exc:
            self.metrics.provider_calls.labels(*labels, "malformed_output").inc()
            raise ProviderCallError("malformed_output", str(exc), retryable=True) from exc
        except ProviderCallError as exc:
            self.metrics.provider_calls.labels(*labels, exc.code).inc()
            raise
        finally:
            self.metrics.call_latency.labels(adapter.name).observe(time.monotonic() - started)
            self.metrics.items_per_call.labels(adapter.name).observe(len(call.items))
        self.metrics.provider_calls.labels(*labels, "ok").inc()
        return outcome

    async def _settle(
        self, entries: list[Entry], call: BundleCall, adapter: LLMAdapter, outcome: CallOutcome
    ) -> None:
        """Fan the answer out: good items finish, missing and invalid ones go again alone."""
        now = time.time()
        found = outcome.reconciled
        self._count_items(found)
        if found.unknown:
            log.warning("bundle %s: ignored unknown ids %s", call.bundle_id, found.unknown)
        shares = apportion(call, outcome)
        settled = Settlement()
        for index, (item, plan) in enumerate(entries):
            ref = results.CallRef(
                call.bundle_id, index, len(entries), adapter.name, outcome.model, outcome.latency_ms
            )
            share = shares[plan.correlation_id]
            answer = found.answers.get(plan.correlation_id)
            if answer is not None:
                result = results.success(item, plan, answer, ref, item.spent + share, now)
                settled.done.append((results.finished(item, plan, result, self._source), "success"))
                continue
            invalid = found.invalid.get(plan.correlation_id)
            code = "missing_item" if invalid is None else "invalid_item"
            message = invalid or "the answer did not include this item"
            self._next_try(settled, item, plan, ref, code, message, share, now, hint=1)
        await self._record(settled, now)

    async def _call_failed(
        self, entries: list[Entry], call: BundleCall, exc: ProviderCallError
    ) -> None:
        now = time.time()
        settled = Settlement()
        if exc.code == CONTEXT_TOO_LARGE and len(entries) > 1:
            half = math.ceil(len(entries) / 2)
            for item, _ in entries:
                retry = Retry(item.queue_id, now, half, exc.message, count_attempt=False)
                settled.retries.append((retry, "split"))
            await self._record(settled, now)
            return
        log.warning("bundle %s (%d items) failed: %s", call.bundle_id, len(entries), exc)
        for index, (item, plan) in enumerate(entries):
            ref = results.CallRef(call.bundle_id, index, len(entries), call.provider, call.model, 0)
            self._next_try(
                settled,
                item,
                plan,
                ref,
                exc.code,
                exc.message,
                Spent(),
                now,
                hint=item.hint,
                retry_after=exc.retry_after,
                retryable=exc.retryable,
                details=exc.details,
            )
        await self._record(settled, now)

    def _next_try(
        self,
        settled: Settlement,
        item: QueuedItem,
        plan: PlannedComparison,
        ref: results.CallRef,
        code: str,
        message: str,
        share: Spent,
        now: float,
        *,
        hint: int,
        retry_after: float | None = None,
        retryable: bool = True,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Requeue ``item`` with backoff, or give it an error callback when out of tries.

        ``details`` (the provider's status, message, error type, request id) are kept in the
        error callback's ``error_detail.details``."""
        attempt = item.attempts + 1
        s = self.settings
        if retryable and attempt < s.max_attempts:
            delay = backoff(attempt, s.retry_base_seconds, s.retry_max_seconds, retry_after)
            retry = Retry(item.queue_id, now + delay, hint, f"{code}: {message}", True, share)
            settled.retries.append((retry, code))
            return
        final = "retries_exhausted" if retryable else code
        result = results.failure(
            item,
            plan,
            service=self._source,
            code=final,
            message=f"{message} (after {attempt} tries)" if retryable else message,
            operation="llm_comparison",
            call=ref,
            spent=item.spent + share,
            now=now,
            details={**(details or {}), "last_error_code": code},
        )
        settled.done.append((results.finished(item, plan, result, self._source), final))

    async def _give_up(
        self,
        entries: list[Entry],
        code: str,
        message: str,
        *,
        operation: str = "llm_comparison",
        state: QueueItemState = QueueItemState.FAILED,
    ) -> None:
        """Error callbacks for items no call answered (worn out, or expired in the queue)."""
        now = time.time()
        settled = Settlement()
        for item, plan in entries:
            result = results.failure(
                item,
                plan,
                service=self._source,
                code=code,
                message=message,
                operation=operation,
                call=None,
                spent=item.spent,
                now=now,
                details={"last_error": item.last_error},
            )
            finished = results.finished(item, plan, result, self._source, state)
            settled.done.append((finished, code))
        await self._record(settled, now)

    async def _release(self, entries: list[Entry]) -> None:
        """Hand leased items back untouched (the worker is stopping mid-call)."""
        now = time.time()
        settled = Settlement()
        for item, _ in entries:
            retry = Retry(item.queue_id, now, item.hint, "worker stopped", count_attempt=False)
            settled.retries.append((retry, "released"))
        await self._record(settled, now)

    async def _record(self, settled: Settlement, now: float) -> None:
        if settled.done:
            changed = set(await self.queue.finish([f for f, _ in settled.done], now))
            for f, label in settled.done:
                if f.queue_id in changed:
                    self.metrics.callbacks.labels(label).inc()
            if changed and self._on_recorded is not None:
                self._on_recorded()
        if settled.retries:
            retries = [r for r, _ in settled.retries]
            changed = set(await self.queue.retry(self.owner, retries, now))
            for r, reason in settled.retries:
                if r.queue_id in changed:
                    self.metrics.retries.labels(reason).inc()

    @contextlib.asynccontextmanager
    async def _leases_kept(self, queue_ids: list[str]) -> AsyncIterator[None]:
        """Renew the leases on ``queue_ids`` every third of a lease while the block runs."""
        done = asyncio.Event()
        keeper = asyncio.create_task(self._keep_leases(queue_ids, done))
        try:
            yield
        finally:
            done.set()
            keeper.cancel()

    async def _keep_leases(self, queue_ids: list[str], done: asyncio.Event) -> None:
        interval = self.settings.lease_seconds / 3
        while True:
            await nap(done, interval)
            if done.is_set():
                return
            try:
                await self.queue.extend(
                    self.owner, queue_ids, time.time() + self.settings.lease_seconds
                )
            except QueueUnavailable as exc:
                log.warning("could not renew leases (%s); the next renewal will try again", exc)

    def _count_items(self, found: Reconciled) -> None:
        m = self.metrics.item_outcomes
        m.labels("answered").inc(len(found.answers))
        m.labels("missing").inc(len(found.missing))
        m.labels("invalid").inc(len(found.invalid) - len(found.duplicates))
        m.labels("duplicate").inc(len(found.duplicates))
        m.labels("unknown").inc(len(found.unknown))

    @property
    def _source(self) -> str:
        return self.settings.callback_source

    # ------------------------------------------------------------------ the sweeper

    async def sweep(self) -> None:
        """One pass: requeue lost leases, expire items past their TTL, forget old records."""
        now = time.time()
        recovered = await self.queue.recover_leases(now)
        if recovered:
            log.warning("requeued %d comparisons whose worker lost its lease", recovered)
            self.metrics.lease_recoveries.inc(recovered)
        ttl = f"not answered within its time to live ({self.settings.item_ttl_seconds:g}s)"
        while expired := await self.queue.claim_expired(
            self.owner, now, now + self.settings.lease_seconds, 100
        ):
            entries = [(item, PlannedComparison.from_json(item.payload)) for item in expired]
            await self._give_up(
                entries, "ttl_expired", ttl, operation="queue_ttl", state=QueueItemState.EXPIRED
            )
            self.metrics.expiries.inc(len(entries))
        await self.queue.purge(now - self.settings.record_retention_seconds)

    async def run_sweeper(self, stop: asyncio.Event) -> None:
        """Sweep every ``sweep_interval_seconds`` until ``stop``; refresh the depth gauges."""
        while not stop.is_set():
            await self.sweep()
            self.metrics.observe_depth(await self.queue.depth(time.time()))
            await nap(stop, self.settings.sweep_interval_seconds)
