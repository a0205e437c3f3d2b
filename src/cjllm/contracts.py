"""Wire contracts: everything that crosses a process boundary (docs/architecture.md, "Contracts").

The HTTP request and response of ``POST /api/v1/comparison``, the
``LLMComparisonResultV1`` event inside its ``EventEnvelope``, and the metadata spine
that travels with every comparison. Field names and rules here are fixed contracts.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from cjllm.strategies import BATCH_JOB_STRATEGIES as BATCH_JOB_STRATEGIES
from cjllm.strategies import BatchingStrategy as BatchingStrategy

JUSTIFICATION_MAX_CHARS = 500
# request metadata is echoed in the callback, a few levels deeper: these bounds keep every
# callback readable by any JSON parser and small on the bus (docs/architecture.md)
METADATA_MAX_BYTES = 16 * 1024
METADATA_MAX_DEPTH = 8
METADATA_MAX_KEYS = 64
# a name every Kafka broker accepts as a topic (the in-memory buses accept any)
TOPIC_PATTERN = r"^[A-Za-z0-9._-]{1,249}$"
RESULT_EVENT_TYPE = "LLMComparisonResultV1"
COMPLETION_EVENT_TYPE = "CJAssessmentCompletedV1"

Winner = Literal["Essay A", "Essay B"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class BundleLayout(StrEnum):
    """How a bundle's per-comparison texts are laid out in the prompt (docs/bundling.md).

    ``items``: every item carries its own Essay A and Essay B. ``pool``: every distinct text
    of the call appears once, and each item names its Essay A and Essay B by reference.
    """

    ITEMS = "items"
    POOL = "pool"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- HTTP request


class PromptBlock(_Strict):
    """One ordered piece of a comparison prompt.

    Cacheable blocks form the shared prefix (assignment, rubric, judge instructions);
    non-cacheable ``user_content`` blocks are the per-comparison part (Essay A, then Essay B).
    """

    target: Literal["system", "user_content"]
    content: str = Field(min_length=1)
    cacheable: bool = False
    ttl: Literal["5m", "1h"] = "5m"


class LLMConfigOverrides(_Strict):
    provider_override: str = Field(min_length=1, max_length=100)
    model_override: str | None = Field(default=None, min_length=1, max_length=200)
    temperature_override: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens_override: int | None = Field(default=None, gt=0)
    system_prompt_override: str | None = None


class ComparisonRequest(_Strict):
    """Body of ``POST /api/v1/comparison``: one comparison, never a bundle."""

    user_prompt: str | None = None
    prompt_blocks: list[PromptBlock] | None = None
    callback_topic: str = Field(pattern=TOPIC_PATTERN)
    correlation_id: uuid.UUID | None = None
    llm_config_overrides: LLMConfigOverrides
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _metadata_bounded(cls, value: dict[str, Any]) -> dict[str, Any]:
        if _flat_and_small(value):  # the usual spine: nothing to measure
            return value
        keys, depth = _shape(value)
        if depth > METADATA_MAX_DEPTH:
            raise ValueError(
                f"metadata is nested {depth} levels deep; at most {METADATA_MAX_DEPTH}"
            )
        if keys > METADATA_MAX_KEYS:
            raise ValueError(f"metadata has {keys} keys in all; at most {METADATA_MAX_KEYS}")
        size = len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
        if size > METADATA_MAX_BYTES:
            raise ValueError(f"metadata is {size} bytes as JSON; at most {METADATA_MAX_BYTES}")
        return value

    @model_validator(mode="after")
    def _prompt_present(self) -> Self:
        if self.prompt_blocks is None:
            if not self.user_prompt:
                raise ValueError("user_prompt is required unless prompt_blocks is given")
        elif not any(b.target == "user_content" and not b.cacheable for b in self.prompt_blocks):
            raise ValueError(
                "prompt_blocks needs at least one non-cacheable user_content block "
                "(the per-comparison part)"
            )
        return self

    def per_comparison_parts(self) -> list[str]:
        """The per-comparison prompt content, in order (Essay A, then Essay B)."""
        if self.prompt_blocks is None:
            return [self.user_prompt or ""]
        return [
            b.content for b in self.prompt_blocks if b.target == "user_content" and not b.cacheable
        ]

    def prompt_sha256(self) -> str:
        """The one ``prompt_sha256`` recipe: sha256 of the per-comparison prompt content.

        Parts are UTF-8 encoded and joined with a NUL byte, so ("ab", "c") and ("a", "bc")
        differ. Computed once at enqueue time and carried in the metadata spine.
        """
        joined = b"\x00".join(p.encode("utf-8") for p in self.per_comparison_parts())
        return hashlib.sha256(joined).hexdigest()


_SCALARS = (str, int, float, bool, type(None))
_JSON_BYTES_PER_CHAR = 6  # the most one character can take in JSON: a \uXXXX escape


def _flat_and_small(value: dict[str, Any]) -> bool:
    """True when ``value`` is one level of scalars whose JSON cannot reach
    :data:`METADATA_MAX_BYTES` even if every character were escaped (so the exact checks
    would pass): a cheap test that skips serialising the usual metadata spine."""
    if len(value) > METADATA_MAX_KEYS:
        return False
    chars = 0
    for key, item in value.items():
        if not isinstance(item, _SCALARS):
            return False
        chars += len(key) + len(item if isinstance(item, str) else str(item)) + 6
    return 2 + chars * _JSON_BYTES_PER_CHAR <= METADATA_MAX_BYTES


def _shape(value: Any, depth: int = 1) -> tuple[int, int]:
    """(keys at every level, nesting depth) of a JSON value; a flat object is depth 1."""
    if isinstance(value, dict):
        children = [_shape(v, depth + 1) for v in value.values()]
        return len(value) + sum(k for k, _ in children), max([depth, *(d for _, d in children)])
    if isinstance(value, list):
        children = [_shape(v, depth + 1) for v in value]
        return sum(k for k, _ in children), max([depth, *(d for _, d in children)])
    return 0, depth - 1


class ComparisonQueuedResponse(BaseModel):
    queue_id: uuid.UUID
    status: Literal["queued"] = "queued"
    message: str
    estimated_wait_minutes: int | None = None


class QueueItemState(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"


class ComparisonStatusResponse(BaseModel):
    queue_id: uuid.UUID
    correlation_id: uuid.UUID
    status: QueueItemState
    attempts: int
    queued_at: datetime
    updated_at: datetime
    estimated_wait_minutes: int | None = None


# --------------------------------------------------------------------------- result event


class TokenUsage(BaseModel):
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    total_tokens: int = Field(default=0, ge=0)


class ErrorDetail(BaseModel):
    error_code: str
    message: str
    correlation_id: uuid.UUID
    timestamp: datetime = Field(default_factory=utcnow)
    service: str
    operation: str
    details: dict[str, Any] = Field(default_factory=dict)


class LLMComparisonResultV1(BaseModel):
    """One callback per comparison: a success (winner, justification, confidence) or an error."""

    request_id: str
    correlation_id: uuid.UUID
    winner: Winner | None = None
    justification: str | None = None
    confidence: float | None = Field(default=None, ge=1.0, le=5.0)
    error_detail: ErrorDetail | None = None
    provider: str
    model: str
    response_time_ms: int = Field(ge=0)
    token_usage: TokenUsage = Field(default_factory=TokenUsage)
    cost_estimate: float = Field(default=0.0, ge=0.0)
    requested_at: datetime
    completed_at: datetime
    trace_id: str | None = None
    request_metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("justification")
    @classmethod
    def _truncate(cls, value: str | None) -> str | None:
        if value is not None and len(value) > JUSTIFICATION_MAX_CHARS:
            return value[: JUSTIFICATION_MAX_CHARS - 1] + "…"
        return value

    @model_validator(mode="after")
    def _success_xor_error(self) -> Self:
        success = (self.winner, self.justification, self.confidence)
        if self.error_detail is not None:
            if any(v is not None for v in success):
                raise ValueError(
                    "error_detail is exclusive with winner, justification and confidence"
                )
        elif any(v is None for v in success):
            missing = [
                n
                for n, v in zip(("winner", "justification", "confidence"), success, strict=True)
                if v is None
            ]
            raise ValueError(
                f"a success result needs winner, justification and confidence; missing: "
                f"{', '.join(missing)}"
            )
        return self

    @property
    def is_success(self) -> bool:
        return self.error_detail is None


class EventEnvelope(BaseModel):
    """A bus event. One built by :meth:`for_result` keeps the result model it was made
    from with the ``data`` it dumped it to (neither part of the event nor of its JSON): an
    in-process consumer's :meth:`result` returns it while ``data`` is that same dict,
    rather than validating again what the provider validated (a copy, or an envelope
    given other ``data``, validates its own)."""

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    event_type: str = RESULT_EVENT_TYPE
    event_timestamp: datetime = Field(default_factory=utcnow)
    source_service: str
    schema_version: int = 1
    correlation_id: uuid.UUID
    data_schema_uri: str | None = None
    data: dict[str, Any]
    metadata: dict[str, Any] | None = None
    _result: tuple[dict[str, Any], LLMComparisonResultV1] | None = PrivateAttr(default=None)

    def __eq__(self, other: object) -> bool:
        """Equal when the events are: the kept result model is no part of one."""
        if not isinstance(other, EventEnvelope):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode("utf-8")

    @classmethod
    def from_bytes(cls, raw: bytes) -> EventEnvelope:
        return cls.model_validate_json(raw)

    @classmethod
    def for_result(cls, result: LLMComparisonResultV1, source_service: str) -> EventEnvelope:
        envelope = cls(
            source_service=source_service,
            correlation_id=result.correlation_id,
            data=result.model_dump(mode="json"),
        )
        envelope._result = (envelope.data, result)
        return envelope

    def result(self) -> LLMComparisonResultV1:
        if self.event_type != RESULT_EVENT_TYPE:
            raise ValueError(f"envelope holds {self.event_type}, not {RESULT_EVENT_TYPE}")
        if self._result is not None and self._result[0] is self.data:
            return self._result[1]
        return LLMComparisonResultV1.model_validate(self.data)


# --------------------------------------------------------------------------- metadata spine


class MetadataSpine(BaseModel):
    """Keys present in every queued request and every callback's ``request_metadata``.

    The CJ side fills the first five (and the bundle hints); the provider fills the rest
    (``prompt_sha256`` at enqueue, bundle fields and resolved provider/model when it calls).
    Extra keys are allowed and echoed.
    """

    model_config = ConfigDict(extra="allow")

    request_correlation_id: uuid.UUID
    essay_a_id: str | None = None
    essay_b_id: str | None = None
    cj_batch_id: str | None = None
    bos_batch_id: str | None = None
    prompt_sha256: str | None = None
    bundle_id: str | None = None
    bundle_index: int | None = None
    bundle_size: int | None = None
    batching_strategy: BatchingStrategy | None = None
    resolved_provider: str | None = None
    resolved_model: str | None = None


SPINE_KEYS: tuple[str, ...] = tuple(MetadataSpine.model_fields)


class BundleHints(BaseModel):
    """Bundle hints the CJ service adds to request metadata; the provider caps them."""

    model_config = ConfigDict(extra="ignore")

    batching_strategy: BatchingStrategy = BatchingStrategy.SERIAL_ROUND
    preferred_bundle_size: int | None = Field(default=None, gt=0)
    bundle_group: str | None = None
    bundle_layout: BundleLayout | None = None
    """Asks for a prompt layout; absent, the provider's ``CJLLM_BUNDLE_LAYOUT`` applies."""


# --------------------------------------------------------------------------- CJ completion


class RankedEssay(BaseModel):
    """``lower95``/``upper95``: the score's 95% interval as published — the sampled
    posterior's 2.5% and 97.5% quantiles, not symmetric about the score where the posterior
    is skewed (the ends of the scale); absent (older events): score ± 1.96·se."""

    essay_id: str
    rank: int = Field(ge=1)
    score: float
    se: float = Field(ge=0.0)
    comparisons: int = Field(ge=0)
    wins: int = Field(ge=0)
    is_anchor: bool = False
    anchor_grade: str | None = None
    projected_grade: str | None = None
    grade_probability: float | None = Field(default=None, ge=0.0, le=1.0)
    lower95: float | None = None
    upper95: float | None = None


class OrderEffect(BaseModel):
    """The judge's first-position effect δ (logits; > 0 favours Essay A) and the raw share."""

    logit: float
    se: float = Field(ge=0.0)
    essay_a_wins: int = Field(ge=0)
    decisive: int = Field(ge=0)
    significant: bool

    @property
    def essay_a_share(self) -> float | None:
        return self.essay_a_wins / self.decisive if self.decisive else None


class PositionConsistency(BaseModel):
    """Pairs judged in both orders (both judgements succeeded) and how many agreed."""

    pairs: int = Field(ge=0)
    consistent: int = Field(ge=0)


class JudgeModel(BaseModel):
    """How the judge behaved, as fitted: order effect, lapse rate, spread of the essays.

    ``lapse_rate``: the share of decisions that were a coin toss whatever the essays, with its
    95% interval (weakly identified: essays close in quality look the same). ``population_sd``:
    τ, the spread of the essays' abilities on the judge's logit scale. ``None`` when not
    estimated: the lapse rate above 1,000 essays, either before the first comparison.
    """

    order_effect: OrderEffect | None = None
    lapse_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    lapse_rate_low: float | None = Field(default=None, ge=0.0, le=1.0)
    lapse_rate_high: float | None = Field(default=None, ge=0.0, le=1.0)
    population_sd: float | None = Field(default=None, ge=0.0)
    position_consistency: PositionConsistency | None = None


class CJAssessmentCompletedV1(BaseModel):
    """Published by the CJ service when a batch finishes (or fails).

    Reliability: ``reliability`` is the estimated squared correlation of the scores with the
    essays' true quality on the judge's scale (1 − mean SE²/τ²), honest under any pairing;
    ``scale_separation_reliability`` is the classical SSR of a weakly regularised fit, kept
    for comparison with other CJ tools (adaptive pairing inflates it); split-half is the
    Spearman-Brown corrected correlation of fits to random halves of the comparisons.
    """

    cj_batch_id: str
    bos_batch_id: str | None = None
    status: Literal["completed", "failed"]
    stop_reason: str
    ranking: list[RankedEssay]
    comparisons_requested: int = Field(ge=0)
    comparisons_succeeded: int = Field(ge=0)
    comparisons_failed: int = Field(ge=0)
    rounds: int = Field(ge=0)
    provider_calls: int = Field(ge=0)
    token_usage: TokenUsage = Field(default_factory=TokenUsage)
    cost_estimate: float = Field(default=0.0, ge=0.0)
    scale_separation_reliability: float | None = None
    split_half_reliability: float | None = None
    reliability: float | None = None
    judge: JudgeModel | None = None
    batching_strategy: BatchingStrategy
    provider: str
    model: str
    message: str | None = None
    mean_se: float | None = None
    ignored_callbacks: int = Field(default=0, ge=0)
    graph_components: int | None = Field(default=None, ge=0)
    grade_scale: list[str] | None = None
