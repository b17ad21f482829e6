"""Contacts (one person across channels), conversations and messages."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from models.base import utcnow


class Contact(SQLModel, table=True):
    __tablename__ = "contacts"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(default="", max_length=200)
    phone: str | None = Field(default=None, index=True, unique=True, max_length=64)
    phone_verified: bool = False
    """The phone number came from a source that vouches for it (a trunk attesting caller ID), not a bare caller
    ID anyone can spoof: only then may a WhatsApp id (always verified: Meta signs the webhook) join this
    contact and share its memory."""
    whatsapp_id: str | None = Field(default=None, index=True, unique=True, max_length=64)
    email: str | None = Field(default=None, index=True, unique=True, max_length=320)
    created_at: datetime = Field(default_factory=utcnow)


class Conversation(SQLModel, table=True):
    __tablename__ = "conversations"

    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(index=True, max_length=16)
    """voice | whatsapp | email | chat"""
    contact_id: int | None = Field(default=None, foreign_key="contacts.id", index=True)
    agent_id: int | None = Field(default=None, foreign_key="agents.id", index=True)
    external_id: str = Field(default="", index=True, max_length=255)
    """Channel's own id: call id, email thread id, WhatsApp conversation."""
    opened_by: str = Field(default="", max_length=200)
    """Chat: the API key that opened the session (``api_key:<id>``); a chat key may continue only its own."""
    needs_human: bool = Field(default=False, index=True)
    """Triage set it aside for a person: no automatic answer is sent in it until someone clears it."""
    category: str | None = Field(default=None, index=True, max_length=80)
    """The category of its latest classified message (see ``models.analysis``)."""
    started_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class Message(SQLModel, table=True):
    __tablename__ = "messages"

    id: int | None = Field(default=None, primary_key=True)
    conversation_id: int = Field(foreign_key="conversations.id", index=True)
    role: str = Field(max_length=16)
    """user | assistant | system | tool"""
    text: str = Field(default="")
    created_at: datetime = Field(default_factory=utcnow, index=True)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    timings: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    citations: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON))
    tool_calls: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON))
    external_id: str = Field(default="", index=True, max_length=255)
    """Channel message id (WhatsApp wamid, email Message-ID) for de-duplication."""
    attachments: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON))
    """Files that came or went with the message: ``{"name", "content_type", "size", "sha256", "path"}``
    (``path`` below ``<data_dir>/media``, absent when the file was listed but not kept; see
    ``channels.attachments``)."""
    sentiment: str | None = Field(default=None, max_length=16)
    """positive | neutral | negative (a contact's message, once analysed)"""
    category: str | None = Field(default=None, index=True, max_length=80)
    """One of the admin's categories (``models.analysis.Category``), once analysed."""
    analysis_status: str = Field(default="", index=True, max_length=16)
    """'' (not to be analysed) | pending | done | failed"""
    analysis_claimed_by: str = Field(default="", max_length=200)
    analysis_lease_until: datetime | None = None
    """A worker analysing the message holds it until then (an atomic conditional UPDATE takes it)."""
