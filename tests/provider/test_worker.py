"""The life of a bundle: one provider call per bundle, one callback per comparison.

The headline test runs on real Redis and the real Kafka-protocol broker; the fault tests run
on both queue backends with the in-process bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import pytest

from cjllm.bus import BusError, KafkaBus, MemoryBus
from cjllm.contracts import SPINE_KEYS, ComparisonRequest, EventEnvelope, QueueItemState
from cjllm.provider.adapters.mock import MockAdapter, overloaded, rate_limited, server_error
from cjllm.provider.bundling import PlannedComparison, compatibility_key
from cjllm.provider.calls import BundleCall, CallOutcome, ProviderCallError
from tests.provider.support import (
    Callbacks,
    body,
    eventually,
    expected_winner,
    fast_settings,
    metric,
    post_all,
    provider,
)


def topic() -> str:
    return f"results-{uuid.uuid4().hex[:8]}"


async def memory_bus(callbacks: Callbacks, callback_topic: str) -> MemoryBus:
    bus = MemoryBus()
    bus.subscribe(callback_topic, "cj", callbacks)
    await bus.start()
    return bus


def call_ids(call: BundleCall) -> list[str]:
    return [item.custom_id for item in call.items]


async def test_hundred_requests_make_ten_calls_and_each_callback_has_its_own_winner(
    redis_queue_url: str, kafka_bootstrap: str
) -> None:
    results_topic = topic()
    callbacks = Callbacks()
    consumer = KafkaBus(kafka_bootstrap)
    consumer.subscribe(results_topic, f"cj-{uuid.uuid4().hex[:8]}", callbacks)
    await consumer.start()
    settings = fast_settings(redis_queue_url, bus_url=f"kafka://{kafka_bootstrap}")
    bodies = [body(i, topic=results_topic, size=10) for i in range(100)]
    try:
        async with provider(settings) as (_, client, mock):
            queue_ids = await post_all(client, bodies)
            await eventually(lambda: len(callbacks.by_id) == 100, timeout=120)
    finally:
        await consumer.stop()

    assert len(mock.calls) == 10
    assert all(len(call.items) == 10 for call in mock.calls)
    bundles: dict[str, set[int]] = defaultdict(set)
    for request_body, queue_id in zip(bodies, queue_ids, strict=True):
        cid = request_body["correlation_id"]
        result = callbacks.one(cid)
        assert result.is_success
        assert result.request_id == queue_id
        assert result.winner == expected_winner(mock.judge, request_body)
        meta = result.request_metadata
        assert set(SPINE_KEYS) <= set(meta)
        assert meta["request_correlation_id"] == cid
        for key in ("essay_a_id", "essay_b_id", "cj_batch_id", "bos_batch_id"):
            assert meta[key] == request_body["metadata"][key]
        sha = ComparisonRequest.model_validate(request_body).prompt_sha256()
        assert meta["prompt_sha256"] == sha
        assert (meta["bundle_size"], meta["resolved_provider"]) == (10, "mock")
        assert meta["resolved_model"] == "mock-judge-1"
        bundles[meta["bundle_id"]].add(meta["bundle_index"])
        assert result.token_usage.total_tokens > 0
    assert {r.winner for rs in callbacks.by_id.values() for r in rs} == {"Essay A", "Essay B"}
    assert {call.bundle_id for call in mock.calls} == set(bundles)
    assert all(indexes == set(range(10)) for indexes in bundles.values())


@pytest.fixture
def results() -> tuple[str, Callbacks]:
    return topic(), Callbacks()


async def test_different_keys_never_share_a_call(
    backend_url: str, results: tuple[str, Callbacks]
) -> None:
    results_topic, callbacks = results
    bus = await memory_bus(callbacks, results_topic)
    variants: list[dict[str, Any]] = [
        {},
        {"model": "mock-judge-2"},
        {"shared": "A different assignment and rubric."},
        {"group": "batch-1:round-2"},
        {"temperature": 0.0},
    ]
    bodies = [body(i, topic=results_topic, size=4, **variants[i % 5]) for i in range(20)]
    async with provider(fast_settings(backend_url), bus=bus) as (_, client, mock):
        await post_all(client, bodies)
        await eventually(lambda: callbacks.count == 20)
    await bus.stop()
    key_of = {
        b["correlation_id"]: compatibility_key(
            PlannedComparison(
                ComparisonRequest.model_validate(b),
                "mock",
                b["llm_config_overrides"].get("model_override", "mock-judge-1"),
            )
        )
        for b in bodies
    }
    assert len(set(key_of.values())) == 5
    assert len(mock.calls) == 5
    for call in mock.calls:
        assert len({key_of[cid] for cid in call_ids(call)}) == 1
        assert len(call.items) == 4


async def test_a_lone_straggler_goes_out_after_the_linger(
    backend_url: str, results: tuple[str, Callbacks]
) -> None:
    results_topic, callbacks = results
    bus = await memory_bus(callbacks, results_topic)
    settings = fast_settings(backend_url, linger_seconds=0.2)
    async with provider(settings, bus=bus, work=False) as (svc, client, mock):
        await post_all(client, [body(i, topic=results_topic, size=10) for i in range(3)])
        svc.start_work()  # all three queued (however slowly): one bundle, short of its ten
        await eventually(lambda: callbacks.count == 3)
    await bus.stop()
    assert [len(call.items) for call in mock.calls] == [3]


@pytest.mark.parametrize("fault", ["malformed", "bad_confidence", "missing", "duplicate"])
async def test_a_faulty_item_is_retried_on_its_own_account_and_its_neighbours_keep_their_answers(
    backend_url: str, results: tuple[str, Callbacks], fault: Any
) -> None:
    results_topic, callbacks = results
    bus = await memory_bus(callbacks, results_topic)
    bodies = [body(i, topic=results_topic, size=5) for i in range(5)]
    faulty = bodies[2]["correlation_id"]
    mock = MockAdapter()
    mock.fail_item(faulty, fault)
    async with provider(fast_settings(backend_url), bus=bus, mock=mock) as (svc, client, _):
        queue_ids = await post_all(client, bodies)
        await eventually(lambda: callbacks.count == 5)
        stored = await svc.queue.get(queue_ids[2])
    await bus.stop()
    assert [call_ids(c) for c in mock.calls[1:]] == [[faulty]]
    assert len(mock.calls[0].items) == 5
    for b in bodies:
        result = callbacks.one(b["correlation_id"])
        assert result.is_success
        assert result.winner == expected_winner(mock.judge, b)
        size = 1 if b["correlation_id"] == faulty else 5
        assert result.request_metadata["bundle_size"] == size
    assert stored is not None and stored.attempts == 1
    assert stored.last_error is not None
    assert stored.last_error.startswith("missing_item" if fault == "missing" else "invalid_item")


async def test_an_unknown_extra_id_costs_nothing(
    backend_url: str, results: tuple[str, Callbacks]
) -> None:
    results_topic, callbacks = results
    bus = await memory_bus(callbacks, results_topic)
    mock = MockAdapter(extra_ids=[str(uuid.uuid4())])
    async with provider(fast_settings(backend_url), bus=bus, mock=mock) as (svc, client, _):
        await post_all(client, [body(i, topic=results_topic, size=4) for i in range(4)])
        await eventually(lambda: callbacks.count == 4)
        unknown = metric(svc, "cjllm_provider_item_outcomes_total", outcome="unknown")
    await bus.stop()
    assert len(mock.calls) == 1
    assert all(r.is_success for rs in callbacks.by_id.values() for r in rs)
    assert unknown == 1


async def test_a_rate_limited_bundle_waits_for_retry_after_stays_together_and_costs_no_attempt(
    backend_url: str, results: tuple[str, Callbacks]
) -> None:
    results_topic, callbacks = results
    bus = await memory_bus(callbacks, results_topic)
    mock = MockAdapter()
    mock.call_faults.append(rate_limited(retry_after=0.5))
    async with provider(fast_settings(backend_url), bus=bus, mock=mock) as (svc, client, _):
        queue_ids = await post_all(client, [body(i, topic=results_topic, size=3) for i in range(3)])
        await eventually(lambda: callbacks.count == 3)
        stored = [await svc.queue.get(q) for q in queue_ids]
    await bus.stop()
    assert [call_ids(c) for c in mock.calls] == [call_ids(mock.calls[0])] * 2
    for item in stored:
        assert item is not None and item.attempts == 0
        assert item.last_error is not None and item.last_error.startswith("rate_limited")
        # the retry was scheduled no earlier than retry-after past the failed call ...
        assert item.available_at >= mock.call_times[0] + 0.5
    # ... and the second call did not start before it was due
    assert mock.call_times[1] >= max(i.available_at for i in stored if i is not None)
    assert all(r.is_success for rs in callbacks.by_id.values() for r in rs)


@pytest.mark.parametrize(
    "fault", ["garbage", overloaded(), server_error()], ids=["garbled answer", "529", "500"]
)
async def test_a_failed_call_retries_the_whole_bundle(
    backend_url: str, results: tuple[str, Callbacks], fault: Any
) -> None:
    results_topic, callbacks = results
    bus = await memory_bus(callbacks, results_topic)
    mock = MockAdapter()
    mock.call_faults.append(fault)
    async with provider(fast_settings(backend_url), bus=bus, mock=mock) as (_, client, _):
        await post_all(client, [body(i, topic=results_topic, size=3) for i in range(3)])
        await eventually(lambda: callbacks.count == 3)
    await bus.stop()
    assert [len(c.items) for c in mock.calls] == [3, 3]
    assert all(r.is_success for rs in callbacks.by_id.values() for r in rs)


async def test_a_bundle_too_large_for_the_context_is_split(
    backend_url: str, results: tuple[str, Callbacks]
) -> None:
    results_topic, callbacks = results
    bus = await memory_bus(callbacks, results_topic)
    mock = MockAdapter()
    mock.call_faults.append(
        ProviderCallError("context_window_exceeded", "prompt is too long", retryable=False)
    )
    async with provider(fast_settings(backend_url), bus=bus, mock=mock) as (svc, client, _):
        queue_ids = await post_all(client, [body(i, topic=results_topic, size=4) for i in range(4)])
        await eventually(lambda: callbacks.count == 4)
        stored = [await svc.queue.get(q) for q in queue_ids]
    await bus.stop()
    assert [len(c.items) for c in mock.calls] == [4, 2, 2]
    assert [s.attempts for s in stored if s is not None] == [0, 0, 0, 0]
    assert all(r.is_success for rs in callbacks.by_id.values() for r in rs)


async def test_exhausted_retries_end_in_one_error_callback(
    backend_url: str, results: tuple[str, Callbacks]
) -> None:
    results_topic, callbacks = results
    bus = await memory_bus(callbacks, results_topic)
    mock = MockAdapter()
    mock.call_faults.extend([server_error()] * 3)  # max_attempts is 3
    bodies = [body(i, topic=results_topic, size=2) for i in range(2)]
    async with provider(fast_settings(backend_url), bus=bus, mock=mock) as (svc, client, _):
        queue_ids = await post_all(client, bodies)
        await eventually(lambda: callbacks.count == 2)
        stored = await svc.queue.get(queue_ids[0])
        await asyncio.sleep(0.2)  # nothing else may follow
    await bus.stop()
    assert len(mock.calls) == 3
    assert callbacks.count == 2
    for b in bodies:
        result = callbacks.one(b["correlation_id"])
        assert result.error_detail is not None
        assert result.error_detail.error_code == "retries_exhausted"
        assert result.error_detail.details["last_error_code"] == "server_error"
        assert set(SPINE_KEYS) <= set(result.request_metadata)
        assert result.request_metadata["bundle_size"] == 2
    assert stored is not None and stored.state is QueueItemState.FAILED


async def test_an_item_that_never_validates_gets_an_error_and_its_neighbour_succeeds(
    backend_url: str, results: tuple[str, Callbacks]
) -> None:
    results_topic, callbacks = results
    bus = await memory_bus(callbacks, results_topic)
    bodies = [body(i, topic=results_topic, size=2) for i in range(2)]
    bad = bodies[0]["correlation_id"]
    mock = MockAdapter()
    mock.fail_item(bad, "malformed", times=3)
    async with provider(fast_settings(backend_url), bus=bus, mock=mock) as (_, client, _):
        await post_all(client, bodies)
        await eventually(lambda: callbacks.count == 2)
    await bus.stop()
    assert [len(c.items) for c in mock.calls] == [2, 1, 1]
    error = callbacks.one(bad).error_detail
    assert error is not None and error.error_code == "retries_exhausted"
    assert error.details["last_error_code"] == "invalid_item"
    assert callbacks.one(bodies[1]["correlation_id"]).is_success


async def test_a_refused_call_is_not_retried(
    backend_url: str, results: tuple[str, Callbacks]
) -> None:
    results_topic, callbacks = results
    bus = await memory_bus(callbacks, results_topic)
    mock = MockAdapter()
    mock.call_faults.append(
        ProviderCallError(
            "authentication_failed",
            "401 bad key",
            retryable=False,
            status=401,
            details={"status": 401, "provider_message": "invalid x-api-key"},
        )
    )
    async with provider(fast_settings(backend_url), bus=bus, mock=mock) as (_, client, _):
        await post_all(client, [body(i, topic=results_topic, size=2) for i in range(2)])
        await eventually(lambda: callbacks.count == 2)
    await bus.stop()
    assert len(mock.calls) == 1
    errors = [r.error_detail for rs in callbacks.by_id.values() for r in rs]
    assert {e.error_code for e in errors if e is not None} == {"authentication_failed"}
    assert all(e is not None for e in errors)
    for e in errors:  # the provider's own words reach the caller
        assert e is not None and e.details["provider_message"] == "invalid x-api-key"
        assert e.details["status"] == 401


async def test_an_item_past_its_ttl_gets_an_error_callback_with_the_full_spine(
    backend_url: str, results: tuple[str, Callbacks]
) -> None:
    results_topic, callbacks = results
    bus = await memory_bus(callbacks, results_topic)
    settings = fast_settings(backend_url, item_ttl_seconds=0.3)  # the linger is 60s
    request_body = body(1, topic=results_topic, size=10)
    async with provider(settings, bus=bus) as (_, client, mock):
        (queue_id,) = await post_all(client, [request_body])
        await eventually(lambda: callbacks.count == 1)
        status = (await client.get(f"/api/v1/comparison/{queue_id}")).json()
    await bus.stop()
    assert mock.calls == []
    result = callbacks.one(request_body["correlation_id"])
    assert result.error_detail is not None
    assert result.error_detail.error_code == "ttl_expired"
    meta = result.request_metadata
    assert set(SPINE_KEYS) <= set(meta)
    assert meta["bundle_id"] is None and meta["bundle_size"] is None
    assert meta["prompt_sha256"] == ComparisonRequest.model_validate(request_body).prompt_sha256()
    assert meta["cj_batch_id"] == "batch-1"
    assert status["status"] == "expired"


class SwitchableBus(MemoryBus):
    """An in-process bus that can be taken down: publishing then fails like a broker outage."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def publish_many(
        self, topic: str, messages: Sequence[tuple[str, EventEnvelope]]
    ) -> list[BusError | None]:
        if self.down:
            raise BusError("broker unavailable")
        return await super().publish_many(topic, messages)


async def test_a_bus_outage_delays_callbacks_but_loses_none(
    backend_url: str, results: tuple[str, Callbacks]
) -> None:
    results_topic, callbacks = results
    bus = SwitchableBus()
    bus.subscribe(results_topic, "cj", callbacks)
    await bus.start()
    bus.down = True
    async with provider(fast_settings(backend_url), bus=bus) as (svc, client, mock):
        await post_all(client, [body(i, topic=results_topic, size=5) for i in range(5)])
        await eventually(lambda: metric(svc, "cjllm_provider_publish_failures_total") >= 10)
        depth = await svc.queue.depth(0)
        assert (depth.queued, depth.processing, depth.outbox) == (0, 0, 5)
        assert callbacks.count == 0
        bus.down = False
        await eventually(lambda: callbacks.count == 5)
        await eventually(lambda: metric(svc, "cjllm_provider_outbox_depth") == 0, timeout=10)
    await bus.stop()
    assert len(mock.calls) == 1
    assert all(len(rs) == 1 for rs in callbacks.by_id.values())


async def test_usage_and_cost_of_every_call_are_charged_to_its_comparisons(
    backend_url: str, results: tuple[str, Callbacks]
) -> None:
    results_topic, callbacks = results
    bus = await memory_bus(callbacks, results_topic)
    bodies = [body(i, topic=results_topic, size=4) for i in range(4)]
    mock = MockAdapter(usd_per_million_input=3.0, usd_per_million_output=15.0)
    mock.fail_item(bodies[1]["correlation_id"], "missing")
    async with provider(fast_settings(backend_url), bus=bus, mock=mock) as (_, client, _):
        await post_all(client, bodies)
        await eventually(lambda: callbacks.count == 4)
    await bus.stop()
    assert len(mock.outcomes) == 2
    results_ = [r for rs in callbacks.by_id.values() for r in rs]
    assert sum(r.token_usage.prompt_tokens for r in results_) == sum(
        o.usage.prompt_tokens for o in mock.outcomes
    )
    assert sum(r.token_usage.completion_tokens for r in results_) == sum(
        o.usage.output_tokens for o in mock.outcomes
    )
    assert sum(r.cost_estimate for r in results_) == pytest.approx(
        sum(o.cost for o in mock.outcomes)
    )


class CountingMock(MockAdapter):
    """Tracks how many calls are in flight at once. Each call is answered only once
    ``together`` calls have been in flight at the same time (or after a 30s guard, so a
    worker that never gets there fails the test instead of hanging it): how many go out
    together does not depend on how fast a loaded machine claims the bundles."""

    in_flight = 0
    most = 0
    together = 1
    _enough: asyncio.Event | None = None

    async def call_bundle(self, call: BundleCall) -> CallOutcome:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        if self._enough is None:
            self._enough = asyncio.Event()
        if self.in_flight >= self.together:
            self._enough.set()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._enough.wait(), 30)
            return await super().call_bundle(call)
        finally:
            self.in_flight -= 1


async def test_several_bundles_are_in_flight_but_never_more_than_the_concurrency(
    backend_url: str, results: tuple[str, Callbacks]
) -> None:
    results_topic, callbacks = results
    bus = await memory_bus(callbacks, results_topic)
    settings = fast_settings(backend_url, worker_concurrency=3)
    mock = CountingMock(latency_seconds=0.5)
    mock.together = 3
    async with provider(settings, bus=bus, mock=mock, work=False) as (svc, client, _):
        await post_all(client, [body(i, topic=results_topic, size=2) for i in range(14)])
        svc.start_work()
        await eventually(lambda: callbacks.count == 14)
    await bus.stop()
    assert len(mock.calls) == 7
    assert mock.most == 3
    assert Counter(len(c.items) for c in mock.calls) == {2: 7}


async def test_without_a_set_concurrency_every_ready_bundle_goes_out_at_once(
    backend_url: str, results: tuple[str, Callbacks]
) -> None:
    # no rate limit holds anything back: a round's 12 bundles are all in flight together
    results_topic, callbacks = results
    bus = await memory_bus(callbacks, results_topic)
    mock = CountingMock(latency_seconds=0.1)
    mock.together = 12
    async with provider(fast_settings(backend_url), bus=bus, mock=mock, work=False) as (
        svc,
        client,
        _,
    ):
        await post_all(client, [body(i, topic=results_topic, size=2) for i in range(24)])
        svc.start_work()
        await eventually(lambda: callbacks.count == 24)
    await bus.stop()
    assert len(mock.calls) == 12
    assert mock.most == 12


class BrokenAdapter(MockAdapter):
    """An adapter with a bug: reading an odd answer raises something it never meant to."""

    async def call_bundle(self, call: BundleCall) -> CallOutcome:
        self.calls.append(call)
        raise AttributeError("'NoneType' object has no attribute 'content'")


async def test_an_adapter_that_raises_something_unexpected_fails_its_items_at_once_saying_why(
    backend_url: str, results: tuple[str, Callbacks]
) -> None:
    results_topic, callbacks = results
    bus = await memory_bus(callbacks, results_topic)
    mock = BrokenAdapter()
    settings = fast_settings(backend_url, lease_seconds=60.0)
    async with provider(settings, bus=bus, mock=mock) as (svc, client, _):
        await post_all(client, [body(i, topic=results_topic, size=2) for i in range(2)])
        await eventually(lambda: callbacks.count == 2)
        calls = metric(
            svc,
            "cjllm_provider_calls_total",
            provider="mock",
            model="mock-judge-1",
            outcome="adapter_error",
        )
    await bus.stop()
    assert len(mock.calls) == 1  # not paid for again: the bug would answer the same way
    for rs in callbacks.by_id.values():
        (result,) = rs
        error = result.error_detail
        assert error is not None and error.error_code == "adapter_error"
        assert "AttributeError" in error.message and "'content'" in error.message
    assert calls == 1
