"""The production :class:`~voicebot.pipeline.responder.Responder`: the shared agent core, on the voice channel.

One conversation per call session (created on the first caller turn, keyed by the call row's id, so a
channel transferred back into Eva starts a new one; the call row's ``conversation_id`` names it).  SIP caller
ID is trivially spoofed, so the caller is a contact (one person by phone number across channels, remembered
from WhatsApp or e-mail too) only when the call's ``caller_verified`` is set; otherwise the conversation has no
contact and its memory is this call alone.  A campaign call's contact variables (``CallContext.variables``) go
with every turn as the reply's ``context``: the model reads them after the agent's cached prompt prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import col

from models import Agent, Call, Contact
from models.db import session_scope
from voicebot.agent import store
from voicebot.agent.core import AgentCore
from voicebot.agent.core import ReplyDone as CoreDone
from voicebot.agent.core import ReplyStarted as CoreStarted
from voicebot.errors import InvalidInput
from voicebot.llm.base import TextDelta as LlmDelta
from voicebot.llm.base import ToolCall as LlmToolCall
from voicebot.pipeline.responder import CallContext, ReplyDone, ReplyEvent, ReplyStarted, TextDelta, ToolCall

log = logging.getLogger(__name__)


class AgentResponder:
    def __init__(self, engine: Engine, core: AgentCore) -> None:
        self.engine = engine
        self.core = core
        self._conversations: dict[int, int] = {}
        """Call id → conversation id."""

    def _load(self, ctx: CallContext) -> tuple[Agent, Contact | None]:
        with session_scope(self.engine) as session:
            agent = store.get_agent(session, ctx.agent_id)
            contact = None
            if ctx.caller and ctx.caller_verified:
                try:
                    contact = store.find_or_create_contact(session, phone=ctx.caller, verified=True)
                except InvalidInput:
                    contact = None  # anonymous or a SIP user name instead of a number
            return agent, contact

    def _link(self, call_id: int, conversation_id: int) -> None:
        with session_scope(self.engine) as session:
            session.execute(update(Call).where(col(Call.id) == call_id).values(conversation_id=conversation_id))

    async def respond(self, ctx: CallContext, text: str) -> AsyncIterator[ReplyEvent]:
        agent, contact = await asyncio.to_thread(self._load, ctx)
        conversation_id = self._conversations.get(ctx.call_id)
        if conversation_id is None:
            conversation_id = await self.core.start_conversation(
                ctx.agent_id, contact.id if contact else None, "voice", external_id=ctx.channel_id)
            self._conversations[ctx.call_id] = conversation_id
            # The call row points at its conversation: the call is then found from the contact (history,
            # erasure) and its transcript beside the messages.
            await asyncio.to_thread(self._link, ctx.call_id, conversation_id)
        started = asyncio.get_running_loop().time()
        async with contextlib.aclosing(self.core.reply(agent, contact, "voice", text, conversation_id=conversation_id,
                                                       context=ctx.variables)) as events:
            async for event in events:
                if isinstance(event, CoreStarted):
                    yield ReplyStarted(event.assistant_message_id)
                elif isinstance(event, LlmDelta):
                    yield TextDelta(event.text)
                elif isinstance(event, LlmToolCall):
                    yield ToolCall(event.name, dict(event.arguments))
                elif isinstance(event, CoreDone):
                    yield ReplyDone(text=event.text, message_id=event.assistant_message_id,
                                    citations=tuple(c.to_dict() for c in event.citations),
                                    prompt_tokens_evaluated=event.timings.get("prompt_tokens_evaluated"),
                                    prompt_eval_ms=event.timings.get("prompt_eval_ms"),
                                    first_token_at=_at(started, event.timings.get("llm_first_token_ms")))

    async def mark_interrupted(self, ctx: CallContext, message_id: int | None, spoken_text: str) -> None:
        if message_id is not None:
            await self.core.mark_interrupted(message_id, spoken_text)

    def forget(self, call_id: int) -> None:
        """The call ended: drop its conversation id (it stays in the database)."""
        self._conversations.pop(call_id, None)


def _at(started: float, ms: object) -> float | None:
    """Loop time ``ms`` milliseconds after ``started`` (the core times from when its reply began)."""
    return started + float(ms) / 1000.0 if isinstance(ms, int | float) else None
