"""The bundle rules: compatibility key, size hint, which items a bundle takes, usage shares."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from pydantic import ValidationError

from cjllm.contracts import BundleHints, ComparisonRequest
from cjllm.provider.answers import Reconciled
from cjllm.provider.bundling import (
    Candidate,
    PlannedComparison,
    apportion,
    build_call,
    compatibility_key,
    pick_bundle,
    size_hint,
)
from cjllm.provider.calls import CallOutcome, CallUsage
from tests.provider.support import body


def planned(i: int = 0, model: str = "mock-judge-1", **kw: Any) -> PlannedComparison:
    request = ComparisonRequest.model_validate(body(i, topic="t", **kw))
    return PlannedComparison(request, request.llm_config_overrides.provider_override, model)


def test_key_ignores_the_per_comparison_part() -> None:
    assert compatibility_key(planned(1)) == compatibility_key(planned(2))


@pytest.mark.parametrize(
    ("change", "kw"),
    [
        ("model", {"model": "mock-judge-2"}),
        ("shared prefix", {"shared": "Another rubric entirely."}),
        ("bundle_group", {"group": "batch-1:round-2"}),
        ("temperature", {"temperature": 0.0}),
        ("provider", {"provider": "anthropic"}),
        (
            "system prompt",
            {
                "llm_config_overrides": {
                    "provider_override": "mock",
                    "system_prompt_override": "Be terse.",
                }
            },
        ),
    ],
)
def test_key_changes_with_everything_a_call_shares(change: str, kw: dict[str, Any]) -> None:
    assert compatibility_key(planned(1, **kw)) != compatibility_key(planned(1)), change


def test_temperature_zero_is_a_real_value_not_the_default() -> None:
    assert compatibility_key(planned(1, temperature=0.0)) != compatibility_key(planned(1))


@pytest.mark.parametrize(
    ("hints", "expected"),
    [
        ({"batching_strategy": "per_request", "preferred_bundle_size": 10}, 1),
        ({"batching_strategy": "serial_round", "preferred_bundle_size": 10}, 10),
        ({"batching_strategy": "serial_override", "preferred_bundle_size": 7}, 7),
        ({"batching_strategy": "serial_round", "preferred_bundle_size": 500}, 25),
        ({"batching_strategy": "serial_round"}, 25),
        ({}, 25),
    ],
)
def test_size_hint_is_the_request_own_cap(hints: dict[str, Any], expected: int) -> None:
    assert size_hint(BundleHints.model_validate(hints), max_items_per_call=25) == expected


def cands(
    *hints: int, tokens: int = 10, budget: int = 10_000, requeued: tuple[int, ...] = ()
) -> list[Candidate]:
    """Candidates enqueued at t=i; those in ``requeued`` came back after a try (due at 50)."""
    return [
        Candidate(f"q{i}", h, tokens, budget, float(i), 50.0 if i in requeued else float(i))
        for i, h in enumerate(hints)
    ]


def test_full_bundle_is_ready_without_waiting() -> None:
    assert pick_bundle(cands(*[10] * 12), now=11.0, linger=60) == [f"q{i}" for i in range(10)]


def test_partial_bundle_waits_for_the_linger_then_goes() -> None:
    three = cands(10, 10, 10)
    assert pick_bundle(three, now=0.0 + 4.99, linger=5) == []
    assert pick_bundle(three, now=0.0 + 5.0, linger=5) == ["q0", "q1", "q2"]


def test_item_that_asked_for_less_is_never_put_in_a_bigger_bundle() -> None:
    # the head asks for 4; the item that asked for 2 is skipped, not squeezed in
    picked = pick_bundle(cands(4, 2, 4, 4, 4), now=100.0, linger=1)
    assert picked == ["q0", "q2", "q3", "q4"]
    # when the smaller hint heads the key, the bundle is its size, and bigger hints may join
    assert pick_bundle(cands(2, 4, 4), now=100.0, linger=1) == ["q0", "q1"]


def test_an_item_with_hint_one_goes_alone() -> None:
    assert pick_bundle(cands(1, 10, 10), now=0.0, linger=60) == ["q0"]


def test_a_due_retry_goes_at_once_taking_pending_work_along() -> None:
    # the retried head keeps its hint: the fresh items ride with it, without the linger
    picked = pick_bundle(cands(10, 10, 10, requeued=(0,)), now=50.0, linger=60)
    assert picked == ["q0", "q1", "q2"]
    # fresh items alone still wait for the linger
    assert pick_bundle(cands(10, 10, 10), now=50.0, linger=60) == []


def test_token_budget_caps_the_bundle_and_makes_it_ready() -> None:
    picked = pick_bundle(cands(*[10] * 10, tokens=300, budget=1000), now=0.0, linger=60)
    assert picked == ["q0", "q1", "q2"]


def test_the_head_goes_even_over_budget() -> None:
    assert pick_bundle(cands(10, 10, tokens=5000, budget=1000), now=0.0, linger=60) == ["q0"]


def test_build_call_sends_the_shared_prefix_once_and_each_item_with_its_id() -> None:
    items = [planned(i) for i in range(3)]
    call = build_call("b1", items)
    assert [b.content for b in call.shared] == [items[0].shared_blocks()[0].content]
    assert [it.custom_id for it in call.items] == [p.correlation_id for p in items]
    assert all(len(it.parts) == 2 for it in call.items)


def test_usage_shares_add_up_to_the_call_totals() -> None:
    items = [planned(i) for i in range(7)]
    call = build_call("b1", items)
    outcome = CallOutcome(
        reconciled=Reconciled(),
        usage=CallUsage(input_tokens=1001, output_tokens=333, cache_read_input_tokens=50),
        cost=0.0123,
        model="m",
        latency_ms=5,
    )
    shares = apportion(call, outcome)
    assert set(shares) == {p.correlation_id for p in items}
    assert sum(s.prompt_tokens for s in shares.values()) == 1051
    assert sum(s.completion_tokens for s in shares.values()) == 333
    assert sum(s.cost for s in shares.values()) == pytest.approx(0.0123)
    # a longer comparison is charged more prompt tokens than a shorter one
    by_len = sorted(items, key=lambda p: sum(map(len, p.request.per_comparison_parts())))
    shortest, longest = by_len[0].correlation_id, by_len[-1].correlation_id
    assert shares[shortest].prompt_tokens < shares[longest].prompt_tokens


def test_planned_comparison_round_trips_through_the_queue_payload() -> None:
    p = planned(3)
    again = PlannedComparison.from_json(p.to_json())
    assert again == p
    assert again.request == ComparisonRequest.model_validate_json(p.request.model_dump_json())
    assert again.to_json() == p.to_json()
    assert uuid.UUID(again.correlation_id)


def test_a_payload_todays_contract_refuses_is_still_read() -> None:
    """An item queued by another version of the service, which today's contract would refuse
    (here: a callback topic outside its pattern), is rebuilt field by field, not dropped."""
    p = planned(1)
    raw = json.loads(p.to_json())
    raw["request"]["callback_topic"] = "not a topic!"
    with pytest.raises(ValidationError):
        ComparisonRequest.model_validate(raw["request"])
    again = PlannedComparison.from_json(json.dumps(raw))
    assert again.request.callback_topic == "not a topic!"
    assert again.correlation_id == p.correlation_id
    assert again.request.per_comparison_parts() == p.request.per_comparison_parts()
