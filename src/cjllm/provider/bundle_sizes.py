"""Adaptive bundle size: how many comparisons one call to a model may carry, learned from
its answers.

    SHRINK_AFTER poor answers in a row ──> limit = ⌈n/2⌉ (n: the size of the last one)
    GROW_AFTER clean answers at the limit in a row ──> limit = min(2 · limit, cap)

- An answer is **poor** when fewer than half of the items sent come back valid, when the
  JSON was cut short or unreadable, or when the call timed out. :data:`SHRINK_AFTER` in a
  row (a model that *keeps* losing track, not one glitch) halve the limit (never below 1).
- An answer is **clean** when every item sent came back valid from a bundle as large as
  the limit. :data:`GROW_AFTER` clean answers in a row double the limit, up to the cap
  (``CJLLM_MAX_ITEMS_PER_CALL``). Anything between (a few items missing) changes nothing:
  those items are retried in the next bundle.
- The limit is kept per (provider, model) in the worker's process, starts at the cap, and
  is exported as ``cjllm_provider_bundle_size_limit``. Each worker learns on its own from
  its first calls; nothing has to be shared for the queue to stay correct, because the
  worker hands back untouched whatever it claimed beyond the limit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from cjllm.provider.metrics import ProviderMetrics

SHRINK_AFTER = 2
GROW_AFTER = 3
POOR_FRACTION = 0.5


@dataclass
class _Learned:
    limit: int
    poor: int = 0
    clean: int = 0


class BundleSizes:
    """The current bundle-size limit of every (provider, model) this worker has called."""

    def __init__(self, cap: int, metrics: ProviderMetrics | None = None) -> None:
        self.cap = max(1, cap)
        self.metrics = metrics
        self._learned: dict[tuple[str, str], _Learned] = {}

    def limit(self, provider: str, model: str) -> int:
        """How many items the next call to ``model`` may carry."""
        learned = self._learned.get((provider, model))
        return self.cap if learned is None else learned.limit

    def known(self, provider: str, model: str) -> int | None:
        """The limit learned for ``model`` (``None`` when it was never called)."""
        learned = self._learned.get((provider, model))
        return None if learned is None else learned.limit

    def learned(self) -> dict[tuple[str, str], int]:
        """Every limit learned so far, by (provider, model)."""
        return {key: learned.limit for key, learned in self._learned.items()}

    def adopt(self, limits: Mapping[tuple[str, str], int]) -> None:
        """Take the limits another process learned (the embedded worker process's), so
        :meth:`known` answers for the job's one worker."""
        for key, limit in limits.items():
            self._learned.setdefault(key, _Learned(limit)).limit = limit

    def observe(self, provider: str, model: str, sent: int, valid: int, broken: bool) -> int:
        """Learn from one answer: ``sent`` items, ``valid`` of them answered and valid;
        ``broken`` when the JSON was cut or unreadable or the call timed out. Returns the
        new limit."""
        learned = self._learned.setdefault((provider, model), _Learned(self.cap))
        if broken or valid < sent * POOR_FRACTION:
            learned.poor, learned.clean = learned.poor + 1, 0
            if learned.poor >= SHRINK_AFTER:
                learned.limit = max(1, min(learned.limit, math.ceil(sent / 2)))
                learned.poor = 0
        elif valid == sent and sent >= learned.limit:
            learned.poor, learned.clean = 0, learned.clean + 1
            if learned.clean >= GROW_AFTER and learned.limit < self.cap:
                learned.limit = min(self.cap, learned.limit * 2)
                learned.clean = 0
        else:
            learned.poor = learned.clean = 0
        if self.metrics is not None:
            self.metrics.bundle_size_limit.labels(provider, self.metrics.model_label(model)).set(
                learned.limit
            )
        return learned.limit
