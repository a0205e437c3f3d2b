"""Test helpers: comparison request bodies, a callback collector, waiting without sleeping blind."""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx

from cjllm.bus import EventBus
from cjllm.contracts import EventEnvelope, LLMComparisonResultV1
from cjllm.provider.adapters.mock import MockAdapter
from cjllm.provider.service import ProviderService, embedded_provider
from cjllm.settings import ProviderSettings
from cjllm.sim.judge import Judge

WORDS = (
    "argument evidence structure clarity persuasive analysis paragraph conclusion thesis "
    "nevertheless furthermore consequently illustrates demonstrates considerable the a of "
    "and to is was it that because although however moreover significant perspective"
).split()

RUBRIC = "Assignment: argue for or against school uniforms.\nRubric: argument, evidence, style."
JUDGE_INSTRUCTIONS = "You are an experienced examiner. Compare the two essays."


def essay(seed: int) -> str:
    """A deterministic essay whose surface features (and so simulated quality) vary by seed."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(rng.randint(3, 14)):
        words = rng.choices(WORDS[: rng.randint(8, len(WORDS))], k=rng.randint(5, 30))
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


def body(
    i: int,
    *,
    topic: str,
    size: int | None = 10,
    group: str | None = "batch-1:round-1",
    strategy: str | None = None,
    model: str | None = None,
    provider: str = "mock",
    shared: str = RUBRIC,
    temperature: float | None = None,
    correlation_id: uuid.UUID | None = None,
    cj_batch: str = "batch-1",
    **extra: Any,
) -> dict[str, Any]:
    """One CJ-style comparison request (prompt blocks, metadata spine and bundle hints)."""
    metadata: dict[str, Any] = {
        "essay_a_id": f"essay-{i}-a",
        "essay_b_id": f"essay-{i}-b",
        "cj_batch_id": cj_batch,
        "bos_batch_id": "bos-1",
    }
    if size is not None:
        metadata["preferred_bundle_size"] = size
    if group is not None:
        metadata["bundle_group"] = group
    if strategy is not None:
        metadata["batching_strategy"] = strategy
    overrides: dict[str, Any] = {"provider_override": provider}
    if model is not None:
        overrides["model_override"] = model
    if temperature is not None:
        overrides["temperature_override"] = temperature
    out: dict[str, Any] = {
        "prompt_blocks": [
            {"target": "system", "content": JUDGE_INSTRUCTIONS, "cacheable": True},
            {"target": "user_content", "content": shared, "cacheable": True},
            {"target": "user_content", "content": essay(2 * i)},
            {"target": "user_content", "content": essay(2 * i + 1)},
        ],
        "callback_topic": topic,
        "correlation_id": str(correlation_id or uuid.uuid4()),
        "llm_config_overrides": overrides,
        "metadata": metadata,
    }
    out.update(extra)
    return out


def expected_winner(judge: Judge, request_body: dict[str, Any]) -> str:
    """What the mock's judge says for this request (it answers per custom_id)."""
    parts = tuple(
        b["content"]
        for b in request_body["prompt_blocks"]
        if b["target"] == "user_content" and not b.get("cacheable")
    )
    return judge.decide(request_body["correlation_id"], parts).winner


class Callbacks:
    """Collects result events by correlation id (a bus handler)."""

    def __init__(self) -> None:
        self.by_id: dict[str, list[LLMComparisonResultV1]] = defaultdict(list)
        self.count = 0

    async def __call__(self, envelope: EventEnvelope) -> None:
        result = envelope.result()
        assert envelope.correlation_id == result.correlation_id
        self.by_id[str(result.correlation_id)].append(result)
        self.count += 1

    def one(self, correlation_id: str) -> LLMComparisonResultV1:
        (result,) = self.by_id[correlation_id]
        return result


async def eventually(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait until ``cond()`` holds (the timeout is a guard against hanging, not a measurement)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not met before the guard timeout")
        await asyncio.sleep(0.02)


async def until_up(proc: subprocess.Popen[bytes], log: Path, timeout: float = 120.0) -> None:
    """Wait until a ``cjllm serve provider`` process's log says it is up (it must not exit)."""

    def up() -> bool:
        assert proc.poll() is None, log.read_text()
        return "provider service up" in log.read_text()

    await eventually(up, timeout=timeout)


COMPARISON_PATH = "/api/v1/comparison"


def fast_settings(queue_url: str, **overrides: Any) -> ProviderSettings:
    """Settings for tests: quick polls and retries; a long linger unless a test says otherwise."""
    values: dict[str, Any] = {
        "queue_url": queue_url,
        "bus_url": "memory://",
        "linger_seconds": 60.0,
        "poll_interval_seconds": 0.01,
        "sweep_interval_seconds": 0.05,
        "retry_base_seconds": 0.01,
        "retry_max_seconds": 0.05,
        "lease_seconds": 10.0,
        "max_attempts": 3,
        "outbox_lease_seconds": 2.0,
    }
    values.update(overrides)
    return ProviderSettings(**values)


@contextlib.asynccontextmanager
async def provider(
    settings: ProviderSettings,
    *,
    bus: EventBus | None = None,
    mock: MockAdapter | None = None,
    work: bool = True,
) -> AsyncIterator[tuple[ProviderService, httpx.AsyncClient, MockAdapter]]:
    """An embedded provider service with a mock adapter, and an HTTP client for its API."""
    mock = mock or MockAdapter()
    async with embedded_provider(settings, bus=bus, adapters={"mock": mock}, work=work) as svc:
        transport = httpx.ASGITransport(app=svc.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://provider") as client:
            yield svc, client, mock


async def post_all(client: httpx.AsyncClient, bodies: list[dict[str, Any]]) -> list[str]:
    """Post one by one; every request must be queued. Returns the queue ids."""
    ids = []
    for request_body in bodies:
        response = await client.post(COMPARISON_PATH, json=request_body)
        assert response.status_code == 202, response.text
        ids.append(response.json()["queue_id"])
    return ids


def metric(service: ProviderService, name: str, **labels: str) -> float:
    """A sample from the service's Prometheus registry (0 when never observed)."""
    value = service.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value
