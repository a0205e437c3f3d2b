"""Settling items: what becomes of each comparison once a call (or the sweeper) is done with it.

    finished ──> terminal state + callback in the outbox (one atomic queue step)
    retry    ──> back to the queue with backoff, a size hint and what the try spent

The worker and the sweeper decide *which* fate an item gets; :class:`Settler` writes the
fates down (one ``finish`` and one ``retry`` queue step per settlement) and counts them.
An item out of tries, or failed for a reason that will not go away, gets an error callback
instead of another retry; its provider details go into ``error_detail.details``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cjllm.contracts import QueueItemState
from cjllm.provider import results
from cjllm.provider.answers import Reconciled
from cjllm.provider.bundling import PlannedComparison, apportion
from cjllm.provider.calls import BundleCall, CallOutcome
from cjllm.provider.limiter import costs_attempt
from cjllm.provider.metrics import ProviderMetrics
from cjllm.provider.queue import Finished, Queue, QueuedItem, Retry, Spent
from cjllm.settings import ProviderSettings

log = logging.getLogger(__name__)

Entry = tuple[QueuedItem, PlannedComparison]
OnRecorded = Callable[[Sequence[Finished]], None]
"""Told of the items just finished (their callbacks are in the outbox)."""


def _jitter() -> float:
    return random.uniform(0.75, 1.0)


@dataclass
class Settlement:
    """What becomes of each item of a bundle: finished (with its metric label) or requeued
    (with its reason). Recorded with one ``finish`` and one ``retry`` queue step.

    One ``jitter`` for the whole settlement: items of one bundle that failed alike come due
    together, so their retries ride in one bundle again."""

    done: list[tuple[Finished, str]] = field(default_factory=list)
    retries: list[tuple[Retry, str]] = field(default_factory=list)
    jitter: float = field(default_factory=_jitter)


def backoff(
    attempt: int,
    base: float,
    cap: float,
    retry_after: float | None = None,
    jitter: float | None = None,
) -> float:
    """Seconds before try ``attempt + 1``: ``base * 2**(attempt-1)`` capped at ``cap``, with
    up to 25% jitter taken off (``jitter``, 0.75..1, or drawn), and never less than the
    provider's ``retry-after``."""
    factor = _jitter() if jitter is None else jitter
    delay = min(cap, base * 2.0 ** (attempt - 1)) * factor
    return max(delay, retry_after or 0.0)


class Settler:
    """Writes items' fates to the queue on behalf of one owner (a worker or the sweeper)."""

    def __init__(
        self,
        queue: Queue,
        settings: ProviderSettings,
        metrics: ProviderMetrics,
        owner: str,
        on_recorded: OnRecorded | None = None,
    ) -> None:
        self.queue = queue
        self.settings = settings
        self.metrics = metrics
        self.owner = owner
        self._on_recorded = on_recorded

    @property
    def source(self) -> str:
        return self.settings.callback_source

    def next_try(
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

        A refusal for a rate limit costs no attempt: the item waits ``retry_after`` (the
        key's pause, or its turn) however often it happens; only its TTL ends that.
        ``details`` (the provider's status, message, error type, request id) are kept in the
        error callback's ``error_detail.details``."""
        if not costs_attempt(code):
            due = now + (retry_after or 0.0)
            retry = Retry(item.queue_id, due, hint, f"{code}: {message}", False, share)
            settled.retries.append((retry, code))
            return
        attempt = item.attempts + 1
        s = self.settings
        if retryable and attempt < s.max_attempts:
            delay = backoff(
                attempt, s.retry_base_seconds, s.retry_max_seconds, retry_after, settled.jitter
            )
            retry = Retry(item.queue_id, now + delay, hint, f"{code}: {message}", True, share)
            settled.retries.append((retry, code))
            return
        final = "retries_exhausted" if retryable else code
        result = results.failure(
            item,
            plan,
            service=self.source,
            code=final,
            message=f"{message} (after {attempt} tries)" if retryable else message,
            operation="llm_comparison",
            call=ref,
            spent=item.spent + share,
            now=now,
            details={**(details or {}), "last_error_code": code},
        )
        settled.done.append((results.finished(item, plan, result, self.source), final))

    def answered(
        self,
        settled: Settlement,
        entries: Sequence[Entry],
        call: BundleCall,
        provider: str,
        outcome: CallOutcome,
        now: float,
    ) -> None:
        """Fan an answered call out: good items finish; missing and invalid ones go again
        with their share of the call's usage — back into a bundle the first time, alone
        (hint 1) from their second failure on, to isolate an item a model cannot answer;
        unknown ids are only counted."""
        found = outcome.reconciled
        self.count_items(found)
        if found.unknown:
            log.warning("bundle %s: ignored unknown ids %s", call.bundle_id, found.unknown)
        shares = apportion(call, outcome)
        for index, (item, plan) in enumerate(entries):
            ref = results.CallRef(
                call.bundle_id, index, len(entries), provider, outcome.model, outcome.latency_ms
            )
            share = shares[plan.correlation_id]
            answer = found.answers.get(plan.correlation_id)
            if answer is not None:
                result = results.success(item, plan, answer, ref, item.spent + share, now)
                settled.done.append((results.finished(item, plan, result, self.source), "success"))
                continue
            invalid = found.invalid.get(plan.correlation_id)
            code = "missing_item" if invalid is None else "invalid_item"
            message = invalid or "the answer did not include this item"
            if len(entries) == 1 and found.excerpt:  # the model's own words say why
                message += f"; the model answered: {found.excerpt!r}"
            hint = item.hint if item.attempts == 0 else 1  # alone from its second failure on
            self.next_try(settled, item, plan, ref, code, message, share, now, hint=hint)

    def count_items(self, found: Reconciled) -> None:
        m = self.metrics.item_outcomes
        m.labels("answered").inc(len(found.answers))
        m.labels("missing").inc(len(found.missing))
        m.labels("invalid").inc(len(found.invalid) - len(found.duplicates))
        m.labels("duplicate").inc(len(found.duplicates))
        m.labels("unknown").inc(len(found.unknown))

    async def give_up(
        self,
        entries: Sequence[Entry],
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
                service=self.source,
                code=code,
                message=message,
                operation=operation,
                call=None,
                spent=item.spent,
                now=now,
                details={"last_error": item.last_error},
            )
            finished = results.finished(item, plan, result, self.source, state)
            settled.done.append((finished, code))
        await self.record(settled, now)

    async def release(
        self, entries: Sequence[Entry], why: str = "worker stopped", label: str = "released"
    ) -> None:
        """Hand leased items back untouched (the worker is stopping mid-call, or claimed
        more than the model's bundle size): no attempt counted, available at once."""
        now = time.time()
        settled = Settlement()
        for item, _ in entries:
            retry = Retry(item.queue_id, now, item.hint, why, count_attempt=False)
            settled.retries.append((retry, label))
        await self.record(settled, now)

    async def record(self, settled: Settlement, now: float) -> None:
        """Write a settlement: finished items first (their callbacks), then the retries."""
        if settled.done:
            changed = set(await self.queue.finish([f for f, _ in settled.done], now))
            for f, label in settled.done:
                if f.queue_id in changed:
                    self.metrics.callbacks.labels(label).inc()
            if changed and self._on_recorded is not None:
                self._on_recorded([f for f, _ in settled.done if f.queue_id in changed])
        if settled.retries:
            retries = [r for r, _ in settled.retries]
            changed = set(await self.queue.retry(self.owner, retries, now))
            for r, reason in settled.retries:
                if r.queue_id in changed:
                    self.metrics.retries.labels(reason).inc()
