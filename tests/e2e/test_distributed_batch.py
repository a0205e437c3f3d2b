"""A distributed ``async_batch`` assessment, every service its own process, for both vendors.

`cjllm sim` plays the vendor (its batch endpoints, through the official SDK); the provider
runs as an API process and a worker process on a Redis queue; the CJ service keeps its state
in PostgreSQL; callbacks travel on the Kafka-protocol broker. The worker is killed with
SIGKILL while a job is open at the vendor and a new one is started: it picks the job up,
nothing is submitted twice, and the assessment completes with every comparison accounted
for, one callback acted on each.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid

import httpx
import pytest

from cjllm.cj.store import Store
from cjllm.contracts import QueueItemState
from cjllm.provider.jobs import JobState, JobTable, job_table_for
from cjllm.provider.queue import queue_from_url
from tests.e2e.cli import CJLLM, EXAMPLES, REPO, env
from tests.e2e.test_distributed import Fleet, _wait_for_result, _wait_http, fleet
from tests.services import free_port, wait_for_port

__all__ = ["fleet"]

pytestmark = pytest.mark.slow

SIM_KEY = "sim-test-key"
BUDGET = 90  # ⌈10·18/2⌉


def vendor_env(vendor: str, sim_port: int) -> dict[str, str]:
    base = f"http://127.0.0.1:{sim_port}"
    if vendor == "anthropic":
        return {"ANTHROPIC_BASE_URL": base, "ANTHROPIC_API_KEY": SIM_KEY}
    return {"OPENAI_BASE_URL": base + "/v1", "OPENAI_API_KEY": SIM_KEY}


@pytest.mark.parametrize("vendor", ["anthropic", "openai"])
async def test_async_batch_assessment_survives_a_worker_killed_while_a_job_is_open(
    vendor: str, fleet: Fleet, redis_url: str, postgres_url: str, kafka_bootstrap: str
) -> None:
    run = uuid.uuid4().hex[:8]
    queue_url = f"{redis_url}?prefix=e2e-batch-{run}"
    bus_url = f"kafka://{kafka_bootstrap}"
    sim_port, provider_port, cj_port = free_port(), free_port(), free_port()
    manifest = str(EXAMPLES / "manifest.json")
    sim_args = ["--manifest", manifest, "--api-key", SIM_KEY, "--batch-seconds", "3"]
    fleet.start("sim", ["sim", "--port", str(sim_port), *sim_args], {})
    provider_env = {
        "CJLLM_QUEUE_URL": queue_url,
        "CJLLM_BUS_URL": bus_url,
        **vendor_env(vendor, sim_port),
        "CJLLM_BATCH_LINGER_SECONDS": "0.5",
        "CJLLM_BATCH_POLL_MIN_SECONDS": "0.3",
        "CJLLM_BATCH_POLL_MAX_SECONDS": "1",
        "CJLLM_SWEEP_INTERVAL_SECONDS": "0.2",
        "CJLLM_LEASE_SECONDS": "2",
        "CJLLM_CALL_TIMEOUT_SECONDS": "3",
        "CJLLM_OUTBOX_LEASE_SECONDS": "2",
    }
    fleet.start(
        "provider-api",
        ["serve", "provider", "--api-only", "--port", str(provider_port)],
        provider_env,
    )
    fleet.start("worker-1", ["serve", "provider", "--worker-only"], provider_env)
    fleet.start(
        "cj",
        ["serve", "cj", "--port", str(cj_port)],
        {
            "CJLLM_DATABASE_URL": postgres_url,
            "CJLLM_BUS_URL": bus_url,
            "CJLLM_PROVIDER_URL": f"http://127.0.0.1:{provider_port}",
            "CJLLM_LLM_PROVIDER": vendor,
            "LLM_BATCHING_STRATEGY": "async_batch",
            "CJLLM_CALLBACK_TOPIC": f"e2e-batch-{run}.results",
            "CJLLM_COMPLETION_TOPIC": f"e2e-batch-{run}.completed",
            "CJLLM_CONSUMER_GROUP": f"e2e-batch-cj-{run}",
            "CJLLM_TARGET_RELIABILITY": "0.999",
        },
    )
    queue = queue_from_url(queue_url, max_items=10**6, max_bytes=10**10)
    table = job_table_for(queue)
    store = await Store.open(postgres_url)
    try:
        wait_for_port(sim_port, fleet.procs["sim"], "cjllm sim")
        await _wait_http(
            f"http://127.0.0.1:{provider_port}/healthz", fleet.procs["provider-api"], "provider API"
        )
        cj_url = f"http://127.0.0.1:{cj_port}"
        await _wait_http(f"{cj_url}/healthz", fleet.procs["cj"], "CJ service")
        submitted = await asyncio.to_thread(
            subprocess.run,
            [*CJLLM, "submit", str(EXAMPLES), "--cj-url", cj_url],
            cwd=REPO,
            env=env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        batch_id = submitted.stdout.strip().splitlines()[-1]

        # kill -9 the worker while the first job is open at the vendor, then start another
        await _until_a_job_is_open(table, batch_id)
        os.kill(fleet.procs["worker-1"].pid, signal.SIGKILL)
        fleet.procs["worker-1"].wait(10)
        fleet.start("worker-2", ["serve", "provider", "--worker-only"], provider_env)

        result = await _wait_for_result(cj_url, batch_id, timeout=300)
        assert result.status == "completed", result
        assert result.batching_strategy.value == "async_batch"
        assert result.provider == vendor
        rows = await store.comparisons(batch_id)
        assert len(rows) == BUDGET == result.comparisons_succeeded
        assert all(r.status == "succeeded" for r in rows), [r.error_code for r in rows]
        items = [await queue.get(str(r.queue_id)) for r in rows]
        assert all(i is not None and i.state is QueueItemState.COMPLETED for i in items)
        jobs = await table.jobs(cj_batch_id=batch_id)
        assert jobs and all(j.state is JobState.SETTLED for j in jobs)
        # every line went to the vendor in exactly one job: one vendor job per job
        async with httpx.AsyncClient() as client:
            counters = (await client.get(f"http://127.0.0.1:{sim_port}/sim/counters")).json()
        assert counters["batches"]["created"] == len(jobs) == len({j.vendor_id for j in jobs})
        assert counters["batches"]["items"] == BUDGET
        assert counters["calls"] == 0
        assert 0 < result.cost_estimate
    except BaseException:
        print(fleet.logs())
        raise
    finally:
        await store.close()
        await queue.close()


async def _until_a_job_is_open(table: JobTable, batch_id: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        jobs = await table.jobs(cj_batch_id=batch_id)
        if any(j.vendor_id and j.state is JobState.SUBMITTED for j in jobs):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no job reached the vendor within 120 s")
