"""Outbound campaigns: the campaign, its audience (one entry per contact), every attempt to reach an entry, and the
do-not-call list (global, or one campaign's).

Attempts are rows so that dialling is durable: a worker claims a due attempt with a conditional UPDATE
(``claimed_by``/``lease_until``), so two workers never take the same one and an attempt a crashed worker held is
taken again once its lease ends.  The scheduling rules themselves (windows, pacing, retries, A/B arms, circuit
breaker) are validated by :mod:`voicebot.campaigns.rules` and stored as one JSON document on the campaign.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from models.base import utcnow


class Campaign(SQLModel, table=True):
    __tablename__ = "campaigns"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=80)
    description: str = Field(default="", max_length=2000)
    channel: str = Field(default="voice", max_length=16)
    """voice | whatsapp | email"""
    agent_id: int | None = Field(default=None, foreign_key="agents.id", index=True)
    flow_name: str | None = Field(default=None, max_length=80)
    """A flow run in each conversation (by name, as agents name their start flow)."""
    status: str = Field(default="draft", index=True, max_length=16)
    """draft | running | paused | cancelled | completed"""
    status_reason: str = Field(default="", max_length=500)
    """Why it is in its status when a person did not put it there (the circuit breaker, the end date)."""
    start_at: datetime | None = None
    end_at: datetime | None = None
    timezone: str = Field(default="UTC", max_length=64)
    """The zone of contacts whose own zone is not known (IANA name)."""
    country_code: str = Field(default="", max_length=4)
    """Calling code (digits, no +) given to imported numbers written without one; '' refuses them."""
    rules: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    """Windows, pacing, retries, A/B arms and circuit breaker (``voicebot.campaigns.rules.CampaignRules``)."""
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None


class CampaignEntry(SQLModel, table=True):
    """One contact in one campaign's audience."""

    __tablename__ = "campaign_entries"
    __table_args__ = (UniqueConstraint("campaign_id", "contact_id", name="uq_campaign_entries_contact"),)

    id: int | None = Field(default=None, primary_key=True)
    campaign_id: int = Field(foreign_key="campaigns.id", index=True)
    contact_id: int = Field(foreign_key="contacts.id", index=True)
    phone: str = Field(default="", max_length=32)
    """The E.164 number this entry is dialled at (as imported: a later change to the contact does not move it)."""
    variables: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    """The import's extra columns, for prompts and flows."""
    timezone: str | None = Field(default=None, max_length=64)
    """The contact's zone (a column of the import, or its number's country); None: the campaign's."""
    arm: str = Field(default="", max_length=16)
    """The A/B arm it was assigned ('' when the campaign has no arms)."""
    state: str = Field(default="pending", index=True, max_length=16)
    """pending (an attempt is due or scheduled) | calling | reached | exhausted (retries used up) | dnc |
    excluded (outside the campaign's segment: kept, with no open attempt, never contacted)"""
    attempts: int = 0
    last_outcome: str | None = Field(default=None, max_length=16)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class CampaignAttempt(SQLModel, table=True):
    """One try at reaching an entry; the next try (a retry) is a new row."""

    __tablename__ = "campaign_attempts"
    __table_args__ = (Index("ix_campaign_attempts_due", "campaign_id", "outcome", "due_at"),)

    id: int | None = Field(default=None, primary_key=True)
    campaign_id: int = Field(foreign_key="campaigns.id", index=True)
    entry_id: int = Field(foreign_key="campaign_entries.id", index=True)
    number: int = 1
    """1 for the first try, 2 for the first retry, ..."""
    arm: str = Field(default="", max_length=16)
    due_at: datetime = Field(default_factory=utcnow)
    claimed_by: str = Field(default="", max_length=200)
    lease_until: datetime | None = None
    """A worker dialling it holds it until then (an atomic conditional UPDATE takes it)."""
    outcome: str | None = Field(default=None, max_length=16)
    """None until it ends: answered | busy | no_answer | failed | voicemail | dnc_skipped; or excluded: withdrawn
    before it started, its entry having left the campaign's segment (reopened if the entry comes back)."""
    sip_cause: str = Field(default="", max_length=64)
    """The SIP status or Q.850 cause of a failed attempt (``486``, ``503``, ``cause 34``)."""
    call_id: int | None = Field(default=None, foreign_key="calls.id", index=True)
    conversation_id: int | None = Field(default=None, foreign_key="conversations.id", index=True)
    """A WhatsApp or e-mail attempt's conversation, which its sent message started (replies continue it)."""
    started_at: datetime | None = Field(default=None, index=True)
    ended_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)


class DncEntry(SQLModel, table=True):
    """A number that must not be contacted: by any campaign (``campaign_id`` None) or by one."""

    __tablename__ = "dnc_entries"
    __table_args__ = (Index("ix_dnc_entries_phone_campaign", "phone", "campaign_id"),)

    id: int | None = Field(default=None, primary_key=True)
    phone: str = Field(max_length=32)
    """E.164; '' for an entry that blocks an e-mail address only."""
    email: str | None = Field(default=None, index=True, max_length=320)
    """A blocked e-mail address (lower-case): someone who unsubscribed by e-mail."""
    campaign_id: int | None = Field(default=None, foreign_key="campaigns.id", index=True)
    source: str = Field(default="api", max_length=16)
    """import | api | phrase (said or wrote it) | dtmf (pressed the opt-out key) | reply (STOP)"""
    note: str = Field(default="", max_length=200)
    created_at: datetime = Field(default_factory=utcnow)
