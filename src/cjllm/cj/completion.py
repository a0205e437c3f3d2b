"""The end of a batch: its verdict, ranking and measured totals as ``CJAssessmentCompletedV1``.

Every count in the event is read from the comparison rows (requested, succeeded, failed,
rounds, distinct provider calls, tokens, cost), never estimated. The event is stored with
the batch before it is published, so a publish that fails is retried by ``resume``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

from cjllm.bus import BusError, EventBus
from cjllm.cj import stopping
from cjllm.cj.options import BatchOptions
from cjllm.cj.ranking import (
    BatchFit,
    Ranking,
    build_ranking,
    classical_ssr,
    component_sizes,
    seed_for,
    split_half,
)
from cjllm.cj.records import BatchRecord, EssayRecord, PairOutcome
from cjllm.cj.store import Store
from cjllm.cj.tables import BatchStatus, ComparisonStatus
from cjllm.contracts import (
    COMPLETION_EVENT_TYPE,
    CJAssessmentCompletedV1,
    EventEnvelope,
    JudgeModel,
    OrderEffect,
    PositionConsistency,
    TokenUsage,
)
from cjllm.settings import CJSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Completion:
    event: CJAssessmentCompletedV1
    verdict: stopping.Verdict
    ranking: Ranking | None


async def build_completion(
    store: Store,
    batch: BatchRecord,
    options: BatchOptions,
    essays: list[EssayRecord],
    fit: BatchFit | None,
    counts: stopping.Tally,
    reason: str,
    error: str | None = None,
) -> Completion:
    """Decide completed/failed and assemble the event. ``fit`` None: the batch cannot be
    scored (``reason`` and ``error`` say why) and there is no ranking to offer."""
    n = len(essays)
    ranking: Ranking | None = None
    split: float | None = None
    ssr: float | None = None
    consistency: PositionConsistency | None = None
    components: int | None = None
    if fit is None:
        verdict = stopping.Verdict(BatchStatus.FAILED, reason, f"{reason}: {error}")
    else:
        sizes = component_sizes(n, fit)
        components = len(sizes)
        verdict = stopping.verdict(options, n, counts, reason, sizes)
        prior = fit.model.prior if fit.model is not None else options.bt_prior
        # independent of each other: side by side (the fits release the GIL in their solves)
        ranking, split, ssr, outcomes = await asyncio.gather(
            asyncio.to_thread(build_ranking, essays, fit, batch.grade_scale),
            asyncio.to_thread(
                split_half, fit, n, prior, options.split_half_splits, seed_for(batch.id, 0)
            ),
            asyncio.to_thread(classical_ssr, fit, n, options.bt_prior),
            store.outcomes(batch.id),
        )
        consistency = position_consistency(outcomes)
    totals = await store.progress(batch.id)
    message = verdict.message
    if ranking is not None and ranking.grade_message:
        message = f"{message} {ranking.grade_message}"
    if fit is not None:
        warnings = (order_warning(fit.order_effect()), lapse_warning(fit))
        message = " ".join([message, *(w for w in warnings if w is not None)])
    models = await store.models_used(batch.id)
    event = CJAssessmentCompletedV1(
        cj_batch_id=batch.id,
        bos_batch_id=batch.bos_batch_id,
        status="completed" if verdict.status is BatchStatus.COMPLETED else "failed",
        stop_reason=verdict.stop_reason,
        ranking=ranking.essays if ranking is not None else [],
        comparisons_requested=totals.requested,
        comparisons_succeeded=totals.succeeded,
        comparisons_failed=totals.failed,
        rounds=totals.rounds,
        provider_calls=totals.provider_calls,
        token_usage=TokenUsage(
            prompt_tokens=totals.prompt_tokens,
            completion_tokens=totals.completion_tokens,
            total_tokens=totals.total_tokens,
        ),
        cost_estimate=totals.cost_estimate,
        scale_separation_reliability=ssr,
        split_half_reliability=split,
        reliability=fit.reliability if fit is not None else None,
        judge=judge_model(fit, consistency) if fit is not None else None,
        batching_strategy=options.batching_strategy,
        provider=batch.provider,
        model=",".join(models) if models else batch.model or "default",
        message=message,
        mean_se=fit.mean_se if fit is not None else None,
        ignored_callbacks=totals.ignored_callbacks,
        graph_components=components,
        grade_scale=batch.grade_scale,
    )
    return Completion(event, verdict, ranking)


async def store_completion(
    store: Store, batch_id: str, done: Completion
) -> CJAssessmentCompletedV1 | None:
    """Finish the running batch with its completion (:func:`build_completion`): the event
    and the ranking stored in one conditional update. None if the batch had already finished
    (another caller won)."""
    event = done.event
    finished = await store.finish_batch(
        batch_id,
        done.verdict.status,
        event.stop_reason,
        event.message,
        event.model_dump(mode="json"),
        done.ranking.rows if done.ranking is not None else [],
    )
    return event if finished else None


async def publish_completion(
    bus: EventBus, store: Store, settings: CJSettings, event: CJAssessmentCompletedV1
) -> None:
    """Publish a stored completion to ``settings.completion_topic`` and mark it published.
    A bus error is logged and the event left unmarked, so ``resume`` publishes it again."""
    envelope = completion_envelope(event, settings.source_service)
    try:
        await bus.publish(settings.completion_topic, event.cj_batch_id, envelope)
    except BusError as exc:
        log.error(
            "completion of batch %s not published (%s); resume() will retry",
            event.cj_batch_id,
            exc,
        )
        return
    await store.mark_published(event.cj_batch_id)


def completion_envelope(event: CJAssessmentCompletedV1, source_service: str) -> EventEnvelope:
    """The event in its envelope, correlated to the batch id (a UUID)."""
    return EventEnvelope(
        event_type=COMPLETION_EVENT_TYPE,
        source_service=source_service,
        correlation_id=uuid.UUID(event.cj_batch_id),
        data=event.model_dump(mode="json"),
    )


def judge_model(fit: BatchFit, consistency: PositionConsistency | None) -> JudgeModel:
    low, high = fit.lapse_interval or (None, None)
    return JudgeModel(
        order_effect=fit.order_effect(),
        lapse_rate=fit.lapse_rate,
        lapse_rate_low=low,
        lapse_rate_high=high,
        population_sd=fit.population_sd,
        position_consistency=consistency,
    )


def order_warning(effect: OrderEffect | None) -> str | None:
    """A sentence for a significant first-position effect, else None."""
    if effect is None or not effect.significant or effect.essay_a_share is None:
        return None
    side = "Essay A (shown first)" if effect.logit > 0 else "Essay B (shown second)"
    return (
        f"Warning: the judge favours {side}: order effect {effect.logit:+.2f} logits "
        f"(SE {effect.se:.2f}); Essay A won {effect.essay_a_share:.0%} of "
        f"{effect.decisive} decisive comparisons. Positions are balanced per essay and the "
        "scores are corrected for it."
    )


def lapse_warning(fit: BatchFit) -> str | None:
    """A sentence when the comparisons say the judge decides at random now and then: the
    lapse model was the more probable one and scored the essays (every fit that estimates
    the lapse rate is sampled, so there is no other case to warn about)."""
    if not fit.scored_with_lapse or fit.lapse_interval is None or fit.lapse_rate is None:
        return None
    low, high = fit.lapse_interval
    return (
        f"Warning: the judge seems to decide at random in about {fit.lapse_rate:.0%} of "
        f"comparisons (95% interval {low:.0%} to {high:.0%}). The scores and their intervals "
        "account for it: they are on the scale of the judge's informed decisions, with wider "
        "intervals than a consistent judge would give."
    )


def position_consistency(outcomes: list[PairOutcome]) -> PositionConsistency | None:
    """Pairs judged successfully in both orders, and how many chose the same essay both
    times (the first judgement in each order counts). None when no pair was."""
    first_win: dict[tuple[str, str], str] = {}
    for o in outcomes:
        if o.status is ComparisonStatus.SUCCEEDED and o.winner is not None:
            winner = o.essay_a_id if o.winner == "Essay A" else o.essay_b_id
            first_win.setdefault((o.essay_a_id, o.essay_b_id), winner)
    pairs = consistent = 0
    for (a, b), winner in first_win.items():
        if a < b and (b, a) in first_win:
            pairs += 1
            consistent += winner == first_win[(b, a)]
    return PositionConsistency(pairs=pairs, consistent=consistent) if pairs else None
