"""Plain records the store hands out and takes in (rows stay inside the store)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from cjllm.cj.tables import BatchStatus, ComparisonStatus, RoundStatus


@dataclass(frozen=True)
class NewEssay:
    essay_id: str
    text: str
    anchor_grade: str | None = None


@dataclass(frozen=True)
class NewComparison:
    essay_a_id: str
    essay_b_id: str
    attempt: int = 1


@dataclass(frozen=True)
class BatchRecord:
    id: str
    bos_batch_id: str | None
    status: BatchStatus
    batching_strategy: str
    provider: str
    model: str | None
    temperature: float | None
    instructions: str
    rubric: str | None
    grade_scale: list[str] | None
    options: dict[str, Any]
    ignored_callbacks: int
    stop_reason: str | None
    message: str | None
    result: dict[str, Any] | None
    completion_published: bool
    created_at: datetime
    completed_at: datetime | None


@dataclass(frozen=True)
class EssayRecord:
    essay_id: str
    position: int
    text: str
    anchor_grade: str | None


@dataclass(frozen=True)
class RoundRecord:
    round_number: int
    status: RoundStatus
    planned: int
    preferred_bundle_size: int


@dataclass(frozen=True)
class PendingComparison:
    """What a submission needs: the row's id and the pair in presented order."""

    request_correlation_id: uuid.UUID
    essay_a_id: str
    essay_b_id: str
    round_number: int


@dataclass(frozen=True, slots=True)
class PairOutcome:
    """One comparison as scoring and pairing see it."""

    essay_a_id: str
    essay_b_id: str
    status: ComparisonStatus
    winner: str | None
    attempt: int
    round_number: int


@dataclass(frozen=True)
class CallbackOutcome:
    """What recording one callback did: ``applied`` changed the row; ``ignored`` was a
    duplicate or late callback (row already final); ``unknown`` matched no row;
    ``mismatch`` named a row whose pair it contradicts (row failed, envelope dead-lettered).
    ``round_open``: True when the row's round still had a pending comparison at the commit
    that recorded it (so this callback cannot be the one that closes it), None if unchecked."""

    kind: Literal["applied", "ignored", "unknown", "mismatch"]
    batch_id: str | None = None
    round_number: int | None = None
    status: ComparisonStatus | None = None
    round_open: bool | None = None


@dataclass(frozen=True)
class BatchProgress:
    """Counters a progress display reads (all measured from the rows, never estimated)."""

    batch_id: str
    status: BatchStatus
    rounds: int
    requested: int
    pending: int
    succeeded: int
    failed: int
    ignored_callbacks: int
    provider_calls: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_estimate: float
    reliability: float | None
    mean_se: float | None
    budget: int | None


@dataclass(frozen=True)
class EssayResult:
    essay_id: str
    rank: int
    score: float
    se: float
    projected_grade: str | None = None
    grade_probability: float | None = None
