"""Contacts (the people Eva talks to, one row across channels): search, change, merge, and erase with every trace.

Blocking functions on an open ``Session`` (the handlers run them in worker threads), plus :func:`remove_files`
for the recordings an erase leaves to delete once its transaction has committed.

Erasing a contact (a GDPR-style request) removes, in one transaction: its conversations on every channel with
their messages, the flow runs it took part in, its calls (those linked to its conversations, and those that came
from its phone number) with their turns, the WhatsApp inbox rows of its WhatsApp id, the e-mail receipts of its
address, its campaign entries with their attempts, and the contact row (a do-not-call entry of its number stays:
it is how the opt-out keeps being honoured).  An audit row records who erased which contact id and how much was
removed, never who the person was.  Knowledge in Chroma belongs to agents, not contacts: nothing of a contact is
stored there.

Merging moves everything of one contact onto another (the second keeps its identifiers where it has none of
its own) and deletes the first; also audited.  A phone number changed by hand is no longer verified: only a
trunk that attests caller ID can vouch for one, and a verified number is what lets WhatsApp memory be shared.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from models import Call, CallTurn, Contact, Conversation, EmailReceipt, FlowRun, InboundMessage, Message
from models.audit import AuditEvent
from voicebot.agent.store import get_contact, normalize_email, normalize_phone, normalize_whatsapp_id
from voicebot.asterisk.files import unlink_below
from voicebot.campaigns import store as campaign_store
from voicebot.errors import Conflict, InvalidInput, NotFound

log = logging.getLogger(__name__)

IDENTIFIERS = ("phone", "whatsapp_id", "email")
MIN_PHONE_DIGITS = 7
"""A number this long at least is a person's; shorter ones (extensions) never match calls for an erasure."""
_NORMALIZE = {"phone": normalize_phone, "whatsapp_id": normalize_whatsapp_id, "email": normalize_email}


def search(q: str | None) -> SelectOfScalar[Contact]:
    """Contacts whose name or any identifier contains ``q`` (case-insensitive; ``%``/``_`` are literal)."""
    query = select(Contact)
    if q:
        pattern = "%" + q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = query.where(or_(*(func.lower(col(getattr(Contact, name))).like(pattern, escape="\\")
                                  for name in ("name", *IDENTIFIERS))))
    return query.order_by(col(Contact.created_at).desc(), col(Contact.id).desc())


def channel_counts(session: Session, contact_ids: list[int]) -> dict[int, dict[str, int]]:
    """Per contact: how many conversations it has on each channel."""
    if not contact_ids:
        return {}
    rows = session.exec(select(Conversation.contact_id, Conversation.channel, func.count())
                        .where(col(Conversation.contact_id).in_(contact_ids))
                        .group_by(col(Conversation.contact_id), col(Conversation.channel))).all()
    counts: dict[int, dict[str, int]] = {}
    for contact_id, channel, count in rows:
        if contact_id is not None:
            counts.setdefault(contact_id, {})[channel] = int(count)
    return counts


def _holder(session: Session, name: str, value: str, other_than: int) -> int | None:
    return session.exec(select(Contact.id).where(col(getattr(Contact, name)) == value,
                                                 col(Contact.id) != other_than)).first()


def update_contact(session: Session, contact_id: int, changes: dict[str, Any]) -> Contact:
    """Change name and identifiers (``None`` clears one).  Conflict when another contact holds an identifier."""
    contact = get_contact(session, contact_id)
    for name in IDENTIFIERS:
        if name not in changes:
            continue
        value = changes[name]
        value = _NORMALIZE[name](value) if value else None
        if value is not None and (other := _holder(session, name, value, contact_id)) is not None:
            raise Conflict(f"contact {other} already has this {name}; merge the two contacts instead",
                           code="contact_identifier_taken", field=name)
        if name == "phone" and value != contact.phone:
            contact.phone_verified = False  # typed by a person: nothing attests it
        setattr(contact, name, value)
    if not (contact.phone or contact.whatsapp_id or contact.email):
        raise InvalidInput("a contact needs a phone number, a WhatsApp id or an e-mail address", field="phone")
    if "name" in changes:
        contact.name = changes["name"]
    session.add(contact)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent change took the identifier first
        raise Conflict("another contact already has one of these identifiers", code="contact_identifier_taken"
                       ) from exc
    return contact


def audit(session: Session, actor: str, action: str, subject: str, details: dict[str, Any]) -> None:
    session.add(AuditEvent(actor=actor[:200], action=action, subject=subject, details=details))


def merge(session: Session, into_id: int, from_id: int, actor: str) -> tuple[Contact, dict[str, int]]:
    """Move ``from_id``'s conversations and flow runs to ``into_id``, fill identifiers ``into`` lacks, delete
    ``from_id``.  Returns the kept contact and what moved."""
    if into_id == from_id:
        raise InvalidInput("a contact cannot be merged into itself", field="from_contact_id")
    into = get_contact(session, into_id)
    try:
        source = get_contact(session, from_id)
    except NotFound as exc:
        raise InvalidInput(f"contact {from_id} does not exist", field="from_contact_id") from exc
    moved = {
        "conversations": _rowcount(session.execute(update(Conversation).where(col(Conversation.contact_id) == from_id)
                                                   .values(contact_id=into_id))),
        "flow_runs": _rowcount(session.execute(update(FlowRun).where(col(FlowRun.contact_id) == from_id)
                                               .values(contact_id=into_id))),
        "campaign_entries": campaign_store.move_entries(session, from_id, into_id),
    }
    taken: dict[str, Any] = {}
    for name in IDENTIFIERS:
        if getattr(into, name) is None and getattr(source, name) is not None:
            taken[name] = getattr(source, name)
    verified = into.phone_verified if into.phone is not None else source.phone_verified
    if not into.name and source.name:
        into.name = source.name
    session.delete(source)
    session.flush()  # the source's identifiers are free before the kept contact takes them (unique columns)
    for name, value in taken.items():
        setattr(into, name, value)
    into.phone_verified = bool(into.phone) and verified
    session.add(into)
    session.flush()
    audit(session, actor, "contact.merge", f"contact:{into_id}",
          {"from_contact_id": from_id, **moved, "identifiers_taken": sorted(taken)})
    return into, moved


@dataclass
class Erased:
    contact_id: int
    counts: dict[str, int]
    recordings: list[str] = field(default_factory=list)
    """Recording paths as the calls stored them (deleted from disk after the transaction commits)."""
    conversations: list[int] = field(default_factory=list)
    """The erased conversations, whose media folders go after the commit too."""


def _from_their_number(session: Session, phone: str, contact_id: int) -> list[Call]:
    """Calls from the contact's number that no other contact owns: the unverified calls (no contact, memory of
    the call alone) are theirs; a call linked to someone else (a shared or switchboard number) is not."""
    digits = phone.removeprefix("+")
    if len(digits) < MIN_PHONE_DIGITS:  # an extension, not a person's number
        return []
    found: list[Call] = []
    owners: dict[int, int | None] = {}
    for call in session.exec(select(Call).where(col(Call.caller).contains(digits[-MIN_PHONE_DIGITS:]))).all():
        try:
            same = normalize_phone(call.caller) in (phone, "+" + digits) or call.caller.strip() == digits
        except InvalidInput:
            same = False
        if not same:
            continue
        if call.conversation_id is not None and call.conversation_id not in owners:
            row = session.get(Conversation, call.conversation_id)
            owners[call.conversation_id] = row.contact_id if row is not None else None
        owner = owners.get(call.conversation_id) if call.conversation_id is not None else None
        if owner is None or owner == contact_id:
            found.append(call)
    return found


def erase(session: Session, contact_id: int, actor: str) -> Erased:
    contact = get_contact(session, contact_id)
    conversations = list(session.exec(select(Conversation.id).where(Conversation.contact_id == contact_id)).all())
    calls = list(session.exec(select(Call).where(col(Call.conversation_id).in_(conversations))).all()
                 ) if conversations else []
    if contact.phone:
        known = {c.id for c in calls}
        for call in _from_their_number(session, contact.phone, contact_id):
            if call.id not in known:
                calls.append(call)
                if call.conversation_id is not None and call.conversation_id not in conversations:
                    conversations.append(call.conversation_id)  # an unverified call's own conversation
    if any(c.ended_at is None and c.outcome == "active" for c in calls):
        raise Conflict("the contact is on a call right now; erase them after it ends", code="contact_on_call")
    call_ids = [c.id for c in calls if c.id is not None]
    recordings = [c.recording_path for c in calls if c.recording_path]

    runs: list[Any] = [col(FlowRun.contact_id) == contact_id]
    if conversations:
        runs.append(col(FlowRun.conversation_id).in_(conversations))
    if call_ids:
        runs.append(col(FlowRun.call_id).in_(call_ids))
    inbox: list[Any] = [col(InboundMessage.conversation_id).in_(conversations)] if conversations else []
    if contact.whatsapp_id:
        inbox.append((col(InboundMessage.channel) == "whatsapp") & (col(InboundMessage.sender) == contact.whatsapp_id))

    # In foreign-key order: turns and runs before their calls, messages and inbox rows before their conversations.
    counts = {
        "call_turns": _delete(session, CallTurn, [col(CallTurn.call_id).in_(call_ids)] if call_ids else []),
        "flow_runs": _delete(session, FlowRun, runs),
        "inbound_messages": _delete(session, InboundMessage, inbox),
        "campaign_entries": campaign_store.erase_entries(session, contact_id),  # its attempts point at calls
        "calls": _delete(session, Call, [col(Call.id).in_(call_ids)] if call_ids else []),
        "messages": _delete(session, Message,
                            [col(Message.conversation_id).in_(conversations)] if conversations else []),
        "conversations": _delete(session, Conversation,
                                 [col(Conversation.id).in_(conversations)] if conversations else []),
        "email_receipts": _delete(session, EmailReceipt,
                                  [col(EmailReceipt.sender) == contact.email] if contact.email else []),
    }
    session.delete(contact)
    session.flush()
    audit(session, actor, "contact.erase", f"contact:{contact_id}", counts)
    return Erased(contact_id, counts, recordings, [c for c in conversations if c is not None])


def remove_files(base: Path, relative: list[str]) -> tuple[int, int]:
    """Delete recording files below ``base`` (links removed, never followed; no folder on the way followed
    either: Asterisk's uid owns them).  Returns (deleted, failed)."""
    deleted = failed = 0
    for name in relative:
        try:
            deleted += unlink_below(base, name)
        except OSError as exc:
            failed += 1
            log.error("could not delete a recording of an erased contact (%s): %s", Path(name).name, exc)
    return deleted, failed


def _delete(session: Session, model: Any, conditions: list[Any]) -> int:
    """Delete the rows of ``model`` matching any of ``conditions`` (none: nothing); returns how many."""
    if not conditions:
        return 0
    return _rowcount(session.execute(delete(model).where(or_(*conditions))))


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
