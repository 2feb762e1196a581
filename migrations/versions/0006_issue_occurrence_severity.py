"""issue_occurrences: the severity an occurrence was raised with (a run counts its own, not the
project-wide worst its issue ever had)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows from before it have none: they count with their issue's severity, as they did.
    with op.batch_alter_table("issue_occurrences") as batch:
        batch.add_column(sa.Column("severity", sa.String(8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("issue_occurrences") as batch:
        batch.drop_column("severity")
