"""The audit trail: who did what to which record, for the actions that must be accountable (erasing a contact's
data, merging contacts).  Rows name records by id and hold counts, never the personal data that was acted on."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from models.base import utcnow


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_events"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    actor: str = Field(max_length=200)
    """Who did it: ``user:<id> <username>`` or ``api_key:<id> <name>``."""
    action: str = Field(index=True, max_length=64)
    """e.g. ``contact.erase``, ``contact.merge``"""
    subject: str = Field(index=True, max_length=200)
    """The record acted on, e.g. ``contact:42`` (it may no longer exist)."""
    details: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
