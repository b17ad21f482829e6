"""audit_events: who erased or merged which contact; conversations.opened_by: which key opened a chat;
email_templates; agents.email_signature

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 04:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("actor", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("action", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("subject", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("details", sa.JSON(), nullable=True),
    )
    op.create_index("ix_audit_events_at", "audit_events", ["at"])
    op.create_index("ix_audit_events_action", "audit_events", ["action"])
    op.create_index("ix_audit_events_subject", "audit_events", ["subject"])
    # A plain ADD COLUMN with a constant default (no batch rebuild: see 0002).
    op.add_column("conversations", sa.Column("opened_by", sqlmodel.sql.sqltypes.AutoString(length=200),
                                             nullable=False, server_default=""))
    op.add_column("agents", sa.Column("email_signature", sqlmodel.sql.sqltypes.AutoString(length=2000),
                                      nullable=False, server_default=""))
    op.create_table(
        "email_templates",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
        sa.Column("subject", sqlmodel.sql.sqltypes.AutoString(length=400), nullable=False),
        sa.Column("text", sqlmodel.sql.sqltypes.AutoString(length=65536), nullable=False),
        sa.Column("html", sqlmodel.sql.sqltypes.AutoString(length=65536), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    )
    op.create_index("ix_email_templates_name", "email_templates", ["name"], unique=True)


def downgrade() -> None:
    op.drop_table("email_templates")
    op.drop_column("agents", "email_signature")
    op.drop_column("conversations", "opened_by")
    op.drop_table("audit_events")
