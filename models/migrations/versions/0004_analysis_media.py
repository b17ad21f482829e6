"""analysis_categories; messages: attachments, sentiment, category, analysis claim; conversations: needs_human,
category; agents: email_address, learn_from_media

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 07:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _text(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    op.create_table(
        "analysis_categories",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", _text(80), nullable=False),
        sa.Column("description", _text(500), nullable=False),
        sa.Column("route_agent_id", sa.Integer(), sa.ForeignKey("agents.id"), nullable=True),
        sa.Column("needs_human", sa.Boolean(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    )
    op.create_index("ix_analysis_categories_name", "analysis_categories", ["name"], unique=True)
    op.create_index("ix_analysis_categories_route_agent_id", "analysis_categories", ["route_agent_id"])
    # Plain ADD COLUMNs with constant defaults (no batch rebuild: see 0002); the unique address is an index.
    op.add_column("messages", sa.Column("attachments", sa.JSON(), nullable=True))
    op.add_column("messages", sa.Column("sentiment", _text(16), nullable=True))
    op.add_column("messages", sa.Column("category", _text(80), nullable=True))
    op.add_column("messages", sa.Column("analysis_status", _text(16), nullable=False, server_default=""))
    op.add_column("messages", sa.Column("analysis_claimed_by", _text(200), nullable=False, server_default=""))
    op.add_column("messages", sa.Column("analysis_lease_until", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
    op.create_index("ix_messages_category", "messages", ["category"])
    op.create_index("ix_messages_analysis_status", "messages", ["analysis_status"])
    op.add_column("conversations", sa.Column("needs_human", sa.Boolean(), nullable=False,
                                             server_default=sa.false()))
    op.add_column("conversations", sa.Column("category", _text(80), nullable=True))
    op.create_index("ix_conversations_needs_human", "conversations", ["needs_human"])
    op.create_index("ix_conversations_category", "conversations", ["category"])
    op.add_column("agents", sa.Column("email_address", _text(320), nullable=True))
    op.create_index("ix_agents_email_address", "agents", ["email_address"], unique=True)
    op.add_column("agents", sa.Column("learn_from_media", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    op.drop_column("agents", "learn_from_media")
    op.drop_index("ix_agents_email_address", "agents")
    op.drop_column("agents", "email_address")
    op.drop_index("ix_conversations_category", "conversations")
    op.drop_index("ix_conversations_needs_human", "conversations")
    op.drop_column("conversations", "category")
    op.drop_column("conversations", "needs_human")
    op.drop_index("ix_messages_analysis_status", "messages")
    op.drop_index("ix_messages_category", "messages")
    for column in ("analysis_lease_until", "analysis_claimed_by", "analysis_status", "category", "sentiment",
                   "attachments"):
        op.drop_column("messages", column)
    op.drop_table("analysis_categories")
