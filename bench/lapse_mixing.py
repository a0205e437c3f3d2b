"""Is P(ε ≥ 0.2) the posterior's, or the sampler's? The final fit's lapse probability on
recorded batches, by the published chain, other seeds, long chains, Rao-Blackwellised, and
from the marginal likelihood of each ε grid value (thermodynamic integration).

Run: python bench/lapse_mixing.py --batches "100/20/flip/adaptive:249,293" [--seeds 4]
     [--long 6000] [--ti-draws 800] [--no-ti] [--cache /tmp/lapse_batches]
     python bench/lapse_mixing.py --batches … --capture-only       (P and the design only)
     python bench/lapse_mixing.py --batches … --augment 200        (more comparisons, by design)
     python bench/lapse_mixing.py --batches "100/20/flip/adaptive:200-300" --probe-part 0.1
                                  --results probes.jsonl            (probes from the tenths)

A batch is one of ``bench/judgement.py``'s (condition ``n/K/judge/pairing``, repetition; adaptive
with the service's probe share): run through the service's code to its budget, and the final
fit's arguments to ``posterior.sample_posterior`` captured (cached as .npz). Per batch:

- ``published``: P(ε ≥ 0.2) of the final fit's own lapse chain (its seed, its settings);
- ``seeds``: the same chain with other seeds (min–max);
- ``long``: one chain of ``--long`` kept sweeps (and its four quarters);
- ``RB``: the long chain's Rao-Blackwellised P(ε ≥ 0.2): the mean over draws of the grid
  conditional P(ε ≥ 0.2 | θ, δ) (no sampling noise from ε's own step, but it still needs the
  chain to visit both models);
- ``TI``: P(ε ≥ 0.2) from log p(y | ε), the marginal likelihood at each grid value, by
  thermodynamic integration over ε: d log p(y | ε)/dε = E[∂ log p(y | θ, δ, ε)/∂ε | y, ε],
  the expectation from a chain with ε held fixed (one model, no jump between models needed;
  scale moves at that ε keep it mixing), on nodes finer near 0 where the integrand is
  steep, integrated by the trapezoid rule; then the grid prior (half on 0). Its error is
  bounded by running it twice (two seeds) and on the grid values alone as nodes;
- the design: comparisons between the top and bottom quarter (in truth), the share more than
  2 and 3 logits apart, ε's information at the truth, and ``KL``: Σ over the comparisons of
  KL(the lapsing judge ‖ the clean judge on the scale that mimics it best), the expected log
  Bayes factor for ε = 0.4 against ε = 0 were the abilities known (an upper bound).

``--augment N``: P(ε ≥ 0.2) (a ``--long`` chain) after N more comparisons by the same judge,
``random`` pairs, ``quarters`` (top against bottom quarter by the round fit, as the probes)
or ``extremes`` (top against bottom tenth), ``--augment-reps`` draws each. ``--probe-part``:
run the batches with ``planner.PROBE_PART`` set (the probes' top and bottom share) and append
``bench/judgement.py`` rows to ``--results``. Figures: docs/judgement.md, "Why a flipping
judge is sometimes scored as clean".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
from scipy.linalg import lapack
from scipy.special import expit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import judgement  # bench/judgement.py: the batches

from cjllm.cj import planner, posterior, ranking
from cjllm.cj.posterior import LAPSE_FLOOR, LAPSE_GRID, pg_draw, sample_chain

TI_NODES = np.array([0.0, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.0625, 0.075,
                     0.0875, *np.round(np.arange(0.1, 0.501, 0.025), 4)])  # fmt: skip


def capture(condition: judgement.Condition, rep: int, cache: Path) -> dict[str, np.ndarray]:
    """The final fit's sampler arguments for one batch (cached)."""
    name = f"{condition.n}_{condition.k}_{condition.judge}_{condition.pairing}_{rep}.npz"
    path = cache / name
    if path.exists():
        return dict(np.load(path))
    got: dict[str, np.ndarray] = {}
    run = ranking.sample_posterior

    def spy(n: int, f: np.ndarray, s: np.ndarray, y: np.ndarray, **kw: object) -> object:
        got.update(n=np.array(n), first=f, second=s, won=y,
                   start_theta=np.asarray(kw["start_theta"]),
                   start_order=np.array(kw["start_order"]), start_tau=np.array(kw["start_tau"]),
                   order_prior=np.array(kw["order_prior"]), seed=np.array(kw["seed"]))  # fmt: skip
        return run(n, f, s, y, **kw)  # type: ignore[arg-type]

    ranking.sample_posterior = spy  # type: ignore[assignment]
    try:
        figures = judgement.run_batch(condition, rep)
    finally:
        ranking.sample_posterior = run
    truth = np.random.default_rng([rep, condition.n, 1]).normal(0.0, judgement.SD, condition.n)
    got["truth"] = truth - truth.mean()
    got["published_p"] = np.array(figures["lapse_probability"])
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **got)
    return got


def common(b: dict[str, np.ndarray]) -> dict[str, object]:
    return {"order_prior": float(b["order_prior"]), "start_theta": b["start_theta"],
            "start_order": float(b["start_order"]), "start_tau": float(b["start_tau"])}  # fmt: skip


def chain(b: dict[str, np.ndarray], seed: object, draws: int, burn_in: int) -> tuple[
    np.ndarray, np.ndarray
]:  # fmt: skip
    return sample_chain(
        int(b["n"]), b["first"], b["second"], b["won"], seed=seed, draws=draws,  # type: ignore[arg-type]
        burn_in=burn_in, lapse=True, tau_scale=posterior.TAU_SCALE,
        rescales=posterior.RESCALES[True], **common(b),  # type: ignore[arg-type]
    )  # fmt: skip


def grid_conditional(b: dict[str, np.ndarray], theta: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """P(ε = grid value | θ, δ, y) per draw (draws × grid)."""
    f, s, y = b["first"], b["second"], b["won"].astype(bool)
    eta = theta[:, f] - theta[:, s] + delta[:, None]
    sig = expit(np.where(y[None, :], eta, -eta))
    log_post = np.stack([np.log(e / 2.0 + (1.0 - e) * sig).sum(axis=1) for e in LAPSE_GRID], 1)
    log_post += posterior._LAPSE_LOG_PRIOR[None, :]
    log_post -= log_post.max(axis=1, keepdims=True)
    prob = np.exp(log_post)
    return prob / prob.sum(axis=1, keepdims=True)


def fixed_chain(b: dict[str, np.ndarray], eps: float, seed: object, draws: int,
                burn_in: int) -> float:  # fmt: skip
    """E[∂ log p(y | θ, δ, ε)/∂ε] over the posterior with ε held at ``eps``: the sweep of
    ``posterior.sample_chain`` without ε's steps (lapse indicators, Pólya-Gamma, (θ, δ), τ,
    scale moves at this ε)."""
    n = int(b["n"])
    f, s, y = b["first"].astype(np.intp), b["second"].astype(np.intp), b["won"].astype(bool)
    m, size, d = f.size, n + 1, n
    rng = np.random.default_rng(seed)  # type: ignore[call-overload]
    kappa = y - 0.5
    signs = np.where(y, 1.0, -1.0)
    order_prior, scale_prior = float(b["order_prior"]), posterior.TAU_SCALE
    last = np.full(m, d, dtype=np.intp)
    rows = (f, s, f, s, f, last, s, last, last)
    cols = (f, s, s, f, last, f, last, s, last)
    cells = np.concatenate([r * size + c for r, c in zip(rows, cols, strict=True)])
    diagonal = np.arange(size) * (size + 1)
    # start at the ε = 0 fit's scale shrunk to this ε's (the slope (1 − ε)·η kept)
    theta = b["start_theta"].astype(float) / (1.0 - eps)
    delta, tau2 = float(b["start_order"]) / (1.0 - eps), (float(b["start_tau"]) / (1.0 - eps)) ** 2
    total, kept = 0.0, 0
    step = posterior._RESCALE_STEP / math.sqrt(m)

    def loglik(signed: np.ndarray) -> float:
        return float(np.log(eps / 2.0 + (1.0 - eps) * expit(signed)).sum())

    for sweep in range(burn_in + draws):
        eta = theta[f] - theta[s] + delta
        sig = expit(np.where(y, eta, -eta))
        if eps > 0.0:
            lapsed = rng.random(m) < (eps / 2.0) / (eps / 2.0 + (1.0 - eps) * sig)
        else:
            lapsed = np.zeros(m, dtype=bool)
        informed = np.where(lapsed, 0.0, kappa)
        omega = pg_draw(eta, rng)
        omega[lapsed] = 0.0
        signed = np.concatenate([omega, omega, -omega, -omega, omega, omega, -omega, -omega, omega])
        q = np.bincount(cells, signed, size * size).astype(np.float64)
        q[diagonal[:n]] += 1.0 / tau2
        q[diagonal[n]] += order_prior
        bb = np.bincount(f, informed, size) - np.bincount(s, informed, size)
        bb[d] = informed.sum()
        factor, code = lapack.dpotrf(q.reshape(size, size), lower=True, overwrite_a=True,
                                     clean=False)  # fmt: skip
        assert code == 0
        half, _ = lapack.dtrtrs(factor, bb, lower=True)
        z, _ = lapack.dtrtrs(factor, half + rng.standard_normal(size), lower=True, trans=1)
        theta, delta = z[:n], float(z[d])
        tau2 = posterior._tau_step(tau2, float(theta @ theta), n, scale_prior, rng)
        base = (theta[f] - theta[s] + delta) * signs
        current, scale = loglik(base), 1.0
        for _ in range(4):  # scale moves at this ε (as posterior._rescale without ε's step)
            c = math.exp(step * float(rng.standard_normal()))
            proposed = loglik(scale * c * base)
            grown = (scale * c) ** 2 - scale**2
            ratio = proposed - current + 2.0 * math.log(c)
            ratio -= grown * (tau2 / scale_prior**2 + order_prior * delta * delta) / 2.0
            if math.log(rng.random()) < ratio:
                scale, current = scale * c, proposed
        theta, delta, tau2 = scale * theta, scale * delta, scale * scale * tau2
        if sweep >= burn_in:
            sig = expit((theta[f] - theta[s] + delta) * signs)
            total += float(((0.5 - sig) / (eps / 2.0 + (1.0 - eps) * sig)).sum())
            kept += 1
    return total / kept


def ti_probability(b: dict[str, np.ndarray], seed: int, draws: int, nodes: np.ndarray) -> tuple[
    float, np.ndarray
]:  # fmt: skip
    """P(ε ≥ floor | y) from log p(y | ε) by thermodynamic integration; also the grid
    posterior."""
    slopes = np.array([fixed_chain(b, float(e), [seed, i], draws, 150)
                       for i, e in enumerate(nodes)])  # fmt: skip
    log_ml = np.concatenate([[0.0], np.cumsum(np.diff(nodes) * (slopes[1:] + slopes[:-1]) / 2)])
    at_grid = np.interp(LAPSE_GRID, nodes, log_ml)
    assert np.all(np.isin(np.round(LAPSE_GRID, 4), np.round(nodes, 4)))
    log_post = at_grid + posterior._LAPSE_LOG_PRIOR
    post = np.exp(log_post - log_post.max())
    post /= post.sum()
    return float(post[LAPSE_GRID >= LAPSE_FLOOR - 1e-9].sum()), post


def spread(b: dict[str, np.ndarray]) -> str:
    """How far apart (in truth) the compared essays were; ε's Fisher information at the truth
    (the judge flips a fifth: ε = 0.4)."""
    t, f, s = b["truth"], b["first"], b["second"]
    gap = np.abs(t[f] - t[s])
    sig = expit(gap)
    eps = 0.4
    p = eps / 2 + (1 - eps) * sig
    info = float((((0.5 - sig) ** 2) / (p * (1 - p))).sum())
    kl, far = discrimination(gap)
    quarter = np.quantile(t, [0.25, 0.75])
    ends = ((t[f] <= quarter[0]) & (t[s] >= quarter[1])) | (
        (t[s] <= quarter[0]) & (t[f] >= quarter[1])
    )
    return (f"top–bottom quarter pairs {int(ends.sum())} (mean gap {gap[ends].mean():.1f}), "
            f"gap>2 {np.mean(gap > 2):.2f}, gap>3 {np.mean(gap > 3):.2f}, "
            f"I(ε) at truth {info:.0f} (SE {1 / math.sqrt(info):.3f}), "
            f"KL(ε = 0.4 ‖ best ε = 0) {kl:.2f} nats, {far:.0%} of it from gaps > 4")  # fmt: skip


def discrimination(gap: np.ndarray, eps: float = 0.4) -> tuple[float, float]:
    """Σ over the comparisons of KL(the lapsing judge ‖ the clean judge on the scale c that
    mimics it best), essays at their true distance: the expected log Bayes factor the design
    collects for ε = 0.4 against ε = 0 (abilities known: an upper bound); and the share of it
    from pairs more than 4 logits apart."""
    p = eps / 2 + (1 - eps) * expit(gap)

    def kl(c: float) -> np.ndarray:
        q = expit(c * gap)
        return p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))

    cs = np.linspace(0.2, 1.0, 161)
    best = cs[int(np.argmin([kl(c).sum() for c in cs]))]
    terms = kl(float(best))
    return float(terms.sum()), float(terms[gap > 4].sum() / terms.sum())


def augmented(
    b: dict[str, np.ndarray], design: str, extra: int, seed: int, flip: float
) -> dict[str, np.ndarray]:
    """The batch with ``extra`` more comparisons judged by the same judge (flipping a share
    ``flip`` of its decisions):
    ``random`` pairs, ``quarters`` (top against bottom quarter by the round fit's scores, as
    the probes), or ``extremes`` (top against bottom tenth)."""
    rng = np.random.default_rng([seed, 5])
    t, n = b["truth"], int(b["n"])
    order = np.argsort(b["start_theta"])
    part = {"quarters": math.ceil(0.25 * n), "extremes": math.ceil(0.1 * n)}.get(design, n)
    if design == "random":
        f = rng.integers(0, n, extra)
        s = (f + rng.integers(1, n, extra)) % n
    else:
        low, high = order[:part], order[-part:]
        f, s = rng.choice(high, extra), rng.choice(low, extra)
        swap = rng.random(extra) < 0.5
        f, s = np.where(swap, s, f), np.where(swap, f, s)
    won = rng.random(extra) < expit(t[f] - t[s])
    won = np.where(rng.random(extra) < flip, ~won, won)
    out = dict(b)
    out["first"] = np.concatenate([b["first"], f])
    out["second"] = np.concatenate([b["second"], s])
    out["won"] = np.concatenate([b["won"].astype(bool), won])
    return out


def condition_of(text: str) -> judgement.Condition:
    n, k, judge, pairing = text.split("/")
    probes = judgement.BatchOptions().pairing_probe_fraction if pairing == "adaptive" else 0.0
    return judgement.Condition(int(n), int(k), judge, pairing, probes)


def above_floor(eps: np.ndarray) -> float:
    return float(np.mean(eps >= LAPSE_FLOOR - 1e-9))


def mixing_line(b: dict[str, np.ndarray], rep: int, args: argparse.Namespace) -> str:
    """Published, other seeds, long chain, Rao-Blackwellised and (unless --no-ti) TI."""
    _, kept = chain(b, b["seed"].tolist(), posterior.DRAWS, posterior.BURN_IN[True])
    others = [
        above_floor(chain(b, [rep, 77, i], posterior.DRAWS, posterior.BURN_IN[True])[1][:, 1])
        for i in range(args.seeds)
    ]
    theta, kept_long = chain(b, [rep, 99], args.long, 200)
    eps = kept_long[:, 1]
    quarters = ", ".join(f"{above_floor(q):.2f}" for q in np.array_split(eps, 4))
    rb = grid_conditional(b, theta[::5], kept_long[::5, 0])
    rb_p = float(rb[:, LAPSE_GRID >= LAPSE_FLOOR - 1e-9].sum(axis=1).mean())
    line = (
        f"published {float(b['published_p']):.2f} (again {above_floor(kept[:, 1]):.2f}); "
        f"seeds {min(others):.2f}–{max(others):.2f}; long {above_floor(eps):.2f} "
        f"(quarters {quarters}); RB {rb_p:.2f}; long ε median {np.median(eps):.2f}"
    )
    if not args.no_ti:
        p1, post = ti_probability(b, 1, args.ti_draws, TI_NODES)
        p2, _ = ti_probability(b, 2, args.ti_draws, TI_NODES)
        coarse = TI_NODES[np.isin(np.round(TI_NODES, 4), np.round(LAPSE_GRID, 4))]
        p3, _ = ti_probability(b, 3, args.ti_draws, coarse)
        grid = " ".join(f"{x:.2f}" for x in post)
        line += f"; TI {p1:.3f} / {p2:.3f} (grid nodes only {p3:.3f}); TI grid posterior {grid}"
    return line


def augment_line(b: dict[str, np.ndarray], rep: int, flip: float, args: argparse.Namespace) -> str:
    cells = [f"none {above_floor(chain(b, [rep, 55, 0], args.long, 200)[1][:, 1]):.2f}"]
    for design in ("random", "quarters", "extremes"):
        ps = []
        for a in range(args.augment_reps):
            more = augmented(b, design, args.augment, a, flip)
            ps.append(above_floor(chain(more, [rep, 55, a], args.long, 200)[1][:, 1]))
        cells.append(f"{design} " + "/".join(f"{p:.2f}" for p in ps))
    return f"P(ε ≥ 0.2) with {args.augment} more comparisons: " + "; ".join(cells)


def run_probe_part(args: argparse.Namespace) -> None:
    """Batches with the probes drawn from the top and bottom ``--probe-part`` (reps a-b)."""
    planner.PROBE_PART = args.probe_part
    with args.results.open("a", encoding="utf-8") as out:
        for group in args.batches.split(";"):
            cond, reps = group.split(":")
            condition = condition_of(cond)
            low, high = (int(x) for x in reps.split("-"))
            for rep in range(low, high):
                figures = judgement.run_batch(condition, rep)
                row = {"condition": asdict(condition), "rep": rep, "figures": figures}
                out.write(json.dumps(row) + "\n")
                out.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", required=True, help="n/K/judge/pairing:rep,rep;…")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--long", type=int, default=6000)
    parser.add_argument("--ti-draws", type=int, default=800)
    parser.add_argument("--no-ti", action="store_true")
    parser.add_argument("--capture-only", action="store_true")
    parser.add_argument("--augment", type=int, default=0)
    parser.add_argument("--augment-reps", type=int, default=2)
    parser.add_argument("--probe-part", type=float, default=None)
    parser.add_argument("--results", type=Path, default=Path("probe_part.jsonl"))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/lapse_batches"))
    args = parser.parse_args()
    if args.probe_part is not None:
        run_probe_part(args)
        return
    for group in args.batches.split(";"):
        cond, reps = group.split(":")
        condition = condition_of(cond)
        for rep in (int(r) for r in reps.split(",")):
            b = capture(condition, rep, args.cache)
            if args.augment:
                line = augment_line(b, rep, judgement.JUDGES[condition.judge][1], args)
            elif args.capture_only:
                line = f"published {float(b['published_p']):.2f}"
            else:
                line = mixing_line(b, rep, args)
            print(f"{cond}:{rep} {line}; {spread(b)}", flush=True)


if __name__ == "__main__":
    main()
