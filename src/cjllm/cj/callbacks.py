"""Turning ``LLMComparisonResultV1`` callbacks into comparison rows, exactly once.

Matched by ``correlation_id`` (= the row's ``request_correlation_id``). The first callback
for a pending row is applied (``UPDATE … WHERE status = 'pending'``); a duplicate or late one
(row already final) changes nothing and is counted on the batch. An id that matches no row,
an envelope of another type, or data that does not parse goes to the dead-letter table with
the reason. A callback that contradicts its row (other essays or batch in the echoed
metadata), or is unreadable but names a pending row, fails that row, so no round waits on it.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy import select, update

from cjllm.cj.records import CallbackOutcome
from cjllm.cj.store import Store
from cjllm.cj.tables import Batch, Comparison, ComparisonStatus, DeadLetter
from cjllm.contracts import RESULT_EVENT_TYPE, EventEnvelope, LLMComparisonResultV1, utcnow

log = logging.getLogger(__name__)


@dataclass
class CallbackCounts:
    """What this process's handler has seen (the batch row keeps the durable ignore count)."""

    applied: int = 0
    ignored: int = 0
    unknown: int = 0
    mismatched: int = 0
    malformed: int = 0


async def apply_callback(
    store: Store, envelope: EventEnvelope, counts: CallbackCounts
) -> tuple[CallbackOutcome, LLMComparisonResultV1 | None]:
    """Record one callback envelope. Returns what happened and the parsed result, if any."""
    if envelope.event_type != RESULT_EVENT_TYPE:
        counts.malformed += 1
        await dead_letter(store, envelope, f"unexpected event_type {envelope.event_type!r}")
        return CallbackOutcome("unknown"), None
    try:
        result = envelope.result()
    except ValidationError as exc:
        counts.malformed += 1
        return await _unreadable(store, envelope, exc), None
    outcome = await record_result(store, result, envelope)
    if outcome.kind == "applied":
        counts.applied += 1
    elif outcome.kind == "ignored":
        counts.ignored += 1
        log.info(
            "ignored %s callback for comparison %s (already %s)",
            "success" if result.is_success else "error",
            result.correlation_id,
            outcome.status,
        )
    elif outcome.kind == "mismatch":
        counts.mismatched += 1
    else:
        counts.unknown += 1
    return outcome, result


async def record_result(
    store: Store, result: LLMComparisonResultV1, envelope: EventEnvelope
) -> CallbackOutcome:
    """Apply one callback to its comparison row, exactly once (see :class:`CallbackOutcome`)."""
    cid = result.correlation_id
    md = result.request_metadata
    async with store.write() as s:
        row = (
            await s.execute(
                select(
                    Comparison.batch_id,
                    Comparison.round_number,
                    Comparison.status,
                    Comparison.essay_a_id,
                    Comparison.essay_b_id,
                ).where(Comparison.request_correlation_id == cid)
            )
        ).first()
        if row is None:
            s.add(_dead_letter(envelope, "no comparison has this correlation_id"))
            return CallbackOutcome("unknown")
        batch_id, round_number, status, essay_a, essay_b = row
        stored = {"cj_batch_id": batch_id, "essay_a_id": essay_a, "essay_b_id": essay_b}
        clash = {k: md[k] for k in stored if md.get(k) is not None and str(md[k]) != stored[k]}
        values = _row_values(result)
        kind: Literal["applied", "mismatch"] = "applied"
        if clash:
            kind = "mismatch"
            reason = f"request_metadata contradicts the comparison row: {clash} vs {stored}"
            s.add(_dead_letter(envelope, reason))
            values.update(
                status=ComparisonStatus.FAILED,
                winner=None,
                confidence=None,
                justification=None,
                error_code="callback_metadata_mismatch",
                error_message=reason,
            )
        changed = await s.execute(
            update(Comparison)
            .where(
                Comparison.request_correlation_id == cid,
                Comparison.status == ComparisonStatus.PENDING,
            )
            .values(**values)
        )
        if changed.rowcount != 1:  # type: ignore[attr-defined]
            await s.execute(
                update(Batch)
                .where(Batch.id == batch_id)
                .values(ignored_callbacks=Batch.ignored_callbacks + 1)
            )
            return CallbackOutcome("ignored", batch_id, round_number, ComparisonStatus(status))
        return CallbackOutcome(kind, batch_id, round_number, ComparisonStatus(values["status"]))


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return str(value) if value is not None else None


def _row_values(result: LLMComparisonResultV1) -> dict[str, Any]:
    """Column values from a callback: outcome, echoed spine fields, usage and cost."""
    md = result.request_metadata
    values: dict[str, Any] = {
        "prompt_sha256": _str(md.get("prompt_sha256")),
        "bundle_id": _str(md.get("bundle_id")),
        "bundle_index": _int(md.get("bundle_index")),
        "bundle_size": _int(md.get("bundle_size")),
        "provider": _str(md.get("resolved_provider")) or result.provider,
        "model": _str(md.get("resolved_model")) or result.model,
        "prompt_tokens": result.token_usage.prompt_tokens,
        "completion_tokens": result.token_usage.completion_tokens,
        "total_tokens": result.token_usage.total_tokens,
        "cost_estimate": result.cost_estimate,
        "response_time_ms": result.response_time_ms,
        "queue_id": result.request_id,
        "completed_at": utcnow(),
    }
    if result.error_detail is None:
        values.update(
            status=ComparisonStatus.SUCCEEDED,
            winner=result.winner,
            confidence=result.confidence,
            justification=result.justification,
        )
    else:
        values.update(
            status=ComparisonStatus.FAILED,
            error_code=result.error_detail.error_code,
            error_message=result.error_detail.message,
        )
    return values


def _dead_letter(envelope: EventEnvelope, reason: str) -> DeadLetter:
    log.error("dead-lettered callback %s: %s", envelope.correlation_id, reason)
    return DeadLetter(
        correlation_id=str(envelope.data.get("correlation_id", envelope.correlation_id))[:64],
        reason=reason,
        envelope=envelope.model_dump(mode="json"),
    )


async def dead_letter(store: Store, envelope: EventEnvelope, reason: str) -> None:
    """Keep a callback that cannot be applied, with the reason, for review."""
    async with store.write() as s:
        s.add(_dead_letter(envelope, reason))


async def dead_letters(store: Store) -> list[tuple[str, str]]:
    """(correlation_id, reason) of every dead-lettered callback, oldest first."""
    async with store.read() as s:
        rows = await s.execute(
            select(DeadLetter.correlation_id, DeadLetter.reason).order_by(DeadLetter.id)
        )
        return [(r[0], r[1]) for r in rows]


async def _unreadable(
    store: Store, envelope: EventEnvelope, exc: ValidationError
) -> CallbackOutcome:
    reason = f"callback data does not parse: {exc.errors(include_url=False)}"[:2000]
    await dead_letter(store, envelope, reason)
    try:
        correlation_id = uuid.UUID(str(envelope.data.get("correlation_id")))
    except ValueError:
        return CallbackOutcome("unknown")
    where = await store.fail_pending(correlation_id, "malformed_callback", reason)
    if where is None:
        return CallbackOutcome("unknown")
    return CallbackOutcome("mismatch", where[0], where[1], ComparisonStatus.FAILED)
