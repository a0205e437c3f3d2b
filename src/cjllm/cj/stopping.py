"""When a batch stops, and whether what it has is good enough to publish as a ranking.

The budget counts judgements: a comparison that failed is not one, so it does not use up the
budget and a later round may plan a replacement. Checked each time a round closes, in this
order: the budget judged (the stop reason names the limit that set it, ``budget`` or
``comparisons_per_essay``, with ``_with_failures`` appended when any comparison failed on
the way, so a run with failures never reports a plain ``budget_spent``); as many failures as
the budget (replacing them stops there); too many rounds in a row in which every comparison
failed; reliability target met; mean-SE target met. Targets count only once the batch holds
``min_comparisons_per_essay_before_stop`` successful comparisons per essay on average. If
none applies, the next round is planned; an empty plan stops the batch with
``no_useful_pairs``. Then :func:`verdict` decides completed or failed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from cjllm.cj.options import BUDGET, BatchOptions
from cjllm.cj.ranking import BatchFit
from cjllm.cj.records import PairOutcome
from cjllm.cj.tables import BatchStatus, ComparisonStatus

BUDGET_SPENT = "budget_spent"
PER_ESSAY_SPENT = "comparisons_per_essay_spent"
WITH_FAILURES = "_with_failures"
FAILURES_REACHED_BUDGET = "failures_reached_budget"
PROVIDER_FAILING = "every_comparison_failed"
RELIABILITY_TARGET = "reliability_target_met"
SE_TARGET = "se_target_met"
NO_USEFUL_PAIRS = "no_useful_pairs"
TARGETS = (RELIABILITY_TARGET, SE_TARGET)  # checked on the round's fit, confirmed on the final
TOO_FEW_SUCCEEDED = "too_few_comparisons_succeeded"
DISCONNECTED = "disconnected_comparison_graph"
SCORING_FAILED = "scoring_failed"
INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True)
class Tally:
    requested: int
    succeeded: int
    failed: int
    failed_rounds_in_a_row: int

    @property
    def pending(self) -> int:
        return self.requested - self.succeeded - self.failed


def tally(outcomes: Sequence[PairOutcome]) -> Tally:
    per_round: dict[int, list[ComparisonStatus]] = defaultdict(list)
    for o in outcomes:
        per_round[o.round_number].append(o.status)
    streak = 0
    for number in sorted(per_round, reverse=True):
        if all(s is ComparisonStatus.FAILED for s in per_round[number]):
            streak += 1
        else:
            break
    succeeded = sum(o.status is ComparisonStatus.SUCCEEDED for o in outcomes)
    failed = sum(o.status is ComparisonStatus.FAILED for o in outcomes)
    return Tally(len(outcomes), succeeded, failed, streak)


def min_successes_for_targets(options: BatchOptions, n_essays: int) -> int:
    return math.ceil(options.min_comparisons_per_essay_before_stop * n_essays / 2)


def reason_to_stop(
    options: BatchOptions, n_essays: int, counts: Tally, fit: BatchFit
) -> str | None:
    """Why the batch should stop now, or None to plan another round."""
    budget, limit = options.budget_limit(n_essays)
    if counts.succeeded >= budget:
        reason = BUDGET_SPENT if limit == BUDGET else PER_ESSAY_SPENT
        return reason + WITH_FAILURES if counts.failed else reason
    if counts.failed >= budget:
        return FAILURES_REACHED_BUDGET
    if counts.failed_rounds_in_a_row >= options.max_failed_rounds:
        return PROVIDER_FAILING
    if counts.succeeded >= min_successes_for_targets(options, n_essays):
        if fit.reliability is not None and fit.reliability >= options.target_reliability:
            return RELIABILITY_TARGET
        target_se = options.target_mean_se
        if target_se is not None and fit.mean_se is not None and fit.mean_se <= target_se:
            return SE_TARGET
    return None


@dataclass(frozen=True)
class Verdict:
    status: BatchStatus
    stop_reason: str
    message: str


def verdict(
    options: BatchOptions, n_essays: int, counts: Tally, reason: str, components: list[int]
) -> Verdict:
    """Completed, or failed when too few comparisons succeeded or the scores are not on one
    scale (the successful comparisons leave the essays in separate groups)."""
    finished = counts.succeeded + counts.failed
    fraction = counts.succeeded / finished if finished else 0.0
    why = f"stopped: {reason}"
    if counts.succeeded < n_essays - 1 or fraction < options.min_success_fraction:
        return Verdict(
            BatchStatus.FAILED,
            TOO_FEW_SUCCEEDED,
            f"too few comparisons succeeded: {counts.succeeded} of {finished} "
            f"({fraction:.0%}); a ranking of {n_essays} essays needs at least "
            f"{n_essays - 1} and a success fraction of {options.min_success_fraction:.0%} "
            f"({why}).",
        )
    if len(components) > 1:
        sizes = ", ".join(str(s) for s in components[:10])
        return Verdict(
            BatchStatus.FAILED,
            DISCONNECTED,
            f"the successful comparisons split the essays into {len(components)} groups "
            f"(sizes {sizes}) that were never compared with each other, so their scores are "
            f"not on one scale; raise the comparison budget ({why}).",
        )
    replaced = f"; {counts.failed} failed and were not counted" if counts.failed else ""
    return Verdict(
        BatchStatus.COMPLETED,
        reason,
        f"{counts.succeeded} of {counts.requested} comparisons succeeded{replaced} ({why}).",
    )
