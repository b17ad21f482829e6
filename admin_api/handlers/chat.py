"""The chat channel over HTTP: sessions, their messages, and replies streamed as Server-Sent Events.

A website's backend (or the console) opens a session with an agent, then posts each visitor message to
``/chat/sessions/{id}/stream`` and relays the events: ``session`` (the stored message ids), ``delta`` (reply
text as the model writes it), ``tool`` (a tool the model called), ``done`` (the stored reply with its sources
and timings) or ``error`` (the API's JSON error body, when the reply failed after the stream began).  Errors
found before the stream starts (bad input, unknown session, a reply already under way) are ordinary JSON 4xx
responses.  Closing the connection cancels the generation; what was generated is stored, marked cancelled.
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from aiohttp import web
from pydantic import Field, StringConstraints
from sqlalchemy import func
from sqlmodel import Session, col, select

from admin_api.framework import CORS_HEADERS_KEY, ApiRouter, Ctx
from admin_api.handlers.common import message_page, paginate
from admin_api.schemas import Id, Input, MessagePage, Output, Pagination, SourceOut, Timestamp
from admin_api.sse import CONTENT_TYPE, EventStream
from channels.chat.service import (
    MAX_EXTERNAL_ID,
    ChatDelta,
    ChatDone,
    ChatStarted,
    ChatTool,
    ChatTurn,
    session_row,
)
from models import Conversation, Message
from models.users import KEY_ONLY_ROLES
from voicebot.agent.core import MAX_INPUT_CHARS
from voicebot.errors import Forbidden, InvalidInput, NotFound

router = ApiRouter("chat")

_SSE_MEDIA = {CONTENT_TYPE: {"type": "string", "description": "events: session, delta, tool, done, error"}}


# ------------------------------ schemas -----------------------------------------------------------
class ChatSessionCreate(Input):
    agent_id: Id
    contact_id: Id | None = None
    """A known contact this session belongs to (the API client vouches for who the visitor is): the agent then
    remembers them across channels.  Without one, the agent remembers only this session."""
    external_id: Annotated[str, StringConstraints(max_length=MAX_EXTERNAL_ID)] = ""
    """The client's own id for the session (e.g. the website's visitor id)."""


class ChatSessionQuery(Pagination):
    agent_id: Id | None = None
    contact_id: Id | None = None


class ChatSessionOut(Output):
    id: int
    agent_id: int | None
    contact_id: int | None
    external_id: str
    messages: int = 0
    started_at: Timestamp
    updated_at: Timestamp


class ChatSessionPage(Output):
    items: list[ChatSessionOut]
    total: int
    limit: int
    offset: int


class ChatMessageIn(Input):
    message: str = Field(min_length=1, max_length=MAX_INPUT_CHARS)


class AgentChatStreamIn(ChatMessageIn):
    session_id: Id | None = None
    """Continue this session (it must be one of this agent's); without it a new session is opened and the
    stream's first event names it."""
    contact_id: Id | None = None
    """For a new session: as in ``POST /chat/sessions``."""


class ChatReplyOut(Output):
    session_id: int
    message_id: int
    user_message_id: int
    reply: str
    sources: list[SourceOut]
    tool_calls: list[dict[str, Any]]
    timings: dict[str, Any]
    fallback: bool
    """The model failed and ``reply`` is the agent's fallback message."""
    error: str | None
    flow: str | None
    """The flow that answered (None when the agent did)."""


# ------------------------------ helpers -----------------------------------------------------------
def _reply_out(done: ChatDone) -> ChatReplyOut:
    return ChatReplyOut(session_id=done.session_id, message_id=done.message_id,
                        user_message_id=done.user_message_id, reply=done.text,
                        sources=[SourceOut.model_validate(c) for c in done.sources],
                        tool_calls=list(done.tool_calls), timings=done.timings, fallback=done.fallback,
                        error=done.error, flow=done.flow)


def _with_counts(session: Session, rows: list[Conversation]) -> list[ChatSessionOut]:
    ids = [r.id for r in rows]
    counts: dict[int, int] = dict(session.exec(
        select(Message.conversation_id, func.count()).where(col(Message.conversation_id).in_(ids))
        .group_by(col(Message.conversation_id))).all()) if ids else {}
    return [ChatSessionOut.model_validate({**r.model_dump(), "messages": counts.get(r.id or 0, 0)}) for r in rows]


async def _session_out(ctx: Ctx, session_id: int) -> ChatSessionOut:
    # Reads come from the database: they work whether or not this process can answer.
    outs: list[ChatSessionOut] = await ctx.services.db(lambda s: _with_counts(s, [session_row(s, session_id)]))
    return outs[0]


def _scope(ctx: Ctx) -> str | None:
    """A chat-role key's own mark (it may continue only the sessions it opened); None for everyone else."""
    who = ctx.user
    return f"{who.kind}:{who.id}" if who.role in KEY_ONLY_ROLES else None


def _check_contact(ctx: Ctx, contact_id: int | None) -> None:
    if contact_id is not None and _scope(ctx) is not None:
        # Naming a contact opens their memory from every channel: only a full designer or admin may vouch.
        raise Forbidden("a chat key cannot open a session for a contact", field="contact_id")


async def _stream(ctx: Ctx, turn: ChatTurn) -> web.StreamResponse:
    """Relay one turn's events as SSE (the turn is released however the stream ends)."""

    async def produce(send: Any) -> None:
        async with contextlib.aclosing(turn.events()) as events:
            async for event in events:
                match event:
                    case ChatStarted():
                        await send("session", {"session_id": event.session_id,
                                               "user_message_id": event.user_message_id,
                                               "assistant_message_id": event.assistant_message_id})
                    case ChatDelta():
                        await send("delta", {"text": event.text})
                    case ChatTool():
                        await send("tool", {"id": event.id, "name": event.name, "arguments": event.arguments})
                    case ChatDone():
                        await send("done", _reply_out(event).model_dump(mode="json"))

    try:
        return await EventStream(ctx.request, ctx.request.get(CORS_HEADERS_KEY)).run(produce)
    finally:
        turn.release()


# ------------------------------ endpoints ---------------------------------------------------------
@router.post("/chat/sessions", role="chat", status=201, errors=(404, 409, 503),
             summary="Open a chat session with an agent")
async def create_session(ctx: Ctx, body: ChatSessionCreate) -> ChatSessionOut:
    _check_contact(ctx, body.contact_id)
    row = await ctx.services.need_chat().create_session(body.agent_id, contact_id=body.contact_id,
                                                        external_id=body.external_id, opened_by=_scope(ctx) or "")
    assert row.id is not None
    return ChatSessionOut.model_validate({**row.model_dump(), "messages": 0})


@router.get("/chat/sessions", role="viewer", summary="Chat sessions, most recently active first")
async def list_sessions(ctx: Ctx, query: ChatSessionQuery) -> ChatSessionPage:
    def load(session: Session) -> tuple[list[ChatSessionOut], int]:
        conditions: list[Any] = [col(Conversation.channel) == "chat"]
        if query.agent_id is not None:
            conditions.append(col(Conversation.agent_id) == query.agent_id)
        if query.contact_id is not None:
            conditions.append(col(Conversation.contact_id) == query.contact_id)
        rows, total = paginate(session, select(Conversation).where(*conditions)
                               .order_by(col(Conversation.updated_at).desc(), col(Conversation.id).desc()), query)
        return _with_counts(session, rows), total

    items, total = await ctx.services.db(load)
    return ChatSessionPage(items=items, total=total, limit=query.limit, offset=query.offset)


@router.get("/chat/sessions/{session_id}", role="viewer", summary="A chat session")
async def get_session(ctx: Ctx, session_id: int) -> ChatSessionOut:
    return await _session_out(ctx, session_id)


@router.get("/chat/sessions/{session_id}/messages", role="viewer",
            summary="A chat session's messages, oldest first")
async def session_messages(ctx: Ctx, session_id: int, query: Pagination) -> MessagePage:
    await ctx.services.db(lambda s: session_row(s, session_id))
    return await message_page(ctx, session_id, query)


@router.post("/chat/sessions/{session_id}/messages", role="chat", errors=(409, 429, 503),
             summary="Send a message and get the whole reply (no streaming)")
async def send_message(ctx: Ctx, session_id: int, body: ChatMessageIn) -> ChatReplyOut:
    return _reply_out(await ctx.services.need_chat().send(session_id, body.message, scoped_to=_scope(ctx)))


@router.post("/chat/sessions/{session_id}/stream", role="chat", errors=(404, 409, 429, 503), response_media=_SSE_MEDIA,
             summary="Send a message; the reply streams as Server-Sent Events (disconnect cancels it)")
async def stream_message(ctx: Ctx, session_id: int, body: ChatMessageIn) -> web.StreamResponse:
    turn = await ctx.services.need_chat().prepare(session_id, body.message, scoped_to=_scope(ctx))
    return await _stream(ctx, turn)


async def _agent_stream(ctx: Ctx, agent_id: int, body: AgentChatStreamIn) -> web.StreamResponse:
    chat = ctx.services.need_chat()
    _check_contact(ctx, body.contact_id)
    if body.session_id is not None:
        if body.contact_id is not None:
            raise InvalidInput("contact_id is only for a new session", field="contact_id")
        row = await chat.get_session(body.session_id)
        if row.agent_id != agent_id:  # as good as absent: one agent's sessions are not reachable via another
            raise NotFound(f"chat session {body.session_id} does not exist for agent {agent_id}",
                           field="session_id")
        session_id = body.session_id
    else:
        # The message is checked before a session is opened for it, so a refused message leaves no session.
        chat.check_message(body.message)
        row = await chat.create_session(agent_id, contact_id=body.contact_id, opened_by=_scope(ctx) or "")
        assert row.id is not None
        session_id = row.id
    return await _stream(ctx, await chat.prepare(session_id, body.message, scoped_to=_scope(ctx)))


@router.post("/agents/{agent_id}/chat/stream", role="chat", errors=(404, 409, 429, 503), response_media=_SSE_MEDIA,
             summary="Chat with an agent, streamed as Server-Sent Events (opens a session unless one is named)")
async def agent_chat_stream(ctx: Ctx, agent_id: int, body: AgentChatStreamIn) -> web.StreamResponse:
    return await _agent_stream(ctx, agent_id, body)


@router.post("/agents/ollama/{agent_id}/chat/stream", role="chat", errors=(404, 409, 429, 503),
             response_media=_SSE_MEDIA,
             summary="The same as /agents/{agent_id}/chat/stream (the path the original product documents)")
async def agent_chat_stream_compat(ctx: Ctx, agent_id: int, body: AgentChatStreamIn) -> web.StreamResponse:
    return await _agent_stream(ctx, agent_id, body)
