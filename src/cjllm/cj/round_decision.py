"""What follows a closed round: the batch stops (with the fit it publishes) or a next round.

:func:`decide` refits Bradley-Terry on every outcome so far, records the round's reliability
and mean SE, checks the stopping rules (:mod:`cjllm.cj.stopping`) and either plans the next
round's pairs or returns the reason to stop with the final fit. Comparisons that cannot be
scored stop the batch (``scoring_failed``) instead of raising. The fits and the planning run in
worker threads; the workflow (:mod:`cjllm.cj.workflow`) acts on the answer.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import BrokenExecutor
from dataclasses import dataclass

import numpy as np

from cjllm.cj import chain_process, rounds, stopping
from cjllm.cj.options import BatchOptions
from cjllm.cj.posterior import SAMPLER_LIMIT
from cjllm.cj.ranking import BatchFit, final_fit, fit_outcomes
from cjllm.cj.records import BatchRecord, EssayRecord, NewComparison, PairOutcome
from cjllm.cj.store import Store


@dataclass(frozen=True)
class Stop:
    """Finish the batch for ``reason``: ``fit`` is the fit to publish (None: no ranking, with
    ``error`` saying why)."""

    fit: BatchFit | None
    counts: stopping.Tally
    reason: str
    error: str | None = None


@dataclass(frozen=True)
class NextRound:
    """Start round ``number`` with ``pairs`` (never empty)."""

    number: int
    pairs: list[NewComparison]


async def decide(
    store: Store,
    batch: BatchRecord,
    options: BatchOptions,
    essays: list[EssayRecord],
    closed_round: int | None,
) -> Stop | NextRound:
    """After ``closed_round`` (None: before the first round): stop or go on.

    A target stop counts only if the final fit meets the target too. A dead helper process of
    the final fit (:mod:`cjllm.cj.chain_process`) raises ``BrokenExecutor`` (the helper is
    replaced), so the caller retries.
    """
    outcomes = await store.outcomes(batch.id)
    counts = stopping.tally(outcomes)
    try:
        fit = await asyncio.to_thread(fit_outcomes, essays, outcomes, options)
    except (ValueError, np.linalg.LinAlgError) as exc:
        return Stop(None, counts, stopping.SCORING_FAILED, str(exc))
    if closed_round is not None:
        await store.record_fit(batch.id, closed_round, fit.reliability, fit.mean_se)
    reason = stopping.reason_to_stop(options, len(essays), counts, fit)
    final: BatchFit | None = None
    if reason is not None:
        scored = await _final_fit(options, essays, outcomes, counts, fit)
        if isinstance(scored, Stop):
            return scored
        final = scored
        if reason in stopping.TARGETS:  # a target counts as met on the published figures
            reason = stopping.reason_to_stop(options, len(essays), counts, final)
    if reason is None:
        number = (closed_round or 0) + 1
        if len(essays) <= SAMPLER_LIMIT:  # its final fit will want the helper process
            chain_process.executor()
        pairs = await asyncio.to_thread(
            rounds.plan_next_round, batch.id, number, options, essays, outcomes, fit
        )
        if pairs:
            return NextRound(number, pairs)
        reason = stopping.NO_USEFUL_PAIRS
    if final is None:
        scored = await _final_fit(options, essays, outcomes, counts, fit)
        if isinstance(scored, Stop):
            return scored
        final = scored
    return Stop(final, counts, reason)


async def _final_fit(
    options: BatchOptions,
    essays: list[EssayRecord],
    outcomes: list[PairOutcome],
    counts: stopping.Tally,
    fit: BatchFit,
) -> BatchFit | Stop:
    """The fit a ranking is published from (``fit``: the round fit of ``outcomes``), or a
    ``scoring_failed`` stop when the comparisons cannot be scored. Its two chains run side by
    side, one in the helper process; if that process died, the error is raised (and the
    helper replaced) so the caller retries."""
    pool = chain_process.executor() if len(essays) <= SAMPLER_LIMIT else None
    try:
        return await asyncio.to_thread(final_fit, essays, outcomes, options, fit=fit, executor=pool)
    except BrokenExecutor:
        if pool is not None:
            chain_process.discard(pool)
        raise
    except (ValueError, np.linalg.LinAlgError) as exc:
        return Stop(None, counts, stopping.SCORING_FAILED, str(exc))
