"""The outbox publisher: a callback that can never be published is set aside, never in the way.

Run on both queue backends with the in-process bus.
"""

from __future__ import annotations

import uuid

from cjllm.bus import MemoryBus
from cjllm.contracts import EventEnvelope, QueueItemState
from cjllm.provider.metrics import ProviderMetrics
from cjllm.provider.publisher import Publisher
from cjllm.provider.queue import Finished, NewItem, Queue
from tests.provider.support import Callbacks, fast_settings

T0 = 1_000_000.0


def envelope(correlation_id: str) -> bytes:
    data = {
        "request_id": str(uuid.uuid4()),
        "correlation_id": correlation_id,
        "winner": "Essay A",
        "justification": "clearer",
        "confidence": 4,
        "provider": "mock",
        "model": "m",
        "response_time_ms": 1,
        "requested_at": "2026-01-01T00:00:00Z",
        "completed_at": "2026-01-01T00:00:01Z",
    }
    return EventEnvelope(
        source_service="test", correlation_id=uuid.UUID(correlation_id), data=data
    ).to_bytes()


async def finished_with(queue: Queue, envelopes: list[bytes]) -> None:
    """Queue, claim and finish one item per envelope (as the worker would record them)."""
    ids = []
    for i, _ in enumerate(envelopes):
        item = NewItem(
            str(uuid.uuid4()), str(uuid.uuid4()), "k", 50, 1, 10**6, "{}", T0 + i, T0 + 9e9
        )
        ids.append((await queue.enqueue(item))[0])
    await queue.claim("w", "b", T0 + 100, T0 + 200, 0.0)
    await queue.finish(
        [
            Finished(qid, QueueItemState.COMPLETED, "results", f"key-{n}", env)
            for n, (qid, env) in enumerate(zip(ids, envelopes, strict=True))
        ],
        T0 + 101,
    )


async def test_a_callback_that_cannot_be_published_is_set_aside_and_its_neighbours_go_out(
    queue: Queue,
) -> None:
    good = [str(uuid.uuid4()) for _ in range(20)]
    # a record the bus can never take: its JSON is deeper than any reader accepts
    poison = b'{"data": ' + b'{"x": ' * 300 + b"1" + b"}" * 300 + b"}"
    envelopes = [envelope(c) for c in good[:10]] + [poison] + [envelope(c) for c in good[10:]]
    await finished_with(queue, envelopes)

    callbacks = Callbacks()
    bus = MemoryBus()
    bus.subscribe("results", "cj", callbacks)
    await bus.start()
    metrics = ProviderMetrics()
    publisher = Publisher(queue, bus, fast_settings("sqlite:///:memory:"), metrics)
    assert await publisher.drain_once() == 21
    await bus.drain()
    await bus.stop()

    assert sorted(callbacks.by_id) == sorted(good)
    assert all(len(r) == 1 for r in callbacks.by_id.values())
    depth = await queue.depth(T0)
    assert depth.outbox == 0 and depth.dead_letters == 1
    ((key, reason),) = [(d.message_key, d.reason) for d in await queue.dead_letters(10)]
    assert key == "key-10" and "not a readable callback envelope" in reason
    counted = metrics.registry.get_sample_value("cjllm_provider_callbacks_dead_lettered_total")
    assert counted == 1
    # set aside for good: the next drain finds nothing to send
    assert await publisher.drain_once() == 0
