"""worker_beats: one row per Eva worker sharing an Asterisk, its heartbeat

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worker_beats",
        sa.Column("app", sqlmodel.sql.sqltypes.AutoString(length=40), primary_key=True),
        sa.Column("worker", sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
        sa.Column("seen_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("worker_beats")
