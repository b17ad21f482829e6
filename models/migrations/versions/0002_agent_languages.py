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
    # Existing agents keep answering in their one language: an empty list.
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("languages", sa.JSON(), nullable=False, server_default=sa.text("'[]'")))


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("languages")
