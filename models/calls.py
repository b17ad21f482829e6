"""Calls and their turns, with per-stage timings (the voice loop writes these)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from models.base import utcnow

CALLER_MAX = 64
"""Characters of caller ID and DID stored (longer values, which a SIP peer controls, are cut)."""


class Call(SQLModel, table=True):
    """One Stasis session of a caller's channel.  A channel that Eva transfers to a number Eva handles
    enters Stasis again: that is a new row (``generation`` + 1), so the first row keeps its outcome."""

    __tablename__ = "calls"
    __table_args__ = (UniqueConstraint("channel_id", "generation", name="uq_calls_channel_generation"),)

    id: int | None = Field(default=None, primary_key=True)
    channel_id: str = Field(index=True, max_length=128)
    """Asterisk's channel uniqueid."""
    generation: int = 0
    """How many earlier Stasis sessions this channel had (0: the call as it came in)."""
    direction: str = Field(default="inbound", max_length=16)
    caller: str = Field(default="", index=True, max_length=CALLER_MAX)
    did: str = Field(default="", index=True, max_length=CALLER_MAX)
    agent_id: int | None = Field(default=None, foreign_key="agents.id", index=True)
    conversation_id: int | None = Field(default=None, foreign_key="conversations.id")
    started_at: datetime = Field(default_factory=utcnow, index=True)
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: str = Field(default="active", index=True, max_length=32)
    """active | completed | caller_hangup | transferred | continued (handed back to the dialplan) | failed |
    no_route | busy (every slot taken: the caller heard the busy prompt, see ``voicebot/calls/admission.py``) |
    max_duration (cut at ``max_call_seconds``) | shutdown (Eva stopped during the call)"""
    hangup_cause: str = Field(default="", max_length=64)
    recording_path: str = Field(default="", max_length=1024)
    worker: str = Field(default="", max_length=128)
    """Which Eva worker handles the call (scale-out)."""


class CallTurn(SQLModel, table=True):
    """One exchange: what the caller said, what the bot said, and how long each stage took.

    Stage times are milliseconds after ``speech_end`` (the moment the turn detector decided the caller stopped).
    """

    __tablename__ = "call_turns"

    id: int | None = Field(default=None, primary_key=True)
    call_id: int = Field(foreign_key="calls.id", index=True)
    index: int = 0
    kind: str = Field(default="speech", max_length=16)
    """speech | dtmf | greeting"""
    user_text: str = ""
    bot_text: str = ""
    """What the agent generated."""
    spoken_text: str = ""
    """What was actually played before any interruption."""
    interrupted: bool = False
    speech_end: datetime | None = None
    stt_done_ms: float | None = None
    llm_first_token_ms: float | None = None
    first_sentence_ready_ms: float | None = None
    tts_first_audio_ms: float | None = None
    first_frame_out_ms: float | None = None
    prompt_tokens_evaluated: int | None = None
    """Prompt tokens the LLM evaluated for this turn (the rest came from its KV cache); None if unknown."""
    prompt_eval_ms: float | None = None
    """How long that evaluation took."""
    variables: dict[str, str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    """The flow's collected variables after this turn (None: no flow ran in it)."""
    created_at: datetime = Field(default_factory=utcnow)
