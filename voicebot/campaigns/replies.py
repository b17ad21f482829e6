"""What the text channels ask of campaigns when a contact writes: which agent answers someone replying to a
campaign's message, and whether the message is an opt-out.

* :func:`campaign_agent`: a contact whose latest conversation on a channel was started by a campaign's message
  (``CampaignAttempt.conversation_id``) and is still fresh talks on with that conversation's agent (the
  campaign's, or its A/B arm's), not with the channel's default agent.
* :func:`answer_opt_out`: a message that :func:`~voicebot.campaigns.dnc.asks_not_to_be_contacted` (in any language
  the detector knows: a Spanish "darme de baja" to an English agent is still an opt-out) puts its sender's address
  on the global do-not-call list (source ``reply``) and is answered with a short confirmation in the message's
  language instead of an agent reply.  The confirmation is stored as a turn (the user's message with its channel
  id, then the reply), in the same transaction as the do-not-call entry, so the channel's exactly-once machinery
  treats it like any reply: a redelivery finds the turn and sends nothing twice, a failed send resends the stored
  text, and the entry is never added twice (:func:`~voicebot.campaigns.store.add_dnc` keeps the first).

Every message of every conversation is checked, not only campaign conversations: someone who writes
"unsubscribe" wants no campaign to reach them, whichever conversation they wrote it in.  Addresses are contact
data: logged at DEBUG only.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from sqlmodel import Session, col, select

from channels import store as channel_store
from models import Agent, Conversation, as_utc, utcnow
from models.campaigns import CampaignAttempt, DncEntry
from voicebot.campaigns.dnc import asks_not_to_be_contacted
from voicebot.campaigns.phones import to_e164
from voicebot.campaigns.store import add_dnc
from voicebot.errors import InvalidInput
from voicebot.i18n import phrase
from voicebot.i18n.detect import detect_language

log = logging.getLogger(__name__)

T = TypeVar("T")
Db = Callable[[Callable[[Session], T]], Awaitable[T]]

ALL_LANGUAGES = "*"
"""What :func:`asks_not_to_be_contacted` checks for a language it does not know: every language it knows."""


@dataclass(frozen=True)
class OptedOut:
    """The confirmation stored for an opt-out message (send ``text``; it is the turn's assistant message)."""

    text: str
    assistant_message_id: int
    user_message_id: int


def campaign_agent(session: Session, channel: str, contact_id: int, window: timedelta) -> Agent | None:
    """The active agent of the contact's latest conversation on ``channel`` when a campaign's message started it
    and it was active within ``window``; else None (the channel's own agent answers)."""
    latest = session.exec(select(Conversation).where(Conversation.channel == channel,
                                                     Conversation.contact_id == contact_id)
                          .order_by(col(Conversation.updated_at).desc(), col(Conversation.id).desc())).first()
    if latest is None or latest.id is None or latest.agent_id is None:
        return None
    if as_utc(latest.updated_at) < utcnow() - window:
        return None
    started_by_campaign = session.exec(select(CampaignAttempt.id)
                                       .where(CampaignAttempt.conversation_id == latest.id)).first()
    if started_by_campaign is None:
        return None
    agent = session.get(Agent, latest.agent_id)
    return agent if agent is not None and agent.active else None


def record_opt_out(session: Session, *, channel: str, address: str, conversation_id: int, text: str,
                   external_id: str, language: str) -> OptedOut:
    """Block ``address`` (a WhatsApp id or an e-mail address) everywhere and store the turn with its
    confirmation.  One transaction: the caller's."""
    now = utcnow()
    if channel == "email":
        add_dnc_email(session, address, source="reply", note=f"replied on {channel}")
    else:
        add_dnc(session, "+" + address.removeprefix("+"), source="reply", note=f"replied on {channel}", now=now)
    reply = phrase("campaign_opted_out", language)
    user_id = channel_store.add_message(session, conversation_id, "user", text[:8000], external_id=external_id)
    assistant_id = channel_store.add_message(session, conversation_id, "assistant", reply,
                                             timings={"opt_out": True})
    log.info("a %s contact opted out of campaigns (conversation %s)", channel, conversation_id)
    log.debug("opted out: %s", address)
    return OptedOut(reply, assistant_id, user_id)


def add_dnc_email(session: Session, address: str, *, campaign_id: int | None = None, source: str = "reply",
                  note: str = "") -> tuple[DncEntry, bool]:
    """Block an e-mail address (lower-cased) globally or for one campaign; returns the entry and whether it is
    new (adding it twice keeps the first)."""
    email = address.strip().lower()
    same = col(DncEntry.campaign_id).is_(None) if campaign_id is None else col(DncEntry.campaign_id) == campaign_id
    existing = session.exec(select(DncEntry).where(col(DncEntry.email) == email, same)).first()
    if existing is not None:
        return existing, False
    entry = DncEntry(phone="", email=email, campaign_id=campaign_id, source=source, note=note[:200],
                     created_at=utcnow())
    session.add(entry)
    session.flush()
    log.info("do-not-call entry %s added for an e-mail address (%s, campaign %s)", entry.id, source, campaign_id)
    return entry, True


async def answer_opt_out(db: Db[OptedOut], *, channel: str, address: str, conversation_id: int, text: str,
                         external_id: str, agent: Agent) -> OptedOut | None:
    """The stored confirmation when ``text`` is an opt-out (see the module), else None (nothing written)."""
    # A few regular expressions over at most 2,000 characters: microseconds, fine on the event loop.
    if not text.strip() or not asks_not_to_be_contacted(text, ALL_LANGUAGES):
        return None
    if channel != "email":
        try:
            to_e164("+" + address.removeprefix("+"))
        except InvalidInput:
            # Not a number the list can hold (WhatsApp ids are international numbers; a test id may not be): the
            # agent answers as usual rather than confirming an opt-out that could not be recorded.
            log.warning("a %s opt-out from an id that is no phone number was not recorded", channel)
            return None
    language = detect_language(text, [agent.language, *agent.languages], agent.language)

    def record(session: Session) -> OptedOut:
        return record_opt_out(session, channel=channel, address=address, conversation_id=conversation_id,
                              text=text, external_id=external_id, language=language)

    return await db(record)
