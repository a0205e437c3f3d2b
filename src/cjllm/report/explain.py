"""What the run's figures mean, in plain words: the scale, the intervals, the reliability
figures, the judge's behaviour and why the run stopped. Shared by ``report.html`` and the
terminal, so a teacher reads the same explanation in both places.
"""

from __future__ import annotations

import math

SCALE = (
    "Scores are on a log-odds scale centred on 0, the average essay. Only differences "
    "matter: a difference of 1 means the judge prefers the higher essay about 73% of the "
    "time, 2 about 88%, 3 about 95%. Whole-number steps are not grades."
)
INTERVALS = (
    "Each bar is a 95% interval: the essay's quality lies within it with 95% probability "
    "under the judge model (roughly the score plus or minus 1.96 standard errors; lopsided "
    "where the evidence is, as at the ends of the scale). Where two "
    "essays' bars overlap a lot, their comparisons do not reliably tell them apart; more "
    "comparisons narrow the bars."
)
RELIABILITY = (
    "Reliability (0 to 1) estimates how closely the scores follow the essays' quality as the "
    "judge sees it: the squared correlation between the two, so 0.80 means about four fifths "
    "of the differences between essays' scores are real rather than measurement noise. It "
    "comes from the same model as the intervals and stays honest whichever way the essays "
    "were paired. As a rough guide, 0.7 supports broad groups, 0.8 a rank order, 0.9 fine "
    "distinctions."
)
SSR = (
    "Classical scale separation reliability is the figure other comparative-judgement tools "
    "report; it is shown for comparison only: pairing essays of similar quality, as this run "
    "does, makes it read higher than the ranking deserves."
)
JUDGE = (
    "The order effect is how much the judge favours whichever essay it reads first (as Essay "
    "A), in the same units as the scores; every essay is shown first about as often as "
    "second, and the scores are corrected for it. The lapse rate is the share of decisions "
    "that look like a coin toss whatever the essays; comparisons cannot tell it apart well "
    "from essays that are simply close, hence its wide interval."
)
SPLIT_HALF = (
    "Split-half reliability: the comparisons are split into two random halves, each half is "
    "scored on its own, and the two sets of scores are correlated (corrected to the full "
    "number of comparisons, averaged over several splits). Near 1, the two halves rank the "
    "essays alike."
)

_STOP_REASONS = {
    "budget_spent": "the total budget (--budget) of judged comparisons was reached; more "
    "comparisons would narrow the intervals",
    "comparisons_per_essay_spent": "the comparisons per essay the run allowed "
    "(--comparisons-per-essay) were judged; more would narrow the intervals",
    "budget_spent_with_failures": "the total budget (--budget) of judged comparisons was "
    "reached; some comparisons failed on the way and were replaced, not counted",
    "comparisons_per_essay_spent_with_failures": "the comparisons per essay the run allowed "
    "were judged; some failed on the way and were replaced, not counted",
    "failures_reached_budget": "as many comparisons failed as the budget allows judged ones: "
    "the judge (provider) failed too often to keep replacing them",
    "reliability_target_met": "the reliability reached the run's target "
    "(CJLLM_TARGET_RELIABILITY), so more comparisons were not needed",
    "se_target_met": "the average standard error fell to the run's target "
    "(CJLLM_TARGET_MEAN_SE), so more comparisons were not needed",
    "no_useful_pairs": "no pair of essays was left that the rules allow comparing again",
    "every_comparison_failed": "several rounds in a row had every comparison fail: the "
    "judge (provider) was not answering",
    "too_few_comparisons_succeeded": "too few comparisons succeeded for a trustworthy ranking",
    "disconnected_comparison_graph": "the comparisons left groups of essays never compared "
    "with each other, so their scores are not on one scale",
    "scoring_failed": "the scores could not be computed from the comparisons",
    "internal_error": "an internal error stopped the run",
}


def stop_reason(code: str) -> str:
    """The stop reason in plain words (the code itself when it is not one we know)."""
    return _STOP_REASONS.get(code, code.replace("_", " "))


def reliability_grade(value: float | None) -> str:
    """A few words on what a reliability supports."""
    if value is None or not math.isfinite(value):
        return "not available: too few comparisons to judge"
    if value < 0.5:
        return "low: the scores are mostly noise; do not use the rank order"
    if value < 0.7:
        return "modest: only large differences are trustworthy"
    if value < 0.8:
        return "fair: supports broad groups"
    if value < 0.9:
        return "good: supports a rank order"
    return "high: supports fine distinctions"


def win_probability(difference: float) -> float:
    """How often the judge prefers an essay whose score is ``difference`` higher."""
    return 1.0 / (1.0 + math.exp(-difference))
