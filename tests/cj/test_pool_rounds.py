"""Grouped rounds with the pool layout, end to end through the real provider service (mock
adapter): one provider call per group, every essay once per call, every comparison answered."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from scipy.stats import spearmanr

from cjllm.bus import MemoryBus
from cjllm.cj.tables import ComparisonStatus
from cjllm.cj.workflow import CJWorkflow
from cjllm.contracts import BundleLayout, ComparisonRequest
from cjllm.provider.adapters.mock import MockAdapter
from cjllm.provider.calls import ProviderCallError
from cjllm.provider.prompts import pooled_texts
from cjllm.settings import CJSettings, ProviderSettings
from tests.cj.conftest import essays_with_quality
from tests.cj.test_with_provider import _mock, _stack


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as s:
        yield s


async def pooled_cj(
    stack: AsyncExitStack, tmp_path: Path, mock: MockAdapter, **cj: object
) -> CJWorkflow:
    bus = MemoryBus()
    return await _stack(
        stack,
        cj_settings=CJSettings(
            database_url=f"sqlite+aiosqlite:///{tmp_path}/cj.sqlite",
            bundle_layout=BundleLayout.POOL,
            pool_group_size=6,
            split_half_splits=4,
            **cj,  # type: ignore[arg-type]
        ),
        # the provider's own default stays `items`: the CJ service asks for `pool`
        provider_settings=ProviderSettings(
            queue_url=f"sqlite:///{tmp_path}/queue.sqlite", linger_seconds=5.0
        ),
        mock=mock,
        cj_bus=bus,
        provider_bus=bus,
    )


async def test_each_group_is_one_call_that_sends_each_of_its_essays_once(
    stack: AsyncExitStack, tmp_path: Path
) -> None:
    essays, qualities = essays_with_quality(24)
    mock = _mock(qualities)
    cj = await pooled_cj(
        stack, tmp_path, mock, max_concurrent_comparisons=24, comparisons_per_essay=8
    )
    batch_id = await cj.start_batch(essays, instructions="Should homework be banned?")
    result = await cj.wait_for_completion(batch_id, timeout=120)
    assert result.status == "completed", result.message
    assert (result.comparisons_requested, result.comparisons_succeeded) == (96, 96)
    # 24 comparisons a round: 12 essays at 4 comparisons each, in two groups of 6
    assert result.rounds == 4 and result.provider_calls == len(mock.calls) == 8
    texts = {e.essay_id: e.text for e in essays}
    for call in mock.calls:  # a group of 6 essays, or 7 with a bridge to the main component
        assert call.layout is BundleLayout.POOL and len(call.items) == 12
        in_call = {p for item in call.items for p in item.parts}
        assert len(pooled_texts(call.items)) == len(in_call) in (6, 7)
    rows = await cj.store.comparisons(batch_id)
    assert Counter(r.bundle_id for r in rows) == Counter({c.bundle_id: 12 for c in mock.calls})
    for row in rows:
        assert row.bundle_size == 12
        parts = (texts[row.essay_a_id], texts[row.essay_b_id])
        request = ComparisonRequest.model_validate(
            {
                "prompt_blocks": [
                    {"target": "user_content", "content": parts[0]},
                    {"target": "user_content", "content": parts[1]},
                ],
                "callback_topic": "t",
                "llm_config_overrides": {"provider_override": "mock"},
            }
        )
        assert row.prompt_sha256 == request.prompt_sha256()
    a_minus_b = Counter(r.essay_a_id for r in rows)
    a_minus_b.subtract(Counter(r.essay_b_id for r in rows))
    assert max(abs(v) for v in a_minus_b.values()) <= 1
    truth = {e.essay_id: qualities[e.text] for e in essays}
    rho = spearmanr([truth[r.essay_id] for r in result.ranking], [r.score for r in result.ranking])
    assert rho.statistic > 0.8


async def test_a_failed_group_is_retried_later_and_its_retries_travel_on_their_own(
    stack: AsyncExitStack, tmp_path: Path
) -> None:
    essays, qualities = essays_with_quality(12)
    mock = _mock(qualities)
    mock.call_faults.append(
        ProviderCallError("invalid_request", "400 bad request", retryable=False, status=400)
    )
    cj = await pooled_cj(
        stack, tmp_path, mock, max_concurrent_comparisons=12, comparisons_per_essay=6
    )
    batch_id = await cj.start_batch(essays, instructions="Should homework be banned?")
    result = await cj.wait_for_completion(batch_id, timeout=120)
    rows = await cj.store.comparisons(batch_id)
    failed = [r for r in rows if r.status == ComparisonStatus.FAILED]
    retried = [r for r in rows if r.attempt == 2]
    assert failed and {r.round_number for r in failed} == {1}
    assert {(r.essay_a_id, r.essay_b_id) for r in retried} == {
        (r.essay_a_id, r.essay_b_id) for r in failed
    }
    assert all(r.status == ComparisonStatus.SUCCEEDED for r in retried)
    (retry_round,) = {r.round_number for r in retried}
    retry_essays = {e for r in retried for e in (r.essay_a_id, r.essay_b_id)}
    others = [r for r in rows if r.round_number == retry_round and r.attempt == 1]
    assert not retry_essays & {e for r in others for e in (r.essay_a_id, r.essay_b_id)}
    assert not {r.bundle_id for r in retried} & {r.bundle_id for r in others}
    assert result.status == "completed"
    assert result.comparisons_succeeded == len(rows) - len(failed)
