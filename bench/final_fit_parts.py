"""Where the final fit's intervals and reliability come from: its two chains taken apart.

Run: python bench/final_fit_parts.py [--reps 20] [--n 40] [--k 6] [--judges clean,position,flip]
     [--results parts.jsonl] [--lapse-grid 0.39,0.4,0.41] [--tau-prior 1.5,1] [--probes 0.2]

Each batch is one of ``bench/judgement.py``'s (same essays, judge, pairing and seeds: its
``run_batch``), run to its budget; then the final fit's two posterior runs are repeated on the
same comparisons with the same seed (``cj.posterior``'s chain, as ``ranking.final_fit`` calls
it) and their draws kept. Per condition, for what is published ("reported": the chain the
median probability model chose) and for its parts — the ε = 0 run, the lapse run, and the lapse
run's draws split into those at ε = 0 and those at ε > 0 — the share of score ± 1.96·SD
intervals holding the truth, reliability (posterior mean of corr(scores, θ)²) minus actual r²,
the slope of the scores on the truth and the mean SD. Also: the mean P(ε > 0); reliability
re-estimated against the other half of the draws (a Monte Carlo check: a draw is part of the
mean it is correlated with); and the share of batches where WAIC, the predictive criterion,
prefers the lapse model. ``--lapse-grid``: the lapse run's ε only on these values, equally
likely a priori (e.g. held near a flipping judge's true 0.4, to see what the rest of the model
does once ε is known). ``--tau-prior SCALE,SHAPE``: τ's prior in the re-sampled runs (shape 1
a half-normal, 2 a Rayleigh; for checkouts whose posterior takes a shape). Figures and what
they decided: docs/performance.md, "Judgement".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # many small fits: threads only contend

import numpy as np
from scipy.special import expit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import judgement  # bench/judgement.py: the batches

from cjllm.cj import posterior, ranking

PARTS = ("reported", "ε = 0 run", "lapse run", "lapse run, ε = 0 draws", "lapse run, ε > 0 draws")


def summary(draws: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Coverage, reliability (and its split-half Monte Carlo check), r², slope, mean SD."""
    mean, sd = draws.mean(axis=0), draws.std(axis=0, ddof=1)

    def reliability(part: np.ndarray, scores: np.ndarray) -> np.ndarray:
        c = part - part.mean(axis=1, keepdims=True)
        s = scores - scores.mean()
        return ((c @ s) / (np.sqrt((c**2).sum(axis=1)) * math.sqrt(float(s @ s)))) ** 2

    half = len(draws) // 2
    crossed = np.concatenate(
        [
            reliability(draws[:half], draws[half:].mean(0)),
            reliability(draws[half:], draws[:half].mean(0)),
        ]
    )
    return {
        "coverage": float(np.mean(np.abs(mean - truth) <= judgement.Z95 * sd)),
        "reliability": float(np.mean(reliability(draws, mean))),
        "crossed": float(np.mean(crossed)),
        "r2": float(np.corrcoef(mean, truth)[0, 1] ** 2),
        "slope": float(np.polyfit(truth, mean, 1)[0]),
        "sd": float(sd.mean()),
    }


def parts(condition: judgement.Condition, rep: int) -> dict[str, object]:
    captured: list[tuple[object, ...]] = []
    published = judgement.final_fit

    def spy(*args: object, **kwargs: object) -> object:
        captured.append(args)
        return published(*args, **kwargs)  # type: ignore[arg-type]

    judgement.final_fit = spy  # type: ignore[assignment]
    try:
        figures = judgement.run_batch(condition, rep)
    finally:
        judgement.final_fit = published
    essays, outcomes, options = captured[0]
    fit = ranking.fit_outcomes(essays, outcomes, options)  # type: ignore[arg-type]
    assert fit.model is not None and fit.population_sd is not None
    n = condition.n
    truth = np.random.default_rng([rep, n, 1]).normal(0.0, judgement.SD, n)  # as run_batch
    truth -= truth.mean()
    f, s = np.asarray(fit.first), np.asarray(fit.second)
    won = np.asarray(fit.first_won, dtype=bool)
    out: dict[str, object] = {"condition": vars(condition), "rep": rep, "bench": figures}
    waic = {}
    # τ's prior as this checkout's posterior module takes it (a scale; or a scale and a shape)
    tau_prior: dict[str, object] = (
        {"tau_prior": (posterior.TAU_SCALE, posterior.TAU_SHAPE)}
        if hasattr(posterior, "TAU_SHAPE")
        else {"tau_scale": posterior.TAU_SCALE}
    )
    for lapse in (False, True):
        theta, kept = posterior.sample_chain(
            n, f, s, won, order_prior=options.bt_prior, start_theta=np.asarray(fit.model.theta),
            start_order=fit.model.order_effect or 0.0, start_tau=fit.population_sd,
            seed=ranking._data_seed(fit), draws=posterior.DRAWS,
            burn_in=posterior.BURN_IN[lapse], lapse=lapse,
            rescales=posterior.RESCALES[lapse], **tau_prior,
        )  # fmt: skip
        eta = theta[:, f] - theta[:, s] + kept[:, :1]
        eps = kept[:, 1:2]
        loglik = np.log(eps / 2.0 + (1.0 - eps) * expit(np.where(won, eta, -eta)))
        lppd = float(np.log(np.exp(loglik).mean(axis=0)).sum())
        waic[lapse] = lppd - float(loglik.var(axis=0, ddof=1).sum())
        if not lapse:
            out[PARTS[1]] = summary(theta, truth)
            continue
        out[PARTS[2]] = summary(theta, truth)
        out["P(ε > 0)"] = float(np.mean(kept[:, 1] > 0.0))
        for name, keep in ((PARTS[3], kept[:, 1] == 0.0), (PARTS[4], kept[:, 1] > 0.0)):
            out[name] = summary(theta[keep], truth) if keep.sum() >= 20 else None
    out[PARTS[0]] = out[PARTS[2] if figures["scored_with_lapse"] else PARTS[1]]
    out["waic prefers lapse"] = float(waic[True] > waic[False])
    return out


def table(rows: list[dict[str, object]]) -> list[str]:
    groups: dict[tuple[object, ...], list[dict[str, object]]] = defaultdict(list)
    for row in rows:
        c = row["condition"]
        groups[(c["n"], c["k"], c["judge"], c["pairing"])].append(row)  # type: ignore[index]
    lines = [
        "| n | K | judge | pairing | part | batches | 95% coverage | reliability − r² "
        "| (crossed halves) | slope on truth | mean SD | P(ε > 0) | WAIC prefers ε |",
        "|" + "---|" * 13,
    ]
    for key, group in groups.items():
        head = " | ".join(str(k) for k in key)
        for part in PARTS:
            got = [r[part] for r in group if r.get(part)]
            if not got:
                continue
            m = {k: float(np.mean([g[k] for g in got])) for k in got[0]}  # type: ignore[index]
            extra = ("", "")
            if part == PARTS[0]:
                extra = (
                    f"{np.mean([r['P(ε > 0)'] for r in group]):.2f}",
                    f"{np.mean([r['waic prefers lapse'] for r in group]):.0%}",
                )
            lines.append(
                f"| {head} | {part} | {len(got)} | {m['coverage']:.3f} "
                f"| {m['reliability'] - m['r2']:+.3f} | {m['crossed'] - m['r2']:+.3f} "
                f"| {m['slope']:.2f} | {m['sd']:.2f} | {extra[0]} | {extra[1]} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--n", default="40")
    parser.add_argument("--k", default="6")
    parser.add_argument("--judges", default="clean,position,flip")
    parser.add_argument("--results", type=Path, default=Path("final_fit_parts.jsonl"))
    parser.add_argument("--table", action="store_true", help="tabulate the results file only")
    parser.add_argument(
        "--lapse-grid", help="comma-separated ε values (flat prior) for the lapse run"
    )
    parser.add_argument("--probes", type=float, default=0.0, help="lapse-probe share (adaptive)")
    parser.add_argument("--tau-prior", help="SCALE,SHAPE of τ's prior in the re-sampled runs")
    args = parser.parse_args()
    if args.tau_prior:  # read at each call of parts(): replaced for this run
        scale, shape = args.tau_prior.split(",")
        posterior.TAU_SCALE, posterior.TAU_SHAPE = float(scale), int(shape)  # type: ignore[misc]
    if args.lapse_grid:  # the module's grid and prior are read at each call: replaced for this run
        grid = np.array([float(x) for x in args.lapse_grid.split(",")])
        posterior.LAPSE_GRID = grid  # type: ignore[misc]
        posterior._LAPSE_LOG_PRIOR = np.full(grid.size, -math.log(grid.size))
    todo = judgement.conditions(
        [int(x) for x in args.n.split(",")], [int(x) for x in args.k.split(",")],
        args.judges.split(","), args.probes,
    )  # fmt: skip
    done = judgement.recorded(args.results)
    if not args.table:
        with args.results.open("a", encoding="utf-8") as out:
            for rep in range(args.reps):
                for condition in todo:
                    if (condition, rep) not in done:
                        out.write(json.dumps(parts(condition, rep)) + "\n")
                        out.flush()
    rows = [json.loads(line) for line in args.results.read_text(encoding="utf-8").splitlines()]
    wanted = set(todo)
    rows = [
        r for r in rows if judgement.Condition(**r["condition"]) in wanted and r["rep"] < args.reps
    ]
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
