"""The vendors' rate limits as token buckets: what a call needs, what a key allows, how long.

Invariant: **a call goes out only once its key's buckets hold what it needs**, where a key
is one provider account and model class (:class:`LimitKey`: provider + base URL + API-key
fingerprint + model class) and its budgets are per minute, refilled continuously:

    requests        1 per call
    input_tokens    uncached input (cache reads do not count, as on current Anthropic models)
    output_tokens   the call's max_tokens when it starts, corrected to what it produced
    tokens          input (cached too) + output together (OpenAI's TPM)

A call *reserves* its need (a bucket may go below zero: later calls then queue behind it)
and is told how long to wait; a wait longer than the caller will hold a bundle is not
reserved at all, and the bundle goes back to the queue until its turn. Afterwards the
bucket is corrected by what the provider reports (:meth:`Buckets.adjust`) and lowered to
the ``remaining`` its headers say (:meth:`Buckets.sync`). A 429 or an overload pauses the
whole key (:meth:`Buckets.pause`). :class:`MemoryBuckets` keeps the state in this process
(the SQLite queue's shape); :class:`cjllm.provider.redis_limits.RedisBuckets` keeps it in
Redis so every worker process on a key shares one set of buckets.

:func:`estimate_minutes` is the pure answer to "how long do these limits make a job take".
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

BUDGETS = ("requests", "input_tokens", "output_tokens", "tokens")
PER_MINUTE_FIELDS = {
    "requests": "rpm",
    "input_tokens": "itpm",
    "output_tokens": "otpm",
    "tokens": "tpm",
}
_DATE_SUFFIX = re.compile(r"-(\d{8}|\d{4}-\d{2}-\d{2})$")
_CLAUDE_CLASS = re.compile(r"^(claude-(?:opus|sonnet|haiku)-\d+)(?:-\d+)?$")


class RateLimitSetting(BaseModel):
    """Per-minute limits for one provider or model (``CJLLM_RATE_LIMITS``); None = unknown
    (learned from the provider's headers)."""

    model_config = ConfigDict(extra="forbid")

    rpm: int | None = Field(default=None, gt=0)
    itpm: int | None = Field(default=None, gt=0)
    otpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)


@dataclass(frozen=True)
class Limits:
    """Per-minute budgets of one key; a budget that is None is not limited (or not known)."""

    requests: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    tokens: int | None = None

    @classmethod
    def from_setting(cls, setting: RateLimitSetting) -> Limits:
        return cls(setting.rpm, setting.itpm, setting.otpm, setting.tpm)

    def of(self, budget: str) -> int | None:
        value: int | None = getattr(self, budget)
        return value

    def known(self) -> bool:
        return any(self.of(b) is not None for b in BUDGETS)

    def tightest(self, other: Limits) -> Limits:
        """Budget by budget, the lower of two (a known limit beats an unknown one)."""
        values = {}
        for budget in BUDGETS:
            mine, theirs = self.of(budget), other.of(budget)
            values[budget] = (
                theirs if mine is None else mine if theirs is None else min(mine, theirs)
            )
        return Limits(**values)


@dataclass(frozen=True)
class Need:
    """What one call takes: one request, its estimated uncached input tokens, its
    ``max_tokens`` of output, and its whole input (cache reads included) for ``tokens``."""

    input_tokens: int
    output_tokens: int
    requests: int = 1
    prompt_tokens: int | None = None

    def of(self, budget: str) -> int:
        if budget == "tokens":
            prompt = self.input_tokens if self.prompt_tokens is None else self.prompt_tokens
            return prompt + self.output_tokens
        value: int = getattr(self, budget)
        return value

    def fits(self, limits: Limits) -> bool:
        """True when one minute of every budget can hold this need."""
        return all(
            (limit := limits.of(b)) is None or self.of(b) <= limit
            for b in BUDGETS
            if b != "requests"
        )


@dataclass(frozen=True)
class LimitKey:
    """One provider account and model class: the unit the vendors limit."""

    provider: str
    account: str
    model_class: str

    @property
    def id(self) -> str:
        raw = f"{self.provider}\x00{self.account}\x00{self.model_class}".encode()
        return f"{self.provider}:{self.model_class}:{hashlib.sha256(raw).hexdigest()[:16]}"


def account_of(base_url: str, api_key: str | None) -> str:
    """Where calls go and whose key: the base URL and a fingerprint (never the key)."""
    digest = hashlib.sha256((api_key or "").encode()).hexdigest()[:12]
    return f"{base_url.rstrip('/')}#{digest}"


def model_class(model: str) -> str:
    """The class a vendor's limits apply to: Anthropic pools a family's versions
    (``claude-sonnet-4-6`` → ``claude-sonnet-4``); otherwise the model without its date."""
    name = _DATE_SUFFIX.sub("", model)
    match = _CLAUDE_CLASS.match(name)
    return match.group(1) if match else name


def configured_limits(
    settings: Mapping[str, RateLimitSetting], provider: str, model: str
) -> Limits:
    """The ``CJLLM_RATE_LIMITS`` entry for ``provider/model``, else ``provider/class``,
    else ``provider``; no entry → nothing known."""
    for name in (f"{provider}/{model}", f"{provider}/{model_class(model)}", provider):
        setting = settings.get(name)
        if setting is not None:
            return Limits.from_setting(setting)
    return Limits()


def estimate_minutes(
    limits: Limits,
    calls: int,
    input_tokens: int,
    output_tokens: int,
    *,
    prompt_tokens: int | None = None,
    starts_full: bool = True,
) -> float:
    """Minutes the rate limits alone make a job of ``calls`` provider calls take, sending
    ``input_tokens`` uncached input and producing ``output_tokens`` (``prompt_tokens``: the
    whole input, cache reads included, for a combined ``tokens`` budget; defaults to
    ``input_tokens``).

    Each budget of ``L`` per minute refills at ``L`` a minute; a bucket that ``starts_full``
    lets the first ``L`` through at once, so a budget needing ``A`` takes ``max(0, A − L) / L``
    minutes, otherwise ``A / L``. The answer is the largest over the known budgets (0 when
    none is known): a lower bound that latency and retries only add to.
    """
    need = Need(input_tokens, output_tokens, requests=calls, prompt_tokens=prompt_tokens)
    minutes = 0.0
    for budget in BUDGETS:
        limit = limits.of(budget)
        if limit is None:
            continue
        amount = need.of(budget)
        minutes = max(minutes, (max(0, amount - limit) if starts_full else amount) / limit)
    return minutes


# --------------------------------------------------------------------------- bucket state


@dataclass
class BucketState:
    """One key's buckets: levels (may be negative: reserved ahead), the time they were
    last refilled, and the end of a pause (all on one clock, seconds)."""

    levels: dict[str, float] = field(default_factory=dict)
    at: float | None = None
    paused_until: float = 0.0

    def refill(self, limits: Limits, now: float, period: float) -> None:
        """Refill every budget whose limit is known (a bucket starts full); a budget this
        caller does not know is left as it is (another process may know it)."""
        elapsed = 0.0 if self.at is None else max(0.0, now - self.at)
        self.at = now if self.at is None else max(self.at, now)
        for budget in BUDGETS:
            limit = limits.of(budget)
            if limit is not None:
                level = self.levels.get(budget, float(limit))
                self.levels[budget] = min(float(limit), level + elapsed * limit / period)

    def _known(self, limits: Limits) -> list[tuple[str, int]]:
        return [(b, limit) for b in BUDGETS if (limit := limits.of(b)) is not None]

    def reserve(
        self, limits: Limits, need: Need, now: float, period: float, max_wait: float
    ) -> tuple[bool, float]:
        """Take ``need`` if it can go within ``max_wait`` seconds: ``(True, wait)``; else
        take nothing: ``(False, wait)``. A need larger than a budget waits for a full bucket
        (and then takes it below zero) instead of waiting for ever."""
        self.refill(limits, now, period)
        wait = max(0.0, self.paused_until - now)
        for budget, limit in self._known(limits):
            wanted = min(need.of(budget), limit)
            if wanted > self.levels[budget]:
                wait = max(wait, (wanted - self.levels[budget]) * period / limit)
        if wait > max_wait:
            return False, wait
        for budget, _ in self._known(limits):
            self.levels[budget] -= need.of(budget)
        return True, wait

    def adjust(
        self, limits: Limits, deltas: Mapping[str, float], now: float, period: float
    ) -> None:
        """Give back (positive) or take more (negative), never above a full bucket."""
        self.refill(limits, now, period)
        for budget, limit in self._known(limits):
            self.levels[budget] = min(float(limit), self.levels[budget] + deltas.get(budget, 0.0))

    def sync(self, limits: Limits, remaining: Mapping[str, int], now: float, period: float) -> None:
        """Lower each bucket to what the provider says remains (never raise it: calls we
        reserved may not have reached the provider yet)."""
        self.refill(limits, now, period)
        for budget, _ in self._known(limits):
            if budget in remaining:
                self.levels[budget] = min(self.levels[budget], float(remaining[budget]))

    def pause(self, seconds: float, now: float) -> float:
        self.paused_until = max(self.paused_until, now + seconds)
        return self.paused_until - now


class Buckets(Protocol):
    """Where the bucket state lives: this process, or Redis (shared by every worker)."""

    async def reserve(
        self, key: str, limits: Limits, need: Need, max_wait: float
    ) -> tuple[bool, float]: ...

    async def adjust(self, key: str, limits: Limits, deltas: Mapping[str, float]) -> None: ...

    async def sync(self, key: str, limits: Limits, remaining: Mapping[str, int]) -> None: ...

    async def pause(self, key: str, limits: Limits, seconds: float) -> float:
        """Hold every call on ``key`` for ``seconds`` (a longer pause already set wins);
        return the pause left."""
        ...


class MemoryBuckets:
    """The buckets of this process (one worker process per queue, e.g. SQLite)."""

    def __init__(self, period: float = 60.0, clock: Callable[[], float] = time.time) -> None:
        self.period = period
        self._clock = clock
        self.states: dict[str, BucketState] = {}

    def _state(self, key: str) -> BucketState:
        return self.states.setdefault(key, BucketState())

    async def reserve(
        self, key: str, limits: Limits, need: Need, max_wait: float
    ) -> tuple[bool, float]:
        return self._state(key).reserve(limits, need, self._clock(), self.period, max_wait)

    async def adjust(self, key: str, limits: Limits, deltas: Mapping[str, float]) -> None:
        self._state(key).adjust(limits, deltas, self._clock(), self.period)

    async def sync(self, key: str, limits: Limits, remaining: Mapping[str, int]) -> None:
        self._state(key).sync(limits, remaining, self._clock(), self.period)

    async def pause(self, key: str, limits: Limits, seconds: float) -> float:
        return self._state(key).pause(seconds, self._clock())
