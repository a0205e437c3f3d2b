"""The embedded shape's direct bus and folder lock."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from cjllm.bus import BusError
from cjllm.contracts import EventEnvelope
from cjllm.embedded import QUEUE_FILE, DirectBus, EmbeddedPaths
from cjllm.out_dir import OutDirBusy, locked_out_dir
from cjllm.provider.queue import queue_from_url
from cjllm.settings import CJSettings, ProviderSettings
from tests.provider.support import body, fast_settings, post_all, provider


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
    assert all(e == sent and e is not sent for _, e in seen)  # a fresh copy, as off the wire


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
