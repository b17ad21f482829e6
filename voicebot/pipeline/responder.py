"""What the call pipeline needs from the agent core: a streaming reply for one caller turn.

Kept as a tiny Protocol so the pipeline can be driven by the real agent core (``voicebot.agent``) in production
and by a scripted responder in tests of the pipeline's mechanics.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from voicebot.audio import Audio


@dataclass(frozen=True)
class ReplyStarted:
    """The reply's message exists (its id lets an interruption be recorded even if the reply never finishes)."""

    message_id: int


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReplyDone:
    text: str
    message_id: int | None = None
    citations: tuple[dict[str, Any], ...] = ()
    prompt_tokens_evaluated: int | None = None
    """Prompt tokens the LLM evaluated for this reply (None when the backend cannot tell)."""
    prompt_eval_ms: float | None = None
    first_token_at: float | None = None
    """Event-loop time of the model's first token, when text reached the call later than that (the grounding
    guard holds a sentence until its end): the stage timings report the model's own first token."""
    variables: dict[str, str] | None = None
    """A flow's variables after this reply (stored on the turn row); None when no flow ran."""


@dataclass(frozen=True)
class Listen:
    """The reply waits for an answer of this shape (a flow's collect step): how DTMF keys are read until the
    next reply, and how long silence after the reply has finished playing counts as no input."""

    max_digits: int = 64
    """The keys are the answer as soon as this many were pressed (1 for a menu: no inter-digit wait)."""
    terminator: str = "#"
    dtmf_timeout_s: float = 2.0
    no_input_s: float | None = None


@dataclass(frozen=True)
class PlayPrompt:
    """Play a recorded sound (a flow step's ``prompt``) in place of synthesized speech; ``text`` is what it
    says, for the transcript."""

    audio: Audio
    text: str


ReplyEvent = ReplyStarted | TextDelta | ToolCall | ReplyDone | Listen | PlayPrompt


@dataclass(frozen=True)
class CallerInput:
    """One caller turn as a flow-aware responder sees it."""

    kind: Literal["start", "speech", "dtmf", "no_input"]
    text: str = ""
    """speech: the transcript; dtmf: how the keys read to an LLM; start: the agent's greeting."""
    keys: str = ""
    """dtmf: the keys pressed."""


@dataclass(frozen=True)
class CallContext:
    call_id: int
    channel_id: str
    caller: str
    did: str
    agent_id: int
    agent_name: str
    greeting: str
    fallback: str
    voice: str = ""
    """The voice key the speaker uses (voicebot.tts.voices.resolve_voice): a Piper path, ``espeak:<lang>``, or ''."""
    language: str = "en"
    """The agent's language (BCP-47): the fixed phrases (voicebot.i18n) and the speech model follow it."""
    contact_id: int | None = None
    conversation_id: int | None = None
    caller_verified: bool = False
    """The caller ID is trustworthy (a trunk marked verified, or a call Eva placed): only then may it name a
    contact and bring that contact's memory from other calls and channels."""
    flow: str = ""
    """The flow the dialplan asked for (``Set(EVA_FLOW=name)`` before ``Stasis()``, see
    :mod:`voicebot.ari.handback`), '' when none: a flow-aware responder runs it."""
    variables: dict[str, str] = field(default_factory=dict)
    """The contact's variables on a campaign call Eva placed (name and the import's columns, bounded by
    :func:`voicebot.pipeline.variables.call_variables`); empty on every other call.  The greeting was filled
    with them, a flow starts with them set, and the agent's LLM reads them as the call's context."""


class Responder(Protocol):
    def respond(self, ctx: CallContext, text: str) -> AsyncIterator[ReplyEvent]:
        """Stream the agent's reply to ``text``.  Must not raise for LLM failures (yield the fallback instead)."""
        ...

    async def mark_interrupted(self, ctx: CallContext, message_id: int | None, spoken_text: str) -> None:
        """Record that the reply was cut off by the caller after ``spoken_text``."""
        ...


@runtime_checkable
class InputResponder(Responder, Protocol):
    """A responder that also takes typed turns (flows): the call's start, raw DTMF keys, and no input
    after a :class:`Listen` timeout.  The session prefers :meth:`respond_input` when a responder has it."""

    def respond_input(self, ctx: CallContext, event: CallerInput) -> AsyncIterator[ReplyEvent]: ...
