"""Agents (persona + model settings) and routes (DID/extension → agent or flow)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from models.base import utcnow

DEFAULT_FALLBACK = "I'm sorry, I'm having trouble answering right now. Could you say that again?"


class Agent(SQLModel, table=True):
    __tablename__ = "agents"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=80)
    description: str = Field(default="", max_length=2000)
    persona: str = Field(default="You are a helpful, concise phone assistant.", max_length=20000)
    """The system prompt."""
    language: str = Field(default="en", max_length=16)
    """BCP-47 tag: calls are heard, spoken and answered in it (voicebot.i18n, voicebot.tts.voices)."""
    languages: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False, server_default="[]"))
    """Further languages the agent answers WhatsApp, e-mail and chat messages in: each message is answered in the
    one it is written in (voicebot.i18n.detect), else in ``language``.  Calls always use ``language``."""
    voice: str = Field(default="", max_length=200)
    """Piper voice path (or ``espeak:<lang>``); empty → a voice for ``language`` (voicebot.tts.voices)."""
    llm_model: str = Field(default="", max_length=200)
    """Model name for the LLM backend; empty → the backend's default."""
    temperature: float = Field(default=0.3, ge=0.0, le=2.0)
    max_tokens: int = Field(default=160, ge=1, le=8192)
    greeting: str = Field(default="Hello, this is Eva. How can I help you?", max_length=2000)
    fallback_message: str = Field(default=DEFAULT_FALLBACK, max_length=2000)
    dtmf_terminator: str = Field(default="#", max_length=1, regex=r"^[0-9*#]?$")
    """Key that ends a DTMF sequence on calls (empty: only the inter-digit timeout ends it)."""
    dtmf_timeout_ms: int = Field(default=2000, ge=200, le=10000)
    """Pause after the last key that ends a DTMF sequence."""
    transfer_targets: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    """Where a call may be transferred: name (what the caller or the LLM says, e.g. "sales") → extension in
    the ``eva-inbound`` dialplan context.  Empty: the agent cannot transfer.  The LLM's ``transfer_call``
    target must name one of these (or be one of the extensions); anything else is refused and apologised for."""
    start_flow: str | None = Field(default=None, max_length=80)
    """A flow (by name) every new conversation with this agent starts in, on every channel."""
    flow_triggers: dict[str, list[str]] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    """Flows the agent runs when the caller asks for them: flow name → phrases ("book", "appointment").
    A message containing one of the phrases starts the flow; when it ends, the agent carries on."""
    email_signature: str = Field(default="", max_length=2000)
    """Closes the agent's e-mail replies (plain text; the HTML part shows it escaped, line by line)."""
    email_address: str | None = Field(default=None, index=True, unique=True, max_length=320)
    """Mail sent to this address (To, Cc or Delivered-To of the inbound mail) is answered by this agent, from this
    address; mail to no agent's address goes to ``EVA_EMAIL_AGENT``."""
    learn_from_media: bool = Field(default=False)
    """An admin allows documents (PDF, DOCX, text) contacts send this agent to be offered to its knowledge base.
    Off by default: what a stranger sends must not become what the agent tells everyone."""
    active: bool = Field(default=True)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class Route(SQLModel, table=True):
    """Which agent (or conversation flow) answers a DID/extension."""

    __tablename__ = "routes"

    id: int | None = Field(default=None, primary_key=True)
    did: str = Field(index=True, unique=True, max_length=64)
    agent_id: int | None = Field(default=None, foreign_key="agents.id", index=True)
    flow_id: int | None = Field(default=None, index=True)
    description: str = Field(default="", max_length=500)
    enabled: bool = Field(default=True)
    created_at: datetime = Field(default_factory=utcnow)
