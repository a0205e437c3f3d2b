"""How the judge behaved and how far the scale can be trusted, said once for every output.

:func:`judgement_summary` adds the figures to the run summary (``reliability`` and
``judge_model``: order effect, lapse rate, spread of the essays, position consistency), all
taken from the completion event, never recomputed; :func:`judgement_lines` says them in
sentences, read from the summary, for ``report.html`` and the terminal alike.
"""

from __future__ import annotations

from typing import Any

from cjllm.contracts import CJAssessmentCompletedV1


def judgement_summary(result: CJAssessmentCompletedV1) -> dict[str, Any]:
    """Summary keys ``reliability`` and ``judge_model`` (with the share of decisive
    comparisons Essay A won next to the order effect)."""
    judge = result.judge
    if judge is None:
        return {"reliability": result.reliability, "judge_model": None}
    model = judge.model_dump()
    effect = judge.order_effect
    if effect is not None and model["order_effect"] is not None:
        share = effect.essay_a_share
        model["order_effect"]["essay_a_share"] = None if share is None else round(share, 4)
    return {"reliability": result.reliability, "judge_model": model}


def judgement_lines(summary: dict[str, Any]) -> list[str]:
    """Reliability (with split-half and the classical SSR beside it), order effect (and a
    warning when it is significant), lapse rate and position consistency."""
    from cjllm.report import explain

    lines = []
    rel = summary.get("reliability")
    extra = [
        f"{name} {value:.2f}"
        for name, value in (
            ("split-half", summary.get("split_half_reliability")),
            ("classical scale separation", summary.get("scale_separation_reliability")),
        )
        if value is not None
    ]
    lines.append(
        "Reliability: "
        + ("n/a" if rel is None else f"{rel:.2f}")
        + f" — {explain.reliability_grade(rel)}"
        + (f" ({', '.join(extra)})" if extra else "")
    )
    judge = summary.get("judge_model")
    if judge:
        lines += _judge_lines(judge)
    return lines


def _judge_lines(judge: dict[str, Any]) -> list[str]:
    lines = []
    effect = judge.get("order_effect")
    if effect and effect.get("essay_a_share") is not None:
        verdict = "not significant"
        if effect["significant"]:
            verdict = "significant: the judge favours " + (
                "Essay A" if effect["logit"] > 0 else "Essay B"
            )
        lines.append(
            f"Order effect: {effect['logit']:+.2f} logits (SE {effect['se']:.2f}, {verdict}); "
            f"Essay A won {effect['essay_a_share']:.0%} of {effect['decisive']} decisive "
            "comparisons"
        )
        if effect["significant"]:
            lines.append(
                "Warning: the judge is swayed by the order of presentation. Positions were "
                "balanced per essay and the scores are corrected for it."
            )
    spread = judge.get("population_sd")
    if judge.get("lapse_rate") is not None:
        lines.append(
            f"Lapse rate: {judge['lapse_rate']:.0%} of decisions at random (95% "
            f"{judge['lapse_rate_low']:.0%} to {judge['lapse_rate_high']:.0%})"
            + ("" if spread is None else f"; essay spread τ {spread:.2f} logits")
        )
    consistency = judge.get("position_consistency")
    if consistency and consistency["pairs"]:
        share = consistency["consistent"] / consistency["pairs"]
        lines.append(
            f"Position consistency: {share:.0%} of {consistency['pairs']} pairs judged in "
            "both orders chose the same essay"
        )
    return lines
