"""The rate limiter in front of every provider call: admit, call, correct.

    reserve the call's need ──> wait its turn ──> call ──> correct by the usage reported,
       │ (turn further off than                    │        lower to the headers' remaining
       │  rate_limit_max_wait_seconds)             └──> 429 / overload: pause the whole key
       └──> back to the queue until its turn

Invariant: **no call goes to a provider before its key's buckets admitted it**
(:mod:`cjllm.provider.rate_limits`), and a refusal for a limit — a 429, an overload, or a
turn too far off — never costs a comparison an attempt: it waits, and only its TTL ends the
wait (with an error code naming the rate limit, :func:`expiry_code`). A 429 that says the
account is out of credit (``insufficient_quota``) is not a rate limit: it fails at once,
and the key's next calls fail fast, unsent, for :data:`QUOTA_RECHECK_SECONDS`.

Limits come from ``CJLLM_RATE_LIMITS`` and are learned from every answer's headers
(:mod:`cjllm.provider.rate_headers`); the tighter of the two applies. This process keeps a
tally per key (requests sent by outcome, tokens, time held back) for metrics, the run
summary and :meth:`Limiter.pacing`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from cjllm.provider.bundling import call_input_tokens
from cjllm.provider.calls import BundleCall, CallOutcome, LLMAdapter, ProviderCallError
from cjllm.provider.metrics import ProviderMetrics
from cjllm.provider.rate_headers import Reading, read_headers
from cjllm.provider.rate_limits import (
    BUDGETS,
    Buckets,
    LimitKey,
    Limits,
    MemoryBuckets,
    Need,
    configured_limits,
    estimate_minutes,
    model_class,
)
from cjllm.settings import ProviderSettings

log = logging.getLogger(__name__)

WAIT_CODE = "rate_limit_wait"
"""A bundle sent back to the queue until the limiter's turn for it comes."""
LIMIT_CODES = frozenset({"rate_limited", "overloaded", WAIT_CODE})
QUOTA_CODE = "insufficient_quota"
QUOTA_RECHECK_SECONDS = 60.0
PAUSE_CAP_SECONDS = 60.0


class LimiterUnavailable(Exception):
    """The shared bucket state (Redis) could not be reached; nothing was reserved."""


def costs_attempt(code: str) -> bool:
    """False for a refusal for a limit: the comparison did nothing wrong and waits."""
    return code not in LIMIT_CODES


def expiry_code(last_error: str | None) -> str:
    """The error code of an item that outlived its TTL: ``rate_limited`` or ``overloaded``
    when that is what it was last waiting for, else ``ttl_expired``."""
    head = (last_error or "").split(":", 1)[0]
    if head in ("rate_limited", WAIT_CODE):
        return "rate_limited"
    return "overloaded" if head == "overloaded" else "ttl_expired"


@dataclass
class Tally:
    """One key's traffic from this process."""

    key: LimitKey
    model: str
    sent: Counter[str] = field(default_factory=Counter)
    calls_answered: int = 0
    items_answered: int = 0
    input_tokens: int = 0  # uncached
    prompt_tokens: int = 0  # cache reads included
    output_tokens: int = 0
    cache_reads: bool = False
    refusals: int = 0  # 429s and overloads in a row


@dataclass(frozen=True)
class Pacing:
    """What the limiter is doing, for a progress display and the run summary."""

    waiting: bool
    resume_in: float
    held_back_seconds: float
    requests: dict[str, int]
    finish_in: float | None
    out_of_quota: str | None = None

    @property
    def requests_sent(self) -> int:
        return sum(self.requests.values())


Send = Callable[[LLMAdapter, BundleCall], Awaitable[CallOutcome]]


class Limiter:
    """Paces every call of this process by its key's limits (see the module docstring)."""

    def __init__(
        self,
        settings: ProviderSettings,
        metrics: ProviderMetrics,
        buckets: Buckets | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.buckets = buckets or MemoryBuckets(settings.rate_limit_period_seconds)
        self._clock = clock
        self._learned: dict[str, Limits] = {}
        self._tallies: dict[str, Tally] = {}
        self._quota: dict[str, tuple[float, ProviderCallError]] = {}
        self._quota_message: str | None = None
        self._held_until = 0.0
        self._held_total = 0.0

    # ------------------------------------------------------------------ what a call needs

    def key(self, adapter: LLMAdapter, model: str) -> LimitKey:
        return LimitKey(adapter.name, adapter.account, model_class(model))

    def limits(self, key: LimitKey, model: str) -> Limits:
        """Configured limits, tightened by what the key's headers said."""
        configured = configured_limits(self.settings.rate_limits, key.provider, model)
        return configured.tightest(self._learned.get(key.id, Limits()))

    def need(self, key: LimitKey, call: BundleCall) -> Need:
        """The call's estimated need; its cacheable prefix counts as input until the key has
        shown cache reads."""
        tally = self._tallies.get(key.id)
        cached = tally is not None and tally.cache_reads
        return Need(
            input_tokens=call_input_tokens(call, cached=cached),
            output_tokens=call.max_output_tokens(self.settings.max_output_tokens_per_item),
            prompt_tokens=call_input_tokens(call),
        )

    def items_that_fit(self, adapter: LLMAdapter, call: BundleCall) -> int:
        """How many of the call's items (from the first) one minute of its key's budgets
        can hold; at least one."""
        key = self.key(adapter, call.model)
        limits = self.limits(key, call.model)
        n = len(call.items)
        if limits.known():
            while n > 1 and not self.need(key, replace(call, items=call.items[:n])).fits(limits):
                n -= 1
        return n

    # ------------------------------------------------------------------ one call

    async def send(self, adapter: LLMAdapter, call: BundleCall, send: Send) -> CallOutcome:
        """Admit ``call``, make it with ``send``, and correct the buckets by its answer.

        Raises :class:`ProviderCallError`: ``rate_limit_wait`` when its turn is further off
        than ``rate_limit_max_wait_seconds`` (``retry_after`` = when), or the call's own
        error — a 429 or an overload with ``retry_after`` set to the key's pause."""
        key = self.key(adapter, call.model)
        limits = self.limits(key, call.model)
        tally = self._tallies.setdefault(key.id, Tally(key, call.model))
        self._fail_fast(key)
        need = self.need(key, call)
        try:
            granted, wait = await self.buckets.reserve(
                key.id, limits, need, self.settings.rate_limit_max_wait_seconds
            )
        except LimiterUnavailable as exc:
            raise ProviderCallError(WAIT_CODE, str(exc), retryable=True, retry_after=1.0) from exc
        self._hold(wait)
        self.metrics.rate_limit_wait.labels(key.provider).observe(wait)
        if not granted:
            raise ProviderCallError(
                WAIT_CODE,
                f"waiting {wait:.1f}s for the provider's rate limit "
                f"({key.provider} {key.model_class})",
                retryable=True,
                retry_after=wait,
                details={"provider": key.provider, "model_class": key.model_class},
            )
        try:
            if wait > 0:
                await asyncio.sleep(wait)
        except asyncio.CancelledError:  # never sent: give the reservation back
            await asyncio.shield(self._adjust(key, limits, {b: need.of(b) for b in BUDGETS}))
            raise
        try:
            outcome = await send(adapter, call)
        except ProviderCallError as exc:
            tally.sent[exc.code] += 1
            await self._refused(key, limits, need, exc, tally)
            raise
        tally.sent["ok"] += 1
        await self._answered(key, limits, need, outcome, tally, len(call.items))
        return outcome

    def _fail_fast(self, key: LimitKey) -> None:
        known = self._quota.get(key.id)
        if known is None:
            return
        until, exc = known
        if self._clock() >= until:
            del self._quota[key.id]
            return
        raise ProviderCallError(
            exc.code,
            f"{exc.message} (not sent: the account had no quota "
            f"{self._clock() - (until - QUOTA_RECHECK_SECONDS):.0f}s ago)",
            retryable=False,
            status=exc.status,
            details={**exc.details, "sent": False},
        )

    async def _answered(
        self,
        key: LimitKey,
        limits: Limits,
        need: Need,
        outcome: CallOutcome,
        tally: Tally,
        items: int,
    ) -> None:
        usage = outcome.usage
        used = {
            "requests": 1,
            "input_tokens": usage.input_tokens + usage.cache_creation_input_tokens,
            "output_tokens": usage.output_tokens,
            "tokens": usage.prompt_tokens + usage.output_tokens,
        }
        await self._adjust(key, limits, {b: need.of(b) - used[b] for b in BUDGETS})
        await self._learn(key, read_headers(outcome.rate_headers, self._clock()))
        tally.calls_answered += 1
        tally.items_answered += items
        tally.input_tokens += used["input_tokens"]
        tally.prompt_tokens += usage.prompt_tokens
        tally.output_tokens += usage.output_tokens
        tally.cache_reads = tally.cache_reads or usage.cache_read_input_tokens > 0
        tally.refusals = 0
        for budget, amount in used.items():
            label = self.metrics.model_label(key.model_class)
            self.metrics.rate_limit_used.labels(key.provider, label, budget).inc(amount)

    async def _refused(
        self, key: LimitKey, limits: Limits, need: Need, exc: ProviderCallError, tally: Tally
    ) -> None:
        """Learn from an error answer; a 429 or an overload pauses the key (and is given
        back its reservation: the provider did not take it), no quota fails the key fast.
        A 429 for a call larger than a minute of the limits it just taught does not pause:
        the bundle is split before it goes again."""
        reading = read_headers(exc.rate_headers, self._clock())
        if exc.code in ("rate_limited", "overloaded"):
            await self._adjust(key, limits, {b: need.of(b) for b in BUDGETS})
        await self._learn(key, reading)
        if exc.code == QUOTA_CODE:
            self._quota[key.id] = (self._clock() + QUOTA_RECHECK_SECONDS, exc)
            self._quota_message = exc.message
            self.metrics.rate_limited.labels(key.provider, QUOTA_CODE).inc()
            return
        if exc.code not in ("rate_limited", "overloaded"):
            return
        if exc.code == "rate_limited" and not need.fits(self.limits(key, tally.model)):
            # refused for its size, not the pace: the limits it just taught split it next
            self.metrics.rate_limited.labels(key.provider, "too_large").inc()
            exc.retry_after = 0.0
            return
        tally.refusals += 1
        backoff = min(
            PAUSE_CAP_SECONDS, self.settings.retry_base_seconds * 2.0 ** (tally.refusals - 1)
        )
        if exc.code == "rate_limited":
            kind = reading.exhausted() if reading is not None else "unknown"
            told = exc.retry_after
            if told is None and reading is not None:
                told = reading.reset_in(kind)
            seconds = told if told is not None else backoff
        else:
            kind = "overloaded"
            seconds = max(exc.retry_after or 0.0, backoff)
        self.metrics.rate_limited.labels(key.provider, kind).inc()
        try:
            exc.retry_after = await self.buckets.pause(key.id, limits, seconds)
        except LimiterUnavailable as err:
            log.warning("could not pause %s for %.1fs: %s", key.id, seconds, err)
            exc.retry_after = seconds
        self._hold(exc.retry_after)
        log.info("%s answered %s: pausing %s for %.1fs", key.provider, kind, key.id, seconds)

    async def _learn(self, key: LimitKey, reading: Reading | None) -> None:
        if reading is None:
            return
        learned = self._learned.get(key.id, Limits())
        values = {b: reading.limits.of(b) or learned.of(b) for b in BUDGETS}
        self._learned[key.id] = Limits(**values)
        tally = self._tallies.get(key.id)
        limits = self.limits(key, tally.model if tally else key.model_class)
        for budget in BUDGETS:
            limit = limits.of(budget)
            if limit is not None:
                label = self.metrics.model_label(key.model_class)
                self.metrics.rate_limit.labels(key.provider, label, budget).set(limit)
        try:
            await self.buckets.sync(key.id, limits, reading.remaining)
        except LimiterUnavailable as exc:
            log.warning("could not record %s's rate-limit headers: %s", key.id, exc)

    async def _adjust(self, key: LimitKey, limits: Limits, deltas: dict[str, float]) -> None:
        try:
            await self.buckets.adjust(key.id, limits, deltas)
        except LimiterUnavailable as exc:
            log.warning("could not correct %s's buckets: %s", key.id, exc)

    def holding(self) -> float:
        """Seconds until the calls this limiter holds back may go (0: it holds none)."""
        return max(0.0, self._held_until - self._clock())

    def _hold(self, seconds: float) -> None:
        """Count wall time during which the limiter held work back (overlaps once)."""
        now = self._clock()
        end = now + seconds
        if seconds > 0 and end > self._held_until:
            self._held_total += end - max(now, self._held_until)
            self._held_until = end

    # ------------------------------------------------------------------ estimates

    def _per_item(self, tally: Tally | None) -> tuple[float, float, float, float]:
        """Calls, uncached input, whole input and output per comparison, as observed."""
        if tally is None or tally.items_answered == 0:
            return 1.0, 0.0, 0.0, float(self.settings.max_output_tokens_per_item)
        n = tally.items_answered
        return (
            tally.calls_answered / n,
            tally.input_tokens / n,
            tally.prompt_tokens / n,
            tally.output_tokens / n,
        )

    def _minutes_for(self, tally: Tally, items: int) -> float | None:
        key_limits = self.limits(tally.key, tally.model)
        if not key_limits.known() or tally.items_answered == 0:
            return None
        calls, uncached, prompt, output = self._per_item(tally)
        return estimate_minutes(
            key_limits,
            math.ceil(items * calls),
            math.ceil(items * uncached),
            math.ceil(items * output),
            prompt_tokens=math.ceil(items * prompt),
            starts_full=False,
        )

    def pacing(self, remaining_items: int | None = None) -> Pacing:
        """What the limiter is doing now; ``finish_in``: seconds the known limits need for
        ``remaining_items`` more comparisons at the traffic seen so far (None if unknown)."""
        now = self._clock()
        requests: Counter[str] = Counter()
        for tally in self._tallies.values():
            requests.update(tally.sent)
        finish: float | None = None
        if remaining_items:
            for tally in self._tallies.values():
                minutes = self._minutes_for(tally, remaining_items)
                if minutes is not None:
                    finish = max(finish or 0.0, minutes * self.settings.rate_limit_period_seconds)
        resume_in = max(0.0, self._held_until - now)
        return Pacing(
            waiting=resume_in > 0,
            resume_in=resume_in,
            held_back_seconds=self._held_total - resume_in,
            requests=dict(requests),
            finish_in=finish,
            out_of_quota=self._quota_message,
        )

    def wait_minutes(
        self, adapter: LLMAdapter, model: str, ahead: int, item_tokens: int, hint: int
    ) -> int | None:
        """Minutes the key's limits make a comparison wait behind ``ahead`` others (each of
        about ``item_tokens`` input, ``hint`` to a call), or None when no limit is known."""
        key = self.key(adapter, model)
        limits = self.limits(key, model)
        if not limits.known():
            return None
        items = ahead + 1
        _, _, _, output = self._per_item(self._tallies.get(key.id))
        minutes = estimate_minutes(
            limits,
            math.ceil(items / max(1, hint)),
            items * item_tokens,
            math.ceil(items * output),
            starts_full=False,
        )
        period_minutes = self.settings.rate_limit_period_seconds / 60.0
        paused = max(0.0, self._held_until - self._clock()) / 60.0
        return round(minutes * period_minutes + paused)
