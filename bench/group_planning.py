"""Planning one grouped round (the pool layout's planner) at scale: CPU and peak memory
(run: python bench/group_planning.py [--essays 5000 20000]).

Each size: essays compared once each way around a ring before (so the history is one
connected component), abilities N(0, 1), SEs 0.5, a round of as many comparisons as essays
in groups of 10 (``cj.groups.plan_groups``'s defaults). Prints the CPU seconds of the plan
and the peak memory Python's allocators traced while planning (numpy's included).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from cjllm.cj.groups import plan_groups


def plan_once(n: int) -> tuple[float, float, int]:
    first = np.arange(n)
    rng = np.random.default_rng(0)
    theta, se = rng.normal(size=n), np.full(n, 0.5)
    tracemalloc.start()
    started = time.process_time()
    groups = plan_groups(n, first, (first + 1) % n, theta, se, n, 3)
    cpu = time.process_time() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return cpu, peak / 1e6, sum(map(len, groups))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--essays", type=int, nargs="+", default=[5_000, 20_000])
    args = parser.parse_args()
    print(f"{'essays':>8} {'pairs':>8} {'CPU s':>7} {'peak MB':>8}")
    for n in args.essays:
        cpu, peak, pairs = plan_once(n)
        print(f"{n:>8} {pairs:>8} {cpu:>7.1f} {peak:>8.1f}")
