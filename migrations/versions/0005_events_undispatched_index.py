"""events: a partial index on the undispatched events, which the reconciler looks for every pass

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_events_undispatched", "events", ["created_at"],
                    postgresql_where=sa.text("NOT dispatched"), sqlite_where=sa.text("NOT dispatched"))


def downgrade() -> None:
    op.drop_index("ix_events_undispatched", table_name="events")
