"""The embedded shape: its direct bus, its folder lock, and its direct hop to the provider's
intake (the same answers as ``POST /api/v1/comparison``, one callback per comparison)."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from cjllm.bus import BusError
from cjllm.cj.llm_client import Accepted, ProviderClient
from cjllm.contracts import ComparisonRequest, EventEnvelope
from cjllm.embedded import QUEUE_FILE, DirectBus, EmbeddedPaths, direct_to
from cjllm.out_dir import OutDirBusy, locked_out_dir
from cjllm.provider.queue import queue_from_url
from cjllm.settings import CJSettings, ProviderSettings
from tests.provider.support import (
    COMPARISON_PATH,
    Callbacks,
    body,
    eventually,
    fast_settings,
    post_all,
    provider,
)


def envelope() -> EventEnvelope:
    return EventEnvelope(source_service="test", correlation_id=uuid.uuid4(), data={"n": 1})


async def test_publish_returns_after_every_group_handled_the_event() -> None:
    bus = DirectBus()
    seen: list[tuple[str, EventEnvelope]] = []

    async def first(e: EventEnvelope) -> None:
        seen.append(("first", e))

    async def second(e: EventEnvelope) -> None:
        seen.append(("second", e))

    bus.subscribe("t", "g1", first)
    bus.subscribe("t", "g2", second)
    await bus.start()
    sent = envelope()
    await bus.publish("t", "k", sent)
    assert [name for name, _ in seen] == ["first", "second"]
    assert all(e == sent for _, e in seen)
    assert seen[0][1] is not seen[1][1]  # each group its own envelope


async def test_a_failing_handler_makes_publish_fail_so_the_outbox_keeps_the_event() -> None:
    bus = DirectBus()

    async def broken(_: EventEnvelope) -> None:
        raise RuntimeError("database is locked")

    bus.subscribe("t", "g", broken)
    await bus.start()
    with pytest.raises(BusError, match="database is locked"):
        await bus.publish("t", "k", envelope())


async def test_publishing_is_refused_unless_running_and_dropped_without_subscribers() -> None:
    bus = DirectBus()
    with pytest.raises(BusError, match="not running"):
        await bus.publish("t", "k", envelope())
    await bus.start()
    await bus.publish("nobody-reads-this", "k", envelope())  # accepted
    await bus.stop()
    with pytest.raises(BusError):
        await bus.publish("t", "k", envelope())


def test_a_second_process_cannot_use_a_locked_out_folder(tmp_path: Path) -> None:
    with locked_out_dir(tmp_path / "out"):
        with pytest.raises(OutDirBusy, match="in use by another cjllm process"):
            with locked_out_dir(tmp_path / "out"):
                pass
    with locked_out_dir(tmp_path / "out"):  # released on exit
        pass


def test_embedded_settings_pin_files_in_the_out_folder(tmp_path: Path) -> None:
    paths = EmbeddedPaths(tmp_path)
    base = ProviderSettings(queue_url="redis://elsewhere:6379/0", bus_url="kafka://k:9092")
    provider = paths.provider_settings(base)
    assert provider.queue_url == f"sqlite:///{tmp_path.resolve() / 'queue.sqlite'}"
    assert provider.bus_url == "memory://"
    cj = paths.cj_settings(CJSettings(database_url="postgresql+asyncpg://db/x"))
    assert cj.database_url == f"sqlite+aiosqlite:///{tmp_path.resolve() / 'cj.sqlite'}"


async def test_stopping_right_after_the_last_callback_leaves_nothing_in_the_outbox(
    tmp_path: Path,
) -> None:
    """As in ``cjllm rank``: the handler of the last callback wakes the caller, which stops
    the services while that handler (scoring, the report) is still running."""
    bus = DirectBus()
    seen: set[str] = set()
    last = asyncio.Event()

    async def handle(envelope: EventEnvelope) -> None:
        seen.add(str(envelope.correlation_id))
        if len(seen) == 6:
            last.set()
            await asyncio.sleep(0.3)  # the completion work after the waiter was woken

    bus.subscribe("r", "cj", handle)
    await bus.start()
    settings = fast_settings(f"sqlite:///{tmp_path / QUEUE_FILE}", linger_seconds=0.0)
    async with provider(settings, bus=bus) as (_, client, _):
        await post_all(client, [body(i, topic="r", size=6) for i in range(6)])
        await last.wait()
    await bus.stop()
    queue = queue_from_url(settings.queue_url, max_items=10, max_bytes=10**6)
    try:
        depth = await queue.depth(time.time())
    finally:
        await queue.close()
    assert (depth.queued, depth.processing, depth.outbox) == (0, 0, 0)


async def test_the_direct_hop_answers_every_request_as_the_http_endpoint_does(
    tmp_path: Path,
) -> None:
    settings = fast_settings(f"sqlite:///{tmp_path / QUEUE_FILE}", max_prompt_chars=5_000)
    cases = {
        "valid": {},
        "unknown provider": {"provider": "nobody"},
        "prompt too long": {"shared": "x" * 6_000},
        "no batch API": {"strategy": "async_batch"},
        "bundle size not a number": {"size": "many"},
    }
    async with provider(settings, work=False) as (svc, client, _):
        direct = direct_to(svc)
        for name, options in cases.items():
            over_http = body(1, topic="t", **options)
            in_process = body(1, topic="t", **options)  # its own correlation id
            response = await client.post(COMPARISON_PATH, json=over_http)
            reply = await direct.submit(ComparisonRequest.model_validate(in_process))
            assert reply.status == response.status_code, name
            if reply.status == 202:
                assert reply.queue_id is not None
                queued = await svc.queue.get(reply.queue_id)
                assert queued is not None and queued.correlation_id == in_process["correlation_id"]
                # the same comparison again, either way: the comparison already queued
                again = await direct.submit(ComparisonRequest.model_validate(in_process))
                assert again.queue_id == reply.queue_id
                repost = await client.post(COMPARISON_PATH, json=in_process)
                assert repost.json()["queue_id"] == reply.queue_id
            else:
                detail = response.json()["detail"]
                assert detail[0]["msg"] in reply.detail, name
        depth = await svc.queue.depth(time.time())
        assert depth.queued == 2  # the valid one over HTTP and the valid one in-process


async def test_comparisons_sent_directly_twice_get_one_callback_each(tmp_path: Path) -> None:
    """As after a crash between queueing and recording the queue ids: every pending
    comparison is sent again; the provider answers with the one it holds, and each
    comparison is answered exactly once."""
    bus = DirectBus()
    callbacks = Callbacks()
    bus.subscribe("r", "cj", callbacks)
    await bus.start()
    settings = fast_settings(f"sqlite:///{tmp_path / QUEUE_FILE}", linger_seconds=0.0)
    requests = [ComparisonRequest.model_validate(body(i, topic="r", size=5)) for i in range(12)]
    async with provider(settings, bus=bus) as (svc, _, _):
        client = ProviderClient(None, max_concurrency=4, direct=direct_to(svc))
        first = await asyncio.gather(*(client.submit(r) for r in requests))
        second = await asyncio.gather(*(client.submit(r) for r in requests))
        assert all(isinstance(o, Accepted) for o in (*first, *second))
        assert first == second
        await eventually(lambda: callbacks.count >= len(requests))
    await bus.stop()  # the provider stopped after publishing every recorded callback
    assert callbacks.count == len(requests)
    assert {cid: len(results) for cid, results in callbacks.by_id.items()} == {
        str(r.correlation_id): 1 for r in requests
    }
