"""How slow the simulated provider is, and how much it lets through.

Latency of an answered call: ``per_call + per_item × items + per_output_token × output
tokens`` seconds (an error answer takes ``per_call``).

Limits are token buckets, as the vendors describe theirs: each budget (requests, input
tokens, output tokens, and input + output tokens together) holds up to its per-minute limit
and refills continuously at ``limit / period_seconds`` per second, starting full.

- A request is admitted only if every bucket holds what it needs: one request; its input
  tokens *without cache reads* (cache writes count, as on current Anthropic models); its
  ``max_tokens`` of output. Otherwise it is answered 429 with an honest ``retry-after``:
  the seconds until every bucket will hold enough (a need larger than a bucket can ever
  hold waits a whole period — the real APIs refuse it the same way).
- Output is charged at ``max_tokens`` when the request starts and corrected to the tokens
  actually produced when it ends (:meth:`TokenBuckets.correct`).
- Every answer, 429s included, carries the vendors' rate-limit headers
  (:func:`anthropic_headers`, :func:`openai_headers`): limit, remaining, and when the
  bucket is full again.

``period_seconds`` is 60 for a real minute; tests and benchmarks shorten it to run the same
job faster (every limit scales by one factor, so ratios are kept).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field

BUDGETS = ("requests", "input_tokens", "output_tokens", "tokens")


class LatencyModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    per_call: float = Field(default=0.0, ge=0.0)
    per_item: float = Field(default=0.0, ge=0.0)
    per_output_token: float = Field(default=0.0, ge=0.0)

    def seconds(self, items: int, output_tokens: int) -> float:
        return self.per_call + self.per_item * items + self.per_output_token * output_tokens


class RateLimits(BaseModel):
    """Per-minute budgets; ``None`` means unlimited. ``tokens_per_minute`` counts input and
    output together (OpenAI's TPM); the input and output budgets are Anthropic's ITPM/OTPM."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(default=None, gt=0)
    input_tokens_per_minute: int | None = Field(default=None, gt=0)
    output_tokens_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(default=None, gt=0)
    period_seconds: float = Field(default=60.0, gt=0.0)

    def limit(self, budget: str) -> int | None:
        value: int | None = getattr(self, f"{budget}_per_minute")
        return value


@dataclass(frozen=True)
class Need:
    """What one request takes from each bucket."""

    input_tokens: int
    max_tokens: int

    def of(self, budget: str) -> int:
        return {
            "requests": 1,
            "input_tokens": self.input_tokens,
            "output_tokens": self.max_tokens,
            "tokens": self.input_tokens + self.max_tokens,
        }[budget]


@dataclass(frozen=True)
class Level:
    """One bucket as the headers report it."""

    limit: int
    remaining: int
    full_in: float  # seconds until the bucket is full again


@dataclass
class TokenBuckets:
    """The simulated account's buckets (one per budget that has a limit)."""

    clock: Callable[[], float] = time.monotonic
    levels: dict[str, float] = field(default_factory=dict)
    updated: float | None = None

    def clear(self) -> None:
        self.levels.clear()
        self.updated = None

    def _refill(self, limits: RateLimits) -> float:
        now = self.clock()
        elapsed = 0.0 if self.updated is None else max(0.0, now - self.updated)
        self.updated = now
        for budget in BUDGETS:
            limit = limits.limit(budget)
            if limit is None:
                self.levels.pop(budget, None)
                continue
            level = self.levels.get(budget, float(limit))
            self.levels[budget] = min(float(limit), level + elapsed * limit / limits.period_seconds)
        return now

    def admit(self, limits: RateLimits, need: Need) -> float | None:
        """Take ``need`` from every bucket and return None, or take nothing and return the
        ``retry-after`` in seconds."""
        self._refill(limits)
        waits = []
        for budget, level in self.levels.items():
            limit = limits.limit(budget)
            assert limit is not None
            wanted = need.of(budget)
            if wanted > limit:
                waits.append(limits.period_seconds)
            elif wanted > level:
                waits.append((wanted - level) * limits.period_seconds / limit)
        if waits:
            return max(waits)
        for budget in self.levels:
            self.levels[budget] -= need.of(budget)
        return None

    def correct(self, limits: RateLimits, reserved: int, produced: int) -> None:
        """Give back the output tokens reserved (``max_tokens``) but not produced."""
        self._refill(limits)
        unused = max(0, reserved - produced)
        for budget in ("output_tokens", "tokens"):
            limit = limits.limit(budget)
            if budget in self.levels and limit is not None:
                self.levels[budget] = min(float(limit), self.levels[budget] + unused)

    def report(self, limits: RateLimits) -> dict[str, Level]:
        self._refill(limits)
        out = {}
        for budget, level in self.levels.items():
            limit = limits.limit(budget)
            assert limit is not None
            full_in = (limit - level) * limits.period_seconds / limit
            out[budget] = Level(limit, max(0, math.floor(level)), max(0.0, full_in))
        return out


def anthropic_headers(levels: dict[str, Level]) -> dict[str, str]:
    """``anthropic-ratelimit-{requests,input-tokens,output-tokens,tokens}-{limit,remaining,
    reset}``; reset is the RFC 3339 time at which the bucket is full again."""
    now = datetime.now(UTC)
    headers: dict[str, str] = {}
    for budget, level in levels.items():
        name = "anthropic-ratelimit-" + budget.replace("_", "-")
        reset = (now + timedelta(seconds=level.full_in)).isoformat(timespec="milliseconds")
        headers[f"{name}-limit"] = str(level.limit)
        headers[f"{name}-remaining"] = str(level.remaining)
        headers[f"{name}-reset"] = reset.replace("+00:00", "Z")
    return headers


def openai_duration(seconds: float) -> str:
    """OpenAI's reset format: ``1s``, ``6m0s``, ``20ms``."""
    if seconds < 1.0:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60.0)
    rest_text = f"{rest:.3f}".rstrip("0").rstrip(".")
    return f"{int(minutes)}m{rest_text}s" if minutes else f"{rest_text}s"


def openai_headers(levels: dict[str, Level]) -> dict[str, str]:
    """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` (OpenAI reports requests
    and combined tokens; reset is the time until the bucket is full again)."""
    headers: dict[str, str] = {}
    for budget, suffix in (("requests", "requests"), ("tokens", "tokens")):
        level = levels.get(budget)
        if level is None:
            continue
        headers[f"x-ratelimit-limit-{suffix}"] = str(level.limit)
        headers[f"x-ratelimit-remaining-{suffix}"] = str(level.remaining)
        headers[f"x-ratelimit-reset-{suffix}"] = openai_duration(level.full_in)
    return headers
