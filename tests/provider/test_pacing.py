"""Rate limits in the life of a bundle: a refusal for a limit never costs a comparison.

Both queue backends, the in-process bus and the mock adapter (whose call faults are the
vendors' error answers as the adapters classify them); the vendors' own answers through
the real SDKs and ``cjllm sim`` are in ``tests/e2e/test_rate_limits_sim.py``.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from cjllm.bus import MemoryBus
from cjllm.provider.adapters.mock import MockAdapter, overloaded, rate_limited
from cjllm.provider.calls import ProviderCallError
from tests.provider.support import (
    COMPARISON_PATH,
    Callbacks,
    body,
    eventually,
    fast_settings,
    metric,
    post_all,
    provider,
)


@pytest.fixture
def results() -> tuple[str, Callbacks]:
    return f"results-{uuid.uuid4().hex[:8]}", Callbacks()


async def memory_bus(callbacks: Callbacks, callback_topic: str) -> MemoryBus:
    bus = MemoryBus()
    bus.subscribe(callback_topic, "cj", callbacks)
    await bus.start()
    return bus


def no_quota() -> ProviderCallError:
    return ProviderCallError(
        "insufficient_quota",
        "openai answered HTTP 429: You exceeded your current quota",
        retryable=False,
        status=429,
    )


async def test_a_429_storm_costs_no_attempt_and_every_comparison_is_answered(
    backend_url: str, results: tuple[str, Callbacks]
) -> None:
    results_topic, callbacks = results
    bus = await memory_bus(callbacks, results_topic)
    mock = MockAdapter()
    storm = 4 * 3  # four times max_attempts
    mock.call_faults.extend(rate_limited(retry_after=0.02) for _ in range(storm))
    settings = fast_settings(backend_url, linger_seconds=0.05)
    bodies = [body(i, topic=results_topic, size=4) for i in range(4)]
    async with provider(settings, bus=bus, mock=mock, work=False) as (svc, client, _):
        queue_ids = await post_all(client, bodies)
        svc.start_work()  # all four queued: one bundle
        await eventually(lambda: callbacks.count == 4)
        stored = [await svc.queue.get(q) for q in queue_ids]
        refused = metric(svc, "cjllm_provider_rate_limited_total", provider="mock", kind="unknown")
        sent = svc.limiter.pacing().requests
    await bus.stop()
    assert all(callbacks.one(b["correlation_id"]).is_success for b in bodies)
    assert all(item is not None and item.attempts == 0 for item in stored)
    assert len(mock.calls) == storm + 1
    assert refused == storm
    assert sent == {"rate_limited": storm, "ok": 1}


async def test_the_ttl_is_the_only_give_up_and_its_error_callback_names_the_rate_limit(
    backend_url: str, results: tuple[str, Callbacks]
) -> None:
    results_topic, callbacks = results
    bus = await memory_bus(callbacks, results_topic)
    mock = MockAdapter()
    mock.call_faults.extend(rate_limited(retry_after=0.02) for _ in range(10_000))
    settings = fast_settings(backend_url, linger_seconds=0.0, item_ttl_seconds=1.0)
    bodies = [body(i, topic=results_topic, size=2) for i in range(2)]
    async with provider(settings, bus=bus, mock=mock) as (_, client, _):
        await post_all(client, bodies)
        await eventually(lambda: callbacks.count == 2)
    await bus.stop()
    assert len(mock.calls) > settings.max_attempts  # tries beyond max_attempts: no give-up
    for request_body in bodies:
        result = callbacks.one(request_body["correlation_id"])
        assert result.error_detail is not None
        assert result.error_detail.error_code == "rate_limited"
        assert "time to live" in result.error_detail.message
        assert result.error_detail.details["last_error"].startswith("rate_limited")


async def test_an_overload_pauses_the_key_and_costs_no_attempt(
    backend_url: str, results: tuple[str, Callbacks]
) -> None:
    results_topic, callbacks = results
    bus = await memory_bus(callbacks, results_topic)
    mock = MockAdapter()
    mock.call_faults.extend(overloaded() for _ in range(4))
    request_body = body(0, topic=results_topic, size=1)
    async with provider(fast_settings(backend_url), bus=bus, mock=mock) as (svc, client, _):
        (queue_id,) = await post_all(client, [request_body])
        await eventually(lambda: callbacks.count == 1)
        item = await svc.queue.get(queue_id)
        overloads = metric(
            svc, "cjllm_provider_rate_limited_total", provider="mock", kind="overloaded"
        )
    await bus.stop()
    assert callbacks.one(request_body["correlation_id"]).is_success
    assert item is not None and item.attempts == 0
    assert overloads == 4


async def test_an_account_out_of_quota_fails_at_once_and_its_next_bundles_are_not_sent(
    backend_url: str, results: tuple[str, Callbacks]
) -> None:
    results_topic, callbacks = results
    bus = await memory_bus(callbacks, results_topic)
    mock = MockAdapter()
    mock.call_faults.append(no_quota())
    settings = fast_settings(backend_url, linger_seconds=0.0)
    first = [body(i, topic=results_topic, size=2) for i in range(2)]
    second = [body(i, topic=results_topic, size=2, group="batch-1:round-2") for i in range(2, 4)]
    async with provider(settings, bus=bus, mock=mock, work=False) as (svc, client, _):
        await post_all(client, first)
        svc.start_work()  # both queued: one bundle, refused for want of quota
        await eventually(lambda: callbacks.count == 2)
        await post_all(client, second)
        await eventually(lambda: callbacks.count == 4)
    await bus.stop()
    assert len(mock.calls) == 1  # the second bundle was never sent
    for request_body in first + second:
        error = callbacks.one(request_body["correlation_id"]).error_detail
        assert error is not None and error.error_code == "insufficient_quota"
        assert "quota" in error.message


async def test_a_bundle_bigger_than_a_minute_of_output_is_split_without_an_attempt(
    backend_url: str, results: tuple[str, Callbacks]
) -> None:
    results_topic, callbacks = results
    bus = await memory_bus(callbacks, results_topic)
    per_item = 400
    settings = fast_settings(
        backend_url,
        linger_seconds=0.05,
        max_output_tokens_per_item=per_item,
        rate_limits={"mock": {"otpm": 3 * per_item + 64}},  # three items' answers a minute
        rate_limit_max_wait_seconds=0.0,
        rate_limit_period_seconds=0.5,
    )
    bodies = [body(i, topic=results_topic, size=10) for i in range(10)]
    async with provider(settings, bus=bus, work=False) as (svc, client, mock):
        queue_ids = await post_all(client, bodies)
        svc.start_work()  # all ten queued: one bundle of ten, then its parts
        await eventually(lambda: callbacks.count == 10)
        stored = [await svc.queue.get(q) for q in queue_ids]
    await bus.stop()
    assert all(callbacks.one(b["correlation_id"]).is_success for b in bodies)
    assert max(len(call.items) for call in mock.calls) == 3
    assert all(item is not None and item.attempts == 0 for item in stored)


async def test_the_wait_estimate_comes_from_the_queue_ahead_and_the_keys_limits(
    backend_url: str, results: tuple[str, Callbacks]
) -> None:
    results_topic, _ = results
    limited = fast_settings(backend_url, rate_limits={"mock": {"rpm": 6}})
    bodies = [body(i, topic=results_topic, strategy="per_request") for i in range(30)]
    async with provider(limited, work=False) as (_, client, _):
        first = await client.post(COMPARISON_PATH, json=bodies[0])
        ids = [first.json()["queue_id"], *await post_all(client, bodies[1:])]
        await asyncio.sleep(1.1)  # the API reads the queue's depth at most once a second
        status = (await client.get(f"{COMPARISON_PATH}/{ids[-1]}")).json()
    assert first.json()["estimated_wait_minutes"] == 0
    # 30 queued: 31 one-comparison calls at 6 a minute
    assert status["estimated_wait_minutes"] == round(31 / 6)
    unlimited = fast_settings(backend_url)
    async with provider(unlimited, work=False) as (_, client, _):
        answer = await client.post(COMPARISON_PATH, json=body(99, topic=results_topic))
    assert answer.json()["estimated_wait_minutes"] is None
