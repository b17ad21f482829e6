"""agents.languages: further languages an agent answers text messages in

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 19:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing agents keep answering in their one language: an empty list.  A plain ADD COLUMN, not a batch
    # rebuild: on SQLite a batch copies, drops and renames `agents`, and with foreign keys on (as Eva connects)
    # dropping a table that routes and conversations point at fails, so every database with an agent refused the
    # upgrade.  SQLite adds a NOT NULL column with a constant default in place, as PostgreSQL does.
    op.add_column("agents", sa.Column("languages", sa.JSON(), nullable=False, server_default=sa.text("'[]'")))


def downgrade() -> None:
    op.drop_column("agents", "languages")  # SQLite >= 3.35 drops a column in place, without a rebuild
