"""Rate limits through the real ``anthropic`` SDK against ``cjllm sim``'s token buckets.

The sim answers as the vendors do (their rate-limit headers on every answer, an honest
``retry-after`` on a 429); its limits' minute is shortened (``period_seconds``) and the
provider is told the same (``CJLLM_RATE_LIMIT_PERIOD_SECONDS``), so the jobs run in seconds
with every ratio kept.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cjllm.bus import MemoryBus
from cjllm.contracts import QueueItemState
from cjllm.provider.queue import queue_from_url
from cjllm.provider.service import embedded_provider
from cjllm.sim.state import SimConfig
from tests.e2e.cli import CJLLM, EXAMPLES, REPO, env, run
from tests.provider.support import (
    COMPARISON_PATH,
    Callbacks,
    body,
    eventually,
    fast_settings,
    until_up,
)
from tests.sim.running import SimControl, running_sim

PERIOD = 3.0  # seconds in the sim's (and the provider's) minute


@pytest.fixture
def sim() -> Iterator[SimControl]:
    with running_sim(SimConfig()) as control:
        yield control


def point_at(sim: SimControl, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", sim.anthropic_base_url)


async def test_a_limited_flaky_server_answers_every_comparison_and_costs_no_attempt(
    sim: SimControl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """15% of calls answered 429 and 15% of bundle items dropped, inside a 20-a-minute
    request limit: every comparison is answered, and no 429 costs an attempt."""
    point_at(sim, monkeypatch)
    sim.configure(
        limits={"requests_per_minute": 20, "period_seconds": PERIOD},
        faults={"rate_limited": 0.15, "missing_item": 0.15},
        fault_seed=7,
        fault_retry_after=0.2,
    )
    topic, callbacks = f"results-{uuid.uuid4().hex[:8]}", Callbacks()
    bus = MemoryBus()
    bus.subscribe(topic, "cj", callbacks)
    await bus.start()
    settings = fast_settings(
        f"sqlite:///{tmp_path / 'queue.sqlite'}",
        linger_seconds=0.05,
        max_attempts=5,
        rate_limit_period_seconds=PERIOD,
    )
    bodies = [
        body(i, topic=topic, size=10, provider="anthropic", group=f"round-{i // 10}")
        for i in range(20)
    ]
    async with embedded_provider(settings, bus=bus) as svc:
        transport = httpx.ASGITransport(app=svc.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://provider") as client:
            for request_body in bodies:
                assert (await client.post(COMPARISON_PATH, json=request_body)).status_code == 202
            await eventually(lambda: callbacks.count == 20, timeout=120)
        pacing = svc.limiter.pacing()
    await bus.stop()
    assert all(callbacks.one(b["correlation_id"]).is_success for b in bodies)
    counters = sim.counters()
    assert counters["faults"].get("rate_limited", 0) > 0  # the storm really happened
    assert pacing.requests_sent == sum(counters["requests"].values())
    assert pacing.requests.get("rate_limited", 0) == counters["responses"].get("429", 0)


def worker(queue_url: str, sim: SimControl, log: Path, period: float) -> subprocess.Popen[bytes]:
    extra = {
        "CJLLM_QUEUE_URL": queue_url,
        "CJLLM_BUS_URL": "memory://",
        "CJLLM_LINGER_SECONDS": "0.05",
        "CJLLM_POLL_INTERVAL_SECONDS": "0.02",
        "CJLLM_WORKER_CONCURRENCY": "8",
        "CJLLM_RATE_LIMIT_PERIOD_SECONDS": str(period),
        "CJLLM_RATE_LIMIT_MAX_WAIT_SECONDS": "0.5",
        "ANTHROPIC_API_KEY": "sk-ant-test",
        "ANTHROPIC_BASE_URL": sim.anthropic_base_url,
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [*CJLLM, "serve", "provider", "--worker-only"],
            cwd=REPO,
            env=env(extra),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def test_two_worker_processes_on_redis_share_one_limit(
    sim: SimControl, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two worker processes, eight calls of a second in flight each (16 a second between
    them) against 20 requests a minute: once the first answer has taught the limit, the
    shared buckets keep the pair under it, the worker that has had no answer of its own
    included. Each with buckets of its own would allow the whole limit, twice over.

    Both workers are up, and the first comparison answered, before the rest are queued:
    a call sent before any limit is known could reach the sim after an answer had already
    reported what remains, and escape the count, however rarely the machine's load lines
    that up."""
    point_at(sim, monkeypatch)
    period = 6.0
    sim.configure(
        limits={"requests_per_minute": 20, "period_seconds": period},
        latency={"per_call": 1.0},
    )
    queue_url = f"{redis_url}?prefix=t-{uuid.uuid4().hex[:12]}"
    settings = fast_settings(queue_url, rate_limit_period_seconds=period)
    n = 60  # per_request: 60 calls, 3 minutes' worth of the limit
    bodies = [
        body(i, topic="unused", size=None, provider="anthropic", strategy="per_request")
        for i in range(n)
    ]
    logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
    procs = [worker(queue_url, sim, log, period) for log in logs]
    queue = queue_from_url(queue_url, max_items=1000, max_bytes=10_000_000)
    ids: list[str] = []

    async def finished() -> int:
        items = [await queue.get(q) for q in ids]
        return sum(i is not None and i.state is QueueItemState.COMPLETED for i in items)

    async def until_finished(guard: float) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + guard  # a guard against hanging, not a measurement
        while (done := await finished()) < len(ids):
            if loop.time() > deadline:
                break
            await asyncio.sleep(0.1)
        return done

    try:
        for proc, log in zip(procs, logs, strict=True):
            await until_up(proc, log)
        async with embedded_provider(settings, queue=queue, work=False) as svc:
            transport = httpx.ASGITransport(app=svc.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://p") as client:
                for i, request_body in enumerate(bodies):
                    response = await client.post(COMPARISON_PATH, json=request_body)
                    assert response.status_code == 202, response.text
                    ids.append(response.json()["queue_id"])
                    if i == 0:
                        assert await until_finished(60) == 1  # its answer taught the limit
            done = await until_finished(200)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        await queue.close()
    assert done == n, "\n".join(log.read_text() for log in logs)
    counters = sim.counters()
    assert counters["calls"] == n
    assert counters["responses"].get("429", 0) <= 2, counters


def rank_env(sim: SimControl) -> dict[str, str]:
    return {
        "ANTHROPIC_API_KEY": "sk-ant-test",
        "ANTHROPIC_BASE_URL": sim.anthropic_base_url,
        "CJLLM_RATE_LIMIT_PERIOD_SECONDS": str(PERIOD),
        "CJLLM_TARGET_RELIABILITY": "0.999",
    }


def test_ranking_json_counts_every_request_the_provider_received(
    sim: SimControl, tmp_path: Path
) -> None:
    sim.configure(
        judge={"manifests": [str(EXAMPLES / "manifest.json")]},
        limits={"requests_per_minute": 10, "period_seconds": PERIOD},
        faults={"rate_limited": 0.2},
        fault_retry_after=0.1,
    )
    out = tmp_path / "out"
    args = ["rank", str(EXAMPLES), "--out", str(out), "--provider", "anthropic"]
    proc = run(
        *args, "--strategy", "per_request", "--comparisons-per-essay", "4", extra_env=rank_env(sim)
    )
    # 1 would be the CJ verdict on so few comparisons (e.g. a disconnected graph), not a crash
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    summary = json.loads((out / "ranking.json").read_text(encoding="utf-8"))["summary"]
    counters = sim.counters()
    received = counters["requests"]["POST /v1/messages"]
    assert summary["comparisons_failed"] == 0
    assert summary["provider_calls"] == received
    assert summary["provider_calls_by_outcome"]["rate_limited"] == counters["responses"]["429"]
    assert summary["provider_calls_by_outcome"]["ok"] == counters["calls"]
    assert summary["rate_limit_wait_seconds"] >= 0
    assert "Rate limits:" in proc.stdout


def test_rank_says_in_one_line_that_the_account_is_out_of_credit(
    sim: SimControl, tmp_path: Path
) -> None:
    sim.configure(out_of_credit=True)
    out = tmp_path / "out"
    args = ["rank", str(EXAMPLES), "--out", str(out), "--provider", "anthropic"]
    proc = run(*args, "--budget", "18", extra_env=rank_env(sim))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "insufficient_quota" in line]
    assert len(lines) == 1, proc.stdout
    assert "out of credit" in lines[0] and "credit balance is too low" in lines[0]
    assert sim.counters()["responses"]["400"] <= 3  # later bundles failed fast, unsent


async def test_a_bundle_the_limits_can_never_hold_is_split_once_they_are_known(
    sim: SimControl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing configured: the first bundle of 10 asks for more output than a minute of
    the sim's budget holds; its 429 teaches the limit, and the bundle goes again in parts
    that fit (not paused: waiting would not make it fit)."""
    point_at(sim, monkeypatch)
    per_item = 400
    sim.configure(limits={"output_tokens_per_minute": 3 * per_item + 64, "period_seconds": PERIOD})
    topic, callbacks = f"results-{uuid.uuid4().hex[:8]}", Callbacks()
    bus = MemoryBus()
    bus.subscribe(topic, "cj", callbacks)
    await bus.start()
    settings = fast_settings(
        f"sqlite:///{tmp_path / 'queue.sqlite'}",
        linger_seconds=0.05,
        max_output_tokens_per_item=per_item,
        rate_limit_period_seconds=PERIOD,
    )
    bodies = [body(i, topic=topic, size=10, provider="anthropic") for i in range(10)]
    async with embedded_provider(settings, bus=bus, work=False) as svc:
        transport = httpx.ASGITransport(app=svc.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://provider") as client:
            for request_body in bodies:
                assert (await client.post(COMPARISON_PATH, json=request_body)).status_code == 202
            svc.start_work()  # all ten queued: one bundle of ten first
            await eventually(lambda: callbacks.count == 10, timeout=120)
        too_large = svc.metrics.registry.get_sample_value(
            "cjllm_provider_rate_limited_total", {"provider": "anthropic", "kind": "too_large"}
        )
        items = [
            await svc.queue.get(str(callbacks.one(b["correlation_id"]).request_id)) for b in bodies
        ]
    await bus.stop()
    assert all(callbacks.one(b["correlation_id"]).is_success for b in bodies)
    assert too_large == 1
    assert sim.counters()["responses"]["429"] == 1
    assert max(int(n) for n in sim.counters()["items_per_call"]) == 3
    assert all(item is not None and item.attempts == 0 for item in items)
