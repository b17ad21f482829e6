"""Inbound e-mail receipts: which worker answers a message, and what became of it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from models.base import utcnow


class EmailReceipt(SQLModel, table=True):
    """One inbound e-mail, keyed by its sender and Message-ID.

    Several Eva workers may poll one IMAP inbox: before generating a reply a worker claims the row (an insert
    that does nothing on conflict, else a conditional UPDATE on an expired lease), so exactly one of them answers.
    The key includes the sender, so a Message-ID reused by someone else is that someone's own message, never a
    duplicate of (or a way to the stored reply of) the first sender's.  Mail waiting for a rate limit is
    kept here with its text and the reason until it is answered."""

    __tablename__ = "email_receipts"
    __table_args__ = (UniqueConstraint("sender", "message_id", name="uq_email_receipts_sender_message_id"),)

    id: int | None = Field(default=None, primary_key=True)
    sender: str = Field(max_length=320)
    """The From address, lower-cased."""
    message_id: str = Field(max_length=255)
    status: str = Field(default="claimed", index=True, max_length=16)
    """claimed (being answered, or to be answered again after a failure; ``reason`` holds the failure's code) |
    answered | waiting (over a rate limit: left unseen in the inbox and answered once the limit allows;
    ``reason`` says which limit)"""
    budget: str = Field(default="", max_length=8)
    """Which hourly budget the answer counts against: ``known`` (a sender answered before) or ``unknown``."""
    claimed_by: str = Field(default="", max_length=200)
    """The worker answering it now ('' when nobody is)."""
    lease_until: datetime | None = None
    """Nobody else may claim the row before this time (a worker that died loses its claim then)."""
    reason: str = Field(default="", max_length=64)
    """Why it was not answered (an error code), '' when it was."""
    subject: str = Field(default="", max_length=200)
    text: str = ""
    """The new text of the message as the agent would read it."""
    received_at: datetime = Field(default_factory=utcnow, index=True)
    """When it was first claimed."""
    updated_at: datetime = Field(default_factory=utcnow, index=True)
    """Last change; for an answered receipt, when it was answered (the rate limits count from it)."""


class EmailTemplate(SQLModel, table=True):
    """A message designers write once and send with variables (``{{ name }}``): a subject, a plain-text body and
    an optional HTML body, rendered by a sandboxed Jinja2 (HTML autoescaped: a variable never becomes markup)."""

    __tablename__ = "email_templates"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=80)
    subject: str = Field(max_length=400)
    text: str = Field(max_length=65536)
    html: str = Field(default="", max_length=65536)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
