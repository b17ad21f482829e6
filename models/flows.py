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
