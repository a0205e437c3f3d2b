"""What only the Anthropic adapter does: cache breakpoints, TTLs, the tool-use path."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from cjllm.provider.adapters.anthropic import AnthropicAdapter, cache_breakpoints
from cjllm.provider.calls import SharedBlock
from cjllm.provider.pricing import load_price_table
from cjllm.settings import ProviderSettings
from tests.adapters.bundles import bundle, ids
from tests.sim.running import SimControl

OLD_MODEL = "claude-3-5-haiku-20241022"  # no structured outputs: answers through a tool


@pytest.fixture
async def anthropic(vendor_env: SimControl) -> AsyncIterator[AnthropicAdapter]:
    adapter = AnthropicAdapter.from_settings(ProviderSettings())
    yield adapter
    await adapter.aclose()


def block(ttl: str | None) -> SharedBlock:
    return SharedBlock("x", cacheable=ttl is not None, ttl=ttl or "5m")


@pytest.mark.parametrize(
    ("ttls", "n_system", "expected"),
    [
        ([None], 1, {}),
        (["5m"], 1, {0: "5m"}),
        (["5m", "5m", "5m", "5m", "5m", "5m"], 3, {2: "5m", 5: "5m"}),
        (["1h", "1h", "5m", "5m"], 2, {1: "1h", 3: "5m"}),
        (["1h", "5m", "1h", "5m"], 2, {0: "1h", 1: "5m", 3: "5m"}),  # 1h after 5m → 5m
        (["5m", None, "1h"], 1, {0: "5m", 2: "5m"}),
        (["1h", None, None], 3, {0: "1h"}),
    ],
)
def test_cache_breakpoints_respect_the_limit_and_ttl_order(
    ttls: list[str | None], n_system: int, expected: dict[int, str]
) -> None:
    marks = cache_breakpoints([block(t) for t in ttls], n_system)
    assert marks == expected
    assert len(marks) <= 4
    ordered = [marks[i] for i in sorted(marks)]
    assert ordered == sorted(ordered, key=lambda t: t != "1h")  # every 1h before every 5m


async def test_the_shared_prefix_carries_cache_control_and_the_items_do_not(
    anthropic: AnthropicAdapter, sim: SimControl
) -> None:
    await anthropic.call_bundle(bundle(2, ttl="1h"))
    body = sim.last_call()["body"]
    assert body["system"][-1]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    shared, instructions, items = body["messages"][0]["content"]
    assert shared["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert "cache_control" not in instructions and "cache_control" not in items
    assert items["text"].startswith("<<ITEM ")


async def test_one_hour_cache_writes_are_priced_at_the_one_hour_rate(
    anthropic: AnthropicAdapter,
) -> None:
    outcome = await anthropic.call_bundle(bundle(2, ttl="1h"))
    written = outcome.usage.cache_creation_input_tokens
    assert written > 0
    assert outcome.details["cache_creation"] == {
        "ephemeral_1h_input_tokens": written,
        "ephemeral_5m_input_tokens": 0,
    }
    price = load_price_table().price_for(outcome.model)
    assert price is not None
    expected = (
        outcome.usage.input_tokens * price.input
        + outcome.usage.output_tokens * price.output
        + written * price.cache_write_1h
    ) / 1e6
    assert outcome.cost == pytest.approx(expected)


async def test_models_without_structured_output_answer_through_a_forced_tool(
    anthropic: AnthropicAdapter, sim: SimControl
) -> None:
    call = bundle(4, model=OLD_MODEL)
    outcome = await anthropic.call_bundle(call)
    body = sim.last_call()["body"]
    assert body["tool_choice"] == {"type": "tool", "name": body["tools"][0]["name"]}
    assert "output_config" not in body
    assert set(outcome.reconciled.answers) == ids(call)
    assert outcome.details["output_mode"] == "tool_use"
    assert outcome.stop_reason == "tool_use"


async def test_the_tool_path_salvages_a_truncated_answer(
    anthropic: AnthropicAdapter, sim: SimControl
) -> None:
    sim.configure(faults={"max_tokens": 1.0})
    call = bundle(4, model=OLD_MODEL)
    outcome = await anthropic.call_bundle(call)
    kept = {item.custom_id for item in call.items[:2]}
    assert set(outcome.reconciled.answers) == kept
    assert outcome.reconciled.missing == ids(call) - kept


async def test_the_tool_use_models_are_a_setting(
    vendor_env: SimControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CJLLM_ANTHROPIC_TOOL_USE_MODELS", '["claude-haiku-4-5"]')
    adapter = AnthropicAdapter.from_settings(ProviderSettings())
    try:
        await adapter.call_bundle(bundle(1, model="claude-haiku-4-5"))
        assert "tools" in vendor_env.last_call()["body"]
        await adapter.call_bundle(bundle(1, model=OLD_MODEL))
        assert "output_config" in vendor_env.last_call()["body"]
    finally:
        await adapter.aclose()
