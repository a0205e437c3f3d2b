"""Which chain should the final fit publish? Selection rules evaluated offline on recorded batches.

Run: python bench/lapse_rule.py [--reps 25] [--n 40,100] [--k 6,10] [--judges clean,position,flip]
     [--probes 0,0.1,0.2] [--results rule.jsonl] [--table]

Each batch is one of ``bench/judgement.py``'s (same essays, judge, pairing and seeds: its
``run_batch``), run to its budget through the service's code. The final fit's own two chains
(``posterior.sample_chain``, as ``ranking.final_fit`` runs them: no re-sampling) are captured, and
what any selection rule needs is recorded per batch: for the ε = 0 run, the whole lapse run,
and the lapse run's draws with ε ≥ x for each grid value x, the share of score ± 1.96·SD
intervals holding the (centred) truth, the reported reliability (posterior mean of
corr(scores, θ)²), actual r², Spearman ρ with the truth and the mean SD; and the lapse run's
P(ε ≥ x) for every grid value, its posterior mean and median of ε. A rule maps a batch's
record to the part it publishes, so every rule is evaluated over the same batches
(``RULES``), per probe share (``--probes``: adaptive rounds' ``CJLLM_PAIRING_PROBE_FRACTION``;
random-pairing batches are the same for every share), against the three targets of
``bench/judgement.py``: coverage in 0.92–0.97 and |reliability − r²| ≤ 0.05 in every condition,
adaptive − random median ρ ≥ +0.015 at K = 10 with the clean judge and ≥ 0 with the others.
Figures and what they decided: docs/performance.md, "Judgement".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from statistics import median

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # many small fits: threads only contend

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
import judgement  # bench/judgement.py: the batches

from cjllm.cj import posterior

GRID = [float(x) for x in posterior.LAPSE_GRID if x > 0.0]
Record = dict[str, object]
Chain = tuple[np.ndarray, np.ndarray]  # a run's kept draws: θ (draws × essays), (δ, ε, τ)


def summary(draws: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """What the bench reports of a set of draws published as the scores."""
    mean, sd = draws.mean(axis=0), draws.std(axis=0, ddof=1)
    c = draws - draws.mean(axis=1, keepdims=True)
    s = mean - mean.mean()
    corr = (c @ s) / (np.sqrt((c**2).sum(axis=1)) * np.sqrt(float(s @ s)))
    return {
        "coverage": float(np.mean(np.abs(mean - truth) <= judgement.Z95 * sd)),
        "reliability": float(np.mean(corr**2)),
        "r2": float(np.corrcoef(mean, truth)[0, 1] ** 2),
        "rho": float(spearmanr(mean, truth).statistic),
        "sd": float(sd.mean()),
    }


def captured(
    condition: judgement.Condition, rep: int
) -> tuple[dict[str, float], np.ndarray, Chain, Chain]:
    """One batch of ``bench/judgement.py``: its figures, the centred truth and the final
    fit's two chains' kept draws, (θ, (δ, ε, τ)) with ε = 0 and with ε sampled."""
    chains: dict[bool, Chain] = {}
    run = posterior.sample_chain

    def spy(*args: object, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        out = run(*args, **kwargs)  # type: ignore[arg-type]
        chains[bool(kwargs["lapse"])] = out
        return out

    posterior.sample_chain = spy  # type: ignore[assignment]
    try:
        figures = judgement.run_batch(condition, rep)
    finally:
        posterior.sample_chain = run
    truth = np.random.default_rng([rep, condition.n, 1]).normal(0.0, judgement.SD, condition.n)
    truth -= truth.mean()  # as run_batch
    return figures, truth, chains[False], chains[True]


def record(condition: judgement.Condition, rep: int) -> Record:
    """One batch of ``bench/judgement.py`` with its final fit's chains taken apart."""
    figures, truth, (theta0, _), (theta1, kept1) = captured(condition, rep)
    eps = kept1[:, 1]
    parts: dict[str, object] = {"clean": summary(theta0, truth), "lapse": summary(theta1, truth)}
    for x in GRID:
        keep = eps >= x - 1e-9
        parts[f"lapse ε≥{x:g}"] = summary(theta1[keep], truth) if keep.sum() >= 20 else None
    return {
        "condition": asdict(condition),
        "rep": rep,
        "bench": figures,
        "parts": parts,
        "P(ε≥x)": {f"{x:g}": float(np.mean(eps >= x - 1e-9)) for x in GRID},
        "ε mean": float(eps.mean()),
        "ε median": float(np.median(eps)),
    }


def _probability(row: Record, x: float) -> float:
    return row["P(ε≥x)"][f"{x:g}"]  # type: ignore[index,no-any-return]


def _rule(x: float, publish: str, p: float = 0.5) -> Callable[[Record], str]:
    """Lapse model when P(ε ≥ x) > p; then publish the whole lapse run or its ε ≥ x draws."""

    def choose(row: Record) -> str:
        if _probability(row, x) <= p:
            return "clean"
        return "lapse" if publish == "run" else f"lapse ε≥{x:g}"

    return choose


def _statistic_rule(statistic: str, x: float) -> Callable[[Record], str]:
    """Lapse model (its whole run) when the posterior mean or median of ε is at least x."""
    return lambda row: "lapse" if float(row[statistic]) >= x - 1e-9 else "clean"  # type: ignore[arg-type]


THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
RULES: dict[str, Callable[[Record], str]] = {
    "ε = 0 run always": lambda row: "clean",
    "lapse run always": lambda row: "lapse",
    **{f"P(ε ≥ {x:g}) > ½, lapse run": _rule(x, "run") for x in THRESHOLDS},
    **{f"P(ε ≥ {x:g}) > ½, its ε ≥ {x:g} draws": _rule(x, "cut") for x in THRESHOLDS},
    **{f"P(ε > 0) > {p:g}, its ε > 0 draws": _rule(0.05, "cut", p) for p in (0.6, 0.7)},
    **{f"median ε ≥ {x:g}, lapse run": _statistic_rule("ε median", x) for x in THRESHOLDS[1:]},
    **{f"mean ε ≥ {x:g}, lapse run": _statistic_rule("ε mean", x) for x in THRESHOLDS[1:]},
}


def evaluate(rows: list[Record], choose: Callable[[Record], str]) -> tuple[list[str], list[str]]:
    """Per condition, the published part's coverage and reliability − r²; the pairing gains.
    Returns (table lines, misses)."""
    groups: dict[tuple[object, ...], dict[int, dict[str, float]]] = defaultdict(dict)
    for row in rows:
        c = row["condition"]
        chosen = choose(row)
        part = row["parts"][chosen]  # type: ignore[index]
        if part is None:  # too few draws for the cut: the whole run
            part = row["parts"]["lapse"]  # type: ignore[index]
        key = (c["n"], c["k"], c["judge"], c["pairing"])  # type: ignore[index]
        groups[key][row["rep"]] = {**part, "lapse model": float(chosen != "clean")}  # type: ignore[index,dict-item]
    lines, misses = [], []
    for key in sorted(groups):
        reps = groups[key]
        got = list(reps.values())
        cover = float(np.mean([g["coverage"] for g in got]))
        gap = float(np.mean([g["reliability"] for g in got]) - np.mean([g["r2"] for g in got]))
        cell = f"{key[0]}/{key[1]}/{key[2]}/{key[3]}"
        chose = np.mean([g["lapse model"] for g in got])
        lines.append(
            f"{cell}: {len(got)} batches, coverage {cover:.3f}, rel−r² {gap:+.3f}, "
            f"lapse model chosen in {chose:.0%}"
        )
        if not 0.92 <= cover <= 0.97:
            misses.append(f"coverage {cover:.3f} {cell}")
        if abs(gap) > 0.05:
            misses.append(f"rel−r² {gap:+.3f} {cell}")
        if key[3] == "adaptive" and key[1] == 10:
            other = groups.get((*key[:3], "random"), {})
            shared = sorted(set(reps) & set(other))
            if shared:
                gain = median(reps[i]["rho"] for i in shared) - median(
                    other[i]["rho"] for i in shared
                )
                paired = np.mean([reps[i]["rho"] - other[i]["rho"] for i in shared])
                lines.append(
                    f"{cell}: pairing gain {gain:+.4f} (paired mean {paired:+.4f}) "
                    f"over {len(shared)}"
                )
                if gain < (0.015 if key[2] == "clean" else 0.0):
                    misses.append(f"pairing {gain:+.4f} {cell}")
    return lines, misses


def search(rows: list[Record]) -> list[str]:
    """Every rule "lapse model when P(ε ≥ x) > p, publishing its whole run or its ε ≥ x
    draws" over x in the grid and p in 0.3–0.8: the fewest misses any of them reaches (a
    bound on what choosing between the two chains can do here, not a rule to adopt: it is
    tuned to these very batches)."""
    found = []
    for x in THRESHOLDS:
        for p in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
            for publish in ("run", "cut"):
                misses = evaluate(rows, _rule(x, publish, p))[1]
                found.append((len(misses), x, p, publish, misses))
    found.sort(key=lambda f: f[0])
    return [f"{m} misses: P(ε ≥ {x:g}) > {p:g}, {publish}: " + "; ".join(ms)
            for m, x, p, publish, ms in found[:5]]  # fmt: skip


def parts_table(rows: list[Record]) -> list[str]:
    """Per condition, each part's coverage / reliability − r² over the batches that have it
    (a cut needs 20 draws): the bounds any rule choosing among them works within."""
    names = ["clean", "lapse", *(f"lapse ε≥{x:g}" for x in THRESHOLDS)]
    groups: dict[tuple[object, ...], list[Record]] = defaultdict(list)
    for row in rows:
        c = row["condition"]
        groups[(c["n"], c["k"], c["judge"], c["pairing"], c["probes"])].append(row)  # type: ignore[index]
    lines = ["| n | K | judge | pairing | probes | batches | " + " | ".join(names) + " |",
             "|" + "---|" * (6 + len(names))]  # fmt: skip
    for key in sorted(groups):
        group, cells = groups[key], []
        for name in names:
            got = [r["parts"][name] for r in group if r["parts"][name]]  # type: ignore[index]
            if not got:
                cells.append("–")
                continue
            cover = np.mean([g["coverage"] for g in got])
            gap = np.mean([g["reliability"] for g in got]) - np.mean([g["r2"] for g in got])
            held = f" ({len(got)})" if len(got) < len(group) else ""
            cells.append(f"{cover:.3f} / {gap:+.3f}{held}")
        lines.append("| " + " | ".join(f"{k:g}" if isinstance(k, float) else str(k) for k in key)
                     + f" | {len(group)} | " + " | ".join(cells) + " |")  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=25)
    parser.add_argument("--n", default="40,100")
    parser.add_argument("--k", default="6,10")
    parser.add_argument("--judges", default="clean,position,flip")
    parser.add_argument("--probes", default="0,0.1,0.2", help="adaptive rounds' probe shares")
    parser.add_argument("--results", type=Path, default=Path("lapse_rule.jsonl"))
    parser.add_argument("--table", action="store_true", help="tabulate the results file only")
    parser.add_argument("--detail", action="store_true", help="per-condition lines per rule")
    parser.add_argument("--parts", action="store_true", help="also each part's figures")
    parser.add_argument("--search", action="store_true", help="also the best rule of a family")
    parser.add_argument(
        "--adaptive-only", action="store_true", help="run no random-pairing batches (another "
        "run makes them: tabulate the two results files concatenated)"
    )  # fmt: skip
    args = parser.parse_args()
    ns, ks = [int(x) for x in args.n.split(",")], [int(x) for x in args.k.split(",")]
    shares = [float(x) for x in args.probes.split(",")]
    todo: list[judgement.Condition] = []
    for share in shares:
        todo += [c for c in judgement.conditions(ns, ks, args.judges.split(","), share)
                 if c not in todo]  # fmt: skip
    done = judgement.recorded(args.results)
    if not args.table:
        with args.results.open("a", encoding="utf-8") as out:
            for rep in range(args.reps):
                for condition in todo:
                    if args.adaptive_only and condition.pairing != "adaptive":
                        continue
                    if (condition, rep) not in done:
                        out.write(json.dumps(record(condition, rep)) + "\n")
                        out.flush()
    rows = [json.loads(line) for line in args.results.read_text(encoding="utf-8").splitlines()]
    rows = [r for r in rows if r["rep"] < args.reps]
    by_share = {}
    for share in shares:
        wanted = set(judgement.conditions(ns, ks, args.judges.split(","), share))
        by_share[share] = [r for r in rows if judgement.Condition(**r["condition"]) in wanted]
    print("| rule | " + " | ".join(f"probes {s:g}: misses (coverage/reliability/pairing)"
                                 for s in shares) + " |")  # fmt: skip
    print("|---|" + "---|" * len(shares))
    details = []
    for name, choose in RULES.items():
        cells = []
        for share in shares:
            lines, misses = evaluate(by_share[share], choose)
            kinds = [sum(m.startswith(k) for m in misses) for k in ("cov", "rel", "pair")]
            cells.append("{} ({}/{}/{})".format(len(misses), *kinds))
            details += [f"{name}, probes {share:g}: " + "; ".join(misses)]
            details += lines if args.detail else []
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\n" + "\n".join(details))
    for share in shares if args.search else []:
        print(f"\nthe best of the family, probes {share:g}:", *search(by_share[share]), sep="\n")
    if args.parts:
        print("\n" + "\n".join(parts_table(rows)))


if __name__ == "__main__":
    main()
