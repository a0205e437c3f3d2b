"""Models that answer only part of a bundle: retries ride in bundles, the bundle size adapts,
and a model that cannot answer at all gets error callbacks in its own words."""

from __future__ import annotations

import uuid
from pathlib import Path

from cjllm.bus import MemoryBus
from cjllm.provider.adapters.mock import MockAdapter
from cjllm.provider.bundle_sizes import GROW_AFTER, SHRINK_AFTER, BundleSizes
from cjllm.provider.calls import BundleCall
from tests.provider.support import Callbacks, body, eventually, fast_settings, metric, post_all
from tests.provider.support import provider as running_provider


async def memory_bus(callbacks: Callbacks, topic: str) -> MemoryBus:
    bus = MemoryBus()
    bus.subscribe(topic, "cj", callbacks)
    await bus.start()
    return bus


def ids(call: BundleCall) -> set[str]:
    return {item.custom_id for item in call.items}


# --------------------------------------------------------------------------- retries ride


async def test_items_missing_from_one_answer_are_retried_together_in_one_bundle(
    backend_url: str,
) -> None:
    topic, callbacks = f"r-{uuid.uuid4().hex[:8]}", Callbacks()
    bus = await memory_bus(callbacks, topic)
    bodies = [body(i, topic=topic, size=10) for i in range(10)]
    dropped = {bodies[i]["correlation_id"] for i in (1, 4, 7)}
    mock = MockAdapter()
    for cid in dropped:
        mock.fail_item(cid, "missing")
    async with running_provider(fast_settings(backend_url), bus=bus, mock=mock) as (_, client, _):
        await post_all(client, bodies)
        await eventually(lambda: callbacks.count == 10)
    await bus.stop()
    assert [len(c.items) for c in mock.calls] == [10, 3]  # not 10, 1, 1, 1
    assert ids(mock.calls[1]) == dropped
    assert all(callbacks.one(b["correlation_id"]).is_success for b in bodies)


async def test_an_item_failing_again_goes_alone_to_isolate_it(tmp_path: Path) -> None:
    topic, callbacks = f"r-{uuid.uuid4().hex[:8]}", Callbacks()
    bus = await memory_bus(callbacks, topic)
    bodies = [body(i, topic=topic, size=5) for i in range(5)]
    stubborn, once = bodies[0]["correlation_id"], bodies[3]["correlation_id"]
    mock = MockAdapter()
    mock.fail_item(stubborn, "bad_confidence", times=2)
    mock.fail_item(once, "missing")
    settings = fast_settings(f"sqlite:///{tmp_path / 'q.sqlite'}", max_attempts=4)
    async with running_provider(settings, bus=bus, mock=mock) as (_, client, _):
        await post_all(client, bodies)
        await eventually(lambda: callbacks.count == 5)
    await bus.stop()
    assert [ids(c) for c in mock.calls[1:]] == [{stubborn, once}, {stubborn}]
    assert callbacks.one(stubborn).is_success
    assert callbacks.one(stubborn).request_metadata["bundle_size"] == 1


# --------------------------------------------------------------------------- bundle size


def test_poor_answers_in_a_row_halve_the_size_down_to_one() -> None:
    sizes = BundleSizes(cap=8)
    assert sizes.limit("p", "m") == 8
    for _ in range(SHRINK_AFTER - 1):
        assert sizes.observe("p", "m", sent=8, valid=2, broken=False) == 8  # one glitch: no
    assert sizes.observe("p", "m", sent=8, valid=2, broken=False) == 4
    limits = []
    for _ in range(4 * SHRINK_AFTER):
        limits.append(sizes.observe("p", "m", sent=sizes.limit("p", "m"), valid=0, broken=True))
    assert limits[SHRINK_AFTER - 1 :: SHRINK_AFTER] == [2, 1, 1, 1]
    assert sizes.limit("p", "other-model") == 8  # learned per model


def test_clean_answers_at_the_limit_raise_it_again_up_to_the_cap() -> None:
    sizes = BundleSizes(cap=8)
    for _ in range(SHRINK_AFTER * 2):
        sizes.observe("p", "m", sent=sizes.limit("p", "m"), valid=0, broken=True)
    assert sizes.limit("p", "m") == 2
    grown = []
    for _ in range(3 * GROW_AFTER):
        limit = sizes.limit("p", "m")
        grown.append(sizes.observe("p", "m", sent=limit, valid=limit, broken=False))
    assert grown[GROW_AFTER - 1 :: GROW_AFTER] == [4, 8, 8]


def test_a_few_missing_items_or_a_small_clean_bundle_change_nothing() -> None:
    sizes = BundleSizes(cap=8)
    sizes.observe("p", "m", sent=8, valid=2, broken=False)  # one poor answer ...
    sizes.observe("p", "m", sent=8, valid=7, broken=False)  # ... then a mostly good one
    sizes.observe("p", "m", sent=8, valid=2, broken=False)
    assert sizes.limit("p", "m") == 8
    for _ in range(GROW_AFTER * 2):
        sizes.observe("p", "m", sent=8, valid=2, broken=False)
    assert sizes.limit("p", "m") < 8
    shrunk = sizes.limit("p", "m")
    for _ in range(GROW_AFTER):
        sizes.observe("p", "m", sent=1, valid=1, broken=False)  # smaller than the limit
    assert sizes.limit("p", "m") == shrunk


async def test_a_model_that_breaks_big_bundles_is_sent_smaller_ones(tmp_path: Path) -> None:
    topic, callbacks = f"r-{uuid.uuid4().hex[:8]}", Callbacks()
    bus = await memory_bus(callbacks, topic)
    mock = MockAdapter()
    mock.call_faults.extend(["garbage"] * SHRINK_AFTER)
    settings = fast_settings(f"sqlite:///{tmp_path / 'q.sqlite'}", max_attempts=5)
    bodies = [body(i, topic=topic, size=8) for i in range(8)]
    async with running_provider(settings, bus=bus, mock=mock) as (svc, client, _):
        await post_all(client, bodies)
        await eventually(lambda: callbacks.count == 8)
        limit = metric(
            svc, "cjllm_provider_bundle_size_limit", provider="mock", model="mock-judge-1"
        )
        assert svc.worker.sizes.known("mock", "mock-judge-1") == 4
    await bus.stop()
    assert [len(c.items) for c in mock.calls] == [8] * SHRINK_AFTER + [4, 4]
    assert limit == 4
    assert all(callbacks.one(b["correlation_id"]).is_success for b in bodies)


async def test_a_model_that_cannot_answer_one_item_gets_error_callbacks_in_its_own_words(
    tmp_path: Path,
) -> None:
    topic, callbacks = f"r-{uuid.uuid4().hex[:8]}", Callbacks()
    bus = await memory_bus(callbacks, topic)
    mock = MockAdapter()
    mock.call_faults.extend(["garbage"] * 100)
    settings = fast_settings(f"sqlite:///{tmp_path / 'q.sqlite'}", max_attempts=3)
    bodies = [body(i, topic=topic, size=4) for i in range(4)]
    async with running_provider(settings, bus=bus, mock=mock) as (_, client, _):
        await post_all(client, bodies)
        await eventually(lambda: callbacks.count == 4)
    await bus.stop()
    assert len(mock.calls) <= 4 * 3  # bounded: no item is tried more than max_attempts
    for b in bodies:
        error = callbacks.one(b["correlation_id"]).error_detail
        assert error is not None
        assert error.error_code == "retries_exhausted"
        assert "Sorry, I cannot do that." in error.message
