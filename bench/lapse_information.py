"""How many lapse probes? The information about ε of the pairs each design plans, per comparison.

Run: python bench/lapse_information.py [--reps 6] [--n 40,100] [--k 10] [--lapse 0.4]

Batches of ``bench/judgement.py`` (the flipping judge; abilities N(0, 1.5²)) planned with
adaptive pairing without probes, with probes (``pairing.PROBE_SHARE``) and with balanced
random pairing. For every comparison asked, the Fisher information of one decision about
(ε, log c) at the true abilities, P(stronger wins) = ε/2 + (1 − ε)·σ(c·|θ_a − θ_b|), c = 1:
c is the scale, which ε trades off against (a judge that errs at random looks like essays
closer together), so what identifies ε is its **efficient** information, I_εε − I_εc²/I_cc,
of the design's mean information matrix. Printed per n: the median true gap of each kind of
pair; the efficient information per comparison of adaptive pairs (E_A), of the probes alone
(E_P) and of random pairing (E_R); the share s* = (E_R − E_A)/(E_P − E_A) of probes that
gives an adaptive round the ε-information per comparison of a random one (linear in s, as
the mean information matrix is); and, from the planner's own rule-5 gains in the rounds with
probes, the probes' mean gain as a share of the round's other pairs' (what a probe costs in
ranking information: the adaptive pair it displaces, less its own gain). docs/judgement.md
("Lapse probes") says what the figures decided.
"""

from __future__ import annotations

import argparse
import functools
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # many small fits: threads only contend

import judgement  # bench/judgement.py, beside this file
import numpy as np

from cjllm.cj import pairing, rounds

FloatArray = np.ndarray


def information(gaps: FloatArray, lapse: float) -> FloatArray:
    """Mean Fisher information matrix of one decision about (ε, log c), 2 × 2."""
    d = np.abs(gaps)
    s = 1.0 / (1.0 + np.exp(-d))
    p = lapse / 2.0 + (1.0 - lapse) * s
    g = np.stack([0.5 - s, (1.0 - lapse) * s * (1.0 - s) * d])  # ∂P/∂ε, ∂P/∂log c
    result: FloatArray = (g[:, None, :] * g[None, :, :] / (p * (1.0 - p))).mean(axis=2)
    return result


def efficient(m: FloatArray) -> float:
    return float(m[0, 0] - m[0, 1] ** 2 / m[1, 1])


def designs(n: int, k: int, reps: int) -> dict[str, list[float]]:
    """True gaps of the pairs asked, per kind, and probe gain shares of the rounds."""
    found: dict[str, list[float]] = {"adaptive": [], "probes": [], "random": [], "cost": []}
    truth: FloatArray = np.zeros(n)
    probe = pairing._Planner.probe

    def recording(self: pairing._Planner, n_probes: int) -> None:
        before = len(self.plan)
        probe(self, n_probes)
        planned = self.plan[before:]
        found["probes"] += [truth[a] - truth[b] for a, b in planned]
        if planned and self.covariance is not None:  # the probes' rule-5 gain vs the rest
            gain = self.gains()
            rest = pairing.plan_round(
                self.n, [], [], self.theta, self.se, 2 * len(planned) * 5, 0,
                covariance=self.covariance, probe_fraction=0.0, random_fraction=0.0,
            )  # fmt: skip
            ours = np.mean([gain[a, b] for a, b in planned])
            found["cost"].append(float(ours / np.mean([gain[a, b] for a, b in rest])))

    decide = judgement.decide

    def asked(rep: int, a: int, b: int, *args: object) -> bool:
        kind["gaps"].append(truth[a] - truth[b])
        return decide(rep, a, b, *args)  # type: ignore[arg-type]

    judgement.decide = asked  # type: ignore[assignment]
    pairing._Planner.probe = recording  # type: ignore[method-assign]
    try:
        for name, mode, share in (
            ("adaptive", "adaptive", 0.0),
            ("with probes", "adaptive", pairing.PROBE_SHARE),
            ("random", "random", 0.0),
        ):
            rounds.plan_round = functools.partial(pairing.plan_round, probe_fraction=share)  # type: ignore[assignment]
            kind = {"gaps": found.setdefault(name, [])}
            for rep in range(reps):
                truth[:] = np.random.default_rng([rep, n, 1]).normal(0.0, judgement.SD, n)
                judgement.run_batch(judgement.Condition(n, k, "flip", mode), rep)
    finally:
        judgement.decide, pairing._Planner.probe = decide, probe  # type: ignore[method-assign]
        rounds.plan_round = pairing.plan_round
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--n", default="40,100")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--lapse", type=float, default=0.4)
    args = parser.parse_args()
    print(f"flipping judge, K = {args.k}, {args.reps} batches per design, ε = {args.lapse}")
    print(
        "| n | median gap: adaptive / probes / random | E_A | E_P | E_R | s* | probe gain / rest |"
    )
    print("|---|---|---|---|---|---|---|")
    for n in (int(x) for x in args.n.split(",")):
        found = designs(n, args.k, args.reps)
        gaps = {name: np.asarray(found[name]) for name in ("adaptive", "probes", "random")}
        e = {name: efficient(information(g, args.lapse)) for name, g in gaps.items()}
        share = (e["random"] - e["adaptive"]) / (e["probes"] - e["adaptive"])
        medians = " / ".join(f"{np.median(np.abs(g)):.2f}" for g in gaps.values())
        print(
            f"| {n} | {medians} | {e['adaptive']:.3f} | {e['probes']:.3f} | {e['random']:.3f} "
            f"| {share:.2f} | {np.mean(found['cost']):.3f} |"
        )


if __name__ == "__main__":
    main()
