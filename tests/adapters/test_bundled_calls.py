"""The same suite for both SDK adapters against ``cjllm sim``: calls, answers, usage, cost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cjllm.provider.adapters import make_adapter
from cjllm.provider.calls import LLMAdapter
from cjllm.provider.pricing import load_price_table
from cjllm.settings import ProviderSettings
from cjllm.sim.judge import Judge
from tests.adapters.bundles import bundle, ids
from tests.sim.running import SimControl


async def test_a_single_comparison_is_a_bundle_of_one(adapter: LLMAdapter, sim: SimControl) -> None:
    call = bundle(1)
    outcome = await adapter.call_bundle(call)
    assert set(outcome.reconciled.answers) == ids(call)
    assert not outcome.reconciled.retry_ids()
    counters = sim.counters()
    assert (counters["calls"], counters["items"], counters["items_per_call"]) == (1, 1, {"1": 1})


async def test_a_bundle_is_one_call_answering_every_item(
    adapter: LLMAdapter, sim: SimControl
) -> None:
    call = bundle(6)
    outcome = await adapter.call_bundle(call)
    assert set(outcome.reconciled.answers) == ids(call)
    assert not (outcome.reconciled.missing or outcome.reconciled.invalid)
    assert not (outcome.reconciled.unknown or outcome.reconciled.duplicates)
    for answer in outcome.reconciled.answers.values():
        assert answer.winner in ("Essay A", "Essay B")
        assert 1.0 <= answer.confidence <= 5.0 and answer.justification
    counters = sim.counters()
    assert (counters["calls"], counters["items"], counters["items_per_call"]) == (1, 6, {"6": 1})
    assert sim.last_call()["custom_ids"] == [item.custom_id for item in call.items]


async def test_each_answer_maps_back_to_its_own_comparison(
    adapter: LLMAdapter, sim: SimControl
) -> None:
    sim.configure(judge={"unknown": "heuristic"})
    call = bundle(8)
    outcome = await adapter.call_bundle(call)
    judge = Judge(unknown="heuristic")
    for item in call.items:
        expected = judge.decide(item.custom_id, item.parts)
        got = outcome.reconciled.answers[item.custom_id]
        assert (got.winner, got.confidence) == (expected.winner, expected.confidence)


async def test_usage_is_the_providers_and_cost_follows_the_price_table(
    adapter: LLMAdapter, sim: SimControl
) -> None:
    outcome = await adapter.call_bundle(bundle(4))
    tokens = sim.counters()["tokens"]
    usage = outcome.usage
    assert usage.input_tokens == tokens["input"] > 0
    assert usage.output_tokens == tokens["output"] > 0
    assert usage.cache_creation_input_tokens == tokens["cache_creation"]
    assert usage.cache_read_input_tokens == tokens["cache_read"]
    logged = sim.last_call()["usage"]
    expected = load_price_table().cost(
        outcome.model, usage, cache_write_1h_tokens=logged["cache_creation_1h"]
    )
    assert outcome.cost == pytest.approx(expected.total) and outcome.cost > 0
    assert outcome.details["priced"] is True
    assert outcome.latency_ms >= 0


async def test_the_shared_prefix_is_read_from_cache_on_the_next_call(
    adapter: LLMAdapter, vendor: str
) -> None:
    first = await adapter.call_bundle(bundle(3, prefix="first"))
    second = await adapter.call_bundle(bundle(3, prefix="again"))
    assert first.usage.cache_read_input_tokens == 0
    if vendor == "anthropic":  # explicit breakpoints: the first call writes the cache
        assert first.usage.cache_creation_input_tokens > 0
        assert second.usage.cache_creation_input_tokens == 0
    assert second.usage.cache_read_input_tokens > 1024
    assert second.usage.prompt_tokens == first.usage.prompt_tokens
    assert second.cost < first.cost


async def test_a_prefix_under_the_cache_minimum_is_not_cached(adapter: LLMAdapter) -> None:
    for prefix in ("first", "again"):
        outcome = await adapter.call_bundle(bundle(2, shared=None, prefix=prefix))
    assert outcome.usage.cache_read_input_tokens == 0
    assert outcome.usage.cache_creation_input_tokens == 0


async def test_invalid_items_are_reported_and_their_neighbours_kept(
    adapter: LLMAdapter, sim: SimControl
) -> None:
    sim.configure(faults={"invalid_item": 1.0})
    call = bundle(4)
    outcome = await adapter.call_bundle(call)
    first = call.items[0].custom_id
    assert set(outcome.reconciled.invalid) == {first}
    assert "winner" in outcome.reconciled.invalid[first]
    assert set(outcome.reconciled.answers) == ids(call) - {first}
    assert outcome.reconciled.retry_ids() == {first}


async def test_a_model_override_is_sent_and_reported(
    adapter: LLMAdapter, vendor: str, sim: SimControl
) -> None:
    model = "claude-haiku-4-5" if vendor == "anthropic" else "gpt-4.1-nano"
    outcome = await adapter.call_bundle(bundle(2, model=model))
    assert sim.last_call()["model"] == outcome.model == model


async def test_output_tokens_are_budgeted_per_item(
    adapter: LLMAdapter, vendor: str, sim: SimControl
) -> None:
    await adapter.call_bundle(bundle(3, max_tokens=100))
    body = sim.last_call()["body"]
    field = "max_tokens" if vendor == "anthropic" else "max_completion_tokens"
    assert body[field] == 3 * 100 + 64


async def test_an_unpriced_model_costs_nothing_and_says_so(adapter: LLMAdapter) -> None:
    outcome = await adapter.call_bundle(bundle(2, model="local-llama-3"))
    assert outcome.cost == 0.0
    assert outcome.details["priced"] is False


async def test_prices_can_be_overridden_in_settings(
    vendor: str, vendor_env: SimControl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    defaults = ProviderSettings()
    model = defaults.anthropic_model if vendor == "anthropic" else defaults.openai_model
    table = tmp_path / "prices.json"
    table.write_text(
        json.dumps({"as_of": "2030-01-01", "models": {model: {"input": 1000000, "output": 0}}})
    )
    monkeypatch.setenv("CJLLM_PRICE_TABLE_PATH", str(table))
    adapter = make_adapter(vendor, ProviderSettings())
    try:
        outcome = await adapter.call_bundle(bundle(2, shared=None))
    finally:
        await adapter.aclose()
    assert outcome.cost == pytest.approx(outcome.usage.input_tokens)
    assert outcome.details["price_table_as_of"] == "2030-01-01"


async def test_anthropic_is_sent_no_sampling_parameters(vendor_env: SimControl) -> None:
    adapter = make_adapter("anthropic", ProviderSettings())
    try:
        outcome = await adapter.call_bundle(bundle(2, temperature=0.3))
    finally:
        await adapter.aclose()
    body = vendor_env.last_call()["body"]
    assert not {"temperature", "top_p", "top_k"} & set(body)
    assert outcome.details["ignored"] == ["temperature"]


@pytest.mark.parametrize(("model", "sent"), [("gpt-4.1-mini", True), ("gpt-5-mini", False)])
async def test_openai_gets_temperature_unless_the_model_rejects_it(
    vendor_env: SimControl, model: str, sent: bool
) -> None:
    adapter = make_adapter("openai", ProviderSettings())
    try:
        outcome = await adapter.call_bundle(bundle(2, temperature=0.0, model=model))
    finally:
        await adapter.aclose()
    body = vendor_env.last_call()["body"]
    assert ("temperature" in body) is sent
    if sent:
        assert body["temperature"] == 0.0
    else:
        assert outcome.details["ignored"] == ["temperature"]
