"""In one process the intake hands the worker the plans it queued, and the settler hands the
publisher the envelopes it recorded; whatever was not handed over (dropped past the cap,
queued or recorded by another process) is read back from the queue, with the same result."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from cjllm.bus import MemoryBus
from cjllm.provider import publisher, worker
from tests.provider.support import (
    Callbacks,
    body,
    eventually,
    expected_winner,
    fast_settings,
    post_all,
    provider,
)


async def test_comparisons_past_the_handover_cap_are_read_from_the_queue_and_answered_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "MAX_HANDED_OVER", 2)
    monkeypatch.setattr(publisher, "MAX_HANDED_OVER", 2)
    results_topic = f"results-{uuid.uuid4().hex[:8]}"
    callbacks = Callbacks()
    bus = MemoryBus()
    bus.subscribe(results_topic, "cj", callbacks)
    await bus.start()
    bodies = [body(i, topic=results_topic, size=6) for i in range(6)]
    settings = fast_settings(f"sqlite:///{tmp_path / 'queue.sqlite'}")
    try:
        async with provider(settings, bus=bus) as (service, client, mock):
            queue_ids = await post_all(client, bodies)
            await eventually(lambda: callbacks.count == 6)
            assert not service.worker._handed_over  # the two kept were taken by the claim
            assert not service.publisher._handed_over
    finally:
        await bus.stop()

    assert [len(call.items) for call in mock.calls] == [6]  # one bundle, both kinds in it
    for request_body, queue_id in zip(bodies, queue_ids, strict=True):
        result = callbacks.one(request_body["correlation_id"])
        assert result.is_success and result.request_id == queue_id
        assert result.winner == expected_winner(mock.judge, request_body)
        meta = result.request_metadata
        assert meta["request_correlation_id"] == request_body["correlation_id"]
        assert meta["essay_a_id"] == request_body["metadata"]["essay_a_id"]
        assert meta["bundle_size"] == 6
