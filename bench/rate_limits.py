"""`cjllm rank` inside a provider's rate limits: nothing lost, and no slower than the limits.

Run: python bench/rate_limits.py [--rpm-scale 1] [--tier1-scale 4]

Four jobs, each a real `cjllm rank` process calling a fresh `cjllm sim` through the official
``anthropic`` SDK (``ANTHROPIC_BASE_URL``), with the sim's token buckets and no limits
configured in cjllm (it learns them from the headers):

1. 30 requests a minute, 24 essays × 6 comparisons each (72), ``per_request``, 0.5 s a call;
2. the same under ``serial_round``;
3. the same as 2 with output at 100 tokens a second (a bundle's answer then takes seconds);
4. tier-1-like limits (50 requests, 30,000 input and 8,000 output tokens a minute), 40
   essays of ~500 tokens × 10 comparisons each (200), ``serial_round``, 1 s a call plus
   output at 100 tokens a second.

A job's scale F shortens the limits' minute to 60/F seconds (sim and cjllm alike) and
divides the sim's latencies by F, so its ratios are kept while it runs F times faster. The
request-limit jobs run at F = 1 by default: a `cjllm rank` run has a few seconds of fixed
start-up (database, services, report) that a shortened minute would inflate.

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
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
from bundling_sim import free_port  # bench/bundling_sim.py, beside this script

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
    scale: float
    latency_call: float
    latency_token: float = 0.0


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
    answered_calls: int = 0
    output_tokens: int = 0


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


def sim_args(job: Job, port: int, manifest: Path) -> list[str]:
    args = ["sim", "--port", str(port), "--manifest", str(manifest), "--noise", "1.0"]
    for flag, value in (
        ("--rpm", job.limits.requests),
        ("--itpm", job.limits.input_tokens),
        ("--otpm", job.limits.output_tokens),
    ):
        if value is not None:
            args += [flag, str(value)]
    scale = job.scale
    args += ["--latency-call", str(job.latency_call / scale)]
    args += ["--latency-token", str(job.latency_token / scale)]
    return [*args, "--limit-period", str(60.0 / scale)]


def run_job(job: Job, work: Path) -> Result:
    scale = job.scale
    essays = work / f"{job.label}-essays"
    write_essays(essays, job.essays, seed=job.essays)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    sim = subprocess.Popen(
        [*CJLLM, *sim_args(job, port, essays / "manifest.json")],
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
        answered_calls=answered,
        output_tokens=tokens["output"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rpm-scale", type=float, default=1.0, help="scale of jobs 1-3")
    parser.add_argument("--tier1-scale", type=float, default=4.0, help="scale of job 4")
    args = parser.parse_args()
    rpm30, tier1_limits = Limits(requests=30), Limits(50, 30_000, 8_000)
    jobs = [
        Job("per_request@30rpm", 24, 6, "per_request", rpm30, args.rpm_scale, 0.5),
        Job("serial_round@30rpm", 24, 6, "serial_round", rpm30, args.rpm_scale, 0.5),
        Job("serial,100tok/s", 24, 6, "serial_round", rpm30, args.rpm_scale, 0.5, 0.01),
        Job("tier1", 40, 10, "serial_round", tier1_limits, args.tier1_scale, 1.0, 0.01),
    ]
    work = Path(tempfile.mkdtemp(prefix="cjllm-bench-limits-"))
    try:
        results = [run_job(job, work) for job in jobs]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    header = (
        f"{'job':<20}{'scale':>6}{'made':>6}{'failed':>8}{'requests':>10}{'429s':>6}"
        f"{'wall s':>9}{'bound s':>9}{'bound by':>14}{'wall/bound':>12}{'A/L bound s':>13}"
    )
    print(header)
    for r in results:
        print(
            f"{r.job.label:<20}{r.job.scale:>6g}{r.made:>6}{r.failed:>8}{r.requests:>10}"
            f"{r.refused:>6}"
            f"{r.seconds:>9.1f}{r.bound_seconds:>9.1f}{r.budget:>14}"
            f"{r.seconds / r.bound_seconds if r.bound_seconds else float('nan'):>12.2f}"
            f"{r.naive_seconds:>13.1f}"
        )
    per_request, serial, slow_serial, tier1 = results
    print()
    print(f"failed comparisons in all jobs: {sum(r.failed for r in results)} (target 0)")
    print(
        f"per_request wall / RPM bound: {per_request.seconds / per_request.bound_seconds:.2f}"
        f" (target ≤ 1.2; against {per_request.job.essays * per_request.job.per_essay // 2}"
        f" calls at 30/min without the first full bucket: "
        f"{per_request.seconds / per_request.naive_seconds:.2f})"
    )
    print(f"serial_round speed-up over per_request: {per_request.seconds / serial.seconds:.1f}×"
          f" (target ≥ 10; with output at 100 tokens/s: "
          f"{per_request.seconds / slow_serial.seconds:.1f}×)")  # fmt: skip
    print(
        f"tier-1 wall / tightest bound ({tier1.budget}): "
        f"{tier1.seconds / tier1.bound_seconds:.2f} (target ≤ 1.3)"
    )


if __name__ == "__main__":
    main()
