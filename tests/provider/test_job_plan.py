"""When a batch-lane group becomes a job, and how a job's lines are formed and split."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cjllm.contracts import BatchingStrategy, ComparisonRequest, QueueItemState
from cjllm.provider.adapters.anthropic import AnthropicAdapter
from cjllm.provider.adapters.anthropic_batches import AnthropicBatches
from cjllm.provider.batch_calls import VendorLimits
from cjllm.provider.bundling import PlannedComparison, compatibility_key
from cjllm.provider.job_plan import (
    LaneGroup,
    draft_job,
    group_of,
    is_ready,
    lane_key,
    last_schedule,
    mode_of,
)
from cjllm.provider.pricing import packaged_price_table
from cjllm.provider.queue import QueuedItem
from cjllm.settings import ProviderSettings
from tests.provider.support import body

NOON = datetime(2030, 5, 4, 12, 0, tzinfo=UTC).timestamp()


def settings(**values: object) -> ProviderSettings:
    return ProviderSettings(**values)  # type: ignore[arg-type]


def group(mode: str, items: int, oldest: float, newest: float) -> LaneGroup:
    return LaneGroup(f"batch:{mode}:0123456789abcdef", items, oldest, newest)


def test_an_async_group_waits_for_its_round_to_stop_arriving_or_for_its_oldest() -> None:
    s = settings(batch_linger_seconds=5, batch_max_wait_seconds=60)
    assert not is_ready(group("async", 10, NOON - 30, NOON - 1), NOON, s)  # still arriving
    assert is_ready(group("async", 10, NOON - 30, NOON - 5), NOON, s)  # quiet for the linger
    assert is_ready(group("async", 10, NOON - 60, NOON), NOON, s)  # waited long enough


def test_a_nightly_group_waits_for_its_size_its_age_or_the_schedule() -> None:
    s = settings(nightly_max_items=100, nightly_max_age_seconds=86400, nightly_submit_at="13:30")
    assert not is_ready(group("nightly", 99, NOON - 3600, NOON), NOON, s)
    assert is_ready(group("nightly", 100, NOON - 10, NOON), NOON, s)
    # yesterday's 13:30 had passed before it arrived (11:00 today): not yet
    assert not is_ready(group("nightly", 5, NOON - 3600, NOON), NOON, s)
    # today's 13:30 has passed since it arrived
    assert is_ready(group("nightly", 5, NOON - 3600, NOON), NOON + 5400, s)
    assert not is_ready(
        group("nightly", 5, NOON - 3600, NOON), NOON + 5400, settings(nightly_submit_at=None)
    )
    assert is_ready(group("nightly", 1, NOON - 86400, NOON), NOON, s)  # old enough anyway


def test_the_schedule_is_the_latest_such_time_at_or_before_now() -> None:
    assert last_schedule(NOON, "12:00") == NOON
    assert last_schedule(NOON, "12:01") == NOON - 86400 + 60
    assert last_schedule(NOON, "00:00") == NOON - 12 * 3600


def planned(i: int, *, size: int, group_name: str = "g") -> PlannedComparison:
    request = ComparisonRequest.model_validate(
        body(i, topic="t", size=size, group=group_name, provider="anthropic")
    )
    return PlannedComparison(request, "anthropic", "claude-sonnet-4-6")


def queued(plan: PlannedComparison, n: int, hint: int) -> QueuedItem:
    key = lane_key(plan, BatchingStrategy.ASYNC_BATCH, compatibility_key(plan))
    return QueuedItem(
        queue_id=f"q{n:03d}",
        correlation_id=plan.correlation_id,
        key=key,
        hint=hint,
        tokens=plan.item_tokens(),
        budget=100_000,
        payload=plan.to_json(),
        state=QueueItemState.QUEUED,
        attempts=0,
        enqueued_at=float(n),
        available_at=float(n),
        expires_at=1e12,
        updated_at=float(n),
    )


@pytest.fixture
def api() -> AnthropicBatches:
    adapter = AnthropicAdapter(
        model="claude-sonnet-4-6", prices=packaged_price_table(), api_key="k"
    )
    return AnthropicBatches(adapter)


def test_lines_follow_the_bundle_rule_per_compatibility_key(api: AnthropicBatches) -> None:
    items = [queued(planned(i, size=4, group_name=f"g{i % 2}"), i, 4) for i in range(10)]
    assert len({group_of(i.key) for i in items}) == 1
    assert mode_of(group_of(items[0].key)) is BatchingStrategy.ASYNC_BATCH
    draft = draft_job("j", items, api, VendorLimits(100, 10**9), items_per_line=10)
    # two bundle groups (keys) of five: a line of 4 and a line of 1 each, oldest first
    assert [len(line.queue_ids) for line in draft.lines] == [4, 1, 4, 1]
    assert [line.custom_id for line in draft.lines] == ["j-0", "j-1", "j-2", "j-3"]
    assert draft.lines[0].queue_ids == ("q000", "q002", "q004", "q006")
    assert draft.lines[0].line.request["custom_id"] == "j-0"
    assert draft.lines[0].line.request["params"]["model"] == "claude-sonnet-4-6"


def test_a_job_takes_lines_while_they_fit_the_limits(api: AnthropicBatches) -> None:
    items = [queued(planned(i, size=2), i, 2) for i in range(10)]
    by_count = draft_job("j", items, api, VendorLimits(3, 10**9), items_per_line=10)
    assert [len(line.queue_ids) for line in by_count.lines] == [2, 2, 2]
    sizes = [
        line.line.size for line in draft_job("j", items, api, VendorLimits(10, 10**9), 10).lines
    ]
    by_bytes = draft_job("j", items, api, VendorLimits(100, sizes[0] + sizes[1]), 10)
    assert len(by_bytes.lines) == 2 and by_bytes.bytes == sizes[0] + sizes[1]
    one_line = sizes[0]
    # a line too big for any job on its own is halved (the other half waits for the next)
    halved = draft_job("j", items[:2], api, VendorLimits(100, one_line - 1), 10)
    assert [line.queue_ids for line in halved.lines] == [("q000",)]
    assert halved.oversize == []
    # a comparison too big on its own is refused, not sent
    tiny = draft_job("j", items[:2], api, VendorLimits(100, 100), 10)
    assert tiny.lines == [] and tiny.oversize == ["q000", "q001"]
