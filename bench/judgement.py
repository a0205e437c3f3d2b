"""Can the ranking be trusted? Accuracy, reliability, interval coverage, order effect, lapse.

Run: python bench/judgement.py [--reps 100] [--first-rep 0] [--jobs 2]
[--results judgement.jsonl] [--probe-fraction 0.1] [--random-share 0.1]

Whole batches go through the code the CJ service runs between callbacks — round planning
(``rounds.plan_next_round``), the per-round fit (``ranking.fit_outcomes``), the stopping rules
(``stopping.reason_to_stop``), the final fit (``ranking.final_fit``: the sampled posterior)
and the completion's split-half and classical SSR — with only the provider replaced by a
judge with known truth: essay abilities drawn from N(0, 1.5²) logits, and
P(Essay A wins) = σ(θ_A − θ_B + bias):

- ``clean``: bias 0;
- ``position``: bias +1.0 (the judge favours whichever essay it reads first);
- ``flip``: 20% of decisions flipped at random (a lapse rate ε = 0.4 in the judge model).

Conditions: the project's pairing (``adaptive``) and balanced random pairing (``random``), at
6, 10 and 20 comparisons per essay, for 40 and 100 essays, each judge, ``--reps`` batches each
(the same essays, budget and judge draws for both pairings in a repetition: common random
numbers, see ``decide``; ``--first-rep`` starts at another repetition: fresh seeds).
Adaptive pairing spends the service's default share of lapse probes
(``CJLLM_PAIRING_PROBE_FRACTION``) unless ``--probe-fraction`` says otherwise. Rounds sized
as the service sizes them (``rounds.round_size``: every essay once, at least 25: 25 for 40
essays, 50 for 100); the reliability target is switched off, so every batch spends its
budget. Per condition: median Spearman ρ with the
truth; mean reported reliability, split-half and classical SSR; mean actual r² (squared
Pearson correlation of the scores with the truth); the share of the published 95% intervals
(the posterior's 2.5–97.5% quantiles: ``BatchFit.interval95``) covering the truth (centred),
and beside it the share score ± 1.96·SE would cover (what was published before); the mean
order-effect and lapse estimates with the share of their 95% intervals covering the true
value; the share of batches in which the lapse model is the more probable (P(ε ≥ 0.2) > ½:
below 15 comparisons per essay it then scores the essays alone, from 15 the two models are
averaged with weights P and 1 − P: ``cj/model_average.py``), and (a second table) the coverage
of the batches split by it.
Then the targets: coverage within 0.92–0.97 and |reliability − r²| ≤ 0.05 in every condition;
adaptive beats random by ≥ 0.015 median ρ at 10 per essay with the clean judge, and does not
lose with the noisy ones.

Every finished batch is appended to ``--results`` (JSON lines) as it ends, and a run skips
the batches already there, so a long run can be stopped and resumed, split over several
commands (``--n``, ``--k``, ``--judges``) and tabulated at any point (``--table``: no new
batches). Batches run repetition by repetition across all conditions, so a partial run has
about as many repetitions of each; the table says how many it holds.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # many small fits: threads only contend

import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import mean, median

import numpy as np
import numpy.typing as npt
from scipy.stats import spearmanr

from cjllm.cj import stopping
from cjllm.cj.options import BatchOptions
from cjllm.cj.ranking import classical_ssr, final_fit, fit_outcomes, seed_for, split_half
from cjllm.cj.records import EssayRecord, PairOutcome
from cjllm.cj.rounds import plan_next_round
from cjllm.cj.tables import ComparisonStatus

SD = 1.5
JUDGES = {"clean": (0.0, 0.0), "position": (1.0, 0.0), "flip": (0.0, 0.2)}  # bias, flip share
PAIRINGS = ("adaptive", "random")
Z95 = 1.959963984540054
NAMESPACE = uuid.UUID("1c0ffee0-0000-5000-8000-000000000011")
RANDOM_SHARE = BatchOptions().pairing_random_fraction  # the service's default


@dataclass(frozen=True)
class Condition:
    n: int
    k: int
    judge: str
    pairing: str
    probes: float = 0.0  # adaptive only: CJLLM_PAIRING_PROBE_FRACTION (lapse probes)
    random_share: float = RANDOM_SHARE  # adaptive only: CJLLM_PAIRING_RANDOM_FRACTION


Results = dict[Condition, dict[int, dict[str, float]]]  # condition → repetition → figures


@dataclass(frozen=True)
class Judged:
    """One simulated batch judged to its budget (:func:`judge_batch`)."""

    essays: list[EssayRecord]
    outcomes: list[PairOutcome]
    options: BatchOptions
    batch_id: str
    truth: npt.NDArray[np.float64]


def judge_batch(condition: Condition, rep: int) -> Judged:
    """Plan, judge and refit round by round, as the service does, until a stopping rule."""
    n, judge = condition.n, condition.judge
    bias, flip = JUDGES[judge]
    truth = np.random.default_rng([rep, n, 1]).normal(0.0, SD, n)
    met: dict[tuple[int, int], int] = {}
    essays = [EssayRecord(f"e{i:03d}", i, "", None) for i in range(n)]
    options = BatchOptions(
        comparisons_per_essay=condition.k,
        target_reliability=2.0,
        pairing=condition.pairing,
        pairing_probe_fraction=condition.probes,
        pairing_random_fraction=condition.random_share,
    )
    batch_id = str(uuid.uuid5(NAMESPACE, f"{rep}:{n}:{condition.k}:{judge}:{condition.pairing}"))
    outcomes: list[PairOutcome] = []
    fit = fit_outcomes(essays, outcomes, options)
    number = 0
    while stopping.reason_to_stop(options, n, stopping.tally(outcomes), fit) is None:
        number += 1
        pairs = plan_next_round(batch_id, number, options, essays, outcomes, fit)
        if not pairs:
            break
        for p in pairs:
            a, b = int(p.essay_a_id[1:]), int(p.essay_b_id[1:])
            first_won = decide(rep, a, b, met, truth, bias, flip)
            winner = "Essay A" if first_won else "Essay B"
            done = ComparisonStatus.SUCCEEDED
            outcome = PairOutcome(p.essay_a_id, p.essay_b_id, done, winner, p.attempt, number)
            outcomes.append(outcome)
        fit = fit_outcomes(essays, outcomes, options)
    return Judged(essays, outcomes, options, batch_id, truth)


def run_batch(condition: Condition, rep: int) -> dict[str, float]:
    """One simulated batch to its budget; the figures of its final fit."""
    judged = judge_batch(condition, rep)
    essays, outcomes, options, truth = judged.essays, judged.outcomes, judged.options, judged.truth
    n, batch_id = condition.n, judged.batch_id
    bias, flip = JUDGES[condition.judge]
    final = final_fit(essays, outcomes, options)
    assert final.model is not None and final.reliability is not None
    centred = truth - truth.mean()
    lower, upper = final.interval95()
    model, (low, high) = final.model, final.lapse_interval or (0.0, 0.0)
    order = final.order_effect()
    delta, delta_se = (order.logit, order.se) if order is not None else (0.0, 0.0)
    split = split_half(final, n, model.prior, options.split_half_splits, seed_for(batch_id, 0))
    return {
        "rho": float(spearmanr(final.theta, truth).statistic),
        "reliability": final.reliability,
        "split_half": float("nan") if split is None else split,
        "ssr": classical_ssr(final, n, options.bt_prior) or float("nan"),
        "r2": float(np.corrcoef(final.theta, truth)[0, 1] ** 2),
        "coverage": float(np.mean((lower <= centred) & (centred <= upper))),
        "coverage_se": float(np.mean(np.abs(final.theta - centred) <= Z95 * final.se)),
        "order": delta,
        "order_covered": float(abs(delta - bias) <= Z95 * delta_se),
        "lapse": final.lapse_rate or 0.0,
        "lapse_covered": float(low <= 2 * flip <= high),
        "comparisons": float(final.successes),
        "scored_with_lapse": float(final.scored_with_lapse),
        "lapse_probability": final.lapse_probability or 0.0,
    }


def decide(
    rep: int,
    a: int,
    b: int,
    met: dict[tuple[int, int], int],
    truth: np.ndarray,
    bias: float,
    flip: float,
) -> bool:
    """The judge's decision (True: Essay A won). Common random numbers: the draws depend on
    the repetition, the two essays and how often they met before, not on the order in which
    the pairing asks, so both pairings see the same decision when they ask the same thing
    and their difference is measured with less noise."""
    key = (min(a, b), max(a, b))
    met[key] = met.get(key, 0) + 1
    win, flipped = np.random.default_rng([rep, *key, met[key]]).random(2)
    p_low = 1.0 / (1.0 + np.exp(truth[key[1]] - truth[key[0]] - (bias if a == key[0] else -bias)))
    low_won = bool(win < p_low)
    if flipped < flip:
        low_won = not low_won
    return low_won == (a == key[0])


def _task(args: tuple[Condition, int]) -> tuple[Condition, int, dict[str, float]]:
    condition, rep = args
    return condition, rep, run_batch(condition, rep)


def conditions(
    ns: Iterable[int],
    ks: Iterable[int],
    judges: Iterable[str],
    probes: float = 0.0,
    random_share: float = RANDOM_SHARE,
) -> list[Condition]:
    """Every condition, both pairings; ``probes`` and ``random_share`` apply to adaptive
    pairing only, so the random-pairing batches of a run with other shares are those of one
    with the defaults (the same batch ids: common random numbers across the shares too)."""
    adaptive = {"probes": probes, "random_share": random_share}
    return [
        Condition(n, k, j, p, **(adaptive if p == "adaptive" else {}))
        for n in ns
        for k in ks
        for j in judges
        for p in PAIRINGS
    ]


def nanmean(values: list[float]) -> float:
    kept = [v for v in values if not np.isnan(v)]
    return mean(kept) if kept else float("nan")


def table(results: Results) -> list[str]:
    head = (
        "| n | K | judge | pairing | median ρ | reliability | split-half | classical SSR | "
        "actual r² | reliability − r² | 95% coverage | (± 1.96·SE) | order effect (true) | "
        "lapse ε (true) | P(ε ≥ 0.2) > ½ |"
    )
    lines = [head, "|" + "---|" * 15]
    for c, reps in results.items():
        rows = list(reps.values())
        m = {key: nanmean([r[key] for r in rows]) for key in rows[0]}
        bias, flip = JUDGES[c.judge]
        pairing = f"{c.pairing} + probes {c.probes:g}" if c.probes else c.pairing
        if c.random_share != RANDOM_SHARE:
            pairing += f", random share {c.random_share:g}"
        lines.append(
            f"| {c.n} | {c.k} | {c.judge} | {pairing} "
            f"| {median(r['rho'] for r in rows):.3f} "
            f"| {m['reliability']:.3f} | {m['split_half']:.3f} | {m['ssr']:.3f} | {m['r2']:.3f} "
            f"| {m['reliability'] - m['r2']:+.3f} | {m['coverage']:.3f} "
            f"| {m.get('coverage_se', float('nan')):.3f} "
            f"| {m['order']:+.2f} ({bias:.1f}; covered {m['order_covered']:.0%}) "
            f"| {m['lapse']:.2f} ({2 * flip:.1f}; covered {m['lapse_covered']:.0%}) "
            f"| {m.get('scored_with_lapse', float('nan')):.0%} |"
        )
    return lines


def median_gain_interval(
    ours: npt.NDArray[np.float64], theirs: npt.NDArray[np.float64], resamples: int = 2000
) -> tuple[float, float]:
    """A 95% bootstrap interval of median(ours) − median(theirs), repetitions resampled in
    pairs (seeded: the same results give the same interval). 100 repetitions pin the median
    gain to about ±0.005 (docs/performance.md, "Twelfth round")."""
    picks = np.random.default_rng(0).integers(0, ours.size, (resamples, ours.size))
    gains = np.median(ours[picks], axis=1) - np.median(theirs[picks], axis=1)
    low, high = np.quantile(gains, [0.025, 0.975])
    return float(low), float(high)


def targets(results: Results) -> list[str]:
    lines = ["", "| n | K | judge | adaptive − random, median ρ (95% bootstrap) "
             "| paired mean difference (SE) |", "|---|---|---|---|---|"]  # fmt: skip
    misses = []
    for c, reps in results.items():
        rows = list(reps.values())
        cover = mean(r["coverage"] for r in rows)
        gap = mean(r["reliability"] for r in rows) - mean(r["r2"] for r in rows)
        if not 0.92 <= cover <= 0.97:
            misses.append(f"coverage {cover:.3f} at {c}")
        if abs(gap) > 0.05:
            misses.append(f"reliability − r² {gap:+.3f} at {c}")
        if c.pairing != "adaptive":
            continue
        other = results.get(Condition(c.n, c.k, c.judge, "random"), {})
        shared = sorted(set(reps) & set(other))
        if not shared:
            continue
        ours = np.array([reps[i]["rho"] for i in shared])
        theirs = np.array([other[i]["rho"] for i in shared])
        diff = ours - theirs
        gain = float(np.median(ours) - np.median(theirs))
        low, high = median_gain_interval(ours, theirs)
        se = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else float("nan")
        lines.append(
            f"| {c.n} | {c.k} | {c.judge} | {gain:+.4f} ({low:+.4f}…{high:+.4f}) "
            f"| {diff.mean():+.4f} ({se:.4f}) |"
        )
        if c.k == 10 and c.judge == "clean" and gain < 0.015:
            misses.append(
                f"pairing gain {gain:+.4f} < 0.015 at n={c.n}, K=10, clean judge "
                f"({diff.size} repetitions: 95% interval {low:+.4f}…{high:+.4f})"
            )
        if c.k == 10 and c.judge != "clean" and gain < 0.0:
            misses.append(f"pairing loses {gain:+.4f} at n={c.n}, K=10, {c.judge} judge")
    lines.append("")
    lines += ["targets met"] if not misses else ["targets missed:", *(f"- {m}" for m in misses)]
    return lines


def model_choice(results: Results) -> list[str]:
    """Coverage split by the more probable model: the batches where the lapse model is
    (P(ε ≥ 0.2) > ½: below 15 comparisons per essay it scores them alone, from 15 with weight
    P in the average) and those where ε = 0 is — where a miss comes from."""
    lines = ["", "| n | K | judge | pairing | batches | P(ε ≥ 0.2) > ½: share, coverage |"
             " P(ε ≥ 0.2) ≤ ½: share, coverage |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for c, reps in results.items():
        rows = [r for r in reps.values() if not np.isnan(r.get("scored_with_lapse", np.nan))]
        if not rows:
            continue
        parts = []
        for lapse in (1.0, 0.0):
            kept = [r["coverage"] for r in rows if r["scored_with_lapse"] == lapse]
            share = len(kept) / len(rows)
            parts.append(f"{share:.0%}, {mean(kept):.3f}" if kept else f"{share:.0%}, –")
        lines.append(f"| {c.n} | {c.k} | {c.judge} | {c.pairing} | {len(rows)} | {parts[0]} "
                     f"| {parts[1]} |")  # fmt: skip
    return lines


def recorded(path: Path) -> set[tuple[Condition, int]]:
    """The (condition, repetition) of every batch already in a results file (none if absent)."""
    if not path.exists():
        return set()
    rows = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines())
    return {(Condition(**row["condition"]), row["rep"]) for row in rows}


def load(path: Path, todo: list[Condition], reps: range) -> Results:
    """The batches of ``todo`` (repetitions in ``reps``) already in the results file."""
    results: Results = {c: {} for c in todo}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            c = Condition(**row["condition"])
            if c in results and row["rep"] in reps:
                results[c][row["rep"]] = row["figures"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--first-rep", type=int, default=0, help="first repetition (seed)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--n", default="40,100")
    parser.add_argument("--k", default="6,10,20")
    parser.add_argument("--judges", default="clean,position,flip")
    parser.add_argument("--results", type=Path, default=Path("judgement.jsonl"))
    parser.add_argument(
        "--probe-fraction",
        type=float,
        default=BatchOptions().pairing_probe_fraction,
        help="adaptive rounds' lapse-probe share (default: the service's)",
    )
    parser.add_argument(
        "--random-share",
        type=float,
        default=RANDOM_SHARE,
        help="adaptive rounds' share of partners drawn at random (a round with 5 probes or "
        "more counts them in it; default: the service's)",
    )
    parser.add_argument("--table", action="store_true", help="tabulate the results file only")
    args = parser.parse_args()
    todo = conditions(
        [int(x) for x in args.n.split(",")],
        [int(x) for x in args.k.split(",")],
        args.judges.split(","),
        args.probe_fraction,
        args.random_share,
    )
    reps = range(args.first_rep, args.first_rep + args.reps)
    results = load(args.results, todo, reps)
    tasks = [(c, rep) for rep in reps for c in todo if rep not in results[c]]
    start = time.perf_counter()
    if tasks and not args.table:
        with ProcessPoolExecutor(args.jobs) as pool, args.results.open("a") as out:
            for done in as_completed([pool.submit(_task, task) for task in tasks]):
                c, rep, figures = done.result()
                results[c][rep] = figures
                row = {"condition": asdict(c), "rep": rep, "figures": figures}
                out.write(json.dumps(row) + "\n")
                out.flush()
        seconds = time.perf_counter() - start
        print(f"{len(tasks)} new batches in {seconds:.0f} s with {args.jobs} processes")
    results = {c: reps for c, reps in results.items() if reps}
    if not results:
        raise SystemExit(f"no batches in {args.results}")
    counts = sorted({len(reps) for reps in results.values()})
    held = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    print(f"{held} batches per condition, abilities N(0, {SD}²), rounds as the service sizes them")
    print("\n".join(table(results) + targets(results) + model_choice(results)))


if __name__ == "__main__":
    main()
