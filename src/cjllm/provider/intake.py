"""Accepting one comparison: validate it, plan it and queue it — or refuse it, queueing nothing.

    body ──> ComparisonRequest ──> sizes ──> plan ──> NewItem ──> group commit ──> Accepted
             (validated once)                (provider, model, layout,          (queue_id,
                                              correlation id, metadata spine)    created, wait)

One place for both ways in: the HTTP route (``POST /api/v1/comparison``,
:mod:`cjllm.provider.api`) hands :meth:`Intake.accept_json` the raw body; an in-process
caller (the CJ service in the embedded shape) hands :meth:`Intake.accept` a request it
built. Either way the same checks run and the same answer comes back.

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
from typing import Any, NoReturn

from fastapi import HTTPException
from pydantic import ValidationError

from cjllm.contracts import (
    SPINE_KEYS,
    BundleHints,
    BundleLayout,
    ComparisonRequest,
    MetadataSpine,
)
from cjllm.provider.adapters import batch_api_for
from cjllm.provider.batch_calls import NoBatchAPI
from cjllm.provider.bundling import (
    PlannedComparison,
    compatibility_key,
    size_hint,
    token_budget,
)
from cjllm.provider.group_commit import GroupCommit
from cjllm.provider.job_plan import BATCH_STRATEGIES, lane_key
from cjllm.provider.limiter import Limiter
from cjllm.provider.metrics import ProviderMetrics
from cjllm.provider.providers import Providers, ProviderUnavailable
from cjllm.provider.queue import NewItem, Queue, QueueFull, QueueUnavailable
from cjllm.settings import ProviderSettings

QUEUED_MESSAGE = "queued; the result will be published to the callback topic"
DUPLICATE_MESSAGE = "this correlation_id is already queued; no second comparison was made"


class Refused(HTTPException):
    """A comparison not accepted: ``status_code`` and ``detail`` (a list of errors in
    FastAPI's shape, ``{"loc", "msg", "type"[, "ctx"]}``) are the HTTP answer; ``headers``
    carry ``Retry-After`` for a 503."""


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


def _refuse(status: int, loc: Sequence[str | int], msg: str, kind: str) -> NoReturn:
    raise Refused(status, detail=[{"loc": ["body", *loc], "msg": msg, "type": kind}])


def _invalid(exc: ValidationError, prefix: Sequence[str | int] = ()) -> NoReturn:
    """A 422 naming every bad field, in FastAPI's error shape."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    detail = [{**e, "loc": ["body", *prefix, *e["loc"]]} for e in errors]
    raise Refused(422, detail=detail)


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
            _invalid(exc)
        return await self.accept(comparison)

    async def accept(
        self, comparison: ComparisonRequest, *, estimate_wait: bool = True
    ) -> Accepted:
        """Accept a validated request; raises :class:`Refused`. ``estimate_wait=False``
        leaves ``estimated_wait_minutes`` null, for a caller that never reads it (the
        embedded CJ service: a tenth of accepting a comparison)."""
        try:
            _check_sizes(comparison, self.settings)
            plan, hints = _plan(comparison, self.providers, self.settings.bundle_layout)
        except Refused:
            self._counted["rejected"].inc()
            raise
        item = self._item(plan, hints)
        try:
            queue_id, created = await self.enqueuer.enqueue(item)
        except (QueueFull, QueueUnavailable) as exc:
            kind = "queue_full" if isinstance(exc, QueueFull) else "queue_unavailable"
            self._counted[kind].inc()
            retry_after = str(self.settings.queue_full_retry_after_seconds)
            raise Refused(
                503,
                detail=[_refusal(exc, kind, item.correlation_id)],
                headers={"Retry-After": retry_after},
            ) from exc
        self._counted["queued" if created else "duplicate"].inc()
        if self._on_enqueue is not None and created:
            self._on_enqueue(queue_id, plan)
        wait = await self.wait_minutes(plan, item.tokens, item.hint) if estimate_wait else None
        return Accepted(queue_id, item.correlation_id, created, wait)

    def _item(self, plan: PlannedComparison, hints: BundleHints) -> NewItem:
        settings, now = self.settings, time.time()
        key = compatibility_key(plan, hints)
        cap, ttl = settings.max_items_per_call, settings.item_ttl_seconds
        if hints.batching_strategy in BATCH_STRATEGIES:  # to a provider batch job
            key = lane_key(plan, hints.batching_strategy, key)
            cap, ttl = settings.batch_items_per_line, settings.batch_item_ttl_seconds
        return NewItem(
            queue_id=str(uuid.uuid4()),
            correlation_id=plan.correlation_id,
            key=key,
            hint=size_hint(hints, cap),
            tokens=plan.item_tokens(),
            budget=token_budget(plan, settings.max_input_tokens_per_call),
            payload=plan.to_json(),
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


def _check_sizes(comparison: ComparisonRequest, settings: ProviderSettings) -> None:
    limit = settings.max_prompt_chars
    blocks = comparison.prompt_blocks or []
    if len(blocks) > settings.max_blocks:
        _refuse(
            413,
            ["prompt_blocks"],
            f"{len(blocks)} blocks; the limit is {settings.max_blocks} (CJLLM_MAX_BLOCKS)",
            "too_many_blocks",
        )
    fields: list[tuple[list[str | int], int]] = [
        (["prompt_blocks", i, "content"], len(b.content)) for i, b in enumerate(blocks)
    ]
    if comparison.user_prompt is not None:
        fields.append((["user_prompt"], len(comparison.user_prompt)))
    for loc, chars in fields:
        if chars > limit:
            _refuse(
                413,
                loc,
                f"{chars} characters; the limit is {limit} (CJLLM_MAX_PROMPT_CHARS)",
                "prompt_too_large",
            )
    total = sum(chars for _, chars in fields)
    if total > limit:
        _refuse(
            413,
            ["prompt_blocks" if blocks else "user_prompt"],
            f"the prompt is {total} characters in all; the limit is {limit} "
            "(CJLLM_MAX_PROMPT_CHARS)",
            "prompt_too_large",
        )


def _plan(
    comparison: ComparisonRequest, providers: Providers, default_layout: BundleLayout
) -> tuple[PlannedComparison, BundleHints]:
    """Resolve provider, model and prompt layout, fix the correlation id, and complete the
    metadata spine."""
    try:
        hints = BundleHints.model_validate(comparison.metadata)
    except ValidationError as exc:
        _invalid(exc, ["metadata"])
    provider = comparison.llm_config_overrides.provider_override
    try:
        adapter = providers.get(provider)
    except ProviderUnavailable as exc:
        _refuse(400, ["llm_config_overrides", "provider_override"], str(exc), "unknown_provider")
    if hints.batching_strategy in BATCH_STRATEGIES:
        try:
            batch_api_for(adapter)
        except NoBatchAPI as exc:
            _refuse(400, ["metadata", "batching_strategy"], str(exc), "no_batch_api")
    correlation_id = _correlation_id(comparison)
    metadata = dict(comparison.metadata)
    for key in SPINE_KEYS:
        metadata.setdefault(key, None)
    metadata.update(
        request_correlation_id=str(correlation_id),
        prompt_sha256=comparison.prompt_sha256(),
        batching_strategy=hints.batching_strategy.value,
        bundle_id=None,
        bundle_index=None,
        bundle_size=None,
        resolved_provider=None,
        resolved_model=None,
    )
    if not _spine_of_right_types(metadata):
        try:
            MetadataSpine.model_validate(metadata)
        except ValidationError as exc:
            _invalid(exc, ["metadata"])
    request = comparison.model_copy(update={"correlation_id": correlation_id, "metadata": metadata})
    model = comparison.llm_config_overrides.model_override or adapter.default_model
    layout = hints.bundle_layout or default_layout
    return PlannedComparison(request, provider, model, layout), hints


# the spine keys :func:`_plan` sets itself, valid by construction
_SET_BY_PLAN = frozenset(
    {"request_correlation_id", "prompt_sha256", "batching_strategy", "bundle_id"}
    | {"bundle_index", "bundle_size", "resolved_provider", "resolved_model"}
)
_CALLER_KEYS = tuple(k for k in SPINE_KEYS if k not in _SET_BY_PLAN)
_CALLER_KEYS_ARE_TEXT = all(
    MetadataSpine.model_fields[k].annotation == (str | None) for k in _CALLER_KEYS
)


def _spine_of_right_types(metadata: dict[str, Any]) -> bool:
    """True when :class:`MetadataSpine` would accept ``metadata`` as it is (checked without
    pydantic, a tenth of accepting a comparison): the keys :func:`_plan` set are valid, and
    the caller's are plain strings or null (what the CJ service sends). Anything else goes
    to pydantic, for its answer."""
    return _CALLER_KEYS_ARE_TEXT and all(
        type(v) is str or v is None for v in map(metadata.get, _CALLER_KEYS)
    )


def _correlation_id(comparison: ComparisonRequest) -> uuid.UUID:
    """``correlation_id``, else ``metadata.request_correlation_id``, else a new one."""
    given = comparison.metadata.get("request_correlation_id")
    from_metadata: uuid.UUID | None = None
    if given is not None:
        try:
            from_metadata = uuid.UUID(str(given))
        except ValueError:
            _refuse(
                422,
                ["metadata", "request_correlation_id"],
                f"not a UUID: {given!r}",
                "uuid_parsing",
            )
    if comparison.correlation_id is None:
        return from_metadata or uuid.uuid4()
    if from_metadata is not None and from_metadata != comparison.correlation_id:
        _refuse(
            400,
            ["metadata", "request_correlation_id"],
            "differs from correlation_id; they name the same comparison and must agree",
            "correlation_mismatch",
        )
    return comparison.correlation_id
