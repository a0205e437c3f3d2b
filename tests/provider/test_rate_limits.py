"""The rate-limit arithmetic: needs, limits, estimates, headers, and both bucket stores."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis

from cjllm.provider.rate_headers import read_headers
from cjllm.provider.rate_limits import (
    Buckets,
    LimitKey,
    Limits,
    MemoryBuckets,
    Need,
    RateLimitSetting,
    account_of,
    configured_limits,
    estimate_minutes,
    model_class,
)
from cjllm.provider.redis_limits import RedisBuckets

TIER_1 = Limits(requests=50, input_tokens=30_000, output_tokens=8_000)


def test_estimate_minutes_is_the_tightest_budget_of_a_job() -> None:
    # 200 calls of 1,000 input and 100 output tokens each, at tier-1 limits
    assert estimate_minutes(TIER_1, 200, 200_000, 20_000) == pytest.approx(
        (200_000 - 30_000) / 30_000
    )
    assert estimate_minutes(TIER_1, 200, 200_000, 20_000, starts_full=False) == pytest.approx(
        200_000 / 30_000
    )
    # requests bind when calls are small: 72 calls at 30 a minute, the first 30 at once
    assert estimate_minutes(Limits(requests=30), 72, 72_000, 7_200) == pytest.approx(42 / 30)
    # a combined token budget counts the whole input, cache reads included
    combined = Limits(tokens=10_000)
    assert estimate_minutes(
        combined, 1, 1_000, 1_000, prompt_tokens=29_000, starts_full=False
    ) == pytest.approx(3.0)
    assert estimate_minutes(Limits(), 1_000, 10**9, 10**9) == 0.0


def test_a_need_fits_only_when_one_minute_of_every_budget_holds_it() -> None:
    assert Need(20_000, 7_664).fits(TIER_1)
    assert not Need(20_000, 10_064).fits(TIER_1)  # 25 items × 400 output tokens + 64
    assert not Need(31_000, 100).fits(TIER_1)
    assert Need(10**9, 10**9).fits(Limits(requests=1))


def test_limits_come_from_the_most_specific_setting_and_tighten_with_what_is_learned() -> None:
    settings = {
        "anthropic": RateLimitSetting(rpm=50, itpm=30_000, otpm=8_000),
        "anthropic/claude-haiku-4": RateLimitSetting(rpm=50, itpm=50_000, otpm=10_000),
    }
    assert configured_limits(settings, "anthropic", "claude-sonnet-4-6") == TIER_1
    haiku = configured_limits(settings, "anthropic", "claude-haiku-4-5-20251001")
    assert haiku.input_tokens == 50_000
    assert configured_limits(settings, "openai", "gpt-4.1-mini") == Limits()
    learned = Limits(requests=40, tokens=90_000)
    assert TIER_1.tightest(learned) == Limits(40, 30_000, 8_000, 90_000)


def test_a_key_is_provider_account_and_model_class_and_never_holds_the_api_key() -> None:
    assert model_class("claude-sonnet-4-6") == model_class("claude-sonnet-4-5-20250929")
    assert model_class("claude-sonnet-4-6") != model_class("claude-opus-4-1")
    assert model_class("gpt-4o-2024-08-06") == "gpt-4o"
    account = account_of("https://api.anthropic.com/", "sk-secret-key")
    assert "sk-secret" not in account and account.startswith("https://api.anthropic.com#")
    assert account != account_of("https://api.anthropic.com", "sk-other-key")
    key = LimitKey("anthropic", account, "claude-sonnet-4")
    assert "sk-secret" not in key.id


def test_anthropic_headers_teach_limits_remaining_and_reset() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    reset = (now + timedelta(seconds=12)).isoformat().replace("+00:00", "Z")
    reading = read_headers(
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "49",
            "anthropic-ratelimit-requests-reset": reset,
            "Anthropic-RateLimit-Input-Tokens-Limit": "30000",
            "anthropic-ratelimit-input-tokens-remaining": "0",
            "anthropic-ratelimit-output-tokens-limit": "8000",
            "anthropic-ratelimit-output-tokens-remaining": "6000",
            "anthropic-ratelimit-tokens-limit": "8000",  # the tightest again: not a budget
            "anthropic-ratelimit-tokens-remaining": "0",
        },
        now=now.timestamp(),
    )
    assert reading is not None
    assert reading.limits == TIER_1
    assert reading.remaining == {"requests": 49, "input_tokens": 0, "output_tokens": 6000}
    assert reading.reset_in("requests") == pytest.approx(12.0)
    assert reading.exhausted() == "input_tokens"


def test_openai_headers_teach_requests_and_combined_tokens() -> None:
    reading = read_headers(
        {
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-remaining-requests": "499",
            "x-ratelimit-reset-requests": "120ms",
            "x-ratelimit-limit-tokens": "200000",
            "x-ratelimit-remaining-tokens": "150000",
            "x-ratelimit-reset-tokens": "1m30.5s",
        }
    )
    assert reading is not None
    assert reading.limits == Limits(requests=500, tokens=200_000)
    assert reading.full_in == {"requests": pytest.approx(0.12), "tokens": pytest.approx(90.5)}
    assert read_headers({"content-type": "application/json"}) is None


# --------------------------------------------------------------------------- both stores


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_memory_buckets_queue_callers_behind_a_reservation_and_refill_continuously() -> None:
    clock = Clock()
    buckets = MemoryBuckets(period=60.0, clock=clock)
    limits = Limits(requests=30, input_tokens=30_000, output_tokens=8_000)
    assert await buckets.reserve("k", limits, Need(20_000, 6_000), max_wait=5) == (True, 0.0)
    # the next call's turn is 20 s off (10,000 more input tokens at 500/s): not reserved
    granted, wait = await buckets.reserve("k", limits, Need(20_000, 1_000), max_wait=5)
    assert (granted, wait) == (False, pytest.approx(20.0))
    # a small one fits now; the output bucket, charged at max_tokens, is corrected later
    assert await buckets.reserve("k", limits, Need(1_000, 2_000), max_wait=5) == (True, 0.0)
    await buckets.adjust("k", limits, {"output_tokens": 5_000})  # 6,000 reserved, 1,000 used
    clock.now += 18.0
    granted, wait = await buckets.reserve("k", limits, Need(20_000, 1_000), max_wait=5)
    assert granted and wait == pytest.approx(4.0)  # 9,000 + 18 s × 500 = 18,000 of 20,000
    # a 429 pauses the key; a shorter pause does not cut a longer one
    assert await buckets.pause("k", limits, 30.0) == pytest.approx(30.0)
    assert await buckets.pause("k", limits, 1.0) == pytest.approx(30.0)
    granted, wait = await buckets.reserve("k", limits, Need(1, 1), max_wait=5)
    assert not granted and wait == pytest.approx(30.0)


@pytest.fixture(params=["memory", "redis"])
async def buckets(request: pytest.FixtureRequest) -> AsyncIterator[Buckets]:
    if request.param == "memory":
        yield MemoryBuckets(period=60.0)
        return
    client = Redis.from_url(request.getfixturevalue("redis_url"))
    yield RedisBuckets(client, prefix=f"t-{uuid.uuid4().hex[:8]}", period=60.0)
    await client.aclose()


async def test_both_stores_admit_wait_correct_sync_and_pause_alike(buckets: Buckets) -> None:
    limits = Limits(requests=30, input_tokens=30_000)
    assert await buckets.reserve("k", limits, Need(25_000, 0), max_wait=5) == (True, 0.0)
    granted, wait = await buckets.reserve("k", limits, Need(25_000, 0), max_wait=5)
    assert not granted and wait == pytest.approx(40.0, abs=0.1)  # 20,000 short at 500/s
    await buckets.adjust("k", limits, {"input_tokens": 20_000})  # used 5,000, not 25,000
    assert (await buckets.reserve("k", limits, Need(25_000, 0), max_wait=5))[0]
    # the provider says less remains than we think: we believe it
    await buckets.sync("k", limits, {"requests": 0})
    granted, wait = await buckets.reserve("k", limits, Need(1, 0), max_wait=5)
    assert granted and wait == pytest.approx(2.0, abs=0.1)  # one request per 2 s
    assert await buckets.pause("other", limits, 3.0) == pytest.approx(3.0, abs=0.1)
    assert not (await buckets.reserve("other", limits, Need(1, 0), max_wait=1))[0]


async def test_redis_buckets_are_one_set_for_every_process(redis_url: str) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    clients = [Redis.from_url(redis_url) for _ in range(2)]
    stores = [RedisBuckets(c, prefix=prefix, period=60.0) for c in clients]
    limits = Limits(requests=10)
    results = await asyncio.gather(
        *(stores[i % 2].reserve("k", limits, Need(0, 0), max_wait=0) for i in range(20))
    )
    assert sum(granted for granted, _ in results) == 10
    for client in clients:
        await client.aclose()


async def test_a_process_that_has_not_learned_the_limits_paces_by_the_ones_others_learned(
    redis_url: str,
) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    clients = [Redis.from_url(redis_url) for _ in range(2)]
    learned, fresh = (RedisBuckets(c, prefix=prefix, period=60.0) for c in clients)
    limits = Limits(requests=10)
    await learned.sync("k", limits, {"requests": 0})  # an answer said: nothing left
    granted, wait = await fresh.reserve("k", Limits(), Need(0, 0), max_wait=0)
    assert not granted and wait == pytest.approx(6.0, abs=0.1)  # one request per 6 s
    for client in clients:
        await client.aclose()
