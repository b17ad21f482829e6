"""campaigns, campaign_entries, campaign_attempts, dnc_entries: outbound campaigns and the do-not-call list;
trunk_state_events: the history of each SIP trunk's monitored state

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _text(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def _when() -> sqlmodel.sql.sqltypes.UTCDateTime:
    return sqlmodel.sql.sqltypes.UTCDateTime()


def upgrade() -> None:
    # New tables only: nothing existing is rebuilt (see 0002 for why that matters on SQLite).
    op.create_table(
        "campaigns",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", _text(80), nullable=False),
        sa.Column("description", _text(2000), nullable=False),
        sa.Column("channel", _text(16), nullable=False),
        sa.Column("agent_id", sa.Integer(), sa.ForeignKey("agents.id"), nullable=True),
        sa.Column("flow_name", _text(80), nullable=True),
        sa.Column("status", _text(16), nullable=False),
        sa.Column("status_reason", _text(500), nullable=False),
        sa.Column("start_at", _when(), nullable=True),
        sa.Column("end_at", _when(), nullable=True),
        sa.Column("timezone", _text(64), nullable=False),
        sa.Column("country_code", _text(4), nullable=False),
        sa.Column("rules", sa.JSON(), nullable=False),
        sa.Column("created_at", _when(), nullable=False),
        sa.Column("updated_at", _when(), nullable=False),
        sa.Column("started_at", _when(), nullable=True),
        sa.Column("finished_at", _when(), nullable=True),
    )
    op.create_index("ix_campaigns_name", "campaigns", ["name"], unique=True)
    op.create_index("ix_campaigns_agent_id", "campaigns", ["agent_id"])
    op.create_index("ix_campaigns_status", "campaigns", ["status"])

    op.create_table(
        "campaign_entries",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("campaign_id", sa.Integer(), sa.ForeignKey("campaigns.id"), nullable=False),
        sa.Column("contact_id", sa.Integer(), sa.ForeignKey("contacts.id"), nullable=False),
        sa.Column("phone", _text(32), nullable=False),
        sa.Column("variables", sa.JSON(), nullable=False),
        sa.Column("timezone", _text(64), nullable=True),
        sa.Column("arm", _text(16), nullable=False),
        sa.Column("state", _text(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_outcome", _text(16), nullable=True),
        sa.Column("created_at", _when(), nullable=False),
        sa.Column("updated_at", _when(), nullable=False),
        sa.UniqueConstraint("campaign_id", "contact_id", name="uq_campaign_entries_contact"),
    )
    op.create_index("ix_campaign_entries_campaign_id", "campaign_entries", ["campaign_id"])
    op.create_index("ix_campaign_entries_contact_id", "campaign_entries", ["contact_id"])
    op.create_index("ix_campaign_entries_state", "campaign_entries", ["state"])

    op.create_table(
        "campaign_attempts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("campaign_id", sa.Integer(), sa.ForeignKey("campaigns.id"), nullable=False),
        sa.Column("entry_id", sa.Integer(), sa.ForeignKey("campaign_entries.id"), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("arm", _text(16), nullable=False),
        sa.Column("due_at", _when(), nullable=False),
        sa.Column("claimed_by", _text(200), nullable=False),
        sa.Column("lease_until", _when(), nullable=True),
        sa.Column("outcome", _text(16), nullable=True),
        sa.Column("sip_cause", _text(64), nullable=False),
        sa.Column("call_id", sa.Integer(), sa.ForeignKey("calls.id"), nullable=True),
        sa.Column("conversation_id", sa.Integer(), sa.ForeignKey("conversations.id"), nullable=True),
        sa.Column("started_at", _when(), nullable=True),
        sa.Column("ended_at", _when(), nullable=True),
        sa.Column("created_at", _when(), nullable=False),
    )
    op.create_index("ix_campaign_attempts_campaign_id", "campaign_attempts", ["campaign_id"])
    op.create_index("ix_campaign_attempts_entry_id", "campaign_attempts", ["entry_id"])
    op.create_index("ix_campaign_attempts_call_id", "campaign_attempts", ["call_id"])
    op.create_index("ix_campaign_attempts_conversation_id", "campaign_attempts", ["conversation_id"])
    op.create_index("ix_campaign_attempts_started_at", "campaign_attempts", ["started_at"])
    op.create_index("ix_campaign_attempts_due", "campaign_attempts", ["campaign_id", "outcome", "due_at"])

    op.create_table(
        "dnc_entries",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("phone", _text(32), nullable=False),
        sa.Column("email", _text(320), nullable=True),
        sa.Column("campaign_id", sa.Integer(), sa.ForeignKey("campaigns.id"), nullable=True),
        sa.Column("source", _text(16), nullable=False),
        sa.Column("note", _text(200), nullable=False),
        sa.Column("created_at", _when(), nullable=False),
    )
    op.create_index("ix_dnc_entries_campaign_id", "dnc_entries", ["campaign_id"])
    op.create_index("ix_dnc_entries_email", "dnc_entries", ["email"])
    op.create_index("ix_dnc_entries_phone_campaign", "dnc_entries", ["phone", "campaign_id"])

    # Trunk monitoring (admin_api/trunk_monitor.py): each change of a trunk's state.  No foreign key: a trunk's
    # history is deleted with it, in the same transaction.
    op.create_table(
        "trunk_state_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("trunk_id", sa.Integer(), nullable=False),
        sa.Column("trunk_name", _text(40), nullable=False),
        sa.Column("state", _text(16), nullable=False),
        sa.Column("previous", _text(16), nullable=False),
        sa.Column("detail", _text(200), nullable=False),
        sa.Column("at", _when(), nullable=False),
    )
    op.create_index("ix_trunk_state_events_trunk_id", "trunk_state_events", ["trunk_id"])
    op.create_index("ix_trunk_state_events_at", "trunk_state_events", ["at"])


def downgrade() -> None:
    op.drop_table("trunk_state_events")
    op.drop_table("dnc_entries")
    op.drop_table("campaign_attempts")
    op.drop_table("campaign_entries")
    op.drop_table("campaigns")
