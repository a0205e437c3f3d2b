"""Every simulated fault, through both SDK adapters: call-level errors and per-item damage."""

from __future__ import annotations

import pytest

from cjllm.provider.calls import LLMAdapter, ProviderCallError
from cjllm.sim.faults import UNKNOWN_ID
from tests.adapters.bundles import bundle, ids
from tests.sim.running import SimControl


@pytest.mark.parametrize(
    ("fault", "code", "statuses"),
    [
        ("overloaded", None, {529, 503}),  # Anthropic 529 overloaded_error, OpenAI 503
        ("server_error", "server_error", {500}),
        ("rate_limited", "rate_limited", {429}),
    ],
)
async def test_call_level_faults_are_retryable_errors(
    adapter: LLMAdapter, sim: SimControl, fault: str, code: str | None, statuses: set[int]
) -> None:
    sim.configure(faults={fault: 1.0}, fault_retry_after=7)
    with pytest.raises(ProviderCallError) as caught:
        await adapter.call_bundle(bundle(3))
    error = caught.value
    assert error.retryable is True
    assert error.status in statuses
    if code is not None:
        assert error.code == code
    if fault == "overloaded":
        assert error.code in ("overloaded", "server_error")
    if fault == "rate_limited":
        assert error.retry_after == 7.0
    assert sim.counters()["calls"] == 0


async def test_an_answer_without_usable_json_is_a_retryable_call_error(
    adapter: LLMAdapter, sim: SimControl
) -> None:
    sim.configure(faults={"malformed_json": 1.0})
    with pytest.raises(ProviderCallError) as caught:
        await adapter.call_bundle(bundle(3))
    assert caught.value.code == "malformed_output"
    assert caught.value.retryable is True
    assert "excerpt" in caught.value.details


async def test_a_missing_item_is_reported_alone(adapter: LLMAdapter, sim: SimControl) -> None:
    sim.configure(faults={"missing_item": 1.0})
    call = bundle(5)
    outcome = await adapter.call_bundle(call)
    missing = call.items[2].custom_id
    assert outcome.reconciled.missing == {missing}
    assert set(outcome.reconciled.answers) == ids(call) - {missing}
    assert outcome.reconciled.retry_ids() == {missing}


async def test_a_duplicated_custom_id_is_invalid_and_retried(
    adapter: LLMAdapter, sim: SimControl
) -> None:
    sim.configure(faults={"duplicate_id": 1.0})
    call = bundle(4)
    outcome = await adapter.call_bundle(call)
    twice = call.items[-1].custom_id
    assert outcome.reconciled.duplicates == {twice}
    assert outcome.reconciled.invalid == {twice: "answered more than once"}
    assert set(outcome.reconciled.answers) == ids(call) - {twice}


async def test_an_unknown_custom_id_is_counted_and_ignored(
    adapter: LLMAdapter, sim: SimControl
) -> None:
    sim.configure(faults={"unknown_id": 1.0})
    call = bundle(3)
    outcome = await adapter.call_bundle(call)
    assert outcome.reconciled.unknown == [UNKNOWN_ID]
    assert set(outcome.reconciled.answers) == ids(call)
    assert not outcome.reconciled.retry_ids()


async def test_max_tokens_truncation_keeps_complete_items(
    adapter: LLMAdapter, sim: SimControl
) -> None:
    sim.configure(faults={"max_tokens": 1.0})
    call = bundle(6)
    outcome = await adapter.call_bundle(call)
    kept = {item.custom_id for item in call.items[:3]}
    assert outcome.stop_reason in ("max_tokens", "length")
    assert set(outcome.reconciled.answers) == kept
    assert outcome.reconciled.missing == ids(call) - kept
    assert outcome.reconciled.salvaged is True


async def test_a_too_small_output_budget_truncates_for_real(
    adapter: LLMAdapter, sim: SimControl
) -> None:
    call = bundle(8, max_tokens=1)  # 8 + 64 tokens for answers that need ~230
    outcome = await adapter.call_bundle(call)
    assert outcome.stop_reason in ("max_tokens", "length")
    answered = set(outcome.reconciled.answers)
    assert answered and answered != ids(call)
    assert outcome.reconciled.missing == ids(call) - answered
    assert outcome.usage.output_tokens <= 8 + 64


async def test_a_truncated_answer_with_no_complete_item_leaves_all_missing(
    adapter: LLMAdapter, sim: SimControl
) -> None:
    sim.configure(faults={"max_tokens": 1.0})
    call = bundle(1)
    outcome = await adapter.call_bundle(call)
    assert not outcome.reconciled.answers
    assert outcome.reconciled.missing == ids(call)


async def test_a_refusal_makes_every_item_invalid(adapter: LLMAdapter, sim: SimControl) -> None:
    sim.configure(faults={"refusal": 1.0})
    call = bundle(3)
    outcome = await adapter.call_bundle(call)
    assert outcome.reconciled.invalid == dict.fromkeys(ids(call), "refusal")
    assert not outcome.reconciled.answers
    assert "refusal" in outcome.details


async def test_faults_at_a_rate_hit_some_calls_reproducibly(
    adapter: LLMAdapter, sim: SimControl
) -> None:
    async def run() -> list[str]:
        sim.restore(faults={"missing_item": 0.5}, fault_seed=11)
        seen = []
        for n in range(12):
            outcome = await adapter.call_bundle(bundle(3, prefix=f"r{n:02d}"))
            seen.append("missing" if outcome.reconciled.missing else "whole")
        return seen

    first = await run()
    assert "missing" in first and "whole" in first
    assert await run() == first
