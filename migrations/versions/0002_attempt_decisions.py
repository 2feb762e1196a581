"""attempt decisions (failure classification, the Doctor's decision, model routing, external
submissions) and budget reservations as rows

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("classification", sa.String(length=48), nullable=True))
        batch.add_column(sa.Column("doctor", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("routing", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("submission", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("lesson", sa.Text(), nullable=True))
    with op.batch_alter_table("model_calls") as batch:
        batch.create_index("ix_model_calls_provider_created_at", ["provider", "created_at"])
    op.create_table(
        "reservations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("phase_id", sa.Integer(), nullable=True),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
        sa.Column("step_id", sa.Integer(), nullable=True),
        sa.Column("fence", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["phase_id"], ["phases.id"]),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"]),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"]),
        sa.ForeignKeyConstraint(["step_id"], ["steps.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_reservations_run_id", "reservations", ["run_id"])
    op.create_index("ix_reservations_state", "reservations", ["state"])


def downgrade() -> None:
    op.drop_index("ix_reservations_state", table_name="reservations")
    op.drop_index("ix_reservations_run_id", table_name="reservations")
    op.drop_table("reservations")
    with op.batch_alter_table("model_calls") as batch:
        batch.drop_index("ix_model_calls_provider_created_at")
    with op.batch_alter_table("attempts") as batch:
        for col in ("lesson", "submission", "routing", "doctor", "classification"):
            batch.drop_column(col)
