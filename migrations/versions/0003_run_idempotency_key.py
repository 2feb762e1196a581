"""runs.idempotency_key: a submission retried with the same key finds its run

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("idempotency_fingerprint", sa.String(length=64), nullable=True))
        batch.create_unique_constraint("uq_runs_project_idempotency_key", ["project_id", "idempotency_key"])


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_constraint("uq_runs_project_idempotency_key", type_="unique")
        batch.drop_column("idempotency_fingerprint")
        batch.drop_column("idempotency_key")
