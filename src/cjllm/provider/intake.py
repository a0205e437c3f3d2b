"""Accepting comparisons: validate, plan and queue each — or refuse it, queueing nothing.

    body ──> ComparisonRequest ──> sizes ──> plan ──> NewItem ──> group commit ──> Accepted
             (validated once)                (provider, model, layout,          (queue_id,
                                              correlation id, metadata spine)    created, wait)

One place for every way in: the HTTP route (``POST /api/v1/comparison``,
:mod:`cjllm.provider.api`) hands :meth:`Intake.accept_json` the raw body; an in-process
caller (the CJ service in the embedded shape) hands :meth:`Intake.accept` a request it
built, or :meth:`Intake.accept_many` a round's requests at once. Every way runs the same
checks (:mod:`cjllm.provider.intake_plan`) on each request and gives each the answer it
would get alone; ``accept_many`` only works out once what a round's requests share (the
bundle hints, the compatibility key, the token budget) and hands the group commit the
round in one go instead of one task per request.

Invariants: a refusal (:class:`Refused`, FastAPI's error shape in ``detail``) queues nothing
— except ``queue_unavailable``, where the queue may have taken the step and the error says
to retry with the same correlation id; a correlation id is queued at most once (a repeat
gets the first queue id with ``created`` false); every request is committed in a group with
the requests that arrived while the previous queue step ran
(:mod:`cjllm.provider.group_commit`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from cjllm.contracts import BundleHints, ComparisonRequest
from cjllm.provider.bundling import PlannedComparison, compatibility_key, size_hint, token_budget
from cjllm.provider.group_commit import GroupCommit
from cjllm.provider.intake_plan import Derived, Refused, check_sizes, invalid, plan
from cjllm.provider.job_plan import BATCH_STRATEGIES, lane_key
from cjllm.provider.limiter import Limiter
from cjllm.provider.metrics import ProviderMetrics
from cjllm.provider.providers import Providers, ProviderUnavailable
from cjllm.provider.queue import NewItem, Queue, QueueFull, QueueUnavailable
from cjllm.settings import ProviderSettings

__all__ = ["Accepted", "Intake", "Refused"]

QUEUED_MESSAGE = "queued; the result will be published to the callback topic"
DUPLICATE_MESSAGE = "this correlation_id is already queued; no second comparison was made"


@dataclass(frozen=True)
class Accepted:
    """A queued comparison (or one already queued under its correlation id)."""

    queue_id: str
    correlation_id: str
    created: bool
    estimated_wait_minutes: int | None

    def answer(self) -> dict[str, Any]:
        """The 202 body (``ComparisonQueuedResponse``)."""
        return {
            "queue_id": self.queue_id,
            "status": "queued",
            "message": QUEUED_MESSAGE if self.created else DUPLICATE_MESSAGE,
            "estimated_wait_minutes": self.estimated_wait_minutes,
        }


class Intake:
    """Accepts comparisons into ``queue`` (see the module docstring). ``on_enqueue`` hands
    an in-process worker each newly queued comparison (its queue id and plan);
    ``limiter`` gives ``estimated_wait_minutes`` from the key's rate limits (else null;
    always null for a batch-mode comparison: a job's turnaround is the vendor's to
    decide)."""

    def __init__(
        self,
        queue: Queue,
        providers: Providers,
        settings: ProviderSettings,
        metrics: ProviderMetrics,
        *,
        on_enqueue: Callable[[str, PlannedComparison], None] | None = None,
        limiter: Limiter | None = None,
    ) -> None:
        self.queue = queue
        self.providers = providers
        self.settings = settings
        self.limiter = limiter
        self.enqueuer = GroupCommit(queue)  # concurrent requests share one queue step
        self._on_enqueue = on_enqueue
        self._counted = {
            outcome: metrics.requests.labels(outcome)
            for outcome in ("queued", "duplicate", "rejected", "queue_full", "queue_unavailable")
        }
        self._ahead = (0, 0.0)  # comparisons queued or in flight, and when that was read

    async def accept_json(self, body: bytes) -> Accepted:
        """Accept the JSON body of a ``POST /api/v1/comparison``; raises :class:`Refused`."""
        try:
            comparison = ComparisonRequest.model_validate_json(body)
        except ValidationError as exc:
            self._counted["rejected"].inc()
            invalid(exc)
        return await self.accept(comparison)

    async def accept(
        self, comparison: ComparisonRequest, *, estimate_wait: bool = True
    ) -> Accepted:
        """Accept a validated request; raises :class:`Refused`. ``estimate_wait=False``
        leaves ``estimated_wait_minutes`` null, for a caller that never reads it (the
        embedded CJ service: a tenth of accepting a comparison)."""
        planned, item = self._planned(comparison, Derived())
        try:
            queue_id, created = await self.enqueuer.enqueue(item)
        except (QueueFull, QueueUnavailable) as exc:
            raise self._full(exc, item) from exc
        return await self._accepted(planned, item, queue_id, created, estimate_wait)

    async def accept_many(
        self, comparisons: Sequence[ComparisonRequest], *, estimate_wait: bool = True
    ) -> list[Accepted | Refused]:
        """Accept validated requests together, each answered as :meth:`accept` would answer
        it alone (an :class:`Accepted`, or the :class:`Refused` it would raise), in order.
        What they share is worked out once (:class:`~cjllm.provider.intake_plan.Derived`)
        and the group commit gets them all at once."""
        derived = Derived()
        answers: list[Accepted | Refused | None] = [None] * len(comparisons)
        queued: list[tuple[int, PlannedComparison, NewItem]] = []
        for n, comparison in enumerate(comparisons):
            try:
                planned, item = self._planned(comparison, derived)
            except Refused as refused:
                answers[n] = refused
                continue
            queued.append((n, planned, item))
        results = await self.enqueuer.enqueue_many([item for _, _, item in queued])
        for (n, planned, item), result in zip(queued, results, strict=True):
            if isinstance(result, QueueFull | QueueUnavailable):
                answers[n] = self._full(result, item)
            elif isinstance(result, Exception):  # a bug: as accept would, it raises
                raise result
            else:
                answers[n] = await self._accepted(planned, item, *result, estimate_wait)
        return [answer for answer in answers if answer is not None]

    def _planned(
        self, comparison: ComparisonRequest, derived: Derived
    ) -> tuple[PlannedComparison, NewItem]:
        try:
            check_sizes(comparison, self.settings)
            planned, hints = plan(comparison, self.providers, self.settings.bundle_layout, derived)
        except Refused:
            self._counted["rejected"].inc()
            raise
        return planned, self._item(planned, hints, derived)

    def _full(self, exc: QueueFull | QueueUnavailable, item: NewItem) -> Refused:
        """The 503 for a comparison the queue did not take (or may not have)."""
        kind = "queue_full" if isinstance(exc, QueueFull) else "queue_unavailable"
        self._counted[kind].inc()
        retry_after = str(self.settings.queue_full_retry_after_seconds)
        return Refused(
            503,
            detail=[_refusal(exc, kind, item.correlation_id)],
            headers={"Retry-After": retry_after},
        )

    async def _accepted(
        self,
        planned: PlannedComparison,
        item: NewItem,
        queue_id: str,
        created: bool,
        estimate_wait: bool,
    ) -> Accepted:
        self._counted["queued" if created else "duplicate"].inc()
        if self._on_enqueue is not None and created:
            self._on_enqueue(queue_id, planned)
        wait = await self.wait_minutes(planned, item.tokens, item.hint) if estimate_wait else None
        return Accepted(queue_id, item.correlation_id, created, wait)

    def _item(self, planned: PlannedComparison, hints: BundleHints, derived: Derived) -> NewItem:
        settings, now = self.settings, time.time()
        overrides = planned.request.llm_config_overrides
        prefix = tuple(
            b for b in planned.request.prompt_blocks or () if b.target == "system" or b.cacheable
        )
        shared = (  # everything the key, hint and budget depend on besides the prefix
            planned.provider,
            planned.model,
            planned.layout,
            overrides.temperature_override,
            overrides.max_tokens_override,
            overrides.system_prompt_override,
            hints.batching_strategy,
            hints.preferred_bundle_size,
            hints.bundle_group,
            *map(id, prefix),  # the blocks are held by the requests (and below) meanwhile
        )
        known = derived.items.get(shared)
        if known is None:
            key = compatibility_key(planned, hints)
            cap, ttl = settings.max_items_per_call, settings.item_ttl_seconds
            if hints.batching_strategy in BATCH_STRATEGIES:  # to a provider batch job
                key = lane_key(planned, hints.batching_strategy, key)
                cap, ttl = settings.batch_items_per_line, settings.batch_item_ttl_seconds
            budget = token_budget(planned, settings.max_input_tokens_per_call)
            known = (key, size_hint(hints, cap), budget, ttl)
            derived.items[shared] = known
            derived.held.append(prefix)
        key, hint, budget, ttl = known
        return NewItem(
            queue_id=str(uuid.uuid4()),
            correlation_id=planned.correlation_id,
            key=key,
            hint=hint,
            tokens=planned.item_tokens(),
            budget=budget,
            payload=planned.to_json(),
            enqueued_at=now,
            expires_at=now + ttl,
        )

    async def wait_minutes(self, plan: PlannedComparison, tokens: int, hint: int) -> int | None:
        """Minutes the queue ahead takes at the key's rate limits (null when unknown)."""
        limiter = self.limiter
        if limiter is None or plan.request.metadata.get("batching_strategy") in BATCH_STRATEGIES:
            return None
        try:
            adapter = self.providers.get(plan.provider)
        except ProviderUnavailable:
            return None
        if not limiter.limits(limiter.key(adapter, plan.model), plan.model).known():
            return None
        ahead, seen = self._ahead
        now = time.time()
        if now - seen > 1.0:  # the queue's depth, read at most once a second
            try:
                depth = await self.queue.depth(now)
            except QueueUnavailable:
                return None
            ahead = depth.queued + depth.processing
            self._ahead = (ahead, now)
        return limiter.wait_minutes(adapter, plan.model, ahead, tokens, hint)


def _refusal(exc: QueueFull | QueueUnavailable, kind: str, correlation_id: str) -> dict[str, Any]:
    """The 503's error: whether the comparison may be queued, and the id to retry with."""
    if isinstance(exc, QueueUnavailable) and exc.may_have_applied:
        msg = (
            f"{exc}. The comparison may have been queued: retry with correlation_id "
            f"{correlation_id} (a retry with it is queued at most once)"
        )
    else:
        msg = f"{exc}. Nothing was queued; retry later"
    ctx = {"correlation_id": correlation_id, "may_have_been_queued": kind != "queue_full"}
    if isinstance(exc, QueueUnavailable):
        ctx["may_have_been_queued"] = exc.may_have_applied
    return {"loc": [], "msg": msg, "type": kind, "ctx": ctx}
