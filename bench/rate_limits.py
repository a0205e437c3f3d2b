"""`cjllm rank` inside a provider's rate limits: nothing lost, and no slower than the limits.

Run: python bench/rate_limits.py [--scale 4]

Three jobs, each a real `cjllm rank` process calling a fresh `cjllm sim` through the official
``anthropic`` SDK (``ANTHROPIC_BASE_URL``), with the sim's token buckets and no limits
configured in cjllm (it learns them from the headers):

1. 30 requests a minute, 24 essays × 6 comparisons each (72), ``per_request``;
2. the same under ``serial_round``;
3. tier-1-like limits (50 requests, 30,000 input and 8,000 output tokens a minute), 40
   essays of ~500 tokens × 10 comparisons each (200), ``serial_round``.

``--scale F`` shortens the limits' minute to 60/F seconds (sim and cjllm alike) and divides
the sim's latencies by F, so every ratio is kept while the bench runs F times faster.

For each job it prints the failed comparisons, the requests sent and the sim's 429s, the
wall time (ranking.json's ``finished_at`` minus run.json's ``started_at``: the job, not
Python's start-up) and the bound the limits set: for each budget of L a minute that the job
used A of (as the sim counted it), ``max(0, A − L) / L`` minutes — the bucket starts full —
and the tightest of them; then the ratios the issue asks for.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx

from cjllm.provider.rate_limits import Limits, estimate_minutes

CJLLM = [sys.executable, "-c", "from cjllm.cli import app; app(prog_name='cjllm')"]
WORDS = (
    "school students sleep morning research teachers learning evidence argument health "
    "attention schedule early later start class grades because therefore however clearly "
    "families buses sports community adolescent rhythm focus performance study policy"
).split()


@dataclass(frozen=True)
class Job:
    label: str
    essays: int
    per_essay: int
    strategy: str
    limits: Limits


@dataclass
class Result:
    job: Job
    failed: int
    made: int
    requests: int
    refused: int
    seconds: float
    bound_seconds: float
    naive_seconds: float
    budget: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_essays(folder: Path, n: int, seed: int) -> None:
    """``n`` essays of ~2,000 characters (~500 tokens) and a manifest of hidden qualities."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    entries = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(300)]
        text = f"Essay {i}. " + " ".join(words).capitalize() + ".\n"
        name = f"essay-{i:03d}.txt"
        (folder / name).write_text(text, encoding="utf-8")
        entries.append({"essay_id": f"essay-{i:03d}", "file": name, "quality": rng.gauss(0, 1.5)})
    manifest = {"essays": entries, "note": "synthetic essays for bench/rate_limits.py"}
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def wait_for(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("cjllm sim exited")
        try:
            httpx.get(url + "/sim/counters", timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("cjllm sim did not start")


def sim_args(job: Job, port: int, manifest: Path, scale: float) -> list[str]:
    args = ["sim", "--port", str(port), "--manifest", str(manifest), "--noise", "1.0"]
    for flag, value in (
        ("--rpm", job.limits.requests),
        ("--itpm", job.limits.input_tokens),
        ("--otpm", job.limits.output_tokens),
    ):
        if value is not None:
            args += [flag, str(value)]
    # a realistic call: 1 s to start, 10 ms per output token (scaled)
    args += ["--latency-call", str(1.0 / scale), "--latency-token", str(0.01 / scale)]
    return [*args, "--limit-period", str(60.0 / scale)]


def run_job(job: Job, scale: float, work: Path) -> Result:
    essays = work / f"{job.label}-essays"
    write_essays(essays, job.essays, seed=job.essays)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    sim = subprocess.Popen(
        [*CJLLM, *sim_args(job, port, essays / "manifest.json", scale)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(url, sim)
        out = work / f"{job.label}-out"
        env = {
            **{k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")},
            "ANTHROPIC_API_KEY": "sim",
            "ANTHROPIC_BASE_URL": url,
            "CJLLM_RATE_LIMIT_PERIOD_SECONDS": str(60.0 / scale),
            "CJLLM_TARGET_RELIABILITY": "0.9999",  # spend the whole budget
            "COLUMNS": "160",
        }
        rank = subprocess.run(
            [
                *CJLLM, "rank", str(essays), "--out", str(out), "--provider", "anthropic",
                "--strategy", job.strategy, "--comparisons-per-essay", str(job.per_essay),
            ],
            env=env, capture_output=True, text=True, timeout=3600, check=False,
        )  # fmt: skip
        if rank.returncode != 0:
            raise RuntimeError(f"cjllm rank failed:\n{rank.stdout}\n{rank.stderr}")
        counters = httpx.get(url + "/sim/counters").json()
    finally:
        sim.terminate()
        sim.wait(30)
    summary = json.loads((out / "ranking.json").read_text(encoding="utf-8"))["summary"]
    started = json.loads((out / "run.json").read_text(encoding="utf-8"))["started_at"]
    seconds = (
        datetime.fromisoformat(summary["finished_at"]) - datetime.fromisoformat(started)
    ).total_seconds()
    tokens = counters["tokens"]
    answered = counters["calls"]
    uncached_input = tokens["input"] + tokens["cache_creation"]
    minute = 60.0 / scale
    bounds = {
        budget: estimate_minutes(Limits(**{budget: limit}), answered, uncached_input,
                                 tokens["output"]) * minute
        for budget in ("requests", "input_tokens", "output_tokens")
        if (limit := job.limits.of(budget)) is not None
    }  # fmt: skip
    budget = max(bounds, key=lambda b: bounds[b])
    naive = estimate_minutes(
        job.limits, answered, uncached_input, tokens["output"], starts_full=False
    )
    return Result(
        job=job,
        failed=summary["comparisons_failed"],
        made=summary["comparisons_made"],
        requests=sum(counters["requests"].values()),
        refused=counters["responses"].get("429", 0),
        seconds=seconds,
        bound_seconds=bounds[budget],
        naive_seconds=naive * minute,
        budget=budget,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=4.0, help="limits' minute = 60/scale s")
    args = parser.parse_args()
    jobs = [
        Job("per_request@30rpm", 24, 6, "per_request", Limits(requests=30)),
        Job("serial_round@30rpm", 24, 6, "serial_round", Limits(requests=30)),
        Job("tier1", 40, 10, "serial_round", Limits(50, 30_000, 8_000)),
    ]
    work = Path(tempfile.mkdtemp(prefix="cjllm-bench-limits-"))
    try:
        results = [run_job(job, args.scale, work) for job in jobs]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"scale {args.scale:g}: the limits' minute is {60 / args.scale:g} s\n")
    header = (
        f"{'job':<20}{'made':>6}{'failed':>8}{'requests':>10}{'429s':>6}"
        f"{'wall s':>9}{'bound s':>9}{'bound by':>14}{'wall/bound':>12}{'A/L bound s':>13}"
    )
    print(header)
    for r in results:
        print(
            f"{r.job.label:<20}{r.made:>6}{r.failed:>8}{r.requests:>10}{r.refused:>6}"
            f"{r.seconds:>9.1f}{r.bound_seconds:>9.1f}{r.budget:>14}"
            f"{r.seconds / r.bound_seconds if r.bound_seconds else float('nan'):>12.2f}"
            f"{r.naive_seconds:>13.1f}"
        )
    per_request, serial, tier1 = results
    print()
    print(f"failed comparisons in all jobs: {sum(r.failed for r in results)} (target 0)")
    print(
        f"per_request wall / RPM bound: {per_request.seconds / per_request.bound_seconds:.2f}"
        f" (target ≤ 1.2; against {per_request.job.essays * per_request.job.per_essay // 2}"
        f" calls at 30/min without the first full bucket: "
        f"{per_request.seconds / per_request.naive_seconds:.2f})"
    )
    print(f"serial_round speed-up over per_request: {per_request.seconds / serial.seconds:.1f}×"
          " (target ≥ 10)")  # fmt: skip
    print(
        f"tier-1 wall / tightest bound ({tier1.budget}): "
        f"{tier1.seconds / tier1.bound_seconds:.2f} (target ≤ 1.3)"
    )


if __name__ == "__main__":
    main()
