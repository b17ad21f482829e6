"""Database work shared by the text channels (blocking functions on an open ``Session``; the channel services
run them in worker threads).

A channel turn is the pair of messages the agent core stores: the user's (``external_id`` = the channel's id of
the inbound message) and the assistant's reply (``external_id`` = the channel's id of the reply once it was
sent).  So "has this inbound message been answered?" is a question for the database, which is what makes
redelivery and crash recovery safe: an answered message is never answered twice, and a reply that was generated
but not sent is sent as it was stored, not generated again.  A turn is always looked up within one contact's
conversations: a message id is a claim made by the sender, and another sender reusing it must neither suppress
nor receive someone else's reply.

The inbox (``inbound_messages``) is shared by every worker on one database.  A worker answers a row only after
claiming it with one conditional ``UPDATE`` (atomic on SQLite and PostgreSQL alike: on PostgreSQL a concurrent
claim waits for the row lock and then re-checks the condition), holds the claim with a renewed lease, and
writes each reply part's intent (``sending_part``) under that claim before the POST.  So two workers never
generate or send the same reply, a crashed worker's rows come free when its lease runs out, and a part whose
fate is unknown is never sent a second time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, exists, func, or_, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from models import Agent, Contact, Conversation, InboundMessage, Message, as_utc, utcnow
from voicebot.agent.store import get_agent_by_name
from voicebot.errors import NotFound, Unavailable


@dataclass(frozen=True)
class StoredTurn:
    """An inbound message already in the database and the reply stored after it (if any)."""

    conversation_id: int
    user_message_id: int
    assistant_message_id: int | None
    reply_text: str
    reply_external_id: str
    reply_complete: bool
    """The reply was generated to its end (not cut off by a shutdown) and is not empty."""

    @property
    def answered(self) -> bool:
        """The reply was sent (its channel id is recorded)."""
        return bool(self.reply_external_id)


@dataclass(frozen=True)
class ConversationRow:
    """A conversation of one channel with its contact's address (for the admin API)."""

    id: int
    contact_id: int | None
    contact_name: str
    address: str
    agent_id: int | None
    external_id: str
    messages: int
    started_at: datetime
    updated_at: datetime


def channel_agent(session: Session, name: str) -> Agent:
    """The active agent named ``name``; Unavailable when it is missing or deactivated (the channel cannot
    answer, which is a configuration problem, not the sender's)."""
    try:
        agent = get_agent_by_name(session, name)
    except NotFound as exc:
        raise Unavailable(f"the channel's agent {name!r} does not exist", code="channel_agent_missing",
                          field="agent") from exc
    if not agent.active:
        raise Unavailable(f"the channel's agent {name!r} is not active", code="channel_agent_inactive",
                          field="agent")
    return agent


def find_turn(session: Session, channel: str, external_id: str, *, contact_id: int | None) -> StoredTurn | None:
    """The stored turn of contact ``contact_id`` whose user message has ``external_id`` on ``channel``, or None.

    Scoped by contact: an id is only unique per sender as far as we can trust it (an e-mail Message-ID is
    chosen by whoever sends the mail), so a turn of another contact with the same id is not this message's.
    ``contact_id=None`` finds only turns of conversations without a contact."""
    contact = (Conversation.contact_id == contact_id) if contact_id is not None \
        else col(Conversation.contact_id).is_(None)
    user = session.exec(
        select(Message).join(Conversation, col(Message.conversation_id) == col(Conversation.id))
        .where(Conversation.channel == channel, contact, Message.external_id == external_id, Message.role == "user")
        .order_by(col(Message.id))
    ).first()
    if user is None or user.id is None:
        return None
    reply = session.exec(
        select(Message).where(Message.conversation_id == user.conversation_id, Message.role == "assistant",
                              col(Message.id) > user.id)
        .order_by(col(Message.id))
    ).first()
    complete = reply is not None and bool(reply.text.strip()) and not (reply.timings or {}).get("cancelled")
    return StoredTurn(user.conversation_id, user.id, reply.id if reply else None,
                      reply.text if reply else "", reply.external_id if reply else "", complete)


def discard_turn(session: Session, turn: StoredTurn) -> None:
    """Delete an unfinished turn (a reply cut off by a shutdown), so the message is answered afresh."""
    for message_id in (turn.user_message_id, turn.assistant_message_id):
        message = session.get(Message, message_id) if message_id is not None else None
        if message is not None:
            session.delete(message)
    session.flush()


def recent_conversation(session: Session, channel: str, agent_id: int, contact_id: int,
                        max_idle: timedelta) -> int | None:
    """The contact's latest conversation with the agent on ``channel`` if it was active within ``max_idle``."""
    conversation = session.exec(
        select(Conversation).where(Conversation.channel == channel, Conversation.agent_id == agent_id,
                                   Conversation.contact_id == contact_id)
        .order_by(col(Conversation.updated_at).desc(), col(Conversation.id).desc())
    ).first()
    if conversation is None or as_utc(conversation.updated_at) < utcnow() - max_idle:
        return None
    return conversation.id


def conversation_with_message(session: Session, channel: str, contact_id: int,
                              external_ids: list[str]) -> int | None:
    """The contact's conversation on ``channel`` holding a message with any of ``external_ids`` (newest)."""
    ids = [i for i in external_ids if i]
    if not ids:
        return None
    found = session.exec(
        select(Message.conversation_id).join(Conversation, col(Message.conversation_id) == col(Conversation.id))
        .where(Conversation.channel == channel, Conversation.contact_id == contact_id,
               col(Message.external_id).in_(ids))
        .order_by(col(Message.id).desc())
    ).first()
    return found


def new_conversation(session: Session, channel: str, agent_id: int | None, contact_id: int | None,
                     external_id: str) -> int:
    conversation = Conversation(channel=channel, agent_id=agent_id, contact_id=contact_id,
                                external_id=external_id[:255])
    session.add(conversation)
    session.flush()
    assert conversation.id is not None
    return conversation.id


def add_message(session: Session, conversation_id: int, role: str, text: str, *, external_id: str = "",
                timings: dict[str, Any] | None = None) -> int:
    """Store a message the agent core did not write (a declined media message, an admin's message)."""
    message = Message(conversation_id=conversation_id, role=role, text=text, external_id=external_id[:255],
                      timings=timings)
    session.add(message)
    conversation = session.get(Conversation, conversation_id)
    if conversation is not None:
        conversation.updated_at = utcnow()
        session.add(conversation)
    session.flush()
    assert message.id is not None
    return message.id


def needs_human(session: Session, conversation_id: int) -> bool:
    """Whether the conversation is set aside for a person (triage): then nothing is answered in it automatically."""
    conversation = session.get(Conversation, conversation_id)
    return conversation is not None and conversation.needs_human


def conversation_agent(session: Session, conversation_id: int) -> Agent | None:
    conversation = session.get(Conversation, conversation_id)
    return session.get(Agent, conversation.agent_id) if conversation and conversation.agent_id else None


def assign_agent(session: Session, conversation_id: int, agent_id: int) -> Agent | None:
    """Hand the conversation to another agent (triage routed it); returns that agent, None when it is gone."""
    agent = session.get(Agent, agent_id)
    conversation = session.get(Conversation, conversation_id)
    if agent is None or conversation is None:
        return None
    conversation.agent_id = agent_id
    session.add(conversation)
    return agent


def set_needs_human(session: Session, conversation_id: int) -> None:
    conversation = session.get(Conversation, conversation_id)
    if conversation is not None:
        conversation.needs_human = True
        conversation.updated_at = utcnow()
        session.add(conversation)


def record_sent(session: Session, message_id: int, external_id: str, extra: dict[str, Any] | None = None) -> None:
    """Mark an assistant message as sent: its channel id (and e.g. the ids of further parts in ``timings``)."""
    message = session.get(Message, message_id)
    if message is None:
        return
    message.external_id = external_id[:255]
    if extra:
        message.timings = {**(message.timings or {}), **extra}  # a new dict, so the JSON column is seen changed
    session.add(message)


def list_conversations(session: Session, channel: str, limit: int, offset: int) -> tuple[list[ConversationRow], int]:
    """One channel's conversations, most recently active first, with the contact's address and message count."""
    address = Contact.whatsapp_id if channel == "whatsapp" else Contact.email
    counts = (select(Message.conversation_id, func.count().label("n")).group_by(col(Message.conversation_id))
              .subquery())
    rows = session.exec(
        select(Conversation, Contact.name, address, func.coalesce(counts.c.n, 0))
        .join(Contact, col(Conversation.contact_id) == col(Contact.id), isouter=True)
        .join(counts, counts.c.conversation_id == col(Conversation.id), isouter=True)
        .where(Conversation.channel == channel)
        .order_by(col(Conversation.updated_at).desc(), col(Conversation.id).desc())
        .offset(offset).limit(limit)
    ).all()
    total = session.exec(select(func.count()).select_from(Conversation).where(Conversation.channel == channel)).one()
    items = []
    for conversation, name, addr, count in rows:
        assert conversation.id is not None
        items.append(ConversationRow(conversation.id, conversation.contact_id, name or "", addr or "",
                                     conversation.agent_id, conversation.external_id, int(count),
                                     as_utc(conversation.started_at), as_utc(conversation.updated_at)))
    return items, int(total)


# ---------------------------------------------------------------------------------------------- the inbox
def db_now() -> datetime:
    """Now, as lease times are written and compared (aware UTC: the column type stores and compares UTC)."""
    return utcnow()


def _older_pending_of_sender() -> Any:
    """SQL: an older pending row of the same sender exists (its messages are answered strictly in order, across
    workers too, so the memory of the second message holds the first)."""
    older = aliased(InboundMessage)
    return exists().where(col(older.channel) == col(InboundMessage.channel),
                          col(older.sender) == col(InboundMessage.sender), col(older.status) == "pending",
                          col(older.id) < col(InboundMessage.id))


def claimable_inbound(session: Session, channel: str, limit: int, exclude: set[int]) -> list[tuple[int, str]]:
    """(id, sender) of pending rows nobody holds and none backs off, each its sender's oldest pending one,
    oldest first, at most ``limit``; ``exclude``: rows this worker already has in hand."""
    if limit <= 0:
        return []
    now = db_now()
    query = (select(InboundMessage.id, InboundMessage.sender)
             .where(InboundMessage.channel == channel, InboundMessage.status == "pending",
                    or_(col(InboundMessage.lease_until).is_(None), col(InboundMessage.lease_until) < now),
                    ~_older_pending_of_sender())
             .order_by(col(InboundMessage.id)).limit(limit))
    if exclude:
        query = query.where(col(InboundMessage.id).not_in(exclude))
    return [(row_id, sender) for row_id, sender in session.exec(query).all() if row_id is not None]


def next_pending_of_sender(session: Session, channel: str, sender: str) -> int | None:
    """The id of ``sender``'s oldest pending row (the one to answer next), or None."""
    return session.exec(select(InboundMessage.id)
                        .where(InboundMessage.channel == channel, InboundMessage.sender == sender,
                               InboundMessage.status == "pending")
                        .order_by(col(InboundMessage.id)).limit(1)).first()


def _rowcount(result: Any) -> int:
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


def claim_inbound(session: Session, row_id: int, worker: str, lease: timedelta) -> InboundMessage | None:
    """Take row ``row_id`` for ``worker`` for ``lease`` (one atomic UPDATE); None when it is not pending, held or
    backing off, or an older message of its sender is still pending."""
    now = db_now()
    claimed = session.execute(
        update(InboundMessage)
        .where(col(InboundMessage.id) == row_id, col(InboundMessage.status) == "pending",
               or_(col(InboundMessage.lease_until).is_(None), col(InboundMessage.lease_until) < now),
               ~_older_pending_of_sender())
        .values(claimed_by=worker, lease_until=now + lease, updated_at=now)
        .execution_options(synchronize_session=False))
    if _rowcount(claimed) != 1:
        return None
    session.flush()
    return session.get(InboundMessage, row_id, populate_existing=True)


def _held(row_id: int, worker: str) -> Any:
    return and_(col(InboundMessage.id) == row_id, col(InboundMessage.claimed_by) == worker,
                col(InboundMessage.status) == "pending")


def renew_claim(session: Session, row_id: int, worker: str, lease: timedelta) -> bool:
    """Extend ``worker``'s lease on the row; False when it no longer holds it."""
    now = db_now()
    result = session.execute(update(InboundMessage).where(_held(row_id, worker))
                             .values(lease_until=now + lease, updated_at=now)
                             .execution_options(synchronize_session=False))
    return _rowcount(result) == 1


def begin_part(session: Session, row_id: int, worker: str, index: int, lease: timedelta) -> bool:
    """Record that reply part ``index`` is about to be sent (and renew the lease).  False, and nothing may be
    sent, when ``worker`` lost its claim or another part's outcome is still unknown."""
    now = db_now()
    result = session.execute(update(InboundMessage)
                             .where(_held(row_id, worker), col(InboundMessage.sending_part).is_(None))
                             .values(sending_part=index, lease_until=now + lease, updated_at=now)
                             .execution_options(synchronize_session=False))
    return _rowcount(result) == 1


def finish_part(session: Session, row_id: int, worker: str, index: int, wamid: str | None) -> bool:
    """The answer to part ``index`` is known: sent as ``wamid``, or (None) certainly not sent.  The sent part is
    recorded whoever holds the row now (it is a fact); returns whether ``worker`` still holds its claim."""
    row = session.get(InboundMessage, row_id, with_for_update=True)
    if row is None:
        return False
    if row.sending_part == index:
        row.sending_part = None
        if wamid is not None:
            row.sent_parts = [*(row.sent_parts or []), wamid]  # a new list, so the JSON column is seen changed
        row.updated_at = utcnow()
        session.add(row)
    return row.claimed_by == worker and row.status == "pending"


def settle_maybe_delivered(session: Session, row_id: int, worker: str, **changes: Any) -> bool:
    """Release a row whose part may have been delivered: ``uncertain``, unless the part's receipt arrived in the
    meantime (:func:`resolve_part` cleared ``sending_part``); then ``pending``, to send the rest."""
    outcome = case((col(InboundMessage.sending_part).is_(None), "pending"), else_="uncertain")
    return settle_inbound(session, row_id, worker, status=outcome, **changes)


def resolve_part(session: Session, channel: str, external_id: str, index: int,
                 wamid: str) -> tuple[int, str] | None:
    """WhatsApp reported part ``index`` of the reply to ``external_id`` as sent (a receipt carrying the callback
    data it was sent with): record it as sent.  An ``uncertain`` row becomes pending again, so the parts after
    it go out; returns (id, sender) of a row that is now free to answer, else None."""
    row = session.exec(select(InboundMessage).where(InboundMessage.channel == channel,
                                                    InboundMessage.external_id == external_id)
                       .with_for_update()).first()
    if row is None or row.id is None or row.sending_part != index:
        return None  # unknown, or its outcome is known already
    row.sending_part = None
    row.sent_parts = [*(row.sent_parts or []), wamid]
    if row.status == "uncertain":
        row.status, row.error, row.claimed_by, row.lease_until = "pending", "", "", None
    row.updated_at = utcnow()
    session.add(row)
    return (row.id, row.sender) if row.status == "pending" and not row.claimed_by else None


def settle_inbound(session: Session, row_id: int, worker: str, *, backoff: timedelta | None = None,
                   **changes: Any) -> bool:
    """Write the outcome of ``worker``'s attempt (status, attempts, error, ...) and release the claim; with
    ``backoff`` nobody takes the row again before that time has passed.  False (nothing written) when the
    worker no longer held the row."""
    now = db_now()
    values = {**changes, "claimed_by": "", "lease_until": now + backoff if backoff else None, "updated_at": now}
    result = session.execute(update(InboundMessage)
                             .where(col(InboundMessage.id) == row_id, col(InboundMessage.claimed_by) == worker)
                             .values(**values).execution_options(synchronize_session=False))
    return _rowcount(result) == 1

