"""The CJ service against the real provider service (mock adapter): in-process, and
distributed on PostgreSQL + Kafka + Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
from scipy.stats import spearmanr

from cjllm.bus import EventBus, KafkaBus, MemoryBus
from cjllm.cj.service import cj_service
from cjllm.cj.tables import ComparisonStatus
from cjllm.cj.workflow import CJWorkflow
from cjllm.contracts import EventEnvelope
from cjllm.provider.adapters.mock import MockAdapter
from cjllm.provider.calls import ProviderCallError
from cjllm.provider.service import embedded_provider
from cjllm.settings import CJSettings, ProviderSettings
from cjllm.sim.judge import Judge, text_key
from tests.cj.conftest import essays_with_quality
from tests.cj.test_store import fresh_pg_database


async def _stack(
    stack: AsyncExitStack,
    *,
    cj_settings: CJSettings,
    provider_settings: ProviderSettings,
    mock: MockAdapter,
    cj_bus: EventBus,
    provider_bus: EventBus,
) -> CJWorkflow:
    provider = await stack.enter_async_context(
        embedded_provider(provider_settings, bus=provider_bus, adapters={"mock": mock})
    )
    cj = await stack.enter_async_context(
        cj_service(cj_settings, transport=httpx.ASGITransport(app=provider.app), bus=cj_bus)
    )
    for bus in {id(cj_bus): cj_bus, id(provider_bus): provider_bus}.values():
        await bus.start()
        stack.push_async_callback(bus.stop)
    return cj


def _mock(qualities: dict[str, float]) -> MockAdapter:
    judge = Judge(qualities={text_key(t): q for t, q in qualities.items()}, noise=0.5)
    return MockAdapter(judge=judge)


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as s:
        yield s


@pytest.mark.parametrize(("strategy", "calls_per_round"), [("serial_round", 1), ("per_request", 8)])
async def test_in_process_batch_through_the_provider(
    stack: AsyncExitStack, tmp_path: Path, strategy: str, calls_per_round: int
) -> None:
    essays, qualities = essays_with_quality(16)
    mock = _mock(qualities)
    bus = MemoryBus()
    cj = await _stack(
        stack,
        cj_settings=CJSettings(
            database_url=f"sqlite+aiosqlite:///{tmp_path}/cj.sqlite",
            llm_batching_strategy=strategy,
            max_concurrent_comparisons=8,
            comparisons_per_essay=6,
            split_half_splits=4,
            target_reliability=0.999,  # the mock judge is near-certain: spend the budget
        ),
        provider_settings=ProviderSettings(
            queue_url=f"sqlite:///{tmp_path}/queue.sqlite", linger_seconds=5.0
        ),
        mock=mock,
        cj_bus=bus,
        provider_bus=bus,
    )
    batch_id = await cj.start_batch(essays, instructions="Should homework be banned?")
    result = await cj.wait_for_completion(batch_id, timeout=120)
    assert result.status == "completed", result.message
    assert (result.comparisons_requested, result.rounds) == (48, 6)
    assert result.comparisons_succeeded == 48
    # every round went out as the strategy asked: one call per round, or one per comparison
    assert result.provider_calls == len(mock.calls) == 6 * calls_per_round
    sizes = Counter(len(call.items) for call in mock.calls)
    assert sizes == ({8: 6} if strategy == "serial_round" else {1: 48})
    rows = await cj.store.comparisons(batch_id)
    assert all(r.prompt_sha256 and r.bundle_id and r.model == "mock-judge-1" for r in rows)
    assert all(r.bundle_size == 8 // calls_per_round for r in rows)
    truth = {e.essay_id: qualities[e.text] for e in essays}
    rho = spearmanr([truth[r.essay_id] for r in result.ranking], [r.score for r in result.ranking])
    assert rho.statistic > 0.8


async def test_failed_provider_call_is_retried_in_a_later_round(
    stack: AsyncExitStack, tmp_path: Path
) -> None:
    essays, qualities = essays_with_quality(8)
    mock = _mock(qualities)
    mock.call_faults.append(
        ProviderCallError("invalid_request", "400 bad request", retryable=False, status=400)
    )
    bus = MemoryBus()
    cj = await _stack(
        stack,
        cj_settings=CJSettings(
            database_url=f"sqlite+aiosqlite:///{tmp_path}/cj.sqlite",
            max_concurrent_comparisons=4,
            comparisons_per_essay=4,
            split_half_splits=4,
        ),
        provider_settings=ProviderSettings(
            queue_url=f"sqlite:///{tmp_path}/queue.sqlite", linger_seconds=5.0
        ),
        mock=mock,
        cj_bus=bus,
        provider_bus=bus,
    )
    batch_id = await cj.start_batch(essays, instructions="Should homework be banned?")
    result = await cj.wait_for_completion(batch_id, timeout=120)
    rows = await cj.store.comparisons(batch_id)
    failed = [r for r in rows if r.status == ComparisonStatus.FAILED]
    assert len(failed) == 4 and {r.round_number for r in failed} == {1}
    assert all(r.error_code and r.bundle_id for r in failed)
    retried = {(r.essay_a_id, r.essay_b_id) for r in rows if r.attempt == 2}
    assert retried == {(r.essay_a_id, r.essay_b_id) for r in failed}
    # a failed comparison is not a judgement: the budget of 16 is judged in full
    assert result.status == "completed"
    assert (result.comparisons_failed, result.comparisons_succeeded) == (4, 16)
    assert result.stop_reason == "comparisons_per_essay_spent_with_failures"


async def test_distributed_batch_on_postgres_kafka_and_redis(
    stack: AsyncExitStack, postgres_url: str, kafka_bootstrap: str, redis_url: str
) -> None:
    essays, qualities = essays_with_quality(10)
    mock = _mock(qualities)
    run = uuid.uuid4().hex[:8]
    completions: list[EventEnvelope] = []

    async def keep(envelope: EventEnvelope) -> None:
        completions.append(envelope)

    cj_settings = CJSettings(
        database_url=await fresh_pg_database(postgres_url),
        bus_url=f"kafka://{kafka_bootstrap}",
        callback_topic=f"cj.callbacks.{run}",
        completion_topic=f"cj.completed.{run}",
        consumer_group=f"cj-{run}",
        max_concurrent_comparisons=5,
        comparisons_per_essay=4,
        split_half_splits=4,
    )
    cj_bus = KafkaBus(kafka_bootstrap)
    cj_bus.subscribe(cj_settings.completion_topic, f"observer-{run}", keep)
    cj = await _stack(
        stack,
        cj_settings=cj_settings,
        provider_settings=ProviderSettings(
            queue_url=f"{redis_url}?prefix=cj-{run}", linger_seconds=5.0
        ),
        mock=mock,
        cj_bus=cj_bus,
        provider_bus=KafkaBus(kafka_bootstrap),
    )
    batch_id = await cj.start_batch(essays, instructions="Should homework be banned?")
    result = await cj.wait_for_completion(batch_id, timeout=120, check_every=0.2)
    assert result.status == "completed", result.message
    assert result.comparisons_succeeded == result.comparisons_requested == 20
    assert result.provider_calls == len(mock.calls) == 4
    for _ in range(200):
        if completions:
            break
        await asyncio.sleep(0.05)
    assert [e.event_type for e in completions] == ["CJAssessmentCompletedV1"]
    assert completions[0].data["cj_batch_id"] == batch_id
