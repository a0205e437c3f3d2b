"""Provider faults at rates, end to end on real servers: the assessment still finishes, and
every comparison is accounted for.

The CJ service (PostgreSQL) and the provider service (Redis queue, the official
``anthropic`` SDK adapter) run in this process; callbacks travel on the Kafka-protocol
broker; ``cjllm sim`` plays Anthropic and injects each fault at a rate, reproducibly (a
seeded draw). An observer group on the callback topic records every callback, so each test
checks ``requests = callbacks = CJ rows`` and one acted-on result per comparison
(:func:`tests.faults.accounting.check_accounting`).
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from cjllm.bus import KafkaBus
from cjllm.cj.service import cj_service
from cjllm.cj.workflow import CJWorkflow
from cjllm.provider.service import ProviderService, embedded_provider
from cjllm.settings import CJSettings, ProviderSettings
from cjllm.sim.faults import FaultRates, draw
from tests.cj.conftest import essays_with_quality
from tests.cj.test_store import fresh_pg_database
from tests.faults.accounting import CallbackLog, check_accounting
from tests.provider.support import eventually, metric
from tests.sim.conftest import sim_server
from tests.sim.running import SimControl

__all__ = ["sim_server"]

CALL_TIMEOUT = 1.5


@dataclass
class Stack:
    cj: CJWorkflow
    provider: ProviderService
    callbacks: CallbackLog
    sim: SimControl


@pytest.fixture(scope="module")
def anthropic_env(sim_server: SimControl) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")}
    os.environ["ANTHROPIC_API_KEY"] = "sk-ant-faults"
    os.environ["ANTHROPIC_BASE_URL"] = sim_server.anthropic_base_url
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
async def stack(
    anthropic_env: None,
    sim_server: SimControl,
    postgres_url: str,
    kafka_bootstrap: str,
    redis_url: str,
) -> AsyncIterator[Stack]:
    run = uuid.uuid4().hex[:8]
    kafka = f"kafka://{kafka_bootstrap}"
    provider_settings = ProviderSettings(
        queue_url=f"{redis_url}?prefix=faults-{run}",
        bus_url=kafka,
        linger_seconds=0.05,
        poll_interval_seconds=0.01,
        sweep_interval_seconds=0.1,
        lease_seconds=5.0,
        outbox_lease_seconds=2.0,
        retry_base_seconds=0.05,
        retry_max_seconds=0.4,
        max_attempts=4,
        call_timeout_seconds=CALL_TIMEOUT,
        worker_concurrency=4,
    )
    cj_settings = CJSettings(
        database_url=await fresh_pg_database(postgres_url),
        bus_url=kafka,
        callback_topic=f"faults.{run}.callbacks",
        completion_topic=f"faults.{run}.completed",
        consumer_group=f"cj-{run}",
        llm_provider="anthropic",
        max_concurrent_comparisons=12,
        comparisons_per_essay=4,
        target_reliability=0.999,
        split_half_splits=2,
        submit_backoff_seconds=0.05,
        max_pair_retries=3,
    )
    callbacks = CallbackLog()
    observer = KafkaBus(kafka_bootstrap)
    observer.subscribe(cj_settings.callback_topic, f"observer-{run}", callbacks)
    async with AsyncExitStack() as exits:
        provider = await exits.enter_async_context(embedded_provider(provider_settings))
        cj = await exits.enter_async_context(
            cj_service(cj_settings, transport=httpx.ASGITransport(app=provider.app))
        )
        await observer.start()
        exits.push_async_callback(observer.stop)
        yield Stack(cj, provider, callbacks, sim_server)


FAULTS: dict[str, dict[str, Any]] = {
    "429 with retry-after": {"faults": {"rate_limited": 0.3}, "fault_retry_after": 0.3},
    "529 overloaded": {"faults": {"overloaded": 0.3}, "fault_retry_after": 0.2},
    "500 server error": {"faults": {"server_error": 0.3}},
    "timeouts": {"faults": {"stall": 0.25}, "fault_stall_seconds": CALL_TIMEOUT + 1.0},
    "malformed JSON": {"faults": {"malformed_json": 0.3}},
    "missing, duplicate and unknown items": {
        "faults": {"missing_item": 0.3, "duplicate_id": 0.3, "unknown_id": 0.3}
    },
    "truncated at max_tokens": {"faults": {"max_tokens": 0.3}},
    "all at once": {
        "faults": {
            "rate_limited": 0.05,
            "overloaded": 0.05,
            "server_error": 0.05,
            "stall": 0.05,
            "malformed_json": 0.05,
            "missing_item": 0.1,
            "duplicate_id": 0.1,
            "unknown_id": 0.1,
            "max_tokens": 0.05,
            "invalid_item": 0.05,
        },
        "fault_retry_after": 0.2,
        "fault_stall_seconds": CALL_TIMEOUT + 1.0,
    },
}


def seed_hitting(rates: FaultRates) -> int:
    """A fault seed whose first call draws a fault, so every case really meets one."""
    return next(seed for seed in range(10_000) if draw(rates, random.Random(seed)))


@pytest.mark.parametrize("config", FAULTS.values(), ids=FAULTS.keys())
async def test_an_assessment_survives_provider_faults_with_every_comparison_accounted_for(
    stack: Stack, config: dict[str, Any]
) -> None:
    rates = FaultRates(**config["faults"])  # every other fault off (a patch would merge)
    stack.sim.restore(**{**config, "faults": rates.model_dump()}, fault_seed=seed_hitting(rates))
    queued_before = metric(stack.provider, "cjllm_provider_requests_total", outcome="queued")
    essays, _ = essays_with_quality(8, seed=len(config["faults"]))
    batch_id = await stack.cj.start_batch(essays, instructions="Which essay argues better?")
    result = await stack.cj.wait_for_completion(batch_id, timeout=150, check_every=0.2)
    assert result.status == "completed", result.message
    assert result.comparisons_succeeded >= result.comparisons_requested // 2

    rows = await stack.cj.store.comparisons(batch_id)
    await eventually(lambda: stack.callbacks.distinct(batch_id) >= len(rows), timeout=30)
    queued = metric(stack.provider, "cjllm_provider_requests_total", outcome="queued")
    check_accounting(
        rows,
        await stack.cj.progress(batch_id),
        stack.callbacks.by_batch[batch_id],
        int(queued - queued_before),
    )
    faults = stack.sim.counters()["faults"]
    assert set(config["faults"]) & set(faults), faults  # the faults really happened
