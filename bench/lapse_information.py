"""How many lapse probes? The information about ε of the pairs each design plans, per comparison.

Run: python bench/lapse_information.py [--reps 6] [--n 40,100] [--k 10] [--share 0.2]

Batches of ``bench/judgement.py`` (the flipping judge; abilities N(0, 1.5²)) planned with
adaptive pairing with a share ``--share`` of lapse probes (``CJLLM_PAIRING_PROBE_FRACTION``)
besides its random share, and with balanced random pairing.
For every comparison asked, the Fisher information of one decision about (ε, log c) at the
true abilities, P(stronger wins) = ε/2 + (1 − ε)·σ(c·|θ_a − θ_b|), c = 1: c is the scale,
which ε trades off against (a judge that errs at random looks like essays closer together),
so what identifies ε is its **efficient** information, I_εε − I_εc²/I_cc, of a design's
mean information matrix. Printed per n: the median true gap of the adaptive batches' pairs,
of their probes and of random pairing's; the efficient information per comparison of the
adaptive pairs other than probes (E_A), of the probes (E_P) and of random pairing (E_R);
s* = (E_R − E_A)/(E_P − E_A), the probe share that gives an adaptive round the
ε-information per comparison of random pairing (the mean information matrix is linear in
the share); and the probes' rule-5 gain (the planner's own measure of ranking information)
as a share of the round's best adaptive pairs'. docs/judgement.md ("Lapse probes") says
what the figures decided.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # many small fits: threads only contend

import judgement  # bench/judgement.py, beside this file
import numpy as np

from cjllm.cj import pairing, partner_gain, planner, rounds

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


def designs(n: int, k: int, reps: int, share: float) -> dict[str, list[float]]:
    """True gaps of the pairs asked (all of the adaptive batches, their probes, random
    pairing's) and, per round with probes, the probes' rule-5 gain share."""
    found: dict[str, list[float]] = {"asked": [], "probes": [], "random": [], "cost": []}
    truth: FloatArray = np.zeros(n)
    probe, decide, plan = planner.Planner.probe, judgement.decide, rounds.plan_round
    sink = found["asked"]

    def recording(self: planner.Planner, n_probes: int) -> None:
        before = len(self.plan)
        probe(self, n_probes)
        planned = self.plan[before:]
        found["probes"] += [truth[a] - truth[b] for a, b in planned]
        if planned:  # the probes' rule-5 gain against the round's best adaptive pairs
            assert self.covariance is not None and self.weighted is not None
            gain = partner_gain.covariance_gains(self.theta, self.covariance, self.weighted)
            best = pairing.plan_round(
                self.n, [], [], self.theta, self.se, 10 * len(planned), 0,
                covariance=self.covariance, random_fraction=0.0,
            )  # fmt: skip
            ours = np.mean([gain[a, b] for a, b in planned])
            found["cost"].append(float(ours / np.mean([gain[a, b] for a, b in best])))

    def asked(rep: int, a: int, b: int, *args: object) -> bool:
        sink.append(truth[a] - truth[b])
        return decide(rep, a, b, *args)  # type: ignore[arg-type]

    def planned(*args: object, **kwargs: object) -> list[tuple[int, int]]:
        return plan(*args, **{**kwargs, "probe_fraction": share})  # type: ignore[arg-type]

    judgement.decide = asked  # type: ignore[assignment]
    planner.Planner.probe = recording  # type: ignore[method-assign]
    rounds.plan_round = planned  # type: ignore[assignment]
    try:
        for mode in ("adaptive", "random"):
            sink = found["asked" if mode == "adaptive" else "random"]
            for rep in range(reps):
                truth[:] = np.random.default_rng([rep, n, 1]).normal(0.0, judgement.SD, n)
                judgement.run_batch(judgement.Condition(n, k, "flip", mode), rep)
    finally:
        judgement.decide, planner.Planner.probe, rounds.plan_round = decide, probe, plan  # type: ignore[method-assign]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--n", default="40,100")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--lapse", type=float, default=0.4)
    parser.add_argument("--share", type=float, default=0.2, help="probe share of the runs")
    args = parser.parse_args()
    print(f"flipping judge, K = {args.k}, {args.reps} batches per design, ε = {args.lapse}")
    print(
        "| n | median gap: adaptive / probes / random | E_A | E_P | E_R | s* | probe gain / rest |"
    )
    print("|---|---|---|---|---|---|---|")
    for n in (int(x) for x in args.n.split(",")):
        found = designs(n, args.k, args.reps, args.share)
        asked, probes = np.asarray(found["asked"]), np.asarray(found["probes"])
        # the adaptive pairs' information: all asked minus the probes (matrices add up)
        total = information(asked, args.lapse) * asked.size
        gain_pairs = total - information(probes, args.lapse) * probes.size
        e_a = efficient(gain_pairs / (asked.size - probes.size))
        e_p = efficient(information(probes, args.lapse))
        e_r = efficient(information(np.asarray(found["random"]), args.lapse))
        gaps = (np.median(np.abs(g)) for g in (asked, probes, np.asarray(found["random"])))
        print(
            f"| {n} | {' / '.join(f'{g:.2f}' for g in gaps)} | {e_a:.3f} | {e_p:.3f} | {e_r:.3f} "
            f"| {(e_r - e_a) / (e_p - e_a):.2f} | {np.mean(found['cost']):.2f} |"
        )


if __name__ == "__main__":
    main()
