"""Publish one model or average the two? Model averaging of the final fit's runs, offline.

Run: python bench/lapse_average.py [--first-rep 200] [--reps 100] [--n 40,100] [--k 6,10,20]
     [--judges clean,flip] [--cells n/K/judge,…] [--results average.jsonl] [--table]
     [--check judgement.jsonl] [--split]

Each batch is one of ``bench/judgement.py``'s (``run_batch``: same essays, judge, pairing,
probes and seeds), run to its budget through the service's code; the final fit's own two
chains (ε = 0, and ε sampled) are captured as ``bench/lapse_rule.py`` captures them (no
re-sampling), and every variant is computed from those same draws (common random numbers):

- ``a``, the current rule (``ranking.final_fit``): the lapse run's draws with ε ≥ 0.2 when
  P = P(ε ≥ 0.2) > ½, else the ε = 0 run (the median probability model);
- ``b``, Bayesian model averaging: the mixture of the lapse run's ε ≥ 0.2 draws (weight P)
  and the ε = 0 run (weight 1 − P);
- ``c``, the same with the lapse run's ε > 0 draws, weight P(ε > 0);
- ``d``, the lapse run whole (ε sampled over its prior, 0 included: the average over every ε
  the run itself makes).

A mixture is published as a weighted set of draws: the scores its mean, the SE its SD, the
interval its weighted 2.5/97.5% quantiles, the reliability its mean of corr(scores, θ)². Per
batch and variant the record holds the interval's coverage of the (centred) truth, the
reliability, actual r² and Spearman ρ; ``a`` beside ``run_batch``'s own figures (a check that
the capture reproduces the service's published fit). The table: per condition and variant,
coverage, reliability − r² and median ρ, against the targets of ``bench/judgement.py``
(coverage 0.92–0.97, |reliability − r²| ≤ 0.05). Figures: docs/judgement.md, "Averaging the
two models instead of choosing one"; ``--split``: each variant's coverage over the batches the
current rule scores with either model; ``--check``: variant a against a judgement.py run.
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
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
import judgement  # bench/judgement.py: the batches
import lapse_rule  # bench/lapse_rule.py: the final fit's chains captured

from cjllm.cj import posterior
from cjllm.cj.model_average import weighted_quantile

VARIANTS = {
    "a": "current rule: ε ≥ 0.2 draws if P(ε ≥ 0.2) > ½, else ε = 0 run",
    "b": "mixture: P(ε ≥ 0.2) × ε ≥ 0.2 draws + (1 − P) × ε = 0 run",
    "c": "mixture: P(ε > 0) × ε > 0 draws + (1 − P) × ε = 0 run",
    "d": "the lapse run whole (ε over its prior, 0 included)",
}


def published(parts: list[tuple[np.ndarray, float]], truth: np.ndarray) -> dict[str, float]:
    """The figures of the mixture of ``parts`` (draws, weight) published as the scores."""
    parts = [(d, w) for d, w in parts if w > 0.0 and len(d) > 0]
    draws = np.concatenate([d for d, _ in parts])
    weights = np.concatenate([np.full(len(d), w / len(d)) for d, w in parts])
    weights /= weights.sum()
    mean = weights @ draws
    sd = np.sqrt(weights @ (draws - mean) ** 2)
    if len(parts) == 1:  # one model: its quantiles exactly as posterior.summarise takes them
        low, high = np.quantile(draws, posterior.INTERVAL, axis=0)
    else:
        low = weighted_quantile(draws, weights, posterior.INTERVAL[0])
        high = weighted_quantile(draws, weights, posterior.INTERVAL[1])
    return {
        "coverage": float(np.mean((low <= truth) & (truth <= high))),
        "coverage_se": float(np.mean(np.abs(mean - truth) <= judgement.Z95 * sd)),
        "reliability": posterior.draw_reliability(draws, weights),
        "r2": float(np.corrcoef(mean, truth)[0, 1] ** 2),
        "rho": float(spearmanr(mean, truth).statistic),
        "sd": float(sd.mean()),
    }


def record(condition: judgement.Condition, rep: int) -> dict[str, object]:
    """One batch of ``bench/judgement.py``; every variant from its final fit's draws."""
    figures, truth, (theta0, _), (theta1, kept1) = lapse_rule.captured(condition, rep)
    eps = kept1[:, 1]
    high = eps >= posterior.LAPSE_FLOOR - 1e-9
    some = eps > 1e-9
    p_high, p_some = float(high.mean()), float(some.mean())
    # the lapse model as summarise() takes it: its ε ≥ floor draws unless too few are
    model = theta1[high] if high.sum() >= posterior._FLOOR_DRAWS else theta1
    variants = {
        "a": published([(model, 1.0)] if p_high > 0.5 else [(theta0, 1.0)], truth),
        "b": published([(theta1[high], p_high), (theta0, 1.0 - p_high)], truth),
        "c": published([(theta1[some], p_some), (theta0, 1.0 - p_some)], truth),
        "d": published([(theta1, 1.0)], truth),
    }
    return {
        "condition": asdict(condition),
        "rep": rep,
        "bench": figures,
        "variants": variants,
        "P(ε≥0.2)": p_high,
        "P(ε>0)": p_some,
    }


def table(rows: list[dict[str, object]]) -> tuple[list[str], dict[str, list[str]]]:
    """Per condition: each variant's coverage / reliability − r² / median ρ; the misses."""
    groups: dict[tuple[object, ...], list[dict[str, object]]] = defaultdict(list)
    for row in rows:
        c = row["condition"]
        groups[(c["n"], c["k"], c["judge"], c["pairing"])].append(row)  # type: ignore[index]
    head = "| n | K | judge | pairing | batches | mean P(ε≥0.2) | "
    lines = [head + " | ".join(f"{v}: coverage / rel−r² / median ρ" for v in VARIANTS)
             + " | a: check vs run_batch |", "|" + "---|" * (7 + len(VARIANTS))]  # fmt: skip
    misses: dict[str, list[str]] = {v: [] for v in VARIANTS}
    for key in sorted(groups, key=lambda k: (k[2], k[0], k[1], k[3])):
        group, cells = groups[key], []
        cell = "{}×{} {} {}".format(*key)
        for v in VARIANTS:
            got = [r["variants"][v] for r in group]  # type: ignore[index]
            cover = float(np.mean([g["coverage"] for g in got]))
            gap = float(np.mean([g["reliability"] for g in got]) - np.mean([g["r2"] for g in got]))
            rho = float(np.median([g["rho"] for g in got]))
            bad = not 0.92 <= cover <= 0.97, abs(gap) > 0.05
            shown = (
                ("**{:.3f}**" if bad[0] else "{:.3f}").format(cover),
                ("**{:+.3f}**" if bad[1] else "{:+.3f}").format(gap),
            )
            cells.append(f"{shown[0]} / {shown[1]} / {rho:.3f}")
            misses[v] += [f"coverage {cover:.3f} {cell}"] if bad[0] else []
            misses[v] += [f"rel−r² {gap:+.3f} {cell}"] if bad[1] else []
        same = np.mean([abs(r["variants"]["a"]["coverage"] - r["bench"]["coverage"]) < 1e-9  # type: ignore[index]
                        for r in group])  # fmt: skip
        chk = float(np.mean([r["bench"]["coverage"] for r in group]))  # type: ignore[index]
        p = float(np.mean([r["P(ε≥0.2)"] for r in group]))  # type: ignore[arg-type]
        lines.append("| " + " | ".join(str(k) for k in key) + f" | {len(group)} | {p:.2f} | "
                     + " | ".join(cells) + f" | {chk:.3f}, {same:.0%} same |")  # fmt: skip
    lines += ["", "| n | K | judge | pairing | " + " | ".join(f"{v} − a: coverage (paired, ± SE)"
              for v in list(VARIANTS)[1:]) + " |", "|" + "---|" * (3 + len(VARIANTS))]  # fmt: skip
    for key in sorted(groups, key=lambda k: (k[2], k[0], k[1], k[3])):
        cells = []
        for v in list(VARIANTS)[1:]:
            diff = [r["variants"][v]["coverage"] - r["variants"]["a"]["coverage"]  # type: ignore[index]
                    for r in groups[key]]  # fmt: skip
            se = float(np.std(diff, ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
            cells.append(f"{np.mean(diff):+.3f} ± {se:.3f}")
        lines.append("| " + " | ".join(str(k) for k in key) + " | " + " | ".join(cells) + " |")
    return lines, misses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--first-rep", type=int, default=200)
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--n", default="40,100")
    parser.add_argument("--k", default="6,10,20")
    parser.add_argument("--judges", default="clean,flip")
    parser.add_argument("--pairings", default="adaptive,random")
    parser.add_argument(
        "--cells", help="n/K/judge,… instead of --n × --k × --judges (both pairings each)"
    )
    parser.add_argument("--probe-fraction", type=float, default=0.1, help="adaptive rounds'")
    parser.add_argument("--results", type=Path, default=Path("average.jsonl"))
    parser.add_argument("--table", action="store_true", help="tabulate the results file only")
    parser.add_argument(
        "--check", type=Path, help="a bench/judgement.py results file of the same batches: "
        "how many of them variant a reproduces (coverage, reliability, ρ)"
    )  # fmt: skip
    parser.add_argument("--split", action="store_true", help="also coverage by the rule's choice")
    args = parser.parse_args()
    ns, ks = [int(x) for x in args.n.split(",")], [int(x) for x in args.k.split(",")]
    todo = [c for c in judgement.conditions(ns, ks, args.judges.split(","), args.probe_fraction)
            if c.pairing in args.pairings.split(",")]  # fmt: skip
    if args.cells:
        cells = [tuple(cell.split("/")) for cell in args.cells.split(",")]
        todo = [c for n, k, judge in cells
                for c in judgement.conditions([int(n)], [int(k)], [judge], args.probe_fraction)
                if c.pairing in args.pairings.split(",")]  # fmt: skip
    reps = range(args.first_rep, args.first_rep + args.reps)
    done = judgement.recorded(args.results)
    if not args.table:
        with args.results.open("a", encoding="utf-8") as out:
            for rep in reps:
                for condition in todo:
                    if (condition, rep) not in done:
                        out.write(json.dumps(record(condition, rep)) + "\n")
                        out.flush()
    rows = [json.loads(line) for line in args.results.read_text(encoding="utf-8").splitlines()]
    lines, misses = table([r for r in rows if r["rep"] in reps])
    print("\n".join(f"{v}: {text}" for v, text in VARIANTS.items()), "", *lines, "", sep="\n")
    for v, found in misses.items():
        print(f"{v}: {len(found)} misses" + (": " + "; ".join(found) if found else ""))
    if args.check:
        print(check(rows, args.check))
    if args.split:
        print("", *split([r for r in rows if r["rep"] in reps]), sep="\n")


def split(rows: list[dict[str, object]]) -> list[str]:
    """Per condition, each variant's coverage over the batches the current rule scores with
    the ε = 0 model (P(ε ≥ 0.2) ≤ ½) and over those it scores with the lapse model."""
    groups: dict[tuple[object, ...], list[dict[str, object]]] = defaultdict(list)
    for row in rows:
        c = row["condition"]
        groups[(c["n"], c["k"], c["judge"], c["pairing"])].append(row)  # type: ignore[index]
    names = ", ".join(VARIANTS)
    lines = [f"| n | K | judge | pairing | P ≤ ½: batches: {names} | P > ½: batches: {names} |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for key in sorted(groups, key=lambda k: (k[2], k[0], k[1], k[3])):
        cells = []
        for lapse in (False, True):
            got = [r for r in groups[key] if (float(r["P(ε≥0.2)"]) > 0.5) == lapse]  # type: ignore[arg-type]
            covers = [np.mean([r["variants"][v]["coverage"] for r in got]) if got else np.nan  # type: ignore[index]
                      for v in VARIANTS]  # fmt: skip
            cells.append(f"{len(got)}: " + ", ".join(f"{c:.3f}" for c in covers))
        lines.append("| " + " | ".join(str(k) for k in key) + " | " + " | ".join(cells) + " |")
    return lines


def check(rows: list[dict[str, object]], path: Path) -> str:
    """How many batches variant ``a`` reproduces the figures ``path`` recorded for."""
    grid = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        grid[(judgement.Condition(**row["condition"]), row["rep"])] = row["figures"]
    found = same = 0
    for row in rows:
        figures = grid.get((judgement.Condition(**row["condition"]), row["rep"]))  # type: ignore[arg-type]
        if figures is None:
            continue
        found += 1
        a = row["variants"]["a"]  # type: ignore[index]
        same += all(abs(a[k] - figures[k]) < 1e-9 for k in ("coverage", "reliability", "rho"))
    return f"variant a reproduces {path}'s coverage, reliability and ρ in {same} of {found} batches"


if __name__ == "__main__":
    main()
