"""What a batch's settled rounds hold, read once: progress counters and pair outcomes.

A round none of whose comparisons is pending never changes again: a row changes only
``WHERE status = 'pending'`` and a round's rows are written in one transaction. So what the
leading run of settled rounds holds is read once and kept, and each later read scans only
the rounds after it (through the ``(batch_id, round_number, status)`` index), still from the
rows, never estimated. The progress counters are polled several times a second by a
display (reading every row each time cost ~90 ms of CPU at 50,000 comparisons), the pair
outcomes once a round by the fit (every row, every round: O(comparisons × rounds)).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from cjllm.cj.records import PairOutcome
from cjllm.cj.tables import Comparison, ComparisonStatus

T = TypeVar("T")


KEPT_BATCHES = 8
"""Batches whose settled rounds one store keeps at most (the least recently read go first),
so a long-running service does not hold every batch it ever served."""


def _keep(kept: dict[str, T], batch_id: str, value: T) -> None:
    kept.pop(batch_id, None)
    kept[batch_id] = value
    while len(kept) > KEPT_BATCHES:
        del kept[next(iter(kept))]


@dataclass
class ComparisonSums:
    """Counts by status, token and cost sums, and the bundle ids (provider calls) of rows."""

    counts: dict[ComparisonStatus, int] = field(
        default_factory=lambda: {st: 0 for st in ComparisonStatus}
    )
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost: float = 0.0
    bundles: set[str] = field(default_factory=set)

    def add(self, other: ComparisonSums) -> None:
        for st, n in other.counts.items():
            self.counts[st] += n
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.total_tokens += other.total_tokens
        self.cost += other.cost
        self.bundles |= other.bundles

    def copy(self) -> ComparisonSums:
        out = ComparisonSums()
        out.add(self)
        return out


class SettledSums:
    """Per batch, the sums of rounds 1..k, every one of them settled when it was read."""

    def __init__(self) -> None:
        self._kept: dict[str, tuple[int, ComparisonSums]] = {}

    async def sums(self, s: AsyncSession, batch_id: str) -> ComparisonSums:
        """The sums over all the batch's rows: the kept ones plus a read of the rest."""
        through, kept = self._kept.get(batch_id, (0, ComparisonSums()))
        later = (Comparison.batch_id == batch_id, Comparison.round_number > through)
        rounds: dict[int, ComparisonSums] = {}
        for rn, st, n, pt, ct, tt, c in await s.execute(
            select(
                Comparison.round_number,
                Comparison.status,
                func.count(),
                func.coalesce(func.sum(Comparison.prompt_tokens), 0),
                func.coalesce(func.sum(Comparison.completion_tokens), 0),
                func.coalesce(func.sum(Comparison.total_tokens), 0),
                func.coalesce(func.sum(Comparison.cost_estimate), 0.0),
            )
            .where(*later)
            .group_by(Comparison.round_number, Comparison.status)
        ):
            one = rounds.setdefault(int(rn), ComparisonSums())
            one.counts[ComparisonStatus(st)] += int(n)
            one.prompt_tokens += int(pt)
            one.completion_tokens += int(ct)
            one.total_tokens += int(tt)
            one.cost += float(c)
        # read after the counts: a round settled in them has every bundle id final here
        for rn, bundle in await s.execute(
            select(Comparison.round_number, Comparison.bundle_id)
            .where(*later, Comparison.bundle_id.is_not(None))
            .distinct()
        ):
            if int(rn) in rounds:
                rounds[int(rn)].bundles.add(str(bundle))
        settled = kept.copy()
        while (nxt := rounds.get(through + 1)) and not nxt.counts[ComparisonStatus.PENDING]:
            settled.add(rounds.pop(through + 1))
            through += 1
        if through > self._kept.get(batch_id, (0, None))[0]:
            _keep(self._kept, batch_id, (through, settled))
        total = settled.copy()
        for rest in rounds.values():
            total.add(rest)
        return total


class SettledOutcomes:
    """Per batch, the pair outcomes of rounds 1..k (in row order), every one of them settled
    when it was read."""

    def __init__(self) -> None:
        self._kept: dict[str, tuple[int, int, list[PairOutcome]]] = {}  # round, last id, rows

    async def outcomes(self, s: AsyncSession, batch_id: str) -> list[PairOutcome]:
        """Every comparison of the batch as scoring sees it, in row (id) order."""
        through, last_id, kept = self._kept.get(batch_id, (0, 0, []))
        rows = (
            await s.execute(
                select(
                    Comparison.id,
                    Comparison.essay_a_id,
                    Comparison.essay_b_id,
                    Comparison.status,
                    Comparison.winner,
                    Comparison.attempt,
                    Comparison.round_number,
                )
                .where(Comparison.batch_id == batch_id, Comparison.round_number > through)
                .order_by(Comparison.id)
            )
        ).all()
        if rows and rows[0][0] <= last_id:  # a later round's row before a kept one: read all
            self._kept.pop(batch_id, None)
            return await self.outcomes(s, batch_id)
        later = [
            PairOutcome(a, b, ComparisonStatus(st), w, at, rn) for _, a, b, st, w, at, rn in rows
        ]
        by_round: dict[int, list[int]] = {}
        for k, o in enumerate(later):
            by_round.setdefault(o.round_number, []).append(k)
        settled = 0  # how many of ``later`` (a prefix, rounds through+1 …) join the kept rows
        while (ks := by_round.get(through + 1)) and all(
            later[k].status is not ComparisonStatus.PENDING for k in ks
        ):
            if ks[0] != settled or ks[-1] - ks[0] + 1 != len(ks):  # not next in row order
                break
            settled, through = ks[-1] + 1, through + 1
        if settled and through > self._kept.get(batch_id, (0,))[0]:
            _keep(self._kept, batch_id, (through, rows[settled - 1][0], kept + later[:settled]))
        return kept + later
