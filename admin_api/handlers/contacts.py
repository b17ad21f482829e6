"""Contacts: list and search, detail with per-channel counts, change, their conversations on every channel, merge
two contacts, and erase one with all their messages, transcripts and recordings (audited).  The database work is
in ``admin_api.contacts``."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from pydantic import Field, StringConstraints
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from admin_api import contacts
from admin_api.framework import ApiRouter, Ctx
from admin_api.handlers.calls import RECORDINGS, recording_file
from admin_api.handlers.common import get_row, paginate
from admin_api.schemas import (
    ConversationOut,
    ConversationPage,
    Id,
    Input,
    Output,
    Pagination,
    Text200,
    Timestamp,
    optional,
)
from channels import attachments
from models import AuditEvent, Contact, Conversation
from voicebot.agent.store import get_contact
from voicebot.errors import Conflict, NotFound

router = ApiRouter("contacts")
audit_router = ApiRouter("audit")


# ------------------------------ schemas -----------------------------------------------------------
class ContactQuery(Pagination):
    q: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    """Part of the name, phone number, WhatsApp id or e-mail address (case-insensitive)."""


class ContactOut(Output):
    id: int
    name: str
    phone: str | None
    phone_verified: bool
    """The number came from a trunk that attests caller ID (only then does it share WhatsApp memory)."""
    whatsapp_id: str | None
    email: str | None
    created_at: Timestamp
    conversations: dict[str, int] = Field(default_factory=dict)
    """Conversations per channel (voice, whatsapp, email, chat)."""


class ContactPage(Output):
    items: list[ContactOut]
    total: int
    limit: int
    offset: int


class ContactUpdate(Input):
    """Leave a field out to keep it; ``null`` clears an identifier (one must remain)."""

    name: Text200 = optional()
    phone: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    whatsapp_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    email: Annotated[str, StringConstraints(min_length=1, max_length=320)] | None = None


class ContactMerge(Input):
    from_contact_id: Id
    """The contact to fold into this one (deleted afterwards)."""


class MergeOut(Output):
    contact: ContactOut
    moved: dict[str, int]


class EraseOut(Output):
    contact_id: int
    erased: dict[str, int]
    """Rows removed per kind, and recordings deleted."""
    recordings_not_deleted: int
    """Recording files that could not be deleted (logged with the reason); the rows are gone either way."""


class AuditQuery(Pagination):
    action: Annotated[str, StringConstraints(max_length=64)] | None = None
    subject: Annotated[str, StringConstraints(max_length=200)] | None = None


class AuditOut(Output):
    id: int
    at: Timestamp
    actor: str
    action: str
    subject: str
    details: dict[str, Any] | None


class AuditPage(Output):
    items: list[AuditOut]
    total: int
    limit: int
    offset: int


# ------------------------------ helpers -----------------------------------------------------------
def _actor(ctx: Ctx) -> str:
    who = ctx.user
    return f"{who.kind}:{who.id} {who.name}"


def _out(session: Session, rows: list[Contact]) -> list[ContactOut]:
    counts = contacts.channel_counts(session, [r.id for r in rows if r.id is not None])
    return [ContactOut.model_validate({**r.model_dump(), "conversations": counts.get(r.id or 0, {})}) for r in rows]


# ------------------------------ endpoints ---------------------------------------------------------
@router.get("/contacts", role="viewer", summary="Contacts, newest first; q searches name and identifiers")
async def list_contacts(ctx: Ctx, query: ContactQuery) -> ContactPage:
    def load(session: Session) -> tuple[list[ContactOut], int]:
        rows, total = paginate(session, contacts.search(query.q), query)
        return _out(session, rows), total

    items, total = await ctx.services.db(load)
    return ContactPage(items=items, total=total, limit=query.limit, offset=query.offset)


@router.get("/contacts/{contact_id}", role="viewer", summary="A contact, with conversations per channel")
async def get_contact_detail(ctx: Ctx, contact_id: int) -> ContactOut:
    outs: list[ContactOut] = await ctx.services.db(lambda s: _out(s, [get_contact(s, contact_id)]))
    return outs[0]


@router.patch("/contacts/{contact_id}", role="designer", errors=(409,),
              summary="Change a contact's name or identifiers (a changed phone number is no longer verified)")
async def update_contact(ctx: Ctx, contact_id: int, body: ContactUpdate) -> ContactOut:
    changes = body.model_dump(exclude_unset=True)

    def change(session: Session) -> list[ContactOut]:
        return _out(session, [contacts.update_contact(session, contact_id, changes)])

    outs: list[ContactOut] = await ctx.services.db(change)
    return outs[0]


@router.get("/contacts/{contact_id}/conversations", role="viewer",
            summary="A contact's conversations on every channel, most recent first")
async def contact_conversations(ctx: Ctx, contact_id: int, query: Pagination) -> ConversationPage:
    await get_row(ctx, Contact, contact_id, "contact")

    def load(session: Session) -> tuple[list[Conversation], int]:
        return paginate(session, select(Conversation).where(col(Conversation.contact_id) == contact_id)
                        .order_by(col(Conversation.updated_at).desc(), col(Conversation.id).desc()), query)

    rows, total = await ctx.services.db(load)
    return ConversationPage(items=[ConversationOut.model_validate(r) for r in rows], total=total,
                            limit=query.limit, offset=query.offset)


@router.post("/contacts/{contact_id}/merge", role="admin",
             summary="Fold another contact into this one (its conversations and memory join this contact's)")
async def merge_contacts(ctx: Ctx, contact_id: int, body: ContactMerge) -> MergeOut:
    actor = _actor(ctx)

    def run(session: Session) -> MergeOut:
        kept, moved = contacts.merge(session, contact_id, body.from_contact_id, actor)
        return MergeOut(contact=_out(session, [kept])[0], moved=moved)

    result: MergeOut = await ctx.services.db(run)
    return result


@router.delete("/contacts/{contact_id}", role="admin", status=200, errors=(409,),
               summary="Erase a contact and every trace: conversations, messages, calls, transcripts, recordings")
async def erase_contact(ctx: Ctx, contact_id: int) -> EraseOut:
    actor = _actor(ctx)
    for attempt in range(3):
        try:
            erased = await ctx.services.db(lambda s: contacts.erase(s, contact_id, actor))
            break
        except IntegrityError as exc:  # a message arrived in one of their conversations meanwhile: again
            if attempt == 2:
                raise Conflict("the contact's data kept changing; try again", code="contact_busy") from exc
    settings = ctx.services.settings
    names: list[str] = []
    for stored in erased.recordings:
        try:
            names.append(f"{RECORDINGS}/{recording_file(settings, stored)}")
        except NotFound:
            continue  # a path outside the recordings folder is not ours to delete
    deleted, failed = await asyncio.to_thread(contacts.remove_files, settings.asterisk_dir, names)
    media = await asyncio.to_thread(attachments.remove_conversations, settings.media_dir, erased.conversations)
    return EraseOut(contact_id=contact_id, erased={**erased.counts, "recordings": deleted, "media_folders": media},
                    recordings_not_deleted=failed)


@audit_router.get("/audit", role="admin", summary="The audit trail (erasures, merges), newest first")
async def list_audit(ctx: Ctx, query: AuditQuery) -> AuditPage:
    def load(session: Session) -> tuple[list[AuditEvent], int]:
        conditions: list[Any] = []
        if query.action:
            conditions.append(col(AuditEvent.action) == query.action)
        if query.subject:
            conditions.append(col(AuditEvent.subject) == query.subject)
        return paginate(session, select(AuditEvent).where(*conditions)
                        .order_by(col(AuditEvent.at).desc(), col(AuditEvent.id).desc()), query)

    rows, total = await ctx.services.db(load)
    return AuditPage(items=[AuditOut.model_validate(r) for r in rows], total=total, limit=query.limit,
                     offset=query.offset)
