"""Scale: 100,000 essays in one assessment (run: python bench/scale.py).

Sections (``--section``, repeatable; all by default): ``fit`` below, and the throughput
sections ``rank``, ``serve`` and ``tier4`` (described in ``bench/throughput.py``).

fit
    The Bradley-Terry fit the CJ service runs after every round (prior 0.1, the default
    ``bt_prior``; order effect fitted) at 2,000 / 20,000, 10,000 / 100,000 and
    100,000 / 1,000,000 essays / comparisons: every essay in the same number of comparisons
    (random perfect matchings), outcomes from a logistic judge (abilities N(0, 1), +0.2 logit
    for Essay A). For each size: the abilities alone (Newton), the fit with estimated
    standard errors (:mod:`cjllm.cj.uncertainty`), split-half reliability with the splits
    the service would use, and — up to ``--exact-up-to`` essays — the fit with exact SEs
    (dense inverse) and the error of the estimated SEs against them. Every case runs in a
    fresh process, so peak memory (max RSS above the process's RSS once the data is built)
    belongs to that case alone. Then, at 2,000 essays with 5, 10 and 20 comparisons per
    essay, the SE error of the estimator against two simpler ones: 1/J_ii (the diagonal of
    the information matrix alone) and plain Hutchinson with 64 probes (no control variate).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import factorized
from scipy.special import expit

from cjllm.cj.reliability import scale_separation_reliability, split_half_reliability, splits_needed
from cjllm.cj.scoring import fit_bradley_terry
from cjllm.cj.uncertainty import sum_to_zero_variances

SIZES = [(2_000, 20_000), (10_000, 100_000), (100_000, 1_000_000)]
SECTIONS = ["fit", "rank", "serve", "tier4"]
PRIOR, SPLITS = 0.1, 10  # the CJ service's defaults (bt_prior, split_half_splits)


def data(n: int, m: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.normal(0.0, 1.0, n)
    pairs = np.concatenate([rng.permutation(n) for _ in range(2 * m // n)]).reshape(-1, 2)
    first, second = pairs[:, 0], pairs[:, 1]
    won = rng.random(len(pairs)) < 1 / (1 + np.exp(truth[second] - truth[first] - 0.2))
    return first, second, won


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def child(case: str, n: int, m: int, out: Path) -> dict[str, Any]:
    """One case in this (fresh) process; SEs go to ``out`` for the parent to compare.
    "estimated": abilities, the fit with estimated SEs, split-half as the service runs it;
    "exact": the fit with exact SEs and split-half with all ``SPLITS`` splits."""
    first, second, won = data(n, m)
    base = peak_mb()

    def fit(se: str) -> Any:
        return fit_bradley_terry(
            n, first, second, won, prior=PRIOR, order_effect=True, standard_errors=se
        )

    def split_half(splits: int) -> float:
        return split_half_reliability(n, first, second, won, prior=PRIOR, n_splits=splits, rng=0)

    if case == "exact":
        result, seconds = timed(lambda: fit("exact"))
        np.save(out / f"exact-{n}.npy", result.se)
        return {"exact_s": seconds, "exact_mb": peak_mb() - base, "split_all": split_half(SPLITS)}
    abilities, newton_s = timed(lambda: fit("none"))
    cpu = time.process_time()
    result, fit_s = timed(lambda: fit("estimated"))
    cpu = time.process_time() - cpu
    np.save(out / f"estimated-{n}.npy", result.se)
    np.save(out / f"theta-{n}.npy", result.theta)
    report = {
        "newton_s": newton_s,
        "iterations": abilities.n_iter,
        "fit_s": fit_s,
        "fit_cpu_s": cpu,
        "fit_mb": peak_mb() - base,
        "se_error": result.se_error,
        "ssr": scale_separation_reliability(result.theta, result.se),
        "splits": splits_needed(n, SPLITS),
    }
    report["split_half"], report["split_s"] = timed(lambda: split_half(report["splits"]))
    return report


def run_child(case: str, n: int, m: int, out: Path) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", case, "--n", str(n), "--m", str(m)]
    done = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{case} at {n} essays failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def fit_section(sizes: list[tuple[int, int]], exact_up_to: int) -> None:
    print("## fit: Bradley-Terry with standard errors (prior 0.1, order effect)")
    print(
        f"{'essays':>8} {'comparisons':>12} {'Newton s':>9} {'iters':>6} {'fit+SE s':>9}"
        f" {'CPU s':>6} {'SE share':>9} {'peak MB':>8} {'est. err':>9}"
        f" {'split-half s':>13} {'splits':>7}"
    )
    exact_rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for n, m in sizes:
            r = run_child("estimated", n, m, out)
            share = (r["fit_s"] - r["newton_s"]) / r["fit_s"]
            print(
                f"{n:>8} {m:>12} {r['newton_s']:>9.2f} {r['iterations']:>6} {r['fit_s']:>9.2f}"
                f" {r['fit_cpu_s']:>6.2f} {share:>9.0%} {r['fit_mb']:>8.0f} {r['se_error']:>9.4f}"
                f" {r['split_s']:>13.2f} {r['splits']:>7}"
            )
            if n <= exact_up_to:
                e = run_child("exact", n, m, out)
                exact, estimated = (np.load(out / f"{k}-{n}.npy") for k in ("exact", "estimated"))
                ssr = scale_separation_reliability(np.load(out / f"theta-{n}.npy"), exact)
                exact_rows.append((n, r, e, estimated / exact - 1.0, r["ssr"] - ssr))
    if not exact_rows:
        return
    print("\nestimated vs exact SEs (exact: dense inverse of the information matrix), and")
    print(f"split-half with the service's splits vs all {SPLITS}")
    print(
        f"{'essays':>8} {'exact fit s':>12} {'exact MB':>9} {'est. fit s':>11} {'speed-up':>9}"
        f" {'rms err':>8} {'max err':>8} {'est. err':>9} {'SSR est.-exact':>15}"
        f" {'split-half':>11} {f'{SPLITS} splits':>10}"
    )
    for n, r, e, relative, ssr_gap in exact_rows:
        rms = float(np.sqrt(np.mean(relative**2)))
        print(
            f"{n:>8} {e['exact_s']:>12.2f} {e['exact_mb']:>9.0f} {r['fit_s']:>11.2f}"
            f" {e['exact_s'] / r['fit_s']:>8.1f}x {rms:>8.4f} {np.max(np.abs(relative)):>8.4f}"
            f" {r['se_error']:>9.4f} {ssr_gap:>15.5f}"
            f" {r['split_half']:>11.4f} {e['split_all']:>10.4f}"
        )


def information(n: int, first: np.ndarray, second: np.ndarray, fit: Any) -> sp.csr_array:
    """The fit's information matrix over (θ, δ), built here from its estimate."""
    w = expit(fit.theta[first] - fit.theta[second] + fit.order_effect)
    w = w * (1.0 - w)
    last = np.full(w.size, n)
    rows = np.concatenate([first, second, first, second, first, last, second, last, last])
    cols = np.concatenate([second, first, first, second, last, first, last, second, last])
    vals = np.concatenate([-w, -w, w, w, w, w, -w, -w, w])
    info = sp.coo_array((vals, (rows, cols)), shape=(n + 1, n + 1))
    return sp.csr_array(info + fit.prior * sp.eye_array(n + 1))


def methods_section(n: int = 2_000, probes: int = 64) -> None:
    print(f"\n## SE estimators at {n} essays: relative SE error against exact, rms / max")
    print(
        f"{'per essay':>10} {'1/J_ii':>16} {'Hutchinson':>16} {'this estimator':>16} {'probes':>7}"
    )
    rng = np.random.default_rng(1)
    for per in (5, 10, 20):
        first, second, won = data(n, n * per // 2, seed=per)
        fit = fit_bradley_terry(n, first, second, won, prior=PRIOR, order_effect=True)
        info = information(n, first, second, fit)
        exact = sum_to_zero_variances(info, n, exact=True).theta
        estimate = sum_to_zero_variances(info, n, exact=False)
        solve = factorized(sp.csc_array(info))  # prior > 0: J is invertible
        v = np.zeros((n + 1, probes))
        v[:n] = rng.choice((-1.0, 1.0), size=(n, probes))
        v[:n] -= v[:n].mean(axis=0)
        x = np.column_stack([solve(v[:, k]) for k in range(probes)])[:n]
        hutchinson = np.mean(v[:n] * (x - x.mean(axis=0)), axis=1)
        cells = []
        for variance in (1.0 / info.diagonal()[:n], hutchinson, estimate.theta):
            relative = np.sqrt(np.maximum(variance, 0.0) / exact) - 1.0
            cells.append(f"{np.sqrt(np.mean(relative**2)):.4f} / {np.max(np.abs(relative)):.4f}")
        print(f"{per:>10} {cells[0]:>16} {cells[1]:>16} {cells[2]:>16} {estimate.probes:>7}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--section", choices=SECTIONS, action="append")
    parser.add_argument("--rank-sizes", default="200,10000", help="essays, comma-separated")
    parser.add_argument(
        "--rank-baseline",
        type=Path,
        help="another checkout's src/ folder: each rank size runs with it, then with this one",
    )
    parser.add_argument(
        "--rank-workers",
        default="in_process,child_process",
        help="CJLLM_EMBEDDED_WORKER modes this checkout's rank runs in, comma-separated",
    )
    parser.add_argument("--serve-posts", type=int, default=20_000)
    parser.add_argument("--serve-concurrency", type=int, default=64)
    parser.add_argument("--tier4-essays", type=int, default=1_000)
    parser.add_argument("--tier4-scale", type=float, default=1.0)
    parser.add_argument("--sizes", help="essays:comparisons,... (default: the three above)")
    parser.add_argument("--exact-up-to", type=int, default=10_000, help="essays")
    parser.add_argument("--child", choices=["estimated", "exact"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--m", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.n, args.m, args.out)))
        return
    sizes = SIZES
    if args.sizes:
        sizes = [(int(a), int(b)) for a, b in (s.split(":") for s in args.sizes.split(","))]
    print("shared 2-core machine: compare figures within one run (ratios), not across runs\n")
    sections = args.section or SECTIONS
    if "fit" in sections:
        fit_section(sizes, args.exact_up_to)
        methods_section()
    throughput = [s for s in sections if s != "fit"]
    if throughput:
        import throughput as bench  # bench/throughput.py: imports services the fit needs not

        work = Path(tempfile.mkdtemp(prefix="cjllm-bench-scale-"))
        try:
            if "rank" in throughput:
                bench.rank_section(
                    [int(n) for n in args.rank_sizes.split(",")],
                    work,
                    args.rank_baseline,
                    args.rank_workers.split(","),
                )
            if "serve" in throughput:
                bench.serve_section(args.serve_posts, args.serve_concurrency, work)
            if "tier4" in throughput:
                bench.tier4_section(args.tier4_essays, args.tier4_scale, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
