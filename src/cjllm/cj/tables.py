"""The CJ database tables (SQLAlchemy 2 declarative), shared by the store and the migrations.

A batch owns its essays (keys scoped to the batch), its rounds and its comparisons. A
comparison row is written before its request is sent; ``status`` is ``pending`` until its
one callback (or a final submission failure) turns it ``succeeded`` or ``failed``, and
``submitted_at`` records that the provider accepted it (``202``).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cjllm.contracts import utcnow

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class BatchStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class RoundStatus(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class ComparisonStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _now() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), default=utcnow)


class Batch(Base):
    __tablename__ = "cj_batches"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    bos_batch_id: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default=BatchStatus.RUNNING)
    batching_strategy: Mapped[str] = mapped_column(String(32))
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(255))
    temperature: Mapped[float | None] = mapped_column(Float)
    instructions: Mapped[str] = mapped_column(Text)
    rubric: Mapped[str | None] = mapped_column(Text)
    grade_scale: Mapped[list[str] | None] = mapped_column(JSON)
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    ignored_callbacks: Mapped[int] = mapped_column(Integer, default=0)
    stop_reason: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    completion_published: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = _now()
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Essay(Base):
    __tablename__ = "cj_essays"

    batch_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("cj_batches.id", ondelete="CASCADE"), primary_key=True
    )
    essay_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    anchor_grade: Mapped[str | None] = mapped_column(String(64))
    rank: Mapped[int | None] = mapped_column(Integer)
    score: Mapped[float | None] = mapped_column(Float)
    se: Mapped[float | None] = mapped_column(Float)
    projected_grade: Mapped[str | None] = mapped_column(String(64))
    grade_probability: Mapped[float | None] = mapped_column(Float)


class Round(Base):
    __tablename__ = "cj_rounds"

    batch_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("cj_batches.id", ondelete="CASCADE"), primary_key=True
    )
    round_number: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default=RoundStatus.OPEN)
    planned: Mapped[int] = mapped_column(Integer)
    preferred_bundle_size: Mapped[int] = mapped_column(Integer)
    reliability: Mapped[float | None] = mapped_column(Float)
    mean_se: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = _now()
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Comparison(Base):
    __tablename__ = "cj_comparisons"
    __table_args__ = (
        ForeignKeyConstraint(
            ["batch_id", "round_number"],
            ["cj_rounds.batch_id", "cj_rounds.round_number"],
            ondelete="CASCADE",
        ),
        Index("ix_cj_comparisons_batch_round_status", "batch_id", "round_number", "status"),
        Index("ix_cj_comparisons_batch_status", "batch_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(String(36))
    round_number: Mapped[int] = mapped_column(Integer)
    request_correlation_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    essay_a_id: Mapped[str] = mapped_column(String(255))
    essay_b_id: Mapped[str] = mapped_column(String(255))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(16), default=ComparisonStatus.PENDING)
    queue_id: Mapped[str | None] = mapped_column(String(64))
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    winner: Mapped[str | None] = mapped_column(String(16))
    confidence: Mapped[float | None] = mapped_column(Float)
    justification: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    prompt_sha256: Mapped[str | None] = mapped_column(String(64))
    bundle_id: Mapped[str | None] = mapped_column(String(64))
    bundle_index: Mapped[int | None] = mapped_column(Integer)
    bundle_size: Mapped[int | None] = mapped_column(Integer)
    provider: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(255))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    total_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_estimate: Mapped[float] = mapped_column(Float, default=0.0)
    response_time_ms: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = _now()
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DeadLetter(Base):
    """Callbacks that match no comparison (or contradict the one they name), kept for review."""

    __tablename__ = "cj_dead_letters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    correlation_id: Mapped[str] = mapped_column(String(64), index=True)
    reason: Mapped[str] = mapped_column(Text)
    envelope: Mapped[dict[str, Any]] = mapped_column(JSON)
    received_at: Mapped[datetime] = _now()
