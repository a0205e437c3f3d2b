"""Why do the 95% intervals over-cover? The final fit's chains taken apart, essay by essay.

Run: python bench/interval_check.py [--reps 100] [--first-rep 100] [--n 40] [--k 6]
     [--judge clean] [--pairing adaptive] [--probes 0.1] [--long 0] [--results check.jsonl]
     [--table]

Each batch is one of ``bench/judgement.py``'s (its ``run_batch``: the same essays, judge,
pairing, probes and seeds), run to its budget through the service's code; the final fit's two
chains (``posterior.sample_chain`` as ``ranking.final_fit`` runs them) are captured. Per
essay it records the truth (centred), the published score, its comparisons, and for the
ε = 0 run and the published part (the lapse run's ε ≥ 0.2 draws when P(ε ≥ 0.2) > ½) whether
the truth lies in: score ± 1.96·SD (what is published), the posterior's 2.5–97.5% quantile
interval, its 95% highest-density interval; and the τ draws' median and the SD the ε = 0 run
would give at τ fixed at its true value (a third chain, τ held: ``--fixed-tau``). With
``--long N`` it also reruns the ε = 0 chain N times longer (burn-in and draws) from the same
start and records its SDs: the sampler's Monte Carlo error in the SDs.

The table: coverage of each interval form by the essay's position (true rank: the outer
fifth at each end, the middle) and by its number of comparisons; the ratio of the SD
interval's half-width to the quantile interval's; τ's posterior median against the true
1.5; the published SDs against the SDs at the true τ; the long chains' SDs against the
default chain's. Figures and what they decided: docs/judgement.md, "Why the sparsest
adaptive design over-covers".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # many small fits: threads only contend

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import judgement  # bench/judgement.py: the batches

from cjllm.cj import posterior

Z95 = judgement.Z95
POSITIONS = ("low fifth", "middle", "high fifth")


def forms(draws: np.ndarray, truth: np.ndarray) -> dict[str, list[float]]:
    """Per essay: the truth's coverage by each interval form, the SD and the quantile
    interval's half-width, and the skewness of the marginal posterior."""
    mean, sd = draws.mean(axis=0), draws.std(axis=0, ddof=1)
    low, high = np.quantile(draws, [0.025, 0.975], axis=0)
    hpd = np.array([posterior.highest_density(draws[:, i]) for i in range(draws.shape[1])])
    centred = draws - mean
    skew = (centred**3).mean(axis=0) / np.maximum(sd, 1e-12) ** 3
    return {
        "mean": mean.tolist(),
        "sd": sd.tolist(),
        "sd_covered": (np.abs(mean - truth) <= Z95 * sd).astype(float).tolist(),
        "quantile_covered": ((low <= truth) & (truth <= high)).astype(float).tolist(),
        "hpd_covered": ((hpd[:, 0] <= truth) & (truth <= hpd[:, 1])).astype(float).tolist(),
        "quantile_half": ((high - low) / 2.0).tolist(),
        "skew": skew.tolist(),
    }


def record(
    condition: judgement.Condition, rep: int, long: int, fixed_tau: bool
) -> dict[str, object]:
    """One batch of ``bench/judgement.py`` with its final fit's chains taken apart per essay."""
    chains: dict[bool, tuple[np.ndarray, np.ndarray]] = {}
    calls: dict[bool, tuple[tuple[object, ...], dict[str, object]]] = {}
    run = posterior.sample_chain

    def spy(*args: object, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        out = run(*args, **kwargs)  # type: ignore[arg-type]
        chains[bool(kwargs["lapse"])] = out
        calls[bool(kwargs["lapse"])] = args, kwargs
        return out

    posterior.sample_chain = spy  # type: ignore[assignment]
    try:
        figures = judgement.run_batch(condition, rep)
    finally:
        posterior.sample_chain = run
    truth = np.random.default_rng([rep, condition.n, 1]).normal(0.0, judgement.SD, condition.n)
    truth -= truth.mean()
    (theta0, kept0), (theta1, kept1) = chains[False], chains[True]
    eps = kept1[:, 1]
    lapsing = eps >= posterior.LAPSE_FLOOR - 1e-9
    chose_lapse = bool(np.mean(lapsing) > 0.5 and lapsing.sum() >= 20)
    published = theta1[lapsing] if chose_lapse else theta0
    args, kwargs = calls[False]
    first, second = np.asarray(args[1]), np.asarray(args[2])
    counts = np.bincount(first, minlength=condition.n) + np.bincount(second, minlength=condition.n)
    row: dict[str, object] = {
        "condition": asdict(condition),
        "rep": rep,
        "bench_coverage": figures["coverage"],
        "chose_lapse": chose_lapse,
        "truth": truth.tolist(),
        "comparisons": counts.tolist(),
        "clean": forms(theta0, truth),
        "published": forms(published, truth),
        "tau_clean": float(np.median(kept0[:, 2])),
        "tau_clean_mean": float(np.mean(kept0[:, 2])),
        "tau_published": float(np.median((kept1[lapsing] if chose_lapse else kept0)[:, 2])),
    }
    if fixed_tau:  # τ held at the truth: a plain Gibbs chain without τ or scale moves
        held = dict(kwargs, start_tau=judgement.SD, rescales=0)
        step = posterior._tau_step
        posterior._tau_step = lambda tau2, *a, **k: tau2  # type: ignore[assignment]
        try:
            theta_t, _ = run(*args, **held)  # type: ignore[arg-type]
        finally:
            posterior._tau_step = step
        row["fixed_tau"] = forms(theta_t, truth)
    if long:
        longer = dict(kwargs, draws=int(kwargs["draws"]) * long,  # type: ignore[call-overload]
                      burn_in=int(kwargs["burn_in"]) * long, seed=[rep, 99])  # type: ignore[call-overload]  # fmt: skip
        theta_l, kept_l = run(*args, **longer)  # type: ignore[arg-type]
        row["long"] = forms(theta_l, truth)
        row["tau_long"] = float(np.median(kept_l[:, 2]))
        again = dict(kwargs, seed=[rep, 98])
        row["again"] = forms(run(*args, **again)[0], truth)  # type: ignore[arg-type]
    return row


def position(truth: list[float]) -> list[str]:
    order = np.argsort(np.argsort(truth))
    fifth = len(truth) / 5.0
    return [POSITIONS[0] if r < fifth else POSITIONS[2] if r >= len(truth) - fifth else POSITIONS[1]
            for r in order]  # fmt: skip


def tabulate(rows: list[dict[str, object]]) -> list[str]:
    chose = np.mean([r["chose_lapse"] for r in rows])
    out = [f"{len(rows)} batches; lapse model chosen in {chose:.0%}"]
    parts = [p for p in ("published", "clean", "fixed_tau", "long", "again") if p in rows[0]]
    # coverage per interval form and part, by position and by comparisons
    groups: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        where = position(r["truth"])  # type: ignore[arg-type]
        counts = r["comparisons"]
        for part in parts:
            f = r[part]
            for i, (pos, c) in enumerate(zip(where, counts, strict=True)):  # type: ignore[arg-type, call-overload]
                band = "≤4" if c <= 4 else "5–6" if c <= 6 else "7–8" if c <= 8 else "≥9"
                for key in ("all", pos, f"comparisons {band}"):
                    g = groups[(part, key)]
                    for form in ("sd_covered", "quantile_covered", "hpd_covered"):
                        g[form].append(f[form][i])  # type: ignore[index]
                    g["ratio"].append(Z95 * f["sd"][i] / max(f["quantile_half"][i], 1e-12))  # type: ignore[index]
                    g["sd"].append(f["sd"][i])  # type: ignore[index]
                    g["skew"].append(f["skew"][i])  # type: ignore[index]
                    g["sq_error"].append((f["mean"][i] - r["truth"][i]) ** 2)  # type: ignore[index]
    keys = ["all", *POSITIONS, "comparisons ≤4", "comparisons 5–6", "comparisons 7–8",
            "comparisons ≥9"]  # fmt: skip
    head = ("| part | essays | share | SD interval | quantile | HPD | 1.96·SD / quantile half "
            "| mean SD | RMSE | mean skew |")  # fmt: skip
    out += ["", head, "|" + "---|" * 10]
    for part in parts:
        total = len(groups[(part, "all")]["sd"])
        for key in keys:
            g = groups[(part, key)]
            if not g["sd"]:
                continue
            out.append(
                f"| {part} | {key} | {len(g['sd']) / total:.2f} | {np.mean(g['sd_covered']):.3f} "
                f"| {np.mean(g['quantile_covered']):.3f} | {np.mean(g['hpd_covered']):.3f} "
                f"| {np.mean(g['ratio']):.3f} | {np.mean(g['sd']):.3f} "
                f"| {np.sqrt(np.mean(g['sq_error'])):.3f} | {np.mean(g['skew']):+.2f} |"
            )
    taus = np.array([r["tau_clean"] for r in rows])
    out += ["", f"τ (true {judgement.SD}), ε = 0 run: posterior median, mean over batches "
            f"{taus.mean():.3f} (SD {taus.std(ddof=1):.3f}; 10/50/90%: "
            + "/".join(f"{q:.2f}" for q in np.quantile(taus, [0.1, 0.5, 0.9])) + "); "
            f"posterior mean {np.mean([r['tau_clean_mean'] for r in rows]):.3f}"]  # fmt: skip
    for part in ("fixed_tau", "long", "again"):
        if part in rows[0]:
            ratio = [np.mean(np.array(r[part]["sd"]) / np.array(r["clean"]["sd"])) for r in rows]  # type: ignore[index]
            spread = [np.std(np.array(r[part]["sd"]) / np.array(r["clean"]["sd"])) for r in rows]  # type: ignore[index]
            out.append(f"{part} SD / ε = 0 run's SD: mean {np.mean(ratio):.3f}, "
                       f"per-essay spread {np.mean(spread):.3f}")  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--first-rep", type=int, default=100)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--judge", default="clean")
    parser.add_argument("--pairing", default="adaptive")
    parser.add_argument("--probes", type=float, default=0.1, help="adaptive rounds' probe share")
    parser.add_argument("--long", type=int, default=0, help="also an ε = 0 chain N× longer")
    parser.add_argument("--fixed-tau", action="store_true", help="also an ε = 0 chain, true τ")
    parser.add_argument("--results", type=Path, default=Path("interval_check.jsonl"))
    parser.add_argument("--table", action="store_true", help="tabulate the results file only")
    args = parser.parse_args()
    probes = args.probes if args.pairing == "adaptive" else 0.0
    condition = judgement.Condition(args.n, args.k, args.judge, args.pairing, probes)
    reps = range(args.first_rep, args.first_rep + args.reps)
    rows = []
    if args.results.exists():
        rows = [json.loads(line) for line in args.results.read_text(encoding="utf-8").splitlines()]
    rows = [r for r in rows
            if judgement.Condition(**r["condition"]) == condition and r["rep"] in reps]  # fmt: skip
    done = {r["rep"] for r in rows}
    if not args.table:
        with args.results.open("a", encoding="utf-8") as out:
            for rep in reps:
                if rep not in done:
                    row = record(condition, rep, args.long, args.fixed_tau)
                    out.write(json.dumps(row) + "\n")
                    out.flush()
                    rows.append(row)
    print(f"{condition}, repetitions {reps.start}–{reps.stop - 1}")
    print("\n".join(tabulate(rows)))


if __name__ == "__main__":
    main()
