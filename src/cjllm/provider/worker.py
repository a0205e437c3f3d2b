"""The worker: the life of a bundle, and the sweeper that looks after the queue.

    claim ──> call the provider once ──> validate every item ──> record callbacks ──> requeue
                                                                 (finish: terminal + outbox)

- **claim**: the queue leases the next ready bundle (docs/architecture.md, "The hard
  parts"; the rule is in :mod:`cjllm.provider.bundling`). Several bundles are in flight at once,
  as many as the rate limiter admits: past :data:`BASE_IN_FLIGHT`, the worker claims another
  only while the limiter holds no call back (``worker_concurrency`` sets a fixed number
  instead); their leases are renewed while the call runs. Items beyond the
  model's current bundle size (:mod:`cjllm.provider.bundle_sizes`) are handed back at once,
  untouched, for the next claim.
- **call**: one multi-comparison call through the adapter, paced by the key's rate limits
  (:mod:`cjllm.provider.limiter`: a bundle too big for one minute of them is split first; a
  429 or an overload pauses the key and costs no attempt). A call-level failure
  (:class:`ProviderCallError`, an unreadable answer, a timeout) retries the whole bundle with
  exponential backoff that honours ``retry-after``; a bundle too large for the context is
  split in half without costing an attempt. Any other exception from the adapter is a bug
  or an answer it never foresaw: its items fail at once (``adapter_error``, with the
  exception as the message) rather than being paid for again.
- **validate**: each item is answered-and-valid (→ success callback) or missing/invalid
  (→ requeued; its neighbours keep their answers). A retried item keeps its size hint and
  rides in a bundle with other pending work; from its second failed try on it goes alone
  (hint 1), to isolate an item the model cannot answer. Unknown ids are counted. The
  answer also teaches the model's bundle size (poor answers halve it, clean ones grow it).
- **record**: callbacks go to the outbox in the same atomic step that finishes the item; the
  :class:`cjllm.provider.publisher.Publisher` sends them. After ``max_attempts`` failed
  tries an item gets an error callback instead of another retry.

How each item's fate is written down is :mod:`cjllm.provider.settle`; the queue's upkeep
(lost leases, TTL expiry) is :mod:`cjllm.provider.sweeper`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence

from cjllm.provider import results
from cjllm.provider.answers import MalformedOutput
from cjllm.provider.bundle_sizes import BundleSizes
from cjllm.provider.bundling import PlannedComparison, build_call
from cjllm.provider.calls import BundleCall, CallOutcome, LLMAdapter, ProviderCallError
from cjllm.provider.job_plan import BATCH_STRATEGIES
from cjllm.provider.limiter import Limiter, costs_attempt
from cjllm.provider.loops import nap
from cjllm.provider.metrics import ProviderMetrics
from cjllm.provider.providers import Providers, ProviderUnavailable
from cjllm.provider.queue import (
    Queue,
    QueuedItem,
    QueueUnavailable,
    Retry,
    Spent,
)
from cjllm.provider.settle import Entry, OnRecorded, Settlement, Settler
from cjllm.settings import ProviderSettings

log = logging.getLogger(__name__)

CONTEXT_TOO_LARGE = "context_window_exceeded"
"""The :class:`ProviderCallError` code adapters raise for a call too large for the model."""
BROKEN_CALLS = ("malformed_output", "timeout")
"""Call failures that say the bundle was too much for the model (they lower its size)."""
BASE_IN_FLIGHT = 4
"""Bundles a worker keeps in flight whatever the limiter says (a call may be waiting its turn
for one key while another key's bundle could go now)."""
MAX_IN_FLIGHT = 1_000
"""Bundles in flight at most when ``worker_concurrency`` is unset (sockets and memory)."""
BATCH_STRATEGY_VALUES = frozenset(s.value for s in BATCH_STRATEGIES)
MAX_HANDED_OVER = 8_192
"""Planned comparisons this process's intake hands the worker at most (the oldest go first:
a claim of one of those, or of an item another process queued, reads its payload)."""


class Worker:
    """Claims bundles, makes one provider call per bundle, settles every item."""

    def __init__(
        self,
        queue: Queue,
        providers: Providers,
        settings: ProviderSettings,
        metrics: ProviderMetrics,
        *,
        limiter: Limiter | None = None,
        owner: str | None = None,
        on_recorded: OnRecorded | None = None,
    ) -> None:
        self.queue = queue
        self.providers = providers
        self.settings = settings
        self.metrics = metrics
        self.limiter = limiter or Limiter(settings, metrics)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.settler = Settler(queue, settings, metrics, self.owner, on_recorded)
        self.sizes = BundleSizes(settings.max_items_per_call, metrics)
        self._wakeup = asyncio.Event()
        self._handed_over: dict[str, PlannedComparison | None] = {}  # see queued()

    def notify(self) -> None:
        """Something was queued: look for a ready bundle now rather than at the next poll."""
        self._wakeup.set()

    def queued(self, queue_id: str, plan: PlannedComparison) -> None:
        """This process's intake queued ``plan`` as ``queue_id``: the claim takes the model
        from here rather than parsing the payload it was written as (a tenth of the
        worker's time per item), and the worker looks for a ready bundle now."""
        if plan.request.metadata.get("batching_strategy") not in BATCH_STRATEGY_VALUES:
            handed = self._handed_over  # (a batch-mode item is the batch jobs' to claim)
            handed[queue_id] = plan
            if len(handed) > MAX_HANDED_OVER:
                del handed[next(iter(handed))]
        self._wakeup.set()

    # ------------------------------------------------------------------ the claim loop

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and process bundles until ``stop``: ``worker_concurrency`` at a time, or
        (unset) as many as the rate limiter admits (see the module docstring)."""
        fixed = self.settings.worker_concurrency
        slots = asyncio.Semaphore(fixed or MAX_IN_FLIGHT)
        in_flight: set[asyncio.Task[None]] = set()

        def done(task: asyncio.Task[None]) -> None:
            in_flight.discard(task)
            slots.release()
            if not task.cancelled() and task.exception() is not None:
                log.error("bundle failed", exc_info=task.exception())

        try:
            while not stop.is_set():
                await slots.acquire()
                held = 0.0 if fixed or len(in_flight) < BASE_IN_FLIGHT else self.limiter.holding()
                if held > 0:  # a call is waiting its turn: another could go no sooner
                    slots.release()
                    await nap(stop, min(held, self.settings.poll_interval_seconds * 10))
                    continue
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
        handed = self._handed_over
        entries = [
            (item, handed.pop(item.queue_id, None) or PlannedComparison.from_json(item.payload))
            for item in claimed
        ]
        worn = [e for e in entries if e[0].attempts >= self.settings.max_attempts]
        if worn:  # its leases lapsed too often (a bundle that kills workers)
            await self.settler.give_up(worn, "retries_exhausted", "lost its lease too many times")
            entries = [e for e in entries if e not in worn]
        if not entries:
            return
        first = entries[0][1]
        limit = self.sizes.limit(first.provider, first.model)
        if len(entries) > limit:  # the model takes smaller bundles: the rest go back now
            await self.settler.release(
                entries[limit:], "over the model's bundle size", "over_bundle_size"
            )
            entries = entries[:limit]
            self.notify()
        call = build_call(claimed[0].bundle_id or uuid.uuid4().hex, [p for _, p in entries])
        try:
            async with self._leases_kept([item.queue_id for item, _ in entries]):
                adapter = self._adapter(call.provider)
                entries, call = await self._within_rate_limits(adapter, entries, call)
                outcome = await self.limiter.send(adapter, call, self._call)
        except ProviderCallError as exc:
            if exc.code in BROKEN_CALLS:
                self.sizes.observe(call.provider, call.model, len(entries), 0, broken=True)
            await self._call_failed(entries, call, exc)
            return
        except asyncio.CancelledError:
            await asyncio.shield(self.settler.release(entries))
            raise
        await self._settle(entries, call, adapter, outcome)

    async def _within_rate_limits(
        self, adapter: LLMAdapter, entries: list[Entry], call: BundleCall
    ) -> tuple[list[Entry], BundleCall]:
        """Send back (no attempt) the items one minute of the key's limits cannot hold."""
        fit = self.limiter.items_that_fit(adapter, call)
        if fit >= len(entries):
            return entries, call
        now = time.time()
        settled = Settlement()
        for item, _ in entries[fit:]:
            retry = Retry(item.queue_id, now, fit, "split to fit the rate limit", False)
            settled.retries.append((retry, "rate_limit_split"))
        await self.settler.record(settled, now)
        return entries[:fit], dataclasses.replace(call, items=call.items[:fit])

    def _adapter(self, provider: str) -> LLMAdapter:
        try:
            return self.providers.get(provider)
        except ProviderUnavailable as exc:
            raise ProviderCallError("provider_unavailable", str(exc), retryable=False) from exc

    async def _call(self, adapter: LLMAdapter, call: BundleCall) -> CallOutcome:
        labels = (adapter.name, self.metrics.model_label(call.model))
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
        except Exception as exc:  # an adapter bug or an answer it never foresaw: fail now
            self.metrics.provider_calls.labels(*labels, "adapter_error").inc()
            log.error(
                "bundle %s: the %s adapter raised", call.bundle_id, adapter.name, exc_info=exc
            )
            raise ProviderCallError(
                "adapter_error",
                f"{type(exc).__name__}: {exc}",
                retryable=False,
                details={"exception": type(exc).__name__},
            ) from exc
        finally:
            self.metrics.call_latency.labels(adapter.name).observe(time.monotonic() - started)
            self.metrics.items_per_call.labels(adapter.name).observe(len(call.items))
        self.metrics.provider_calls.labels(*labels, "ok").inc()
        return outcome

    async def _settle(
        self, entries: list[Entry], call: BundleCall, adapter: LLMAdapter, outcome: CallOutcome
    ) -> None:
        """Fan the answer out: good items finish, missing and invalid ones go again."""
        now = time.time()
        found = outcome.reconciled
        broken = found.salvaged or outcome.stop_reason in ("length", "max_tokens")
        self.sizes.observe(call.provider, call.model, len(entries), len(found.answers), broken)
        settled = Settlement()
        self.settler.answered(settled, entries, call, adapter.name, outcome, now)
        await self.settler.record(settled, now)

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
            await self.settler.record(settled, now)
            return
        level = logging.WARNING if costs_attempt(exc.code) else logging.INFO
        log.log(level, "bundle %s (%d items) failed: %s", call.bundle_id, len(entries), exc)
        for index, (item, plan) in enumerate(entries):
            ref = results.CallRef(call.bundle_id, index, len(entries), call.provider, call.model, 0)
            self.settler.next_try(
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
        await self.settler.record(settled, now)

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
