"""`cjllm rank --strategy async_batch` end to end: the vendors' batch APIs through the official
SDKs, against `cjllm sim` (served from a thread of the test process over real HTTP).

Interrupted while a job is open, the rerun watches the same job (it never submits a job
twice); with errored, expired and short-answered lines, each of their comparisons goes again
in a later job; every comparison is accounted for, and the cost is the batch price.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cjllm.provider.calls import CallUsage
from cjllm.provider.pricing import load_price_table
from tests.e2e.cli import EXAMPLES, INTERRUPTIBLE_CJLLM, REPO, comparison_rows, env, run
from tests.sim.running import SimControl, running_sim

BUDGET = 90  # ⌈10·18/2⌉
FAST_JOBS = {
    "CJLLM_BATCH_LINGER_SECONDS": "0.3",
    "CJLLM_BATCH_POLL_MIN_SECONDS": "0.2",
    "CJLLM_BATCH_POLL_MAX_SECONDS": "0.5",
    "CJLLM_SWEEP_INTERVAL_SECONDS": "0.1",
    "CJLLM_TARGET_RELIABILITY": "0.999",
}


@pytest.fixture(scope="module")
def batch_sim() -> Iterator[SimControl]:
    with running_sim() as control:
        yield control


def vendor_env(sim: SimControl, vendor: str) -> dict[str, str]:
    if vendor == "anthropic":
        return {"ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": sim.anthropic_base_url}
    return {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": sim.openai_base_url}


def jobs_in(queue: Path) -> list[tuple[str, str, str | None]]:
    """(job id, state, vendor id) of every batch job recorded in a run's queue file."""
    if not queue.exists():
        return []
    try:
        with sqlite3.connect(f"file:{queue}?mode=ro", uri=True, timeout=30) as conn:
            return [
                (str(r[0]), str(r[1]), r[2])
                for r in conn.execute("SELECT job_id, state, vendor_id FROM batch_jobs")
            ]
    except sqlite3.OperationalError:  # not created yet
        return []


def batch_price(sim: SimControl, model: str) -> float:
    """What the tokens the sim counted cost at the batch rate."""
    tokens = sim.counters()["tokens"]
    usage = CallUsage(
        input_tokens=tokens["input"],
        output_tokens=tokens["output"],
        cache_creation_input_tokens=tokens["cache_creation"],
        cache_read_input_tokens=tokens["cache_read"],
    )
    return load_price_table().cost(model, usage, batch=True).total


def check_finished(out: Path, sim: SimControl, model: str) -> dict[str, object]:
    rows = comparison_rows(out / "cj.sqlite")
    assert len(rows) == BUDGET and all(status == "succeeded" for _, status, _ in rows)
    jobs = jobs_in(out / "queue.sqlite")
    assert jobs and all(state == "settled" for _, state, _ in jobs)
    # nothing went to the vendor twice: one vendor job per recorded job, and no other
    assert len({vendor_id for _, _, vendor_id in jobs}) == len(jobs)
    assert sim.counters()["batches"]["created"] == len(jobs)
    assert sim.counters()["calls"] == 0
    summary: dict[str, object] = json.loads((out / "ranking.json").read_text("utf-8"))["summary"]
    assert summary["batching_strategy"] == "async_batch"
    assert summary["comparisons_made"] == BUDGET
    assert summary["cost_estimate"] == pytest.approx(batch_price(sim, model), rel=1e-3)
    return summary


def test_an_interrupted_async_batch_run_resumes_watching_the_same_jobs(
    tmp_path: Path, batch_sim: SimControl
) -> None:
    batch_sim.restore(batch_seconds=3.0)
    out = tmp_path / "results"
    args = ["rank", str(EXAMPLES), "--out", str(out), "--strategy", "async_batch"]
    args += ["--provider", "anthropic", "--bundle-size", "5"]
    extra = {**FAST_JOBS, **vendor_env(batch_sim, "anthropic")}
    child = subprocess.Popen(
        [*INTERRUPTIBLE_CJLLM, *args],
        cwd=REPO,
        env=env(extra),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while not any(vendor_id for _, _, vendor_id in jobs_in(out / "queue.sqlite")):
            assert child.poll() is None, child.communicate()[0]
            assert time.monotonic() < deadline, "no job submitted within 120 s"
            time.sleep(0.05)
        child.send_signal(signal.SIGINT)
        output, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130, output
    open_jobs = jobs_in(out / "queue.sqlite")
    assert [state for _, state, _ in open_jobs] == ["submitted"]
    assert batch_sim.counters()["batches"]["created"] == 1

    resumed = run(*args, extra_env=extra, timeout=180)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Resuming batch" in resumed.stdout
    job_id, _, vendor_id = open_jobs[0]
    assert f"job {job_id[:8]} (anthropic {vendor_id}): settled" in resumed.stdout
    assert "at the batch price" in resumed.stdout
    summary = check_finished(out, batch_sim, "claude-sonnet-4-6")
    # bundled lines of (at most) 5: far fewer lines than comparisons
    assert 0 < int(str(summary["provider_calls"])) <= BUDGET / 4


def test_async_batch_with_openai_ranks_the_examples_through_errored_expired_and_short_lines(
    tmp_path: Path, batch_sim: SimControl
) -> None:
    # some lines errored (overloaded), some expired, some answered with an item missing:
    # each of those comparisons goes again in a later job, and all are accounted for
    # (with up to 20 tries each, none of the 90 runs out: 0.42**20 per comparison)
    faults = {"overloaded": 0.2, "missing_item": 0.2}
    batch_sim.restore(batch_seconds=0.5, batch_expired_rate=0.2, faults=faults)
    out = tmp_path / "results"
    proc = run(
        "rank",
        str(EXAMPLES),
        "--out",
        str(out),
        "--strategy",
        "async_batch",
        "--provider",
        "openai",
        extra_env={**FAST_JOBS, **vendor_env(batch_sim, "openai"), "CJLLM_MAX_ATTEMPTS": "20"},
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "openai" in proc.stdout and "in_progress" in proc.stdout
    check_finished(out, batch_sim, "gpt-4.1-mini")
    counters = batch_sim.counters()
    assert sum(counters["faults"].values()) + counters["batches"]["expired"] > 0
