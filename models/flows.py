"""Conversation flows: scripted step-by-step dialogues (IVR-style) an agent or a route can run."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from models.base import utcnow


class Flow(SQLModel, table=True):
    __tablename__ = "flows"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=80)
    description: str = Field(default="", max_length=2000)
    agent_id: int | None = Field(default=None, foreign_key="agents.id", index=True)
    """Agent that answers free-form questions inside the flow (optional)."""
    start_step: str = Field(max_length=64)
    steps: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    """Each step: ``{id, message, next_step, validation, ...}``; validated by the admin API before saving."""
    enabled: bool = True
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class FlowRun(SQLModel, table=True):
    """One run of a flow in one conversation (a call, a WhatsApp chat, a mail thread, a chat session).

    The engine's state is stored after every step, so a run survives a worker restart: the next message or
    turn of the conversation continues at the same step, in whichever worker takes it."""

    __tablename__ = "flow_runs"

    id: int | None = Field(default=None, primary_key=True)
    flow_id: int | None = Field(default=None, foreign_key="flows.id", index=True)
    """None once the flow was deleted (the run is kept, under ``flow_name``)."""
    flow_name: str = Field(max_length=80)
    channel: str = Field(max_length=16)
    conversation_id: int | None = Field(default=None, foreign_key="conversations.id", index=True)
    call_id: int | None = Field(default=None, foreign_key="calls.id", index=True)
    contact_id: int | None = Field(default=None, foreign_key="contacts.id", index=True)
    status: str = Field(default="active", max_length=16, index=True)
    """``active`` or ``ended``."""
    step: str = Field(max_length=64)
    result: str | None = Field(default=None, max_length=40)
    variables: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    state: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    version: int = 0
    """Bumped on every stored step: two workers feeding the same run cannot both win (compare-and-set)."""
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow, index=True)
