"""`cjllm rank --estimate`: calls, tokens and cost per strategy, before anything is called."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cjllm.estimate import estimate_run
from cjllm.preflight import RankRequest, preflight
from cjllm.strategies import BatchingStrategy
from tests.e2e.cli import EXAMPLES, run


def figures(tmp_path: Path, **changes: object):  # type: ignore[no-untyped-def]
    request = RankRequest(EXAMPLES, tmp_path / "out", **changes)  # type: ignore[arg-type]
    return estimate_run(preflight(request, {}, credentials=False))


def test_calls_follow_the_strategy(tmp_path: Path) -> None:
    # 18 essays x 10 per essay / 2 = 90 comparisons: rounds of 25, 25, 25, 15 (every essay
    # once would be 9; a round is never smaller than one full call, 25)
    rnd = figures(tmp_path, provider="anthropic")
    assert (rnd.comparisons, rnd.rounds) == (90, 4)
    assert rnd.provider_calls == 4  # each round one call
    capped = figures(tmp_path, provider="anthropic", bundle_size=10)
    assert (capped.rounds, capped.provider_calls) == (9, 9)  # the cap sets the round size
    per = figures(tmp_path, provider="anthropic", strategy=BatchingStrategy.PER_REQUEST)
    assert per.provider_calls == 90
    over = figures(
        tmp_path, provider="anthropic", strategy=BatchingStrategy.SERIAL_OVERRIDE, bundle_size=4
    )
    assert over.provider_calls == 3 * math.ceil(25 / 4) + math.ceil(15 / 4)
    # the shared prefix is sent once per call: fewer calls, fewer input tokens
    assert rnd.input_tokens < over.input_tokens < per.input_tokens
    assert rnd.output_tokens == per.output_tokens == 90 * 110


def test_cost_at_list_and_batch_prices(tmp_path: Path) -> None:
    priced = figures(tmp_path, provider="anthropic", model="claude-sonnet-4-6")
    assert priced.list_cost is not None and priced.list_cost > 0
    assert priced.batch_cost == pytest.approx(priced.list_cost / 2)
    assert "at batch prices" in " ".join(priced.lines())
    unknown = figures(tmp_path, provider="openai", model="my-local-model")
    assert unknown.list_cost is None and "unpriced" in " ".join(unknown.lines())
    mock = figures(tmp_path, provider="mock")
    assert mock.list_cost == 0.0 and "calls no LLM" in " ".join(mock.lines())


def test_estimate_needs_no_credentials_and_leaves_no_out_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run(
        "rank",
        str(EXAMPLES),
        "--provider",
        "anthropic",
        "--estimate",
        "--out",
        str(out),
        extra_env={"HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    said = " ".join(proc.stdout.split())
    assert "provider calls 4" in said and "no LLM was called" in said
    assert not out.exists()


def test_time_under_the_providers_rate_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unknown = figures(tmp_path, provider="anthropic", strategy=BatchingStrategy.PER_REQUEST)
    assert unknown.rate_limit_minutes is None and "unknown" in " ".join(unknown.lines())
    # 90 calls at 10 requests a minute, the first 10 at once: 8 minutes
    monkeypatch.setenv("CJLLM_RATE_LIMITS", '{"anthropic": {"rpm": 10}}')
    limited = figures(tmp_path, provider="anthropic", strategy=BatchingStrategy.PER_REQUEST)
    assert limited.rate_limit_minutes == pytest.approx(8.0)
    assert "at least 8.0 minutes" in " ".join(limited.lines())
    bundled = figures(tmp_path, provider="anthropic")
    assert bundled.rate_limit_minutes == 0.0  # 4 calls fit in the first minute's 10


def test_the_pool_layout_is_estimated_as_the_run_makes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One call per group, each essay once in it: as many calls as the mock run made, and
    input tokens within a tenth of what it sent (the mock counts characters ÷ 4)."""
    from cjllm.rank import prepare, run_until_done

    items = figures(tmp_path, provider="mock")
    monkeypatch.setenv("CJLLM_BUNDLE_LAYOUT", "pool")
    # the run must spend the budget the estimate plans: the mock judge is nearly certain, so
    # its reliability would reach the default target (0.9) before then
    monkeypatch.setenv("CJLLM_TARGET_RELIABILITY", "0.999")
    pooled = figures(tmp_path, provider="mock")
    assert pooled.input_tokens < items.input_tokens / 2
    outcome = run_until_done(prepare(RankRequest(EXAMPLES, tmp_path / "run", provider="mock")))
    result = outcome.result
    assert result.comparisons_requested == pooled.comparisons == 90
    assert result.provider_calls == pooled.provider_calls
    sent = result.token_usage.prompt_tokens
    assert abs(pooled.input_tokens - sent) < sent / 10


def test_a_batch_job_strategy_is_estimated_in_lines_and_turnarounds(tmp_path: Path) -> None:
    serial = figures(tmp_path, provider="anthropic")
    batch = figures(tmp_path, provider="anthropic", strategy=BatchingStrategy.ASYNC_BATCH)
    assert batch.comparisons == serial.comparisons == 90
    # 18 essays, budget 90: rounds of 25 (one full call) against 45, 25 and 20
    assert (serial.rounds, batch.rounds) == (4, 3)
    # lines of at most CJLLM_BATCH_ITEMS_PER_LINE (10), not calls of up to 25
    assert (serial.provider_calls, batch.provider_calls) == (4, 5 + 3 + 2)
    assert "turnaround" in " ".join(batch.lines())
    per_line = figures(
        tmp_path, provider="anthropic", strategy=BatchingStrategy.ASYNC_BATCH, bundle_size=1
    )
    assert per_line.provider_calls == 90
