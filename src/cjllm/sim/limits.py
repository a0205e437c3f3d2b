"""How slow the simulated provider is, and how much it lets through.

Latency of an answered call: ``per_call + per_item × items + per_output_token × output
tokens`` seconds (an error answer takes ``per_call``). Limits: requests per minute and
tokens per minute (input + output) over a sliding 60-second window; a request over either
limit is answered 429 with ``retry-after`` = the seconds until enough of the window has
passed (rounded up, at least 1).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

WINDOW_SECONDS = 60.0


class LatencyModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    per_call: float = Field(default=0.0, ge=0.0)
    per_item: float = Field(default=0.0, ge=0.0)
    per_output_token: float = Field(default=0.0, ge=0.0)

    def seconds(self, items: int, output_tokens: int) -> float:
        return self.per_call + self.per_item * items + self.per_output_token * output_tokens


class RateLimits(BaseModel):
    """``None`` means unlimited."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(default=None, gt=0)


@dataclass(frozen=True)
class Budget:
    """What is left in the current window (for the vendors' rate-limit headers)."""

    requests_left: int | None
    tokens_left: int | None
    reset_seconds: float


@dataclass
class RateLimiter:
    clock: Callable[[], float] = time.monotonic
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)

    def clear(self) -> None:
        self.requests.clear()
        self.tokens.clear()

    def _trim(self, now: float) -> None:
        while self.requests and self.requests[0] <= now - WINDOW_SECONDS:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= now - WINDOW_SECONDS:
            self.tokens.popleft()

    def admit(self, limits: RateLimits, tokens: int) -> float | None:
        """Admit a request estimated at ``tokens`` input tokens: None, or the retry-after."""
        now = self.clock()
        self._trim(now)
        waits: list[float] = []
        rpm = limits.requests_per_minute
        if rpm is not None and len(self.requests) >= rpm:
            waits.append(self.requests[len(self.requests) - rpm] + WINDOW_SECONDS - now)
        tpm = limits.tokens_per_minute
        if tpm is not None:
            used = sum(n for _, n in self.tokens)
            if used + tokens > tpm:
                if tokens > tpm:
                    waits.append(WINDOW_SECONDS)
                else:
                    freed, wait = 0, 0.0
                    for at, n in self.tokens:
                        freed += n
                        wait = at + WINDOW_SECONDS - now
                        if used - freed + tokens <= tpm:
                            break
                    waits.append(wait)
        if waits:
            return float(max(1, math.ceil(max(waits))))
        self.requests.append(now)
        return None

    def spend(self, tokens: int) -> None:
        self.tokens.append((self.clock(), tokens))

    def budget(self, limits: RateLimits) -> Budget:
        now = self.clock()
        self._trim(now)
        oldest = [t for t in (self.requests[0] if self.requests else None,) if t is not None]
        reset = (oldest[0] + WINDOW_SECONDS - now) if oldest else 0.0
        used = sum(n for _, n in self.tokens)
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        return Budget(
            requests_left=None if rpm is None else max(0, rpm - len(self.requests)),
            tokens_left=None if tpm is None else max(0, tpm - used),
            reset_seconds=max(0.0, reset),
        )
