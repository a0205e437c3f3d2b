"""Every read and write the CJ workflow makes: batches and comparisons here, rounds in
:mod:`.round_rows`, transactions in :mod:`.sessions`, engine and migrations in :mod:`.database`.

State changes that must happen once are conditional updates:
a comparison changes only ``WHERE status = 'pending'``, a round closes only ``WHERE status =
'open'``, a batch finishes only ``WHERE status = 'running'``, and a round number is a primary
key, so two workers can never both start round N+1 (docs/architecture.md, "The hard parts").
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from cjllm.cj.records import (
    BatchProgress,
    BatchRecord,
    EssayRecord,
    EssayResult,
    NewEssay,
    PairOutcome,
    PendingComparison,
)
from cjllm.cj.round_rows import RoundRows
from cjllm.cj.settled_rounds import SettledOutcomes, SettledSums
from cjllm.cj.tables import (
    Batch,
    BatchStatus,
    Comparison,
    ComparisonStatus,
    Essay,
    Round,
)
from cjllm.contracts import utcnow


class BatchNotFound(LookupError):
    def __init__(self, batch_id: str) -> None:
        super().__init__(f"no CJ batch with id {batch_id!r}")
        self.batch_id = batch_id


class BatchExists(ValueError):
    def __init__(self, batch_id: str) -> None:
        super().__init__(f"a CJ batch with id {batch_id!r} already exists")
        self.batch_id = batch_id


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --------------------------------------------------------------------------- store


class Store(RoundRows):
    """Reads and writes of the CJ database (transactions: :class:`~cjllm.cj.sessions.Sessions`;
    rounds: :class:`~cjllm.cj.round_rows.RoundRows`). Each method is one short transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        # what settled rounds hold, read once: progress counters, pair outcomes
        self._settled = SettledSums()
        self._outcomes = SettledOutcomes()

    # ---------------------------------------------------------------- batches

    async def create_batch(self, batch: Batch, essays: Sequence[NewEssay]) -> None:
        """Store a new batch and its essays; :class:`BatchExists` if its id is taken."""
        async with self.write() as s:
            if await s.get(Batch, batch.id) is not None:
                raise BatchExists(batch.id)
            s.add(batch)
            try:
                await s.flush()
            except IntegrityError as exc:  # taken between the look and the insert
                raise BatchExists(batch.id) from exc
            if essays:  # one executemany, not a unit of work (~1 s for 10,000 objects)
                await s.execute(
                    insert(Essay),
                    [
                        {
                            "batch_id": batch.id,
                            "essay_id": e.essay_id,
                            "position": i,
                            "text": e.text,
                            "anchor_grade": e.anchor_grade,
                        }
                        for i, e in enumerate(essays)
                    ],
                )

    async def batch(self, batch_id: str) -> BatchRecord:
        async with self.read() as s:
            row = await s.get(Batch, batch_id)
            if row is None:
                raise BatchNotFound(batch_id)
            return BatchRecord(
                id=row.id,
                bos_batch_id=row.bos_batch_id,
                status=BatchStatus(row.status),
                batching_strategy=row.batching_strategy,
                provider=row.provider,
                model=row.model,
                temperature=row.temperature,
                instructions=row.instructions,
                rubric=row.rubric,
                grade_scale=row.grade_scale,
                options=dict(row.options),
                ignored_callbacks=row.ignored_callbacks,
                stop_reason=row.stop_reason,
                message=row.message,
                result=row.result,
                completion_published=row.completion_published,
                created_at=row.created_at,
                completed_at=row.completed_at,
            )

    async def running_batch_ids(self) -> list[str]:
        async with self.read() as s:
            rows = await s.scalars(
                select(Batch.id).where(Batch.status == BatchStatus.RUNNING).order_by(Batch.id)
            )
            return list(rows)

    async def unpublished_batch_ids(self) -> list[str]:
        async with self.read() as s:
            rows = await s.scalars(
                select(Batch.id).where(
                    Batch.status != BatchStatus.RUNNING, Batch.completion_published.is_(False)
                )
            )
            return list(rows)

    async def essay_count(self, batch_id: str) -> int:
        async with self.read() as s:
            count = await s.scalar(
                select(func.count()).select_from(Essay).where(Essay.batch_id == batch_id)
            )
            return int(count or 0)

    async def essays(self, batch_id: str) -> list[EssayRecord]:
        async with self.read() as s:
            rows = await s.execute(
                select(Essay.essay_id, Essay.position, Essay.text, Essay.anchor_grade)
                .where(Essay.batch_id == batch_id)
                .order_by(Essay.position)
            )
            return [EssayRecord(*r) for r in rows]

    async def finish_batch(
        self,
        batch_id: str,
        status: BatchStatus,
        stop_reason: str,
        message: str | None,
        result: dict[str, Any],
        essays: Sequence[EssayResult],
    ) -> bool:
        """Finish a running batch and store its ranking; False if it was already finished."""
        async with self.write() as s:
            done = await s.execute(
                update(Batch)
                .where(Batch.id == batch_id, Batch.status == BatchStatus.RUNNING)
                .values(
                    status=status,
                    stop_reason=stop_reason,
                    message=message,
                    result=result,
                    completed_at=utcnow(),
                )
            )
            if done.rowcount != 1:  # type: ignore[attr-defined]
                return False
            if essays:  # one executemany for the whole ranking
                table = cast(Table, Essay.__table__)
                await s.execute(
                    update(table).where(
                        table.c.batch_id == batch_id, table.c.essay_id == bindparam("_essay")
                    ),
                    [
                        {
                            "_essay": e.essay_id,
                            "rank": e.rank,
                            "score": e.score,
                            "se": e.se,
                            "projected_grade": e.projected_grade,
                            "grade_probability": e.grade_probability,
                        }
                        for e in essays
                    ],
                )
            return True

    async def mark_published(self, batch_id: str) -> None:
        async with self.write() as s:
            await s.execute(
                update(Batch).where(Batch.id == batch_id).values(completion_published=True)
            )

    # ---------------------------------------------------------------- comparisons

    async def unsubmitted(self, batch_id: str) -> list[PendingComparison]:
        """Pending rows the provider never accepted (written, then a crash or a lost 202)."""
        async with self.read() as s:
            rows = await s.execute(
                select(
                    Comparison.request_correlation_id,
                    Comparison.essay_a_id,
                    Comparison.essay_b_id,
                    Comparison.round_number,
                )
                .where(
                    Comparison.batch_id == batch_id,
                    Comparison.status == ComparisonStatus.PENDING,
                    Comparison.submitted_at.is_(None),
                )
                .order_by(Comparison.id)
            )
            return [PendingComparison(*r) for r in rows]

    async def mark_submitted(self, accepted: Sequence[tuple[uuid.UUID, str]]) -> None:
        """Record the queue ids the provider gave (correlation id, queue id), in one
        transaction however many."""
        if not accepted:
            return
        table, now = cast(Table, Comparison.__table__), utcnow()
        async with self.write() as s:
            await s.execute(
                update(table).where(table.c.request_correlation_id == bindparam("cid")),
                [{"cid": cid, "submitted_at": now, "queue_id": qid} for cid, qid in accepted],
            )

    async def fail_pending(
        self, correlation_id: uuid.UUID, error_code: str, message: str
    ) -> tuple[str, int] | None:
        """Mark a still-pending comparison failed (its submission finally failed, or its
        callback was unreadable). Returns (batch id, round) when this call changed the row."""
        async with self.write() as s:
            where = (
                Comparison.request_correlation_id == correlation_id,
                Comparison.status == ComparisonStatus.PENDING,
            )
            row = (
                await s.execute(select(Comparison.batch_id, Comparison.round_number).where(*where))
            ).first()
            if row is None:
                return None
            done = await s.execute(
                update(Comparison)
                .where(*where)
                .values(
                    status=ComparisonStatus.FAILED,
                    error_code=error_code,
                    error_message=message,
                    completed_at=utcnow(),
                )
            )
            if done.rowcount != 1:  # type: ignore[attr-defined]
                return None
            return str(row[0]), int(row[1])

    async def outcomes(self, batch_id: str) -> list[PairOutcome]:
        """Every comparison of the batch as scoring sees it, in row order."""
        async with self.read() as s:
            return await self._outcomes.outcomes(s, batch_id)

    async def comparisons(self, batch_id: str) -> list[Comparison]:
        """Every comparison row of the batch, detached (for reports and tests)."""
        async with self.read() as s:
            rows = await s.scalars(
                select(Comparison).where(Comparison.batch_id == batch_id).order_by(Comparison.id)
            )
            return list(rows)

    async def comparison_columns(
        self, batch_id: str, names: Sequence[str]
    ) -> list[tuple[Any, ...]]:
        """The named columns of every comparison row of the batch, in row order."""
        columns = [getattr(Comparison, name) for name in names]
        async with self.read() as s:
            rows = await s.execute(
                select(*columns).where(Comparison.batch_id == batch_id).order_by(Comparison.id)
            )
            return [tuple(row) for row in rows]

    async def models_used(self, batch_id: str) -> list[str]:
        """The distinct models that answered the batch's comparisons, sorted."""
        async with self.read() as s:
            rows = await s.scalars(
                select(Comparison.model)
                .where(Comparison.batch_id == batch_id, Comparison.model.is_not(None))
                .distinct()
            )
            return sorted(str(m) for m in rows)

    async def progress(self, batch_id: str, batch: BatchRecord | None = None) -> BatchProgress:
        """The batch's counters (``batch``: its record, when the caller has just read it)."""
        batch = batch or await self.batch(batch_id)
        async with self.read() as s:
            sums = await self._settled.sums(s, batch_id)
            last = (
                await s.execute(
                    select(Round.round_number, Round.reliability, Round.mean_se)
                    .where(Round.batch_id == batch_id, Round.reliability.is_not(None))
                    .order_by(Round.round_number.desc())
                    .limit(1)
                )
            ).first()
            rounds = await s.scalar(
                select(func.count()).select_from(Round).where(Round.batch_id == batch_id)
            )
        return BatchProgress(
            batch_id=batch_id,
            status=batch.status,
            rounds=int(rounds or 0),
            requested=sum(sums.counts.values()),
            pending=sums.counts[ComparisonStatus.PENDING],
            succeeded=sums.counts[ComparisonStatus.SUCCEEDED],
            failed=sums.counts[ComparisonStatus.FAILED],
            ignored_callbacks=batch.ignored_callbacks,
            provider_calls=len(sums.bundles),
            prompt_tokens=sums.prompt_tokens,
            completion_tokens=sums.completion_tokens,
            total_tokens=sums.total_tokens,
            cost_estimate=sums.cost,
            reliability=last[1] if last else None,
            mean_se=last[2] if last else None,
            budget=_int(batch.options.get("budget")),
        )
