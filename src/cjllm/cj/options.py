"""A batch's frozen configuration: strategy, round cap, budgets and stopping targets.

Taken from :class:`~cjllm.settings.CJSettings` when the batch starts and stored with the
batch, so a resumed batch keeps the rules it started with even if the environment changed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Self

from cjllm.contracts import BATCH_JOB_STRATEGIES, BatchingStrategy, BundleLayout
from cjllm.settings import CJSettings

DEFAULT_COMPARISONS_PER_ESSAY = 10.0
PAIRINGS = ("adaptive", "random")
BUDGET = "budget"
PER_ESSAY = "comparisons_per_essay"

ROUND_BUNDLE_SIZE = 25
"""The bundle size ``serial_round`` asks for when a round is larger: the provider's default
cap on items per call (``CJLLM_MAX_ITEMS_PER_CALL``), which it lowers further if its own is
lower."""


class InvalidBatch(ValueError):
    """The batch cannot start as asked (bad essays, anchors, budget or options)."""


@dataclass(frozen=True)
class BatchOptions:
    """How one batch runs (see docs/cj.md for each rule)."""

    batching_strategy: BatchingStrategy = BatchingStrategy.SERIAL_ROUND
    max_concurrent_comparisons: int | None = None
    serial_override_bundle_size: int | None = None
    comparisons_per_essay: float | None = None
    max_comparisons_total: int | None = None
    max_comparisons_per_essay: int | None = None
    target_reliability: float = 0.9
    target_mean_se: float | None = None
    min_comparisons_per_essay_before_stop: float = 4.0
    min_success_fraction: float = 0.5
    max_pair_retries: int = 2
    max_failed_rounds: int = 3
    bt_prior: float = 0.1
    split_half_splits: int = 10
    pairing: str = "adaptive"
    pairing_random_fraction: float = 0.1
    pairing_probe_fraction: float = 0.1
    both_orders_fraction: float = 0.0
    bundle_layout: BundleLayout = BundleLayout.ITEMS
    pool_group_size: int = 10
    pool_pairs_per_essay: int = 4

    @classmethod
    def from_settings(cls, settings: CJSettings) -> Self:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in settings.model_dump().items() if k in names}
        values["batching_strategy"] = settings.llm_batching_strategy
        return cls(**values)

    @property
    def plans_groups(self) -> bool:
        """Rounds are planned as groups, one bundle each (the pool layout, when bundling)."""
        return self.bundle_layout is BundleLayout.POOL and self.batching_strategy in (
            BatchingStrategy.SERIAL_ROUND,
            BatchingStrategy.SERIAL_OVERRIDE,
        )

    def with_changes(self, **changes: Any) -> BatchOptions:
        return replace(self, **changes)

    def validate(self) -> None:
        """Raise :class:`InvalidBatch` for unusable options."""
        if (
            self.batching_strategy is BatchingStrategy.SERIAL_OVERRIDE
            and self.serial_override_bundle_size is None
        ):
            raise InvalidBatch(
                "LLM_BATCHING_STRATEGY=serial_override needs a bundle size: set "
                "CJLLM_SERIAL_OVERRIDE_BUNDLE_SIZE"
            )
        checks = {
            "max_concurrent_comparisons": (self.max_concurrent_comparisons or 1) >= 1,
            "comparisons_per_essay": (self.comparisons_per_essay or 1) > 0,
            "max_comparisons_total": (self.max_comparisons_total or 1) >= 1,
            "max_comparisons_per_essay": (self.max_comparisons_per_essay or 1) >= 1,
            "min_success_fraction": 0.0 <= self.min_success_fraction <= 1.0,
            "max_pair_retries": self.max_pair_retries >= 0,
            "bt_prior": self.bt_prior > 0,
            "both_orders_fraction": 0.0 <= self.both_orders_fraction <= 1.0,
            "pairing_probe_fraction": 0.0 <= self.pairing_probe_fraction <= 1.0,
            "pairing": self.pairing in PAIRINGS,
            "pool_group_size": self.pool_group_size >= 2,
            "pool_pairs_per_essay": self.pool_pairs_per_essay >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise InvalidBatch(f"invalid batch options: {', '.join(bad)} ({self})")

    def budget(self, n_essays: int) -> int:
        """Comparisons to judge (failed ones do not count): :meth:`budget_limit`'s value."""
        return self.budget_limit(n_essays)[0]

    def budget_limit(self, n_essays: int) -> tuple[int, str]:
        """The judging budget and the limit that sets it, ``budget`` or
        ``comparisons_per_essay``: ``max_comparisons_total`` when it is the only one given,
        ⌈K·n/2⌉ for K = ``comparisons_per_essay`` (10 when neither is given), and the smaller
        of the two when both are (the total on a tie)."""
        total = self.max_comparisons_total
        per_essay = self.comparisons_per_essay
        if per_essay is None and total is not None:
            return total, BUDGET
        k = DEFAULT_COMPARISONS_PER_ESSAY if per_essay is None else per_essay
        from_k = math.ceil(k * n_essays / 2)
        if total is not None and total <= from_k:
            return total, BUDGET
        return from_k, PER_ESSAY

    def budget_note(self, n_essays: int) -> str:
        """One sentence: how many comparisons will be judged, and which limit says so."""
        value, limit = self.budget_limit(n_essays)
        k = self.comparisons_per_essay
        k_text = f"{DEFAULT_COMPARISONS_PER_ESSAY if k is None else k:g} per essay"
        if limit == BUDGET and k is None:
            return f"Budget: {value} comparisons (the total budget)."
        if limit == BUDGET:
            return (
                f"Budget: {value} comparisons (the total budget; {k_text} would allow "
                f"{math.ceil((k or 0) * n_essays / 2)})."
            )
        note = f"Budget: {value} comparisons ({k_text} for {n_essays} essays)"
        if self.max_comparisons_total is not None:
            note += f"; the total budget of {self.max_comparisons_total} will not be reached"
        return note + "."

    def preferred_bundle_size(self, round_size: int) -> int:
        """The ``preferred_bundle_size`` hint sent with every request of a round."""
        if self.batching_strategy is BatchingStrategy.PER_REQUEST:
            return 1
        if self.batching_strategy is BatchingStrategy.SERIAL_OVERRIDE:
            assert self.serial_override_bundle_size is not None  # validate() guarantees it
            return self.serial_override_bundle_size
        if self.batching_strategy in BATCH_JOB_STRATEGIES:  # the provider's line size decides
            return max(1, round_size)
        return max(1, min(round_size, self.max_concurrent_comparisons or ROUND_BUNDLE_SIZE))

    def to_json(self, n_essays: int) -> dict[str, Any]:
        data = asdict(self)
        data["batching_strategy"] = self.batching_strategy.value
        data["bundle_layout"] = self.bundle_layout.value
        data["budget"], data["budget_limit"] = self.budget_limit(n_essays)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["batching_strategy"] = BatchingStrategy(values["batching_strategy"])
        values["bundle_layout"] = BundleLayout(values.get("bundle_layout", BundleLayout.ITEMS))
        return cls(**values)
