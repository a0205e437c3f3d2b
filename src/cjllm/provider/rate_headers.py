"""What the vendors' rate-limit headers say, read into :class:`~cjllm.provider.rate_limits.Limits`.

Every answer (429s included) may carry them; the limiter learns a key's limits and lowers
its buckets to what remains:

- Anthropic: ``anthropic-ratelimit-{requests,input-tokens,output-tokens}-{limit,remaining,
  reset}``, reset as an RFC 3339 time at which the bucket is full again. Its
  ``anthropic-ratelimit-tokens-*`` repeat the most restrictive token limit in force, so they
  are not read as a budget of their own.
- OpenAI: ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``, reset as a duration
  (``1s``, ``6m0s``, ``20ms``); its token limit counts input and output together.

Limits are read as per minute (both vendors' published limits are).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from cjllm.provider.rate_limits import BUDGETS, Limits

_ANTHROPIC = {
    "requests": "anthropic-ratelimit-requests",
    "input_tokens": "anthropic-ratelimit-input-tokens",
    "output_tokens": "anthropic-ratelimit-output-tokens",
}
_OPENAI = {"requests": "requests", "tokens": "tokens"}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


@dataclass(frozen=True)
class Reading:
    """The limits, the budget remaining and the seconds until each bucket is full."""

    limits: Limits = field(default_factory=Limits)
    remaining: dict[str, int] = field(default_factory=dict)
    full_in: dict[str, float] = field(default_factory=dict)

    def exhausted(self) -> str:
        """The budget closest to empty (a 429's cause), or ``unknown``."""
        shares = {
            b: left / limit
            for b, left in self.remaining.items()
            if (limit := self.limits.of(b)) is not None and limit > 0
        }
        return min(shares, key=lambda b: shares[b]) if shares else "unknown"

    def reset_in(self, budget: str) -> float | None:
        return self.full_in.get(budget)


def rate_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Only the headers the limiter reads (rate limits and retry-after), lower-cased."""
    return {
        k.lower(): v
        for k, v in headers.items()
        if k.lower().startswith(("anthropic-ratelimit-", "x-ratelimit-", "retry-after"))
    }


def _int(value: str | None) -> int | None:
    try:
        return None if value is None else int(float(value))
    except ValueError:
        return None


def _duration(value: str) -> float | None:
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value.strip():
        return None
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def _until(value: str, now: float) -> float | None:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, moment.timestamp() - now)


def read_headers(headers: Mapping[str, str], now: float | None = None) -> Reading | None:
    """The rate-limit state a response reports, or None when it reports none."""
    h = {k.lower(): v for k, v in headers.items()}
    now = time.time() if now is None else now
    limits: dict[str, int | None] = dict.fromkeys(BUDGETS)
    remaining: dict[str, int] = {}
    full_in: dict[str, float] = {}
    for budget, name in _ANTHROPIC.items():
        limits[budget] = _int(h.get(f"{name}-limit"))
        left = _int(h.get(f"{name}-remaining"))
        if left is not None:
            remaining[budget] = left
        reset = h.get(f"{name}-reset")
        when = _until(reset, now) if reset else None
        if when is not None:
            full_in[budget] = when
    for budget, suffix in _OPENAI.items():
        limit = _int(h.get(f"x-ratelimit-limit-{suffix}"))
        if limit is not None:
            limits[budget] = limit
        left = _int(h.get(f"x-ratelimit-remaining-{suffix}"))
        if left is not None:
            remaining[budget] = left
        reset = h.get(f"x-ratelimit-reset-{suffix}")
        when = _duration(reset) if reset else None
        if when is not None:
            full_in[budget] = when
    if not remaining and all(v is None for v in limits.values()):
        return None
    return Reading(Limits(**limits), remaining, full_in)
