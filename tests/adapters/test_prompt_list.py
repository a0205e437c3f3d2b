"""OpenAI-compatible prompt-list mode: N independent prompts in one ``/v1/completions`` call."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from cjllm.provider.adapters import make_adapter
from cjllm.provider.calls import LLMAdapter
from cjllm.provider.prompts import find_items_text, parse_items
from cjllm.settings import ProviderSettings
from cjllm.sim.judge import Judge
from tests.adapters.bundles import bundle, ids
from tests.sim.running import SimControl


@pytest.fixture
async def prompt_list(vendor_env: SimControl) -> AsyncIterator[LLMAdapter]:
    adapter = make_adapter("openai", ProviderSettings(openai_completions_prompt_list=True))
    yield adapter
    await adapter.aclose()


async def test_one_call_carries_one_prompt_per_item(
    prompt_list: LLMAdapter, sim: SimControl
) -> None:
    sim.configure(judge={"unknown": "heuristic"})
    call = bundle(5)
    outcome = await prompt_list.call_bundle(call)
    counters = sim.counters()
    assert counters["requests"] == {"POST /v1/completions": 1}
    assert (counters["calls"], counters["items"]) == (1, 5)
    prompts = sim.last_call()["body"]["prompt"]
    for item, prompt in zip(call.items, prompts, strict=True):
        (parsed,) = parse_items(find_items_text(prompt) or "")
        assert (parsed.custom_id, parsed.parts) == (item.custom_id, item.parts)
    judge = Judge(unknown="heuristic")
    for item in call.items:  # choices[i] came back to item i
        assert outcome.reconciled.answers[item.custom_id].winner == (
            judge.decide(item.custom_id, item.parts).winner
        )
    assert outcome.details["output_mode"] == "prompt_list"
    assert outcome.usage.output_tokens > 0 and outcome.cost > 0


async def test_a_missing_choice_leaves_its_item_missing(
    prompt_list: LLMAdapter, sim: SimControl
) -> None:
    sim.configure(faults={"missing_item": 1.0})
    call = bundle(5)
    outcome = await prompt_list.call_bundle(call)
    assert outcome.reconciled.missing == {call.items[2].custom_id}
    assert set(outcome.reconciled.answers) == ids(call) - {call.items[2].custom_id}


async def test_a_duplicated_choice_index_is_invalid(
    prompt_list: LLMAdapter, sim: SimControl
) -> None:
    sim.configure(faults={"duplicate_id": 1.0})
    call = bundle(3)
    outcome = await prompt_list.call_bundle(call)
    last = call.items[-1].custom_id
    assert outcome.reconciled.invalid == {last: "answered more than once"}
    assert len(outcome.reconciled.answers) == 2


async def test_a_choice_index_out_of_range_is_unknown(
    prompt_list: LLMAdapter, sim: SimControl
) -> None:
    sim.configure(faults={"unknown_id": 1.0})
    call = bundle(3)
    outcome = await prompt_list.call_bundle(call)
    assert outcome.reconciled.unknown == ["choice#3"]
    assert set(outcome.reconciled.answers) == ids(call)


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        ("malformed_json", "invalid"),
        ("invalid_item", "invalid"),
        ("refusal", "invalid"),
        ("max_tokens", "missing"),
    ],
)
async def test_a_bad_answer_harms_only_its_own_item(
    prompt_list: LLMAdapter, sim: SimControl, fault: str, kind: str
) -> None:
    sim.configure(faults={fault: 1.0})
    call = bundle(3)
    outcome = await prompt_list.call_bundle(call)
    first = call.items[0].custom_id
    harmed = set(outcome.reconciled.invalid) if kind == "invalid" else outcome.reconciled.missing
    assert harmed == {first}
    assert set(outcome.reconciled.answers) == ids(call) - {first}
    if fault == "refusal":
        assert outcome.reconciled.invalid[first] == "content_filter"
