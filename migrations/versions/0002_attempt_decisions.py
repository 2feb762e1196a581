"""attempt decisions: failure classification, the Doctor's decision, model routing, external submissions

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
    with op.batch_alter_table("model_calls") as batch:
        batch.create_index("ix_model_calls_provider_created_at", ["provider", "created_at"])


def downgrade() -> None:
    with op.batch_alter_table("model_calls") as batch:
        batch.drop_index("ix_model_calls_provider_created_at")
    with op.batch_alter_table("attempts") as batch:
        for col in ("submission", "routing", "doctor", "classification"):
            batch.drop_column(col)
