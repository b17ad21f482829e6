"""Calls: history with filters and pagination, detail with turns, recordings (Range), live calls, hangup,
outbound calls; conversations and messages of every channel (read-only), and the files kept with messages."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web
from sqlalchemy import func
from sqlmodel import Session, col, select

from admin_api.control import OriginateRequest
from admin_api.framework import ApiRouter, Ctx
from admin_api.handlers.common import aware_utc, flow_runs_of, get_row, message_page, paginate
from admin_api.schemas import (
    CallDetail,
    CallOut,
    CallPage,
    CallQuery,
    CallTurnOut,
    ConversationDetail,
    ConversationOut,
    ConversationPage,
    ConversationQuery,
    FlowRunOut,
    LiveCallOut,
    MessagePage,
    OutgoingCall,
    OutgoingCallOut,
    Pagination,
)
from admin_api.trunks import endpoint_name
from channels import attachments
from models import Call, CallTurn, Conversation, Message
from voicebot.asterisk.files import open_below
from voicebot.asterisk.render import instance_path
from voicebot.config import Settings
from voicebot.errors import Conflict, InvalidInput, NotFound

router = ApiRouter("calls")
conversations = ApiRouter("conversations")

LOCAL_CARRIER_ENDPOINT = "carrier"
"""The pjsip endpoint of Eva's local carrier (asterisk/config/pjsip.conf), used when no trunk is named."""


def _call_out(call: Call) -> CallOut:
    return CallOut.model_validate({**call.model_dump(), "has_recording": bool(call.recording_path)})


@router.get("/calls", role="viewer", summary="Call history, newest first, with filters")
async def list_calls(ctx: Ctx, query: CallQuery) -> CallPage:
    if query.since and query.until and query.since >= query.until:
        raise InvalidInput("since must be before until", field="since")

    def load(session: Session) -> tuple[list[Call], int]:
        conditions: list[Any] = []
        if query.agent_id is not None:
            conditions.append(col(Call.agent_id) == query.agent_id)
        if query.caller is not None:
            conditions.append(col(Call.caller).startswith(query.caller, autoescape=True))
        if query.did is not None:
            conditions.append(col(Call.did) == query.did)
        if query.outcome is not None:
            conditions.append(col(Call.outcome) == query.outcome)
        if query.direction is not None:
            conditions.append(col(Call.direction) == query.direction)
        if query.since is not None:
            conditions.append(col(Call.started_at) >= aware_utc(query.since))
        if query.until is not None:
            conditions.append(col(Call.started_at) < aware_utc(query.until))
        rows = session.exec(
            select(Call)
            .where(*conditions)
            .order_by(col(Call.started_at).desc(), col(Call.id).desc())
            .offset(query.offset)
            .limit(query.limit)
        ).all()
        total = session.exec(select(func.count()).select_from(Call).where(*conditions)).one()
        return list(rows), int(total)

    rows, total = await ctx.services.db(load)
    return CallPage(items=[_call_out(c) for c in rows], total=total, limit=query.limit, offset=query.offset)


@router.get("/calls/live", role="viewer", errors=(502, 503), summary="Calls up in Asterisk right now")
async def live_calls(ctx: Ctx) -> list[LiveCallOut]:
    live = await ctx.services.need_calls().live_calls()
    ids = [c.channel_id for c in live if c.channel_id]

    def rows(session: Session) -> dict[str, int]:
        if not ids:
            return {}
        found = session.exec(select(Call.channel_id, Call.id).where(col(Call.channel_id).in_(ids))).all()
        return {channel: call_id for channel, call_id in found if call_id is not None}

    known = await ctx.services.db(rows)
    return [
        LiveCallOut(
            channel_id=c.channel_id,
            channel=c.channel,
            state=c.state,
            caller=c.caller,
            did=c.did,
            duration_s=c.duration_s,
            call_id=known.get(c.channel_id),
        )
        for c in live
    ]


@router.post(
    "/calls/outgoing",
    role="admin",
    status=202,
    errors=(409, 502, 503),
    summary="Call a number from an agent through a trunk",
)
async def outgoing_call(ctx: Ctx, body: OutgoingCall) -> OutgoingCallOut:
    control = ctx.services.need_calls()
    try:
        agent = await ctx.services.agents.get_agent(body.agent_id)
    except NotFound as exc:
        raise InvalidInput(f"agent {body.agent_id} does not exist", field="agent_id") from exc
    if not agent.active:
        raise Conflict(f"agent {agent.name!r} is not active", field="agent_id")
    endpoint = LOCAL_CARRIER_ENDPOINT
    if body.trunk_id is not None:
        try:
            trunk = await ctx.services.trunks.get(body.trunk_id)
        except NotFound as exc:
            raise InvalidInput(f"trunk {body.trunk_id} does not exist", field="trunk_id") from exc
        if not trunk.enabled:
            raise Conflict(f"trunk {trunk.name!r} is disabled", field="trunk_id")
        endpoint = endpoint_name(trunk.name)
    assert agent.id is not None
    channel_id = await control.originate(
        OriginateRequest(
            agent_id=agent.id,
            agent_name=agent.name,
            number=body.number,
            endpoint=endpoint,
            caller_id=body.caller_id,
            timeout_s=body.timeout_s,
        )
    )
    return OutgoingCallOut(channel_id=channel_id)


@router.get("/calls/{call_id}", role="viewer", summary="A call with its turns and per-stage timings")
async def get_call(ctx: Ctx, call_id: int) -> CallDetail:
    call = await get_row(ctx, Call, call_id, "call")
    turns = await ctx.services.db(
        lambda s: list(
            s.exec(
                select(CallTurn)
                .where(CallTurn.call_id == call_id)
                .order_by(col(CallTurn.index), col(CallTurn.id))
            ).all()
        )
    )
    runs = await flow_runs_of(ctx, call_id=call_id)
    return CallDetail.model_validate(
        {
            **_call_out(call).model_dump(),
            "turns": [CallTurnOut.model_validate(t) for t in turns],
            "flow_runs": [FlowRunOut.model_validate(r) for r in runs],
        }
    )


RECORDINGS = "spool/recording"
"""The recordings folder, relative to the instance folder (Asterisk writes the files flat into it)."""


def recording_file(settings: Settings, stored: str) -> str:
    """The file name of a call's recording inside the recordings folder.  The voice loop may store the path as
    Asterisk sees it (inside the chroot) or as a host path; either way it must name a file directly in the
    recordings folder (checked on the text, without resolving links Asterisk's uid could plant)."""
    inner = instance_path(settings)
    if stored.startswith(inner + "/"):
        path = Path(os.path.normpath(settings.asterisk_dir / stored[len(inner) + 1 :]))
    elif Path(stored).is_absolute():
        path = Path(os.path.normpath(stored))
    else:
        path = Path(os.path.normpath(settings.recordings_dir / stored))
    if path.parent != Path(os.path.normpath(settings.recordings_dir)) or path.name in ("", ".", ".."):
        raise NotFound("the recording is not in the recordings folder", field="recording")
    return path.name


class _DescriptorResponse(web.FileResponse):
    """A FileResponse over a descriptor opened without following links (Range support unchanged).

    The recordings folder belongs to Asterisk's uid: checking a path and letting FileResponse open it later
    would let that uid swap in a link to a root-only file between the two.  ``/proc/self/fd/N`` reopens the
    very file already open, whatever now sits at its old path.
    """

    def __init__(self, fd: int, headers: dict[str, str]) -> None:
        super().__init__(Path(f"/proc/self/fd/{fd}"), headers=headers)
        self._fd: int | None = fd

    def close_descriptor(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    async def prepare(self, request: web.BaseRequest) -> Any:
        try:
            return await super().prepare(request)
        finally:
            self.close_descriptor()

    def __del__(self) -> None:  # a response that was never sent
        self.close_descriptor()


@router.get(
    "/calls/{call_id}/recording",
    role="viewer",
    errors=(416,),
    response_media={"audio/wav": {"type": "string", "format": "binary"}},
    summary="Download the call recording (streamed; Range requests supported)",
)
async def get_recording(ctx: Ctx, call_id: int) -> web.StreamResponse:
    call = await get_row(ctx, Call, call_id, "call")
    if not call.recording_path:
        raise NotFound(f"call {call_id} has no recording", field="recording")
    name = recording_file(ctx.services.settings, call.recording_path)
    try:
        fd = await asyncio.to_thread(open_below, ctx.services.settings.asterisk_dir, f"{RECORDINGS}/{name}")
    except FileNotFoundError as exc:
        raise NotFound(f"the recording of call {call_id} is missing on disk", field="recording") from exc
    # FileResponse streams from disk in chunks and answers Range / If-Range itself (206, 416).
    return _DescriptorResponse(
        fd,
        headers={
            "Content-Type": "audio/wav",
            "Content-Disposition": f'attachment; filename="call-{call_id}.wav"',
        },
    )


@router.post("/calls/{call_id}/hangup", role="admin", errors=(409, 502, 503), summary="Hang up a live call")
async def hangup_call(ctx: Ctx, call_id: int) -> None:
    control = ctx.services.need_calls()
    call = await get_row(ctx, Call, call_id, "call")
    if call.ended_at is not None:
        raise Conflict(f"call {call_id} has already ended", field="call_id")
    try:
        await control.hangup(call.channel_id)
    except NotFound as exc:
        raise Conflict(f"call {call_id} is not live in Asterisk", field="call_id") from exc


# ------------------------------ conversations -----------------------------------------------------
@conversations.get("/conversations", role="viewer", summary="Conversations of every channel, newest first")
async def list_conversations(ctx: Ctx, query: ConversationQuery) -> ConversationPage:
    def load(session: Session) -> tuple[list[Conversation], int]:
        conditions: list[Any] = []
        if query.channel is not None:
            conditions.append(col(Conversation.channel) == query.channel)
        if query.agent_id is not None:
            conditions.append(col(Conversation.agent_id) == query.agent_id)
        if query.contact_id is not None:
            conditions.append(col(Conversation.contact_id) == query.contact_id)
        return paginate(session, select(Conversation).where(*conditions)
                        .order_by(col(Conversation.updated_at).desc(), col(Conversation.id).desc()), query)

    rows, total = await ctx.services.db(load)
    return ConversationPage(
        items=[ConversationOut.model_validate(r) for r in rows],
        total=total,
        limit=query.limit,
        offset=query.offset,
    )


@conversations.get(
    "/conversations/{conversation_id}",
    role="viewer",
    summary="Get a conversation, with the flows it ran and the variables they collected",
)
async def get_conversation(ctx: Ctx, conversation_id: int) -> ConversationDetail:
    row = await get_row(ctx, Conversation, conversation_id, "conversation")
    runs = await flow_runs_of(ctx, conversation_id=conversation_id)
    return ConversationDetail.model_validate(
        {
            **ConversationOut.model_validate(row).model_dump(),
            "flow_runs": [FlowRunOut.model_validate(r) for r in runs],
        }
    )


@conversations.get(
    "/conversations/{conversation_id}/messages",
    role="viewer",
    summary="A conversation's messages, oldest first",
)
async def list_messages(ctx: Ctx, conversation_id: int, query: Pagination) -> MessagePage:
    await get_row(ctx, Conversation, conversation_id, "conversation")
    return await message_page(ctx, conversation_id, query)


SERVED_AS_IS = frozenset({
    "application/pdf", "image/png", "image/jpeg", "image/gif", "image/webp", "audio/ogg", "audio/mpeg", "audio/mp4",
    "audio/aac", "audio/amr", "audio/wav", "video/mp4", "video/3gpp", "text/plain", "text/csv", "application/zip",
    "application/msword", "application/vnd.ms-excel", "application/vnd.ms-powerpoint",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation", "message/rfc822",
})
"""Content types a kept file is served with; any other (HTML, SVG, scripts: what a browser would run in the API's
origin) goes as application/octet-stream.  The sender chose the type, so it is a claim, never trusted further."""


def content_disposition(name: str) -> str:
    """``attachment`` with the file name twice (RFC 6266): an ASCII ``filename`` fallback and the exact UTF-8
    ``filename*`` (RFC 5987), so no name can end the header value or add a parameter."""
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\;%' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


@conversations.get(
    "/messages/{message_id}/attachments/{index}",
    role="viewer",
    path_patterns={"index": r"\d{1,4}"},
    response_media={"application/octet-stream": {"type": "string", "format": "binary"}},
    summary="Download a file kept with a message (the index in its attachments, from 0; Range supported)",
)
async def get_attachment(ctx: Ctx, message_id: int, index: str) -> web.StreamResponse:
    message = await get_row(ctx, Message, message_id, "message")
    rows = message.attachments or []
    position = int(index)
    if position >= len(rows) or not isinstance(rows[position], dict):
        raise NotFound(f"message {message_id} has no attachment {position}", code="attachment_not_found",
                       field="index")
    try:
        listed = attachments.Attachment.from_dict(rows[position])
    except (TypeError, ValueError) as exc:
        raise NotFound("the attachment was not kept", code="attachment_not_kept", field="index") from exc
    media_dir = ctx.services.settings.media_dir
    # Only a file this message's conversation kept (whatever the row says), opened without following links.
    if listed.path.split("/", 1)[0] != str(message.conversation_id):
        raise NotFound("the attachment was not kept", code="attachment_not_kept", field="index")
    await asyncio.to_thread(attachments.kept_path, media_dir, listed)
    try:
        fd = await asyncio.to_thread(open_below, media_dir, listed.path)
    except FileNotFoundError as exc:
        raise NotFound("the attachment's file is gone", code="attachment_not_found", field="index") from exc
    content_type = listed.content_type.split(";", 1)[0].strip().lower()
    name = attachments.clean_name(listed.name, fallback=f"attachment-{position}")
    return _DescriptorResponse(fd, headers={
        "Content-Type": content_type if content_type in SERVED_AS_IS else "application/octet-stream",
        "Content-Disposition": content_disposition(name),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
    })
