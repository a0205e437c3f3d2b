"""The rounds of a batch: written with their comparison rows, closed once, reopened to retry.

A round number is a primary key, so two workers can never both start round N+1, and a
round closes only ``WHERE status = 'open'`` (docs/architecture.md, "The hard parts").
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import cast

from sqlalchemy import Select, Table, insert, select, update
from sqlalchemy.exc import IntegrityError

from cjllm.cj.records import NewComparison, PendingComparison, RoundRecord
from cjllm.cj.sessions import Sessions
from cjllm.cj.tables import Comparison, ComparisonStatus, Round, RoundStatus
from cjllm.contracts import utcnow


def correlation_id(batch_id: str, round_number: int, index: int) -> uuid.UUID:
    """The comparison's id: a UUID5 in the batch's namespace, unique within the batch (one
    round number is written once) and across batches (batch ids are unique UUIDs)."""
    return uuid.uuid5(uuid.UUID(batch_id), f"round {round_number} comparison {index}")


def pending_row(batch_id: str | None, round_number: int | None) -> Select[int]:
    """One pending comparison of the round, if any: an index probe (is any left), not a
    count of how many."""
    return (
        select(Comparison.id)
        .where(
            Comparison.batch_id == batch_id,
            Comparison.round_number == round_number,
            Comparison.status == ComparisonStatus.PENDING,
        )
        .limit(1)
    )


class RoundExists(RuntimeError):
    """Another worker already started this round number (the loser simply stops)."""


class RoundRows(Sessions):
    """The statements on rounds (and the rows a round writes); :class:`~cjllm.cj.store.Store`
    adds batches and comparisons."""

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
            pending = await s.scalar(pending_row(batch_id, round_number))
            if pending is not None:
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
