"""The end of a batch: its verdict, ranking and measured totals as ``CJAssessmentCompletedV1``.

Every count in the event is read from the comparison rows (requested, succeeded, failed,
rounds, distinct provider calls, tokens, cost), never estimated. The event is stored with
the batch before it is published, so a publish that fails is retried by ``resume``.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from cjllm.cj import stopping
from cjllm.cj.options import BatchOptions
from cjllm.cj.ranking import (
    BatchFit,
    Ranking,
    build_ranking,
    component_sizes,
    seed_for,
    split_half,
)
from cjllm.cj.records import BatchRecord, EssayRecord
from cjllm.cj.store import Store
from cjllm.cj.tables import BatchStatus
from cjllm.contracts import (
    COMPLETION_EVENT_TYPE,
    CJAssessmentCompletedV1,
    EventEnvelope,
    TokenUsage,
)


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
    components: int | None = None
    if fit is None:
        verdict = stopping.Verdict(BatchStatus.FAILED, reason, f"{reason}: {error}")
    else:
        sizes = component_sizes(n, fit)
        components = len(sizes)
        verdict = stopping.verdict(options, n, counts, reason, sizes)
        ranking = await asyncio.to_thread(build_ranking, essays, fit, batch.grade_scale)
        split = await asyncio.to_thread(
            split_half, fit, n, options.bt_prior, options.split_half_splits, seed_for(batch.id, 0)
        )
    totals = await store.progress(batch.id)
    message = verdict.message
    if ranking is not None and ranking.grade_message:
        message = f"{message} {ranking.grade_message}"
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
        scale_separation_reliability=fit.reliability if fit is not None else None,
        split_half_reliability=split,
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


def completion_envelope(event: CJAssessmentCompletedV1, source_service: str) -> EventEnvelope:
    """The event in its envelope, correlated to the batch id (a UUID)."""
    return EventEnvelope(
        event_type=COMPLETION_EVENT_TYPE,
        source_service=source_service,
        correlation_id=uuid.UUID(event.cj_batch_id),
        data=event.model_dump(mode="json"),
    )
