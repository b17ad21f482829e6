"""Analysis of contacts' messages: the categories an admin defines, and what triage does with each.

Each message a contact writes (or says) is given a sentiment and one of these categories by the local language model,
off the hot path (``voicebot.analysis``); the results live on ``messages.sentiment`` and ``messages.category``.
A category may carry an e-mail triage rule: route the mail to another agent, or set it aside for a person."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from models.base import utcnow


class Category(SQLModel, table=True):
    __tablename__ = "analysis_categories"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=80)
    """A short lower-case word the model answers with (``sales``, ``support``, ``complaint``, ``spam``)."""
    description: str = Field(default="", max_length=500)
    """What belongs in it, in a phrase: it is what the model reads to decide."""
    route_agent_id: int | None = Field(default=None, foreign_key="agents.id", index=True)
    """E-mail triage: mail in this category is answered by this agent."""
    needs_human: bool = Field(default=False)
    """E-mail triage: mail in this category gets no automatic answer; its conversation is set aside for a person."""
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
