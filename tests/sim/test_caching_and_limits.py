"""The sim's prompt caches, rate limiter, latency model and fault draws, on a fake clock."""

from __future__ import annotations

import random

import pytest

from cjllm.sim.faults import FAULTS, FaultRates, draw, parse_fault, spoil_entries
from cjllm.sim.limits import LatencyModel, RateLimiter, RateLimits
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


def test_the_request_limit_slides_over_a_minute() -> None:
    clock = Clock()
    limiter, limits = RateLimiter(clock=clock), RateLimits(requests_per_minute=2)
    assert limiter.admit(limits, 10) is None
    clock.now += 10
    assert limiter.admit(limits, 10) is None
    assert limiter.admit(limits, 10) == 50.0  # the first request leaves the window in 50 s
    clock.now += 50
    assert limiter.admit(limits, 10) is None


def test_the_token_limit_counts_what_was_spent() -> None:
    clock = Clock()
    limiter, limits = RateLimiter(clock=clock), RateLimits(tokens_per_minute=1000)
    assert limiter.admit(limits, 600) is None
    limiter.spend(700)
    clock.now += 15
    assert limiter.admit(limits, 400) == 45.0
    assert limiter.admit(limits, 2000) == 60.0  # can never fit: a whole window
    assert limiter.budget(limits).tokens_left == 300


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
