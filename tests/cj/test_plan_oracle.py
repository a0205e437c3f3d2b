"""The planner's choices, frozen: ``plan_round``/``random_round`` must return exactly the pairs
they returned when ``data/plan_oracle.json`` was written (the judgement statistics in
docs/performance.md were measured on those plans), over a grid of seeded cases.

Write the oracle again only for a deliberate change of the rules (and re-measure then):
``PYTHONPATH=<checkout>/src python tests/cj/test_plan_oracle.py --write``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cjllm.cj.pairing import plan_round, random_round

ORACLE = Path(__file__).parent / "data" / "plan_oracle.json"
Case = dict[str, Any]


def _case(n: int, n_pairs: int, rounds: int, seed: int, **options: Any) -> Case:
    keys = (n, n_pairs, rounds, seed, *(f"{k}={v}" for k, v in sorted(options.items())))
    return {"id": "-".join(str(k) for k in keys), "n": n, "n_pairs": n_pairs,
            "rounds": rounds, "seed": seed, **options}  # fmt: skip


def cases() -> list[Case]:
    """The grid: sizes 7 to 3,000 (with the covariance up to 1,000, ``EXACT_LIMIT``); with
    and without probes; a cap; random shares 0, 0.1, 0.3 (with probes 0.1: random partners
    besides them) and 1; ``random_round``; scores unknown;
    history with repeats, unbalanced positions, multi-pass rounds, and round robins run to
    completion and beyond."""
    grid: list[Case] = []
    for seed in (1, 2):
        for cov in (False, True):
            for rf in (0.0, 0.1, 1.0):
                grid.append(_case(7, 3, 12, seed, cov=cov, rf=rf))
                grid.append(_case(7, 4, 6, seed, cov=cov, rf=rf, cap=5))
            grid.append(_case(40, 20, 44, seed, cov=cov, rf=0.1, probe=0.1 * cov))
            grid.append(_case(40, 50, 5, seed, cov=cov, rf=0.1, repeats=True))
            grid.append(_case(30, 7, 6, seed, cov=cov, rf=0.0, flat=True))
            for rf, probe, cap in (
                (0.0, 0.0, None),
                (0.1, 0.1, None),
                (0.1, 0.2, 8),
                (0.3, 0.1, None),
            ):
                grid.append(_case(100, 50, 6, seed, cov=cov, rf=rf, probe=probe, cap=cap))
            grid.append(_case(101, 50, 4, seed, cov=cov, rf=0.1, probe=0.1, repeats=True))
        grid.append(_case(8, 4, 9, seed, kind="random"))
        grid.append(_case(100, 50, 4, seed, kind="random", cap=6))
    grid.append(_case(400, 200, 3, 1, cov=True, rf=0.1, probe=0.1))
    grid.append(_case(1000, 500, 3, 1, cov=False, rf=0.1, repeats=True))
    grid.append(_case(1000, 500, 2, 2, cov=True, rf=0.1, probe=0.1))
    grid.append(_case(1000, 500, 2, 3, kind="random"))
    grid.append(_case(3000, 1500, 3, 1, cov=False, rf=0.1))
    grid.append(_case(3000, 1500, 2, 2, kind="random"))
    return grid


def plans(case: Case) -> list[list[tuple[int, int]]]:
    """Every round of ``case`` in a row, each round's pairs joining the history."""
    n, rng = case["n"], np.random.default_rng(case["seed"])
    theta, se = rng.normal(0.0, 1.5, n), rng.uniform(0.2, 1.0, n)
    covariance = None
    if case.get("cov"):
        factor = rng.normal(size=(n, min(n, 20)))
        covariance = 0.05 * factor @ factor.T / factor.shape[1] + np.diag(se**2)
    if case.get("flat"):
        theta, se = np.zeros(n), np.ones(n)
    first: list[int] = []
    second: list[int] = []
    if case.get("repeats"):  # a history with repeated pairs and lopsided positions
        for _ in range(n):
            a, b = (int(v) for v in rng.choice(n, 2, replace=False))
            first += [a, a] if rng.random() < 0.3 else [a]
            second += [b, b] if len(first) > len(second) + 1 else [b]
    result = []
    for _ in range(case["rounds"]):
        if case.get("kind") == "random":
            pairs = random_round(
                n, first, second, case["n_pairs"], rng, max_per_item=case.get("cap")
            )
        else:
            pairs = plan_round(
                n, first, second, theta, se, case["n_pairs"], rng,
                random_fraction=case["rf"], max_per_item=case.get("cap"),
                covariance=covariance, probe_fraction=case.get("probe", 0.0),
            )  # fmt: skip
        result.append(pairs)
        first += [a for a, _ in pairs]
        second += [b for _, b in pairs]
    return result


def digest(rounds: list[list[tuple[int, int]]]) -> str:
    return hashlib.sha256(json.dumps(rounds).encode()).hexdigest()


def _oracle() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(ORACLE.read_text())
    return loaded


@pytest.mark.parametrize("case", cases(), ids=lambda c: c["id"])
def test_plans_are_the_frozen_ones(case: Case) -> None:
    frozen = _oracle()["plans"][case["id"]]
    rounds = plans(case)
    assert sum(len(r) for r in rounds) == frozen["pairs"]
    assert digest(rounds) == frozen["sha256"]


def test_the_oracle_covers_the_grid() -> None:
    assert sorted(_oracle()["plans"]) == sorted(c["id"] for c in cases())


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import subprocess

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    written = {}
    for c in cases():
        r = plans(c)
        written[c["id"]] = {"pairs": sum(len(x) for x in r), "sha256": digest(r)}
    note = (
        "sha256 of json.dumps(every round's [essay_a, essay_b] pairs) per case of"
        " tests/cj/test_plan_oracle.py, written by `PYTHONPATH=<checkout>/src python"
        f" tests/cj/test_plan_oracle.py --write` with the planner of main at {commit}"
        " (with the covariance, positions within ±ADAPTIVE_BALANCE = 2: rule 4)"
    )
    ORACLE.write_text(json.dumps({"note": note, "plans": written}, indent=1) + "\n")
