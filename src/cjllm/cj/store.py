"""Every read and write the CJ workflow makes (engine and migrations: :mod:`.database`).

State changes that must happen once are conditional updates:
a comparison changes only ``WHERE status = 'pending'``, a round closes only ``WHERE status =
'open'``, a batch finishes only ``WHERE status = 'running'``, and a round number is a primary
key, so two workers can never both start round N+1 (docs/architecture.md, "The hard parts").
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, nullcontext
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from cjllm.cj.database import WRITE_OPTION, create_engine, migrate
from cjllm.cj.records import (
    BatchProgress,
    BatchRecord,
    EssayRecord,
    EssayResult,
    NewComparison,
    NewEssay,
    PairOutcome,
    PendingComparison,
    RoundRecord,
)
from cjllm.cj.tables import (
    Batch,
    BatchStatus,
    Comparison,
    ComparisonStatus,
    Essay,
    Round,
    RoundStatus,
)
from cjllm.contracts import utcnow


class BatchNotFound(LookupError):
    def __init__(self, batch_id: str) -> None:
        super().__init__(f"no CJ batch with id {batch_id!r}")
        self.batch_id = batch_id


def correlation_id(batch_id: str, round_number: int, index: int) -> uuid.UUID:
    """The comparison's id: a UUID5 in the batch's namespace, unique within the batch (one
    round number is written once) and across batches (batch ids are unique UUIDs)."""
    return uuid.uuid5(uuid.UUID(batch_id), f"round {round_number} comparison {index}")


class BatchExists(ValueError):
    def __init__(self, batch_id: str) -> None:
        super().__init__(f"a CJ batch with id {batch_id!r} already exists")
        self.batch_id = batch_id


class RoundExists(RuntimeError):
    """Another worker already started this round number (the loser simply stops)."""


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --------------------------------------------------------------------------- store


class Store:
    """Reads and writes of the CJ database. Each method is one short transaction.

    On SQLite, writes from this process take turns on an asyncio lock, so they never fall
    into SQLite's sleeping busy handler; other processes are held off by ``BEGIN IMMEDIATE``.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        writer = engine.execution_options(**{WRITE_OPTION: True})
        self._writer = async_sessionmaker(writer, expire_on_commit=False)
        self._reader = async_sessionmaker(engine, expire_on_commit=False)
        self._lock = asyncio.Lock() if engine.dialect.name == "sqlite" else None

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A write transaction, committed when the block ends without an exception."""
        async with self._lock or nullcontext(), self._writer.begin() as session:
            yield session

    def read(self) -> AsyncSession:
        """A session for reads (use as ``async with store.read() as s``)."""
        return self._reader()

    @classmethod
    async def open(cls, url: str, *, run_migrations: bool = True) -> Store:
        engine = create_engine(url)
        if run_migrations:
            await migrate(engine)
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

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
            s.add_all(
                Essay(
                    batch_id=batch.id,
                    essay_id=e.essay_id,
                    position=i,
                    text=e.text,
                    anchor_grade=e.anchor_grade,
                )
                for i, e in enumerate(essays)
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

    # ---------------------------------------------------------------- rounds

    async def add_round(
        self,
        batch_id: str,
        round_number: int,
        preferred_bundle_size: int,
        pairs: Sequence[NewComparison],
    ) -> list[PendingComparison]:
        """Write a round and its comparison rows (status ``pending``, not yet submitted).

        A row's ``request_correlation_id`` is derived from the batch id, the round and its
        place in the round (:func:`correlation_id`), so a batch replayed with the same id asks
        the same questions under the same ids (a seeded judge then gives the same answers).
        """
        ids = [correlation_id(batch_id, round_number, k) for k in range(len(pairs))]
        now = utcnow()
        rows = [
            {
                "batch_id": batch_id,
                "round_number": round_number,
                "request_correlation_id": cid,
                "essay_a_id": p.essay_a_id,
                "essay_b_id": p.essay_b_id,
                "attempt": p.attempt,
                "status": ComparisonStatus.PENDING,
                "created_at": now,
            }
            for cid, p in zip(ids, pairs, strict=True)
        ]
        try:
            async with self.write() as s:
                s.add(
                    Round(
                        batch_id=batch_id,
                        round_number=round_number,
                        status=RoundStatus.OPEN,
                        planned=len(rows),
                        preferred_bundle_size=preferred_bundle_size,
                    )
                )
                await s.flush()
                if rows:  # one executemany, not an ORM object per row
                    await s.execute(insert(cast(Table, Comparison.__table__)), rows)
        except IntegrityError as exc:
            raise RoundExists(f"batch {batch_id} already has round {round_number}") from exc
        return [
            PendingComparison(cid, p.essay_a_id, p.essay_b_id, round_number)
            for cid, p in zip(ids, pairs, strict=True)
        ]

    async def latest_round(self, batch_id: str) -> RoundRecord | None:
        async with self.read() as s:
            row = await s.scalar(
                select(Round)
                .where(Round.batch_id == batch_id)
                .order_by(Round.round_number.desc())
                .limit(1)
            )
            if row is None:
                return None
            return RoundRecord(
                row.round_number, RoundStatus(row.status), row.planned, row.preferred_bundle_size
            )

    async def close_round_if_done(self, batch_id: str, round_number: int) -> bool:
        """Close the round when none of its comparisons is pending. True for the one caller
        whose conditional update closed it; everyone else (and any earlier call) gets False."""
        async with self.write() as s:
            pending = await s.scalar(
                select(func.count())
                .select_from(Comparison)
                .where(
                    Comparison.batch_id == batch_id,
                    Comparison.round_number == round_number,
                    Comparison.status == ComparisonStatus.PENDING,
                )
            )
            if pending:
                return False
            closed = await s.execute(
                update(Round)
                .where(
                    Round.batch_id == batch_id,
                    Round.round_number == round_number,
                    Round.status == RoundStatus.OPEN,
                )
                .values(status=RoundStatus.CLOSED, closed_at=utcnow())
            )
            return bool(closed.rowcount == 1)  # type: ignore[attr-defined]

    async def reopen_round(self, batch_id: str, round_number: int) -> None:
        """Undo a close whose follow-up failed, so the next callback or resume retries it."""
        async with self.write() as s:
            await s.execute(
                update(Round)
                .where(Round.batch_id == batch_id, Round.round_number == round_number)
                .values(status=RoundStatus.OPEN, closed_at=None)
            )

    async def record_fit(
        self, batch_id: str, round_number: int, reliability: float | None, mean_se: float | None
    ) -> None:
        async with self.write() as s:
            await s.execute(
                update(Round)
                .where(Round.batch_id == batch_id, Round.round_number == round_number)
                .values(reliability=reliability, mean_se=mean_se)
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
        async with self.read() as s:
            rows = await s.execute(
                select(
                    Comparison.essay_a_id,
                    Comparison.essay_b_id,
                    Comparison.status,
                    Comparison.winner,
                    Comparison.attempt,
                    Comparison.round_number,
                )
                .where(Comparison.batch_id == batch_id)
                .order_by(Comparison.id)
            )
            return [
                PairOutcome(a, b, ComparisonStatus(st), w, at, rn) for a, b, st, w, at, rn in rows
            ]

    async def comparisons(self, batch_id: str) -> list[Comparison]:
        """Every comparison row of the batch, detached (for reports and tests)."""
        async with self.read() as s:
            rows = await s.scalars(
                select(Comparison).where(Comparison.batch_id == batch_id).order_by(Comparison.id)
            )
            return list(rows)

    async def models_used(self, batch_id: str) -> list[str]:
        """The distinct models that answered the batch's comparisons, sorted."""
        async with self.read() as s:
            rows = await s.scalars(
                select(Comparison.model)
                .where(Comparison.batch_id == batch_id, Comparison.model.is_not(None))
                .distinct()
            )
            return sorted(str(m) for m in rows)

    async def progress(self, batch_id: str) -> BatchProgress:
        batch = await self.batch(batch_id)
        async with self.read() as s:
            by_status = await s.execute(
                select(
                    Comparison.status,
                    func.count(),
                    func.coalesce(func.sum(Comparison.prompt_tokens), 0),
                    func.coalesce(func.sum(Comparison.completion_tokens), 0),
                    func.coalesce(func.sum(Comparison.total_tokens), 0),
                    func.coalesce(func.sum(Comparison.cost_estimate), 0.0),
                )
                .where(Comparison.batch_id == batch_id)
                .group_by(Comparison.status)
            )
            counts = {st: 0 for st in ComparisonStatus}
            tokens = [0, 0, 0]
            cost = 0.0
            for st, n, pt, ct, tt, c in by_status:
                counts[ComparisonStatus(st)] = int(n)
                tokens = [tokens[0] + int(pt), tokens[1] + int(ct), tokens[2] + int(tt)]
                cost += float(c)
            calls = await s.scalar(
                select(func.count(func.distinct(Comparison.bundle_id))).where(
                    Comparison.batch_id == batch_id, Comparison.bundle_id.is_not(None)
                )
            )
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
            requested=sum(counts.values()),
            pending=counts[ComparisonStatus.PENDING],
            succeeded=counts[ComparisonStatus.SUCCEEDED],
            failed=counts[ComparisonStatus.FAILED],
            ignored_callbacks=batch.ignored_callbacks,
            provider_calls=int(calls or 0),
            prompt_tokens=tokens[0],
            completion_tokens=tokens[1],
            total_tokens=tokens[2],
            cost_estimate=cost,
            reliability=last[1] if last else None,
            mean_se=last[2] if last else None,
            budget=_int(batch.options.get("budget")),
        )
