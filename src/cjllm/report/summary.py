"""The data a report is made of: the run's context, the ranking rows and the run summary.

``ranking.json``, ``report.html`` and the terminal all read the same :func:`run_summary`
dict, so a figure added there (one key) reaches every output; the page shows the keys
listed in :data:`cjllm.report.page.SUMMARY_FIGURES`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cjllm import __version__
from cjllm.cj.evidence import Judgement
from cjllm.contracts import CJAssessmentCompletedV1, RankedEssay
from cjllm.report.judgement import judgement_summary

Z95 = 1.96

# how the judge decided (RunContext.judge_mode)
LLM = "llm"
MANIFEST = "manifest"
HEURISTIC = "heuristic"
MIXED = "manifest+heuristic"
SIMULATED = (
    "simulated"  # a simulated judge behind a provider service: how it decided is not known here
)
SIMULATED_MODES = (MANIFEST, HEURISTIC, MIXED, SIMULATED)


@dataclass(frozen=True)
class RunContext:
    """What the completion event does not know: the judge as shown to users, how it decided,
    the prompts it was given, and where the essays came from."""

    judge: str
    source: str
    finished_at: datetime
    title: str = "Essay ranking"
    judge_mode: str = LLM
    judge_note: str = ""
    instructions: str | None = None
    rubric: str | None = None
    provider_usage: Mapping[str, Any] | None = None
    """Requests sent to the provider by outcome and seconds its rate limit held work back
    (``run.json``'s ``provider_usage``), when the provider ran in this process."""
    output_mode: str | None = None
    """How the judge's answers were constrained (the negotiated output mode)."""
    bundle_size: int | None = None
    """The bundle size the provider settled at for the judge's model."""
    bundle_layout: str | None = None
    """How a bundle laid out its essays (``items`` or ``pool``), when the run bundled."""

    @property
    def simulated(self) -> bool:
        return self.judge_mode in SIMULATED_MODES


@dataclass(frozen=True)
class Evidence:
    """What the ranking rests on: each essay's text and every comparison of the batch."""

    texts: Mapping[str, str] = field(default_factory=dict)
    judgements: Sequence[Judgement] = ()


def interval(essay: RankedEssay) -> tuple[float, float]:
    """The 95% interval of an essay's score: the one the CJ service published (the
    posterior's 2.5–97.5% quantiles), or score ± 1.96·SE when the event has none."""
    if essay.lower95 is not None and essay.upper95 is not None:
        return essay.lower95, essay.upper95
    return essay.score - Z95 * essay.se, essay.score + Z95 * essay.se


def run_summary(result: CJAssessmentCompletedV1, context: RunContext) -> dict[str, Any]:
    """The run summary shared by ``ranking.json``, ``report.html`` and the terminal."""
    made = result.comparisons_succeeded + result.comparisons_failed
    return {
        "cj_batch_id": result.cj_batch_id,
        "status": result.status,
        "stop_reason": result.stop_reason,
        "judge": context.judge,
        "judge_mode": context.judge_mode,
        "judge_note": context.judge_note,
        "provider": result.provider,
        "model": result.model,
        "batching_strategy": result.batching_strategy.value,
        "essays": sum(not e.is_anchor for e in result.ranking),
        "anchors": sum(e.is_anchor for e in result.ranking),
        "rounds": result.rounds,
        "comparisons_requested": result.comparisons_requested,
        "comparisons_made": made,
        "comparisons_succeeded": result.comparisons_succeeded,
        "comparisons_failed": result.comparisons_failed,
        "provider_calls": result.provider_calls,
        "comparisons_per_provider_call": (
            round(made / result.provider_calls, 2) if result.provider_calls else None
        ),
        "bundle_layout": context.bundle_layout,
        "output_mode": context.output_mode,
        "bundle_size": context.bundle_size,
        "tokens": result.token_usage.model_dump(),
        "cost_estimate": round(result.cost_estimate, 6),
        "scale_separation_reliability": result.scale_separation_reliability,
        "split_half_reliability": result.split_half_reliability,
        **judgement_summary(result),
        "source": context.source,
        "finished_at": context.finished_at.isoformat(),
        "cjllm_version": __version__,
        "message": result.message,
        **_provider_usage(context),
    }


def _provider_usage(context: RunContext) -> dict[str, Any]:
    """Every request sent to the provider, 429s included, and the time spent waiting for
    its rate limit (``provider_calls`` then counts them all; the comparisons per call stay
    those of the answered calls)."""
    usage = context.provider_usage
    if not usage:
        return {}
    requests = {k: int(v) for k, v in sorted(usage.get("requests", {}).items())}
    return {
        "provider_calls": sum(requests.values()),
        "provider_calls_by_outcome": requests,
        "rate_limit_wait_seconds": round(float(usage.get("rate_limit_wait_seconds", 0.0)), 1),
    }


def ranking_rows(result: CJAssessmentCompletedV1) -> list[dict[str, Any]]:
    """One row per ranked essay, best first, with its 95% interval."""
    rows = []
    for essay in sorted(result.ranking, key=lambda e: e.rank):
        lower, upper = interval(essay)
        rows.append(
            {
                "rank": essay.rank,
                "essay_id": essay.essay_id,
                "score": round(essay.score, 4),
                "se": round(essay.se, 4),
                "lower95": round(lower, 4),
                "upper95": round(upper, 4),
                "comparisons": essay.comparisons,
                "wins": essay.wins,
                "is_anchor": essay.is_anchor,
                "projected_grade": essay.projected_grade,
                "grade_probability": (
                    None if essay.grade_probability is None else round(essay.grade_probability, 4)
                ),
            }
        )
    return rows
