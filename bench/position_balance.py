"""How far do positions drift from even? Each essay's A − B (times shown as Essay A minus
times shown as Essay B) over whole simulated batches of ``bench/judgement.py``.

Run: python bench/position_balance.py [--n 40,100] [--k 10] [--judge clean] [--reps 20]
[--first-rep 400] [--pairing adaptive]

Rule 4 of ``cj/pairing.py`` keeps A − B within ±2 in adaptive rounds (``ADAPTIVE_BALANCE``)
and ±1 otherwise. Prints, per size, the share of essays ending a batch at each A − B and the
largest |A − B| any essay reached at any point, batch by batch (docs/judgement.md,
"Positions within two in adaptive rounds").
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import judgement  # bench/judgement.py: the batches


def balances(condition: judgement.Condition, rep: int) -> tuple[list[int], int]:
    """Every essay's final A − B, and the largest |A − B| reached along the way."""
    judged = judgement.judge_batch(condition, rep)
    balance = {e.essay_id: 0 for e in judged.essays}
    widest = 0
    for o in judged.outcomes:
        balance[o.essay_a_id] += 1
        balance[o.essay_b_id] -= 1
        widest = max(widest, abs(balance[o.essay_a_id]), abs(balance[o.essay_b_id]))
    return list(balance.values()), widest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", default="40,100")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--judge", default="clean")
    parser.add_argument("--pairing", default="adaptive", choices=judgement.PAIRINGS)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--first-rep", type=int, default=400)
    args = parser.parse_args()
    probes = judgement.BatchOptions().pairing_probe_fraction if args.pairing == "adaptive" else 0.0
    for n in (int(x) for x in args.n.split(",")):
        condition = judgement.Condition(n, args.k, args.judge, args.pairing, probes)
        final: Counter[int] = Counter()
        widest: Counter[int] = Counter()
        for rep in range(args.first_rep, args.first_rep + args.reps):
            ends, reached = balances(condition, rep)
            final.update(ends)
            widest[reached] += 1
        essays = sum(final.values())
        shares = ", ".join(f"{b:+d}: {c / essays:.1%}" for b, c in sorted(final.items()))
        most = ", ".join(f"±{b}: {c}" for b, c in sorted(widest.items()))
        print(f"n={n} K={args.k} {args.judge} {args.pairing}, {args.reps} batches")
        print(f"  final A − B, share of {essays} essays: {shares}")
        print(f"  largest |A − B| reached, batches: {most}")


if __name__ == "__main__":
    main()
