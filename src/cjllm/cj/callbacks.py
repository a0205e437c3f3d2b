"""Turning ``LLMComparisonResultV1`` callbacks into comparison rows, exactly once.

Callbacks come in groups (a bus batch) and are recorded in one transaction per group, each as
if it came alone. Matched by ``correlation_id`` (= the row's ``request_correlation_id``). The
first callback
for a pending row is applied (``UPDATE … WHERE status = 'pending'``); a duplicate or late one
(row already final) changes nothing and is counted on the batch. An id that matches no row,
an envelope of another type, or data that does not parse goes to the dead-letter table with
the reason. A callback that contradicts its row (other essays or batch in the echoed
metadata), or is unreadable but names a pending row, fails that row, so no round waits on it.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, cast

from pydantic import ValidationError
from sqlalchemy import CursorResult, Table, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from cjllm.cj.records import CallbackOutcome
from cjllm.cj.round_rows import pending_row
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


Applied = tuple[CallbackOutcome, LLMComparisonResultV1 | None]


async def apply_callback(store: Store, envelope: EventEnvelope, counts: CallbackCounts) -> Applied:
    """Record one callback envelope. Returns what happened and the parsed result, if any."""
    (applied,) = await apply_callbacks(store, [envelope], counts)
    return applied


async def apply_callbacks(
    store: Store, envelopes: Sequence[EventEnvelope], counts: CallbackCounts
) -> list[Applied]:
    """Record callback envelopes, the readable ones in one transaction, each as if it came
    alone and in order (a repeat within the group is ignored like a late one). Returns what
    happened to each, in order, with its parsed result."""
    out: list[Applied | None] = [None] * len(envelopes)
    readable: list[tuple[int, LLMComparisonResultV1, EventEnvelope]] = []
    for k, envelope in enumerate(envelopes):
        if envelope.event_type != RESULT_EVENT_TYPE:
            counts.malformed += 1
            await dead_letter(store, envelope, f"unexpected event_type {envelope.event_type!r}")
            out[k] = (CallbackOutcome("unknown"), None)
            continue
        try:
            readable.append((k, envelope.result(), envelope))
        except ValidationError as exc:
            counts.malformed += 1
            out[k] = (await _unreadable(store, envelope, exc), None)
    if readable:
        recorded = await record_results(store, [(r, e) for _, r, e in readable])
        for (k, result, _), outcome in zip(readable, recorded, strict=True):
            _count(counts, outcome, result)
            out[k] = (outcome, result)
    return [o for o in out if o is not None]


def _count(counts: CallbackCounts, outcome: CallbackOutcome, result: LLMComparisonResultV1) -> None:
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


async def record_result(
    store: Store, result: LLMComparisonResultV1, envelope: EventEnvelope
) -> CallbackOutcome:
    """Apply one callback to its comparison row, exactly once (see :class:`CallbackOutcome`)."""
    (outcome,) = await record_results(store, [(result, envelope)])
    return outcome


async def record_results(
    store: Store, results: Sequence[tuple[LLMComparisonResultV1, EventEnvelope]]
) -> list[CallbackOutcome]:
    """Apply callbacks to their comparison rows in one transaction, each exactly once.

    The rows are read under the write lock (SQLite's ``BEGIN IMMEDIATE``, PostgreSQL's
    ``FOR UPDATE``), so whether a row is still pending cannot change before the commit; the
    first callback for a pending row is applied, every later one (in the group or after it)
    is ignored and counted on its batch. The updates stay conditional on ``status =
    'pending'`` and the transaction is rolled back (and the group delivered again) should
    they change fewer rows than read.
    """
    cids = [result.correlation_id for result, _ in results]
    outcomes: list[CallbackOutcome] = []
    async with store.write() as s:
        rows = {
            row.request_correlation_id: row
            for row in await s.execute(
                select(
                    Comparison.id,
                    Comparison.request_correlation_id,
                    Comparison.batch_id,
                    Comparison.round_number,
                    Comparison.status,
                    Comparison.essay_a_id,
                    Comparison.essay_b_id,
                )
                .where(Comparison.request_correlation_id.in_(set(cids)))
                .with_for_update()
            )
        }
        status = {cid: ComparisonStatus(row.status) for cid, row in rows.items()}
        updates: list[dict[str, Any]] = []
        ignored: Counter[str] = Counter()
        for result, envelope in results:
            row = rows.get(result.correlation_id)
            if row is None:
                s.add(_dead_letter(envelope, "no comparison has this correlation_id"))
                outcomes.append(CallbackOutcome("unknown"))
                continue
            where = (row.batch_id, row.round_number)
            if status[result.correlation_id] is not ComparisonStatus.PENDING:
                ignored[row.batch_id] += 1
                outcomes.append(CallbackOutcome("ignored", *where, status[result.correlation_id]))
                continue
            values, clash = _checked_values(result, row)
            if clash is not None:
                s.add(_dead_letter(envelope, clash))
            status[result.correlation_id] = values["status"]
            updates.append({"_id": row.id, **values})
            kind: Literal["applied", "mismatch"] = "applied" if clash is None else "mismatch"
            outcomes.append(CallbackOutcome(kind, *where, values["status"]))
        if updates:
            await _update_pending(s, store.engine.dialect.supports_sane_multi_rowcount, updates)
        for batch_id, n in ignored.items():
            await s.execute(
                update(Batch)
                .where(Batch.id == batch_id)
                .values(ignored_callbacks=Batch.ignored_callbacks + n)
            )
        if store.engine.dialect.name != "sqlite":
            return outcomes  # see _has_pending
        still_open = {
            where: await _has_pending(s, *where)
            for where in {(o.batch_id, o.round_number) for o in outcomes if o.batch_id}
        }
    return [
        replace(o, round_open=still_open[(o.batch_id, o.round_number)]) if o.batch_id else o
        for o in outcomes
    ]


async def _has_pending(s: AsyncSession, batch_id: str | None, round_number: int | None) -> bool:
    """Whether the round has a pending comparison (one index probe, not a count), read in
    the transaction that recorded the group. Only on SQLite, whose write transactions run
    one at a time: no other writer's uncommitted row can look pending here, so a pending row
    seen is one a later transaction will settle (and that one sees none). On PostgreSQL two
    groups settling a round's last rows side by side could each see the other's row as
    pending, and neither would close it; there every group goes on to the close check."""
    return await s.scalar(pending_row(batch_id, round_number)) is not None


class CallbackRace(RuntimeError):
    """Rows read as pending under the write lock were not all pending at the update (never
    expected; the transaction is rolled back and the bus delivers the group again)."""


async def _update_pending(s: AsyncSession, counted: bool, updates: list[dict[str, Any]]) -> None:
    """One conditional ``UPDATE … WHERE id = ? AND status = 'pending'`` for many rows (the
    columns set are the keys of the first row's values; ``_id`` names the row)."""
    table = cast(Table, Comparison.__table__)
    changed = await s.execute(
        update(table).where(
            table.c.id == bindparam("_id"), table.c.status == ComparisonStatus.PENDING
        ),
        updates,
    )
    rowcount = cast(CursorResult[Any], changed).rowcount
    if counted and rowcount != len(updates):
        raise CallbackRace(f"{len(updates)} pending comparisons read, {rowcount} updated")


def _checked_values(result: LLMComparisonResultV1, row: Any) -> tuple[dict[str, Any], str | None]:
    """The row's new values, and the reason when the callback contradicts the row (which
    then fails instead)."""
    md = result.request_metadata
    stored = {
        "cj_batch_id": row.batch_id,
        "essay_a_id": row.essay_a_id,
        "essay_b_id": row.essay_b_id,
    }
    clash = {k: md[k] for k in stored if md.get(k) is not None and str(md[k]) != stored[k]}
    values = _row_values(result)
    if not clash:
        return values, None
    reason = f"request_metadata contradicts the comparison row: {clash} vs {stored}"
    values.update(
        status=ComparisonStatus.FAILED,
        winner=None,
        confidence=None,
        justification=None,
        error_code="callback_metadata_mismatch",
        error_message=reason,
    )
    return values, reason


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
            error_code=None,
            error_message=None,
        )
    else:
        values.update(
            status=ComparisonStatus.FAILED,
            winner=None,
            confidence=None,
            justification=None,
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
