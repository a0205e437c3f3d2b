"""Helpers for the batch-job tests: settings, a provider pointed at the sim, job lookups."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from cjllm.bus import MemoryBus
from cjllm.provider.jobs import BatchJob, JobState
from cjllm.provider.service import ProviderService, embedded_provider
from cjllm.settings import ProviderSettings
from tests.provider.support import Callbacks, body, fast_settings, post_all

VENDOR_MODELS = {"anthropic": "claude-sonnet-4-6", "openai": "gpt-4.1-mini"}


def batch_settings(queue_url: str, **overrides: Any) -> ProviderSettings:
    """Quick batch loops: a short linger, fast polls (the sim's jobs end in well under 1s)."""
    values: dict[str, Any] = {
        "batch_linger_seconds": 0.05,
        "batch_max_wait_seconds": 2.0,
        "batch_poll_min_seconds": 0.05,
        "batch_poll_max_seconds": 0.2,
        "sweep_interval_seconds": 0.05,
    }
    values.update(overrides)
    return fast_settings(queue_url, **values)


def batch_body(i: int, *, topic: str, vendor: str, size: int = 10, **extra: Any) -> dict[str, Any]:
    strategy = extra.pop("strategy", "async_batch")
    return body(i, topic=topic, size=size, provider=vendor, strategy=strategy, **extra)


@contextlib.asynccontextmanager
async def batch_provider(
    settings: ProviderSettings, callbacks: Callbacks, topic: str
) -> AsyncIterator[tuple[ProviderService, httpx.AsyncClient]]:
    """An embedded provider (vendor adapters from the SDKs' environment) and its API. Its
    loops are not running: a test queues its comparisons, then ``service.start_work()``."""
    bus = MemoryBus()
    bus.subscribe(topic, "cj", callbacks)
    await bus.start()
    try:
        async with embedded_provider(settings, bus=bus, work=False) as service:
            transport = httpx.ASGITransport(app=service.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://provider") as http:
                yield service, http
    finally:
        await bus.stop()


def new_topic() -> str:
    return f"results-{uuid.uuid4().hex[:8]}"


async def post_then_work(
    service: ProviderService, http: httpx.AsyncClient, bodies: list[dict[str, Any]]
) -> None:
    """Queue every comparison, then start the loops (so the jobs formed do not depend on
    how fast the posts arrive)."""
    await post_all(http, bodies)
    service.start_work()


async def jobs_of(service: ProviderService) -> list[BatchJob]:
    return await service.jobs.table.jobs()


async def wait_jobs(
    service: ProviderService, cond: Callable[[list[BatchJob]], bool], timeout: float = 30.0
) -> list[BatchJob]:
    """The job table once ``cond`` holds for it (the timeout only guards against a hang)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        jobs = await jobs_of(service)
        if cond(jobs):
            return jobs
        assert asyncio.get_running_loop().time() < deadline, f"job table never got there: {jobs}"
        await asyncio.sleep(0.02)


def submitted(n: int) -> Callable[[list[BatchJob]], bool]:
    """At least ``n`` jobs, every one of them at the vendor already."""
    return lambda jobs: len(jobs) >= n and all(j.vendor_id for j in jobs)


def settled(jobs: list[BatchJob]) -> bool:
    return bool(jobs) and all(j.state is JobState.SETTLED for j in jobs)
