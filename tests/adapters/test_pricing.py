"""The dated price table: lookup, the cost formula, overrides and bad files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cjllm.provider.calls import CallUsage
from cjllm.provider.pricing import PriceTableError, load_price_table, packaged_price_table


def test_the_packaged_table_is_dated_and_prices_both_vendors() -> None:
    table = packaged_price_table()
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", table.as_of)
    assert table.price_for("claude-sonnet-4-6") is not None
    assert table.price_for("gpt-4.1-mini") is not None


@pytest.mark.parametrize(
    ("model", "priced_as"),
    [
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("gpt-4.1-2025-04-14", "gpt-4.1"),
        ("o3-mini-2025-01-31", "o3-mini"),
    ],
)
def test_a_dated_snapshot_is_priced_as_its_family(model: str, priced_as: str) -> None:
    table = packaged_price_table()
    assert table.price_for(model) == table.models[priced_as]


@pytest.mark.parametrize("model", ["claude-opus-4-9", "gpt-4.1x", "llama-3.1-8b-instruct", ""])
def test_an_unknown_model_is_not_guessed(model: str) -> None:
    table = packaged_price_table()
    assert table.price_for(model) is None
    cost = table.cost(model, CallUsage(input_tokens=1000, output_tokens=1000))
    assert (cost.total, cost.priced) == (0.0, False)


def test_cost_adds_every_kind_of_token_at_its_rate() -> None:
    table = packaged_price_table()
    usage = CallUsage(
        input_tokens=1_000_000,
        output_tokens=1_000_000,
        cache_creation_input_tokens=3_000_000,
        cache_read_input_tokens=1_000_000,
    )
    cost = table.cost("claude-sonnet-4-6", usage, cache_write_1h_tokens=1_000_000)
    assert cost.input == pytest.approx(3.0)
    assert cost.output == pytest.approx(15.0)
    assert cost.cache_write == pytest.approx(2 * 3.75 + 6.0)
    assert cost.cache_read == pytest.approx(0.3)
    assert cost.total == pytest.approx(3.0 + 15.0 + 13.5 + 0.3)


def test_an_override_file_replaces_and_adds_models(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    models = {
        "gpt-4.1-mini": {"input": 1, "output": 2},
        "my-local-model": {"input": 0, "output": 0},
    }
    path.write_text(json.dumps({"as_of": "2031-02-03", "models": models}))
    table = load_price_table(path)
    assert table.as_of == "2031-02-03"
    mini = table.price_for("gpt-4.1-mini")
    assert mini is not None and (mini.input, mini.output, mini.cache_read) == (1.0, 2.0, 1.0)
    assert table.price_for("my-local-model") is not None
    assert (
        table.price_for("claude-sonnet-4-6") == packaged_price_table().models["claude-sonnet-4-6"]
    )
    assert table.sources[-1] == str(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not valid JSON"),
        ('{"models": {}}', "as_of"),
        ('{"as_of": "2030-01-01", "models": {"m": {"input": 1}}}', "'output'"),
        ('{"as_of": "2030-01-01", "models": {"m": {"input": 1, "output": -1}}}', "negative"),
        (
            '{"as_of": "2030-01-01", "models": {"m": {"input": 1, "output": 1, "ouput": 1}}}',
            "ouput",
        ),
        ('{"as_of": "2030-01-01", "models": {"m": {"input": "1", "output": 1}}}', "number"),
    ],
)
def test_a_bad_override_file_names_the_problem(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "prices.json"
    path.write_text(content)
    with pytest.raises(PriceTableError, match=message) as caught:
        load_price_table(path)
    assert str(path) in str(caught.value)


def test_a_missing_override_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PriceTableError, match="cannot read"):
        load_price_table(tmp_path / "absent.json")


def test_a_batch_line_costs_the_batch_multiplier_times_a_call(tmp_path: Path) -> None:
    usage = CallUsage(
        input_tokens=1_000_000,
        output_tokens=1_000_000,
        cache_creation_input_tokens=1_000_000,
        cache_read_input_tokens=1_000_000,
    )
    table = packaged_price_table()
    assert table.batch_multiplier == 0.5
    full, batch = (
        table.cost("claude-sonnet-4-6", usage),
        table.cost("claude-sonnet-4-6", usage, batch=True),
    )
    assert batch.total == pytest.approx(full.total / 2)
    assert (batch.input, batch.cache_read) == pytest.approx((full.input / 2, full.cache_read / 2))
    override = tmp_path / "prices.json"
    override.write_text(json.dumps({"as_of": "2031-01-01", "batch_multiplier": 0.6, "models": {}}))
    assert load_price_table(override).batch_multiplier == 0.6
    override.write_text(json.dumps({"as_of": "2031-01-01", "models": {}}))
    assert load_price_table(override).batch_multiplier == 0.5
    override.write_text(json.dumps({"as_of": "2031-01-01", "batch_multiplier": 2, "models": {}}))
    with pytest.raises(PriceTableError, match="batch_multiplier"):
        load_price_table(override)
