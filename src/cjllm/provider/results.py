"""Callback events: one ``LLMComparisonResultV1`` per comparison, success or error.

Every callback's ``request_metadata`` carries the full metadata spine. The bundle fields
(``bundle_id``, ``bundle_index``, ``bundle_size``, ``resolved_provider``, ``resolved_model``)
describe the provider call that produced the callback, and are null (but present) when no
call did, e.g. a comparison that expired in the queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from cjllm.contracts import (
    ErrorDetail,
    EventEnvelope,
    LLMComparisonResultV1,
    QueueItemState,
    Winner,
)
from cjllm.provider.answers import ItemAnswer
from cjllm.provider.bundling import PlannedComparison, token_usage
from cjllm.provider.queue import Finished, QueuedItem, Spent


@dataclass(frozen=True)
class CallRef:
    """Which call an item went out in: filled into the spine of its callback."""

    bundle_id: str
    bundle_index: int
    bundle_size: int
    provider: str
    model: str
    latency_ms: int


def _time(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def spine(plan: PlannedComparison, call: CallRef | None) -> dict[str, Any]:
    """The request's metadata (the API completed the spine at enqueue) with the call fields."""
    meta = dict(plan.request.metadata)
    meta.update(
        bundle_id=call.bundle_id if call else None,
        bundle_index=call.bundle_index if call else None,
        bundle_size=call.bundle_size if call else None,
        resolved_provider=call.provider if call else None,
        resolved_model=call.model if call else None,
    )
    return meta


def success(
    item: QueuedItem,
    plan: PlannedComparison,
    answer: ItemAnswer,
    call: CallRef,
    spent: Spent,
    now: float,
) -> LLMComparisonResultV1:
    return LLMComparisonResultV1(
        request_id=item.queue_id,
        correlation_id=plan.request.correlation_id,
        winner=cast(Winner, answer.winner),  # reconcile admits only the two winners
        justification=answer.justification,
        confidence=answer.confidence,
        provider=call.provider,
        model=call.model,
        response_time_ms=call.latency_ms,
        token_usage=token_usage(spent),
        cost_estimate=spent.cost,
        requested_at=_time(item.enqueued_at),
        completed_at=_time(now),
        trace_id=_trace_id(plan),
        request_metadata=spine(plan, call),
    )


def failure(
    item: QueuedItem,
    plan: PlannedComparison,
    *,
    service: str,
    code: str,
    message: str,
    operation: str,
    call: CallRef | None,
    spent: Spent,
    now: float,
    details: dict[str, Any] | None = None,
) -> LLMComparisonResultV1:
    correlation_id = plan.request.correlation_id
    assert correlation_id is not None  # set at enqueue
    return LLMComparisonResultV1(
        request_id=item.queue_id,
        correlation_id=correlation_id,
        error_detail=ErrorDetail(
            error_code=code,
            message=message,
            correlation_id=correlation_id,
            timestamp=_time(now),
            service=service,
            operation=operation,
            details={"attempts": item.attempts, **(details or {})},
        ),
        provider=call.provider if call else plan.provider,
        model=call.model if call else plan.model,
        response_time_ms=call.latency_ms if call else 0,
        token_usage=token_usage(spent),
        cost_estimate=spent.cost,
        requested_at=_time(item.enqueued_at),
        completed_at=_time(now),
        trace_id=_trace_id(plan),
        request_metadata=spine(plan, call),
    )


def finished(
    item: QueuedItem,
    plan: PlannedComparison,
    result: LLMComparisonResultV1,
    source_service: str,
    state: QueueItemState | None = None,
) -> Finished:
    """The terminal record of ``item``: its state and the envelope for its callback topic."""
    if state is None:
        state = QueueItemState.COMPLETED if result.is_success else QueueItemState.FAILED
    envelope = EventEnvelope.for_result(result, source_service)
    return Finished(
        queue_id=item.queue_id,
        state=state,
        topic=plan.request.callback_topic,
        message_key=str(result.correlation_id),
        envelope=envelope.to_bytes(),
        parsed=envelope,
    )


def _trace_id(plan: PlannedComparison) -> str | None:
    trace = plan.request.metadata.get("trace_id")
    return trace if isinstance(trace, str) else None
