"""CJ tables: batches, essays, rounds, comparisons, dead letters.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "cj_batches",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("bos_batch_id", sa.String(255), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("batching_strategy", sa.String(32), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("model", sa.String(255), nullable=True),
        sa.Column("temperature", sa.Float(), nullable=True),
        sa.Column("instructions", sa.Text(), nullable=False),
        sa.Column("rubric", sa.Text(), nullable=True),
        sa.Column("grade_scale", sa.JSON(), nullable=True),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("ignored_callbacks", sa.Integer(), nullable=False),
        sa.Column("stop_reason", sa.String(64), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("completion_published", sa.Boolean(), nullable=False),
        _ts("created_at", nullable=False),
        _ts("completed_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cj_batches")),
    )
    op.create_table(
        "cj_essays",
        sa.Column("batch_id", sa.String(36), nullable=False),
        sa.Column("essay_id", sa.String(255), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("anchor_grade", sa.String(64), nullable=True),
        sa.Column("rank", sa.Integer(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("se", sa.Float(), nullable=True),
        sa.Column("projected_grade", sa.String(64), nullable=True),
        sa.Column("grade_probability", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["cj_batches.id"],
            name=op.f("fk_cj_essays_batch_id_cj_batches"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("batch_id", "essay_id", name=op.f("pk_cj_essays")),
    )
    op.create_table(
        "cj_rounds",
        sa.Column("batch_id", sa.String(36), nullable=False),
        sa.Column("round_number", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("planned", sa.Integer(), nullable=False),
        sa.Column("preferred_bundle_size", sa.Integer(), nullable=False),
        sa.Column("reliability", sa.Float(), nullable=True),
        sa.Column("mean_se", sa.Float(), nullable=True),
        _ts("created_at", nullable=False),
        _ts("closed_at"),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["cj_batches.id"],
            name=op.f("fk_cj_rounds_batch_id_cj_batches"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("batch_id", "round_number", name=op.f("pk_cj_rounds")),
    )
    op.create_table(
        "cj_comparisons",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("batch_id", sa.String(36), nullable=False),
        sa.Column("round_number", sa.Integer(), nullable=False),
        sa.Column("request_correlation_id", sa.Uuid(), nullable=False),
        sa.Column("essay_a_id", sa.String(255), nullable=False),
        sa.Column("essay_b_id", sa.String(255), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("queue_id", sa.String(64), nullable=True),
        _ts("submitted_at"),
        sa.Column("winner", sa.String(16), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("justification", sa.Text(), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("prompt_sha256", sa.String(64), nullable=True),
        sa.Column("bundle_id", sa.String(64), nullable=True),
        sa.Column("bundle_index", sa.Integer(), nullable=True),
        sa.Column("bundle_size", sa.Integer(), nullable=True),
        sa.Column("provider", sa.String(64), nullable=True),
        sa.Column("model", sa.String(255), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("total_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_estimate", sa.Float(), nullable=False),
        sa.Column("response_time_ms", sa.Integer(), nullable=True),
        _ts("created_at", nullable=False),
        _ts("completed_at"),
        sa.ForeignKeyConstraint(
            ["batch_id", "round_number"],
            ["cj_rounds.batch_id", "cj_rounds.round_number"],
            name=op.f("fk_cj_comparisons_batch_id_cj_rounds"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cj_comparisons")),
        sa.UniqueConstraint(
            "request_correlation_id", name=op.f("uq_cj_comparisons_request_correlation_id")
        ),
    )
    op.create_index(
        "ix_cj_comparisons_batch_round_status",
        "cj_comparisons",
        ["batch_id", "round_number", "status"],
    )
    op.create_index("ix_cj_comparisons_batch_status", "cj_comparisons", ["batch_id", "status"])
    op.create_table(
        "cj_dead_letters",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("correlation_id", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("envelope", sa.JSON(), nullable=False),
        _ts("received_at", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cj_dead_letters")),
    )
    op.create_index(
        op.f("ix_cj_dead_letters_correlation_id"), "cj_dead_letters", ["correlation_id"]
    )


def downgrade() -> None:
    op.drop_table("cj_dead_letters")
    op.drop_table("cj_comparisons")
    op.drop_table("cj_rounds")
    op.drop_table("cj_essays")
    op.drop_table("cj_batches")
