"""The sim's prompt caches, rate limiter, latency model and fault draws, on a fake clock."""

from __future__ import annotations

import random

import pytest

from cjllm.sim.faults import FAULTS, FaultRates, draw, parse_fault, spoil_entries
from cjllm.sim.limits import (
    LatencyModel,
    Need,
    RateLimits,
    TokenBuckets,
    anthropic_headers,
    openai_duration,
    openai_headers,
)
from cjllm.sim.tokens import PromptCache, count_tokens


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


BIG = "x" * 8000  # 2000 tokens


def test_tokens_are_a_quarter_of_the_characters_rounded_up() -> None:
    assert (count_tokens(""), count_tokens("abcd"), count_tokens("abcde")) == (1, 1, 2)


def test_an_anthropic_prefix_is_written_then_read_until_its_ttl_lapses() -> None:
    clock = Clock()
    cache = PromptCache(clock=clock)
    blocks = [(BIG, "5m"), ("items", None)]
    first = cache.anthropic("m", blocks)
    assert (first.read, first.written_5m) == (0, 2000)
    clock.now += 299
    assert cache.anthropic("m", blocks).read == 2000  # a hit refreshes the entry
    clock.now += 299
    assert cache.anthropic("m", blocks).read == 2000
    clock.now += 301
    assert cache.anthropic("m", blocks).read == 0
    assert cache.anthropic("other-model", blocks).read == 0


def test_anthropic_breakpoints_write_each_segment_with_its_ttl() -> None:
    clock = Clock()
    cache = PromptCache(clock=clock)
    blocks = [(BIG, "1h"), (BIG, "5m"), ("items", None)]
    first = cache.anthropic("m", blocks)
    assert (first.written_1h, first.written_5m, first.read) == (2000, 2000, 0)
    clock.now += 600  # the 5m segment lapsed, the 1h one did not
    second = cache.anthropic("m", blocks)
    assert (second.read, second.written_5m, second.written_1h) == (2000, 2000, 0)


def test_a_prefix_below_the_minimum_is_never_cached() -> None:
    cache = PromptCache(min_tokens=1024, clock=Clock())
    blocks = [("short" * 10, "5m"), ("items", None)]
    for _ in range(2):
        use = cache.anthropic("m", blocks)
        assert (use.read, use.written) == (0, 0)


def test_openai_caches_the_longest_seen_prefix_in_128_token_steps() -> None:
    clock = Clock()
    cache = PromptCache(clock=clock)
    shared = "p" * 6000  # 1500 tokens
    assert cache.openai("m", shared + "first question") == 0
    assert cache.openai("m", shared + "second question") == 1408  # 11 steps of 128
    clock.now += 601
    assert cache.openai("m", shared + "third question") == 0


def test_the_request_bucket_refills_continuously_and_says_when_to_come_back() -> None:
    clock = Clock()
    buckets, limits = TokenBuckets(clock=clock), RateLimits(requests_per_minute=30)
    for _ in range(30):  # starts full
        assert buckets.admit(limits, Need(10, 10)) is None
    assert buckets.admit(limits, Need(10, 10)) == pytest.approx(2.0)  # one request per 2 s
    clock.now += 1.0
    assert buckets.admit(limits, Need(10, 10)) == pytest.approx(1.0)
    clock.now += 1.0
    assert buckets.admit(limits, Need(10, 10)) is None


def test_input_and_output_buckets_charge_max_tokens_then_correct_it() -> None:
    clock = Clock()
    limits = RateLimits(input_tokens_per_minute=30_000, output_tokens_per_minute=8_000)
    buckets = TokenBuckets(clock=clock)
    assert buckets.admit(limits, Need(20_000, 6_000)) is None
    # the output bucket holds 2,000 until the call ends; 3,000 more need 7.5 s of refill
    assert buckets.admit(limits, Need(1_000, 3_000)) == pytest.approx(7.5)
    buckets.correct(limits, reserved=6_000, produced=1_000)  # 5,000 come back
    assert buckets.admit(limits, Need(1_000, 3_000)) is None
    assert buckets.admit(limits, Need(30_001, 1)) == 60.0  # can never fit: a whole period
    report = buckets.report(limits)
    assert (report["input_tokens"].remaining, report["output_tokens"].remaining) == (9_000, 4_000)
    assert report["input_tokens"].full_in == pytest.approx(42.0)  # 21,000 at 500/s


def test_a_shorter_period_scales_every_limit_by_one_factor() -> None:
    clock = Clock()
    limits = RateLimits(requests_per_minute=30, period_seconds=6.0)
    buckets = TokenBuckets(clock=clock)
    for _ in range(30):
        buckets.admit(limits, Need(1, 1))
    assert buckets.admit(limits, Need(1, 1)) == pytest.approx(0.2)


def test_the_headers_report_limit_remaining_and_reset_in_each_vendors_shape() -> None:
    clock = Clock()
    limits = RateLimits(
        requests_per_minute=50, tokens_per_minute=90_000, input_tokens_per_minute=30_000
    )
    buckets = TokenBuckets(clock=clock)
    buckets.admit(limits, Need(3_000, 1_000))
    levels = buckets.report(limits)
    anthropic = anthropic_headers(levels)
    assert anthropic["anthropic-ratelimit-requests-limit"] == "50"
    assert anthropic["anthropic-ratelimit-requests-remaining"] == "49"
    assert anthropic["anthropic-ratelimit-input-tokens-remaining"] == "27000"
    assert anthropic["anthropic-ratelimit-input-tokens-reset"].endswith("Z")
    openai = openai_headers(levels)
    assert openai["x-ratelimit-remaining-tokens"] == "86000"
    assert openai["x-ratelimit-reset-requests"] == "1.2s"
    assert "x-ratelimit-limit-input-tokens" not in openai
    assert (openai_duration(0.02), openai_duration(360.0)) == ("20ms", "6m0s")


def test_latency_grows_with_items_and_output_tokens() -> None:
    model = LatencyModel(per_call=0.5, per_item=0.1, per_output_token=0.01)
    assert model.seconds(items=10, output_tokens=100) == pytest.approx(0.5 + 1.0 + 1.0)


def test_fault_options_parse_and_reject_nonsense() -> None:
    assert parse_fault("overloaded=0.05") == ("overloaded", 0.05)
    assert parse_fault("max-tokens=1") == ("max_tokens", 1.0)
    for bad in ("overloaded", "bogus=0.1", "overloaded=2", "overloaded=x"):
        with pytest.raises(ValueError):
            parse_fault(bad)


def test_at_most_one_call_fault_and_exclusive_answer_faults() -> None:
    rates = FaultRates(**dict.fromkeys(FAULTS, 1.0))
    assert draw(rates, random.Random(0)) == {"rate_limited"}
    only_answers = FaultRates(**{name: 1.0 for name in FAULTS if name != "rate_limited"})
    assert draw(only_answers, random.Random(0)) == {"overloaded"}
    rates = FaultRates(malformed_json=1.0, refusal=1.0, missing_item=1.0)
    assert draw(rates, random.Random(0)) == {"malformed_json"}
    rates = FaultRates(missing_item=1.0, unknown_id=1.0)
    assert draw(rates, random.Random(0)) == {"missing_item", "unknown_id"}


def test_spoiled_entries_lose_duplicate_and_gain_ids() -> None:
    entries = [{"custom_id": f"i{n}", "winner": "Essay A"} for n in range(4)]
    spoiled = spoil_entries(entries, {"missing_item", "duplicate_id", "invalid_item"})
    ids = [e["custom_id"] for e in spoiled]
    assert ids == ["i0", "i1", "i3", "i3"]
    assert spoiled[0]["winner"] == "Essay C"
    assert spoiled[-1]["winner"] == "Essay B"
    assert entries[0]["winner"] == "Essay A"  # the judge's own entries are untouched
