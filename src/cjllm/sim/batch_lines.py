"""What the simulated batch endpoints of both vendors share: a job's clock and its lines' fates.

A job's lines are answered when it is created (by the same code as the direct endpoints),
but nothing shows until ``batch_seconds`` have passed. Then:

- each line has, independently, ``batch_expired_rate`` chance of having **expired** instead
  (the vendor ran out of its 24 hours before reaching it);
- results come back in a **random order** (``batch_shuffle``), as the vendors warn they may;
- a job **cancelled** part-way keeps the results of the share of lines it had reached (the
  time elapsed over ``batch_seconds``, in result order) and reports the rest canceled; it
  is *canceling* / *cancelling* for ``batch_cancel_seconds`` before it ends.

Size limits (``batch_max_requests``, ``batch_max_bytes``; unset = no limit) let tests check
that the service splits its jobs to fit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from cjllm.sim.state import SimState


@dataclass
class JobClock:
    """When a simulated job started, when it ends, and whether (and when) it was cancelled."""

    created_at: float
    ends_at: float
    cancel_at: float | None = None
    cancel_ends_at: float | None = None
    reached: int | None = None  # lines answered before the cancellation reached the job

    @classmethod
    def start(cls, state: SimState) -> JobClock:
        now = time.time()
        return cls(created_at=now, ends_at=now + state.config.batch_seconds)

    def status(self, now: float | None = None) -> str:
        """``in_progress``, ``canceling`` or ``ended``."""
        now = time.time() if now is None else now
        if self.cancel_ends_at is not None:
            return "ended" if now >= self.cancel_ends_at else "canceling"
        return "ended" if now >= self.ends_at else "in_progress"

    @property
    def ended_at(self) -> float:
        return self.cancel_ends_at if self.cancel_ends_at is not None else self.ends_at

    def cancel(self, state: SimState, n_lines: int) -> bool:
        """Cancel a job still in progress; False when it had already ended or was cancelled."""
        now = time.time()
        if self.status(now) != "in_progress":
            return False
        span = self.ends_at - self.created_at
        share = 1.0 if span <= 0 else min(1.0, (now - self.created_at) / span)
        self.cancel_at = now
        self.cancel_ends_at = now + state.config.batch_cancel_seconds
        self.reached = int(n_lines * share)
        return True


@dataclass
class LinePlan:
    """Which lines expire and the order results come back in (indices into the request)."""

    order: list[int]
    expired: set[int] = field(default_factory=set)

    @classmethod
    def draw(cls, state: SimState, n_lines: int) -> LinePlan:
        config = state.config
        order = list(range(n_lines))
        if config.batch_shuffle:
            state.rng.shuffle(order)
        expired = {i for i in range(n_lines) if state.rng.random() < config.batch_expired_rate}
        state.counters.batches["expired"] += len(expired)
        return cls(order, expired)


def over_limits(state: SimState, n_lines: int, n_bytes: int) -> str | None:
    """Why a job of this size is refused, or None when it fits the configured limits."""
    config = state.config
    if config.batch_max_requests is not None and n_lines > config.batch_max_requests:
        return f"{n_lines} requests; a batch may hold at most {config.batch_max_requests}"
    if config.batch_max_bytes is not None and n_bytes > config.batch_max_bytes:
        return f"{n_bytes} bytes; a batch may be at most {config.batch_max_bytes} bytes"
    return None
