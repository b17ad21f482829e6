"""The chat channel: sessions a website (or any client) opens with an agent, and replies streamed token by token.

A chat session is a conversation row with ``channel = "chat"``; its messages are the agent core's messages, so
history, memory, citations, timings and the admin API's conversation views work for chat as for every other
channel.  A session may name a contact (``contact_id``, vouched for by the API client that opens it): the agent
then remembers that contact across channels, exactly as on a call or WhatsApp.  Without one, memory is the
session's own messages.

One message is answered at a time per session: a second message while a reply streams is refused
(:class:`~voicebot.errors.Conflict`, ``chat_busy``), because two interleaved replies would each be built on a
history the other is changing.  Flows answer before the agent (an active run, the agent's ``start_flow``, a
trigger phrase), through the same :class:`~voicebot.flows.conversation.ConversationFlows` as WhatsApp and e-mail.

Use::

    turn = await chat.prepare(session_id, text)      # validates, raises 4xx errors, holds the session
    async with contextlib.aclosing(turn.events()) as events:
        async for event in events: ...               # ChatStarted, ChatDelta*, ChatTool*, ChatDone

Closing the generator early (the client went away) cancels the generation; the core stores what was generated,
marked ``cancelled``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from models import Agent, Contact, Conversation
from models.db import session_scope
from voicebot.agent.core import (
    MAX_INPUT_CHARS,
    SEARCH_KNOWLEDGE,
    AgentCore,
    Citation,
    ReplyDone,
    ReplyStarted,
)
from voicebot.agent.store import get_agent, get_contact
from voicebot.errors import Conflict, InvalidInput, NotFound, RateLimited, Unavailable
from voicebot.flows.conversation import ConversationFlows
from voicebot.llm.base import TextDelta, ToolCall

log = logging.getLogger(__name__)

CHANNEL = "chat"
MAX_EXTERNAL_ID = 255
MAX_TURNS = 8
"""Chat replies under way at once in one process; more are refused (429 with Retry-After) rather than queued
behind one model, so a flood of website visitors cannot make every caller and visitor wait."""
RETRY_AFTER_S = 2.0


# ---------------------------------------------------------------------------------------------- events
@dataclass(frozen=True)
class ChatStarted:
    """Both messages of the turn are stored (the assistant's is filled in when the reply ends)."""

    session_id: int
    user_message_id: int
    assistant_message_id: int


@dataclass(frozen=True)
class ChatDelta:
    text: str


@dataclass(frozen=True)
class ChatTool:
    """A tool the model called (``search_knowledge`` runs inside the core and is reported in ChatDone)."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ChatDone:
    session_id: int
    message_id: int
    """The stored assistant message."""
    user_message_id: int
    text: str
    sources: tuple[Citation, ...] = ()
    tool_calls: tuple[dict[str, Any], ...] = ()
    timings: dict[str, Any] = field(default_factory=dict)
    fallback: bool = False
    error: str | None = None
    flow: str | None = None
    """The flow that answered this message (None when the agent did)."""


ChatEvent = ChatStarted | ChatDelta | ChatTool | ChatDone


# ---------------------------------------------------------------------------------------------- database work
def _create(session: Session, agent_id: int, contact_id: int | None, external_id: str,
            opened_by: str) -> Conversation:
    agent = get_agent(session, agent_id)
    if not agent.active:
        raise Conflict(f"agent {agent_id} is not active", code="agent_inactive", field="agent_id")
    if contact_id is not None:
        try:
            get_contact(session, contact_id)
        except NotFound as exc:
            raise InvalidInput(exc.message, field="contact_id") from exc
    conversation = Conversation(channel=CHANNEL, agent_id=agent_id, contact_id=contact_id,
                                external_id=external_id, opened_by=opened_by)
    session.add(conversation)
    session.flush()
    session.refresh(conversation)
    session.expunge(conversation)
    return conversation


def session_row(session: Session, session_id: int) -> Conversation:
    row = session.get(Conversation, session_id)
    if row is None or row.channel != CHANNEL:
        raise NotFound(f"chat session {session_id} does not exist", field="session_id")
    session.expunge(row)
    return row


def _turn_context(session: Session, session_id: int) -> tuple[Conversation, Agent, Contact | None]:
    row = session_row(session, session_id)
    if row.agent_id is None:
        raise Conflict(f"chat session {session_id} has no agent any more", code="agent_missing",
                       field="session_id")
    try:
        agent = get_agent(session, row.agent_id)
    except NotFound as exc:
        raise Conflict(f"the agent of chat session {session_id} was deleted", code="agent_missing",
                       field="session_id") from exc
    if not agent.active:
        raise Conflict(f"agent {agent.id} is not active", code="agent_inactive", field="session_id")
    contact = session.get(Contact, row.contact_id) if row.contact_id is not None else None
    session.expunge(agent)
    if contact is not None:
        session.expunge(contact)
    return row, agent, contact


# ---------------------------------------------------------------------------------------------- the service
class ChatTurn:
    """One accepted message of a session, holding the session until its events end (see the module docs)."""

    def __init__(self, service: ChatService, session: Conversation, agent: Agent, contact: Contact | None,
                 text: str) -> None:
        assert session.id is not None
        self.service = service
        self.session_id: int = session.id
        self.agent = agent
        self.contact = contact
        self.text = text
        self._released = False
        self._detached: asyncio.Task[Any] | None = None
        """A flow turn still finishing after its client left: the session stays busy until it is done."""

    def release(self) -> None:
        """Let the session take its next message (idempotent; the events' end calls it too).  A flow turn that
        is still finishing keeps the session (and its place among the replies under way) until it ends."""
        if self._detached is not None and not self._detached.done():
            return
        if not self._released:
            self._released = True
            self.service._busy.discard(self.session_id)

    async def events(self) -> AsyncGenerator[ChatEvent, None]:
        try:
            flows = self.service.flows
            if flows is not None:
                caller = (self.contact.email or self.contact.phone or "") if self.contact else ""
                # A flow turn runs to its end even if the client leaves: the run advances step by step and stores
                # the turn last, so a turn cut short would leave the run waiting for an answer to a question
                # the visitor never saw.
                handling = asyncio.create_task(
                    flows.handle(self.agent, self.contact, CHANNEL, self.text, conversation_id=self.session_id,
                                 caller=caller), name=f"chat-flow-turn {self.session_id}")
                self.service._background.add(handling)
                handling.add_done_callback(self.service._background.discard)
                try:
                    flowed = await asyncio.shield(handling)
                except asyncio.CancelledError:
                    self._detached = handling
                    handling.add_done_callback(lambda _task: self.release())
                    raise
                if flowed is not None:
                    yield ChatStarted(self.session_id, flowed.user_message_id, flowed.assistant_message_id)
                    yield ChatDelta(flowed.text)
                    yield ChatDone(self.session_id, flowed.assistant_message_id, flowed.user_message_id,
                                   flowed.text, flow=flowed.flow,
                                   timings={"flow_step": flowed.step, "flow_ended": flowed.ended})
                    return
            reply = self.service.core.reply(self.agent, self.contact, CHANNEL, self.text,
                                            conversation_id=self.session_id, tools=(SEARCH_KNOWLEDGE,))
            async with contextlib.aclosing(reply) as events:
                async for event in events:
                    match event:
                        case ReplyStarted():
                            yield ChatStarted(self.session_id, event.user_message_id, event.assistant_message_id)
                        case TextDelta():
                            if event.text:
                                yield ChatDelta(event.text)
                        case ToolCall():
                            yield ChatTool(event.id, event.name, dict(event.arguments))
                        case ReplyDone():
                            yield _done(self.session_id, event)
        finally:
            self.release()


def _done(session_id: int, done: ReplyDone) -> ChatDone:
    numbers = {k: v for k, v in done.timings.items() if isinstance(v, int | float | str | bool)}
    if done.prompt_tokens is not None:
        numbers["prompt_tokens"] = done.prompt_tokens
    if done.completion_tokens is not None:
        numbers["completion_tokens"] = done.completion_tokens
    return ChatDone(session_id, done.assistant_message_id, done.user_message_id, done.text, done.citations,
                    tuple(c.to_dict() for c in done.tool_calls), numbers, done.fallback, done.error)


class ChatService:
    """Sessions and turns of the chat channel (one per process; the admin API serves it)."""

    def __init__(self, engine: Engine, core: AgentCore | None, flows: ConversationFlows | None = None, *,
                 max_turns: int = MAX_TURNS) -> None:
        self.engine = engine
        self._core = core
        self.flows = flows if flows is not None or core is None else ConversationFlows(engine, core)
        self.max_turns = max_turns
        self._busy: set[int] = set()
        """Sessions with a reply under way in this process."""
        self._background: set[asyncio.Task[Any]] = set()
        """Flow turns whose client left: they finish (and store their turn) without anyone waiting."""

    @property
    def core(self) -> AgentCore:
        if self._core is None:
            raise Unavailable("no language model is configured in this process", code="llm_unavailable")
        return self._core

    async def _db(self, fn: Any, *args: Any) -> Any:
        def transaction() -> Any:
            with session_scope(self.engine) as session:
                return fn(session, *args)

        return await asyncio.to_thread(transaction)

    async def create_session(self, agent_id: int, *, contact_id: int | None = None, external_id: str = "",
                             opened_by: str = "") -> Conversation:
        """``opened_by``: the scoped key opening it (only that key may continue it), '' for a full user or key."""
        self.core  # noqa: B018 - no model, no chat: refused before a session is stored
        if len(external_id) > MAX_EXTERNAL_ID:
            raise InvalidInput(f"external_id is longer than {MAX_EXTERNAL_ID} characters", field="external_id")
        row: Conversation = await self._db(_create, agent_id, contact_id, external_id, opened_by)
        log.info("chat session %s opened with agent %d", row.id, agent_id)
        return row

    async def get_session(self, session_id: int) -> Conversation:
        row: Conversation = await self._db(session_row, session_id)
        return row

    def check_message(self, text: str) -> str:
        """The message as it will be answered, or InvalidInput (empty, too long); Unavailable without a model."""
        self.core  # noqa: B018 - raises Unavailable first: no model, no answer, whatever the message
        text = text.strip()
        if not text:
            raise InvalidInput("the message is empty", field="message")
        if len(text) > MAX_INPUT_CHARS:
            raise InvalidInput(f"the message is longer than {MAX_INPUT_CHARS} characters", field="message")
        return text

    async def prepare(self, session_id: int, text: str, *, scoped_to: str | None = None) -> ChatTurn:
        """Accept ``text`` for the session or raise: InvalidInput (empty, too long), NotFound (no such session,
        or one ``scoped_to`` a key did not open), Conflict (agent gone or inactive, a reply already under way),
        RateLimited (too many replies under way), Unavailable (no model)."""
        text = self.check_message(text)
        row, agent, contact = await self._db(_turn_context, session_id)
        if scoped_to is not None and row.opened_by != scoped_to:
            # Another visitor's session: continuing it would read their conversation back.
            raise NotFound(f"chat session {session_id} does not exist", field="session_id")
        if session_id in self._busy:
            raise Conflict(f"chat session {session_id} is still answering the previous message", code="chat_busy",
                           field="session_id")
        if len(self._busy) >= self.max_turns:
            raise RateLimited(f"{len(self._busy)} chat replies are under way; try again shortly",
                              retry_after=RETRY_AFTER_S, code="chat_overloaded")
        self._busy.add(session_id)
        return ChatTurn(self, row, agent, contact, text)

    async def send(self, session_id: int, text: str, *, scoped_to: str | None = None) -> ChatDone:
        """One whole reply (for clients that do not stream)."""
        turn = await self.prepare(session_id, text, scoped_to=scoped_to)
        async with contextlib.aclosing(turn.events()) as events:
            async for event in events:
                if isinstance(event, ChatDone):
                    return event
        raise AssertionError("a chat turn ended without ChatDone")  # pragma: no cover - events() always ends so
