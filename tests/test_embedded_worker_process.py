"""The embedded provider worker in a child process (CJLLM_EMBEDDED_WORKER=child_process):
every comparison accounted for when the child is killed, a clear failure when it keeps
dying, and the run summary's calls and bundle sizes as with the worker in-process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cjllm.cj.workflow import EssayInput
from cjllm.embedded import QUEUE_FILE, EmbeddedServices, embedded_services
from cjllm.out_dir import locked_out_dir
from cjllm.preflight import RankRequest
from cjllm.provider import worker_process
from cjllm.provider.worker_process import WorkerProcessFailed
from cjllm.rank import prepare, run_until_done
from tests.e2e.cli import EXAMPLES, comparison_rows

BUDGET = 90  # 18 example essays × 10 comparisons each (two per comparison)


@pytest.fixture
def child_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CJLLM_EMBEDDED_WORKER", "child_process")
    monkeypatch.setenv("CJLLM_TARGET_RELIABILITY", "0.999")  # spend the whole budget


def queue_states(out: Path) -> tuple[Counter[str], int]:
    """How many queue items end in each state, and how many outbox rows are left."""
    with sqlite3.connect(out / QUEUE_FILE) as conn:
        states = Counter(state for (state,) in conn.execute("SELECT state FROM items"))
        (outbox,) = conn.execute("SELECT count(*) FROM outbox").fetchone()
    return states, int(outbox)


def test_a_rank_with_the_worker_in_a_child_process_reports_its_calls_and_bundle_size(
    tmp_path: Path, child_mode: None
) -> None:
    out = tmp_path / "run"
    outcome = run_until_done(prepare(RankRequest(EXAMPLES, out, provider="mock")))
    result = outcome.result
    assert result.comparisons_requested == BUDGET
    assert (result.comparisons_succeeded, result.comparisons_failed) == (BUDGET, 0)
    # the child's limiter counted every call it made, and the parent recorded them
    usage = json.loads((out / "run.json").read_text(encoding="utf-8"))["provider_usage"]
    assert sum(usage["requests"].values()) == result.provider_calls > 0
    assert outcome.pacing.requests_sent == result.provider_calls
    assert outcome.facts.bundle_size == 25  # learnt by the child, adopted by the parent
    states, outbox = queue_states(out)
    assert states == Counter({"completed": BUDGET}) and outbox == 0


@contextlib.asynccontextmanager
async def _started(out: Path) -> AsyncIterator[tuple[EmbeddedServices, str]]:
    """The embedded services of a mock rank in ``out`` with its batch started."""
    run = prepare(RankRequest(EXAMPLES, out, provider="mock"))
    adapters = {run.judging.provider: run.judging.adapter}
    with locked_out_dir(out):
        async with embedded_services(
            out, run.provider_settings, run.cj_settings, adapters=adapters
        ) as services:
            batch_id = await services.cj.start_batch(
                [EssayInput(e.essay_id, e.text) for e in run.inputs.essays],
                instructions=run.inputs.instructions,
                batch_id=str(uuid.uuid4()),
            )
            yield services, batch_id


async def _kill_worker_mid_run(services: EmbeddedServices, batch_id: str) -> int:
    """SIGKILL the child once some comparisons are done and a bundle is out; its pid."""
    process = services.provider.worker_process
    assert process is not None
    deadline = time.monotonic() + 120
    while True:
        progress = await services.cj.progress(batch_id)
        if process.pid is not None and progress.succeeded >= 20 and progress.pending > 0:
            break
        assert time.monotonic() < deadline, "no progress within 120 s"
        await asyncio.sleep(0.02)
    pid = process.pid
    os.kill(pid, signal.SIGKILL)
    return pid


async def test_a_killed_worker_process_is_replaced_and_every_comparison_judged_once(
    tmp_path: Path, child_mode: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CJLLM_MOCK_LATENCY_SECONDS", "0.3")  # bundles in flight when killed
    out = tmp_path / "run"
    async with _started(out) as (services, batch_id):
        killed = await _kill_worker_mid_run(services, batch_id)
        result = await services.until(services.cj.wait_for_completion(batch_id, check_every=0.2))
        process = services.provider.worker_process
        assert process is not None and process.restarts == 1
        assert process.pid not in (None, killed)
    assert (result.comparisons_succeeded, result.comparisons_failed) == (BUDGET, 0)
    rows = comparison_rows(out / "cj.sqlite")
    assert len(rows) == BUDGET and {status for _, status, _ in rows} == {"succeeded"}
    # one queue item per comparison, each finished once, no callback left behind
    states, outbox = queue_states(out)
    assert states == Counter({"completed": BUDGET}) and outbox == 0


async def test_a_worker_process_that_keeps_dying_fails_the_job_with_the_reason(
    tmp_path: Path, child_mode: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CJLLM_MOCK_LATENCY_SECONDS", "0.3")
    monkeypatch.setattr(worker_process, "MAX_RESTARTS", 0)
    out = tmp_path / "run"
    async with _started(out) as (services, batch_id):
        await _kill_worker_mid_run(services, batch_id)
        waiting = services.cj.wait_for_completion(batch_id, check_every=0.2)
        with pytest.raises(WorkerProcessFailed, match="run the same command again"):
            await services.until(waiting)
    # nothing was lost: what was not judged is still queued for the resumed run
    states, _ = queue_states(out)
    assert sum(states.values()) >= 20 and set(states) <= {"completed", "queued"}
    assert states["queued"] > 0


def test_auto_runs_the_worker_in_a_child_process_only_for_large_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cjllm.rank

    monkeypatch.delenv("CJLLM_EMBEDDED_WORKER", raising=False)  # auto
    small = prepare(RankRequest(EXAMPLES, tmp_path / "a", provider="mock"))
    assert small.provider_settings.embedded_worker == "in_process"
    monkeypatch.setattr(cjllm.rank, "CHILD_WORKER_FROM_ESSAYS", 18)  # the examples count
    large = prepare(RankRequest(EXAMPLES, tmp_path / "b", provider="mock"))
    assert large.provider_settings.embedded_worker == "child_process"
    monkeypatch.setenv("CJLLM_EMBEDDED_WORKER", "in_process")  # a setting wins over auto
    chosen = prepare(RankRequest(EXAMPLES, tmp_path / "c", provider="mock"))
    assert chosen.provider_settings.embedded_worker == "in_process"
