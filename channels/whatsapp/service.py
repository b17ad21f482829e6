"""The WhatsApp channel: webhook in, the agent core's reply out through the Cloud API.

Accepting a webhook (:meth:`WhatsAppService.accept`) checks the signature, parses the payload and writes every
new inbound message to ``inbound_messages`` *before* the webhook is answered; then it returns at once (Meta
expects a fast 200 and retries otherwise).  The answering runs in background tasks the service tracks:

* messages of one sender are answered one at a time, in order (a per-sender lock), so the conversation memory
  of the second message holds the first; ``concurrency`` bounds the replies generated at once;
* a text message gets the agent's reply (``AgentCore.respond``, channel ``whatsapp``); media and locations get a
  polite "text only" answer; reactions and system notices get none;
* the reply is sent with :class:`~channels.whatsapp.client.WhatsAppClient` and its wamid stored on the
  assistant message, which is how a redelivered or recovered message is recognised as answered.

Nothing accepted is lost: a row stays ``pending`` until its reply was sent; retryable failures (rate limits,
outages) are tried again by a sweeper every ``retry_interval`` seconds, up to ``max_attempts``; pending rows
left by a crash or a shutdown are picked up when the service starts.  :meth:`close` stops taking webhooks
(503, so Meta redelivers later), lets running replies finish for a while, then cancels the rest (they stay
pending).  Delivery receipts (``statuses``) are recorded on the sent message as ``timings["delivery"]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from channels import store
from channels.whatsapp.client import WhatsAppClient
from channels.whatsapp.codec import WaMessage, WaStatus, parse_webhook_body, verify_signature, verify_subscription
from models import Agent, Contact, Conversation, InboundMessage, Message, utcnow
from models.db import session_scope
from voicebot.agent.core import SEARCH_KNOWLEDGE, AgentCore
from voicebot.agent.store import AgentStore, normalize_whatsapp_id
from voicebot.config import Settings
from voicebot.errors import EvaError, InvalidInput, Unavailable, WhatsAppError

log = logging.getLogger(__name__)

T = TypeVar("T")

CHANNEL = "whatsapp"
DECLINE_TEXT = ("Sorry, I can only read text messages. Please type your question and I will gladly help.")
"""The answer to images, voice notes, documents, locations and other non-text messages."""
CONVERSATION_WINDOW = timedelta(hours=24)
"""Messages within this time of the last one continue its conversation (WhatsApp's customer-service window)."""


@dataclass(frozen=True)
class Accepted:
    """What one webhook POST brought."""

    accepted: int
    """New messages stored for answering."""
    duplicates: int
    """Messages already received (a redelivery)."""
    ignored: int
    """Messages that get no answer (reactions, system notices, another business number's) and malformed ones."""
    statuses: int


@dataclass(frozen=True)
class AdminSent:
    """A message sent through the admin API."""

    conversation_id: int
    message_id: int
    wamid: str
    contact_id: int
    parts: int


class WhatsAppService:
    """One per process.  ``start()`` (recovery + retry sweeper), ``accept()`` per webhook, ``close()``."""

    def __init__(self, settings: Settings, engine: Engine, core: AgentCore | None, *,
                 client: WhatsAppClient | None = None, concurrency: int = 4, retry_interval: float = 60.0,
                 max_attempts: int = 5, drain_timeout: float = 30.0) -> None:
        self.settings = settings
        self.engine = engine
        self.core = core
        self.contacts = AgentStore(engine)
        self._client = client
        self._owns_client = client is None
        self.retry_interval = retry_interval
        self.max_attempts = max_attempts
        self.drain_timeout = drain_timeout
        self._semaphore = asyncio.Semaphore(concurrency)
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight: set[int] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = False

    # ------------------------------------------------------------------ configuration
    @property
    def client(self) -> WhatsAppClient:
        """The Cloud API client (built from settings on first use); Unavailable when not configured."""
        if self._client is None:
            if not (self.settings.whatsapp_token and self.settings.whatsapp_phone_number_id):
                raise Unavailable("WhatsApp sending is not configured (set EVA_WHATSAPP_TOKEN and "
                                  "EVA_WHATSAPP_PHONE_NUMBER_ID)", code="whatsapp_not_configured")
            self._client = WhatsAppClient.from_settings(self.settings)
        return self._client

    def verify(self, mode: str, token: str, challenge: str) -> str:
        """The webhook subscription handshake (``GET`` with ``hub.*``): the challenge to echo."""
        if not self.settings.whatsapp_verify_token:
            raise Unavailable("the WhatsApp webhook is not configured (set EVA_WHATSAPP_VERIFY_TOKEN)",
                              code="whatsapp_not_configured")
        return verify_subscription(mode, token, challenge, self.settings.whatsapp_verify_token)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Answer what a previous run left pending, then keep retrying retryable failures."""
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="whatsapp-sweeper")

    async def drain(self) -> None:
        """Wait until every accepted message has been handled (answered, or left pending after a failure)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        """Stop accepting, give running replies ``drain_timeout`` seconds, cancel the rest (they stay pending
        and are answered after the next start).  Idempotent."""
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._tasks:
            _done, still_running = await asyncio.wait(list(self._tasks), timeout=self.drain_timeout)
            for task in still_running:
                task.cancel()
            if still_running:
                log.warning("cancelled %d WhatsApp replies at shutdown; they are answered after the next start",
                            len(still_running))
                await asyncio.gather(*still_running, return_exceptions=True)
        if self._client is not None and self._owns_client:
            await self._client.close()

    # ------------------------------------------------------------------ webhook
    async def accept(self, body: bytes, signature_header: str | None) -> Accepted:
        """Check, parse and durably store one webhook POST; answering continues in the background.

        Raises AuthError/Forbidden for a missing/wrong signature, BadRequest/InvalidInput for a body that is
        not a WhatsApp notification, Unavailable when the webhook is not configured or the service is
        shutting down (Meta then redelivers)."""
        if self._closing:
            raise Unavailable("Eva is shutting down; deliver this webhook again later", code="shutting_down")
        if not self.settings.whatsapp_app_secret:
            raise Unavailable("the WhatsApp webhook is not configured (set EVA_WHATSAPP_APP_SECRET so "
                              "webhook signatures can be checked)", code="whatsapp_not_configured")
        if self.core is None:
            raise Unavailable("no agent core (language model) runs in this process", code="llm_unavailable")
        verify_signature(self.settings.whatsapp_app_secret, body, signature_header)
        batch = parse_webhook_body(body)
        for error in batch.errors:
            log.warning("WhatsApp reported error %s: %s %s", error.code, error.title, error.details)
        wanted: list[WaMessage] = []
        ignored = batch.skipped
        own_number = self.settings.whatsapp_phone_number_id
        for message in batch.messages:
            if own_number and message.phone_number_id and message.phone_number_id != own_number:
                log.warning("ignoring a WhatsApp message to another business number (%s)", message.phone_number_id)
                ignored += 1
            elif message.disposition == "ignore":
                log.debug("no answer to WhatsApp %s message %s", message.kind, message.wamid)
                ignored += 1
            else:
                wanted.append(message)
        stored, duplicates = await asyncio.to_thread(self._store_inbound, wanted)
        if batch.statuses:
            await asyncio.to_thread(self._record_statuses, batch.statuses)
        for row_id, sender in stored:
            self._spawn(row_id, sender)
        return Accepted(len(stored), duplicates, ignored, len(batch.statuses))

    def _store_inbound(self, messages: Sequence[WaMessage]) -> tuple[list[tuple[int, str]], int]:
        stored: list[tuple[int, str]] = []
        duplicates = 0
        for message in messages:
            # One transaction per message: a duplicate (unique channel + wamid) must not undo the others.
            try:
                with session_scope(self.engine) as session:
                    exists = session.exec(select(InboundMessage.id).where(
                        InboundMessage.channel == CHANNEL, InboundMessage.external_id == message.wamid)).first()
                    if exists is not None:
                        duplicates += 1
                        continue
                    row = InboundMessage(channel=CHANNEL, external_id=message.wamid, sender=message.wa_id[:320],
                                         sender_name=message.profile_name[:200], kind=message.kind[:32],
                                         text=message.text, payload=dict(message.raw))
                    session.add(row)
                    session.flush()
                    assert row.id is not None
                    stored.append((row.id, message.wa_id))
            except IntegrityError:  # the same message in a concurrent delivery won the insert
                duplicates += 1
        return stored, duplicates

    def _record_statuses(self, statuses: Sequence[WaStatus]) -> None:
        with session_scope(self.engine) as session:
            for status in statuses:
                if status.status == "failed":
                    reasons = "; ".join(f"{e.code} {e.title} {e.details}".strip() for e in status.errors)
                    log.warning("WhatsApp could not deliver message %s: %s", status.wamid, reasons or "no reason")
                message = session.exec(
                    select(Message).join(Conversation, col(Message.conversation_id) == col(Conversation.id))
                    .where(Conversation.channel == CHANNEL, Message.external_id == status.wamid,
                           Message.role == "assistant")).first()
                if message is None:
                    continue
                delivery: dict[str, Any] = {"delivery": status.status}
                if status.errors:
                    delivery["delivery_error"] = status.errors[0].code
                message.timings = {**(message.timings or {}), **delivery}
                session.add(message)

    # ------------------------------------------------------------------ background answering
    def _spawn(self, row_id: int, sender: str) -> None:
        if row_id in self._inflight:
            return
        self._inflight.add(row_id)
        task = asyncio.create_task(self._run(row_id, sender), name=f"whatsapp-inbound-{row_id}")
        self._tasks.add(task)

        def finished(done: asyncio.Task[None]) -> None:
            self._tasks.discard(done)
            self._inflight.discard(row_id)

        task.add_done_callback(finished)

    async def _run(self, row_id: int, sender: str) -> None:
        lock, users = self._locks.get(sender, (asyncio.Lock(), 0))
        self._locks[sender] = (lock, users + 1)
        try:
            async with lock, self._semaphore:
                await self._process(row_id)
        finally:
            lock, users = self._locks[sender]
            if users <= 1:
                del self._locks[sender]
            else:
                self._locks[sender] = (lock, users - 1)

    async def _db(self, fn: Callable[[Session], T]) -> T:
        def transaction() -> T:
            with session_scope(self.engine) as session:
                return fn(session)

        return await asyncio.to_thread(transaction)

    async def _process(self, row_id: int) -> None:
        row = await self._db(lambda s: s.get(InboundMessage, row_id))
        if row is None or row.status != "pending":
            return
        try:
            conversation_id = await self._answer(row)
        except asyncio.CancelledError:
            raise  # shutdown: the row stays pending
        except EvaError as exc:
            retry = (isinstance(exc, WhatsAppError) and exc.retryable) or isinstance(exc, Unavailable)
            attempts = row.attempts + 1
            status = "pending" if retry and attempts < self.max_attempts else "failed"
            log.warning("WhatsApp message %s not answered (attempt %d): [%s] %s%s", row_id, attempts, exc.code,
                        exc.message, "; will retry" if status == "pending" else "")
            code = exc.code
            await self._db(lambda s: _update_row(s, row_id, status=status, attempts=attempts, error=code))
        except Exception:
            log.exception("WhatsApp message %s failed unexpectedly", row_id)
            await self._db(lambda s: _update_row(s, row_id, status="failed", attempts=row.attempts + 1,
                                                 error="internal_error"))
        else:
            await self._db(lambda s: _update_row(s, row_id, status="done", attempts=row.attempts + 1, error="",
                                                 conversation_id=conversation_id))

    async def _answer(self, row: InboundMessage) -> int:
        """Reply to one stored inbound message; returns its conversation id."""
        assert self.core is not None
        wa_id = normalize_whatsapp_id(row.sender)
        agent = await self._db(lambda s: store.channel_agent(s, self.settings.whatsapp_agent))
        contact = await self.contacts.find_or_create_contact(whatsapp_id=wa_id, name=row.sender_name)
        assert agent.id is not None and contact.id is not None
        turn = await self._db(lambda s: store.find_turn(s, CHANNEL, row.external_id))
        if turn is not None and turn.answered:
            return turn.conversation_id  # answered before a crash, only the bookkeeping was lost
        if turn is not None and not turn.reply_complete and row.text.strip():
            # A reply cut off by a shutdown is not sent half-written: answer afresh.
            unfinished = turn
            await self._db(lambda s: store.discard_turn(s, unfinished))
            turn = None
        if turn is not None:
            # Generated but not sent (a crash, a failed send): send what was stored, do not generate again.
            conversation_id = turn.conversation_id
            text = turn.reply_text.strip() or agent.fallback_message
            stored_id = turn.assistant_message_id
            if stored_id is None:
                stored_id = await self._db(lambda s: store.add_message(s, conversation_id, "assistant", text))
            assistant_id = stored_id
        else:
            conversation_id = await self._conversation(agent, contact, wa_id)
            if row.text.strip():
                done = await self.core.respond(agent, contact, CHANNEL, row.text, conversation_id=conversation_id,
                                               external_id=row.external_id, tools=(SEARCH_KNOWLEDGE,))
                if done.tool_calls:
                    log.info("WhatsApp reply asked for tools %s, which this channel does not run",
                             ", ".join(c.name for c in done.tool_calls))
                text, assistant_id = done.text, done.assistant_message_id
            else:
                text = DECLINE_TEXT
                assistant_id = await self._db(lambda s: _store_declined(s, conversation_id, row))
        sent = await self.client.send_text(wa_id, text)
        extra = {"whatsapp_ids": [m.wamid for m in sent]} if len(sent) > 1 else None
        await self._db(lambda s: store.record_sent(s, assistant_id, sent[0].wamid, extra))
        return conversation_id

    async def _conversation(self, agent: Agent, contact: Contact, wa_id: str) -> int:
        assert agent.id is not None and contact.id is not None
        agent_id, contact_id = agent.id, contact.id

        def find_or_start(session: Session) -> int:
            found = store.recent_conversation(session, CHANNEL, agent_id, contact_id, CONVERSATION_WINDOW)
            return found if found is not None else store.new_conversation(session, CHANNEL, agent_id, contact_id,
                                                                          wa_id)

        return await self._db(find_or_start)

    async def retry_pending(self) -> int:
        """Start answering every pending message not already in hand (left by a crash, a shutdown or a
        retryable failure); returns how many were started."""
        rows = await self._db(lambda s: list(s.exec(
            select(InboundMessage.id, InboundMessage.sender)
            .where(InboundMessage.channel == CHANNEL, InboundMessage.status == "pending")
            .order_by(col(InboundMessage.id))).all()))
        started = 0
        for row_id, sender in rows:
            if row_id is not None and row_id not in self._inflight and not self._closing:
                self._spawn(row_id, sender)
                started += 1
        return started

    async def _sweep_forever(self) -> None:
        while True:
            try:
                started = await self.retry_pending()
                if started:
                    log.info("answering %d pending WhatsApp message(s)", started)
            except Exception:  # a database hiccup must not end the retries for good
                log.exception("could not look for pending WhatsApp messages")
            await asyncio.sleep(self.retry_interval)

    # ------------------------------------------------------------------ admin
    async def send_message(self, to: str, text: str) -> AdminSent:
        """Send ``text`` to ``to`` (a WhatsApp id / international number) on behalf of the channel's agent and
        store it in the contact's WhatsApp conversation."""
        client = self.client
        wa_id = normalize_whatsapp_id(to)
        if not text.strip():
            raise InvalidInput("the message text is empty", field="text")
        contact = await self.contacts.find_or_create_contact(whatsapp_id=wa_id)
        assert contact.id is not None
        contact_id = contact.id
        sent = await client.send_text(wa_id, text)

        def record(session: Session) -> tuple[int, int]:
            agent = session.exec(select(Agent).where(Agent.name == self.settings.whatsapp_agent)).first()
            agent_id = agent.id if agent is not None else None
            conversation_id = None
            if agent_id is not None:
                conversation_id = store.recent_conversation(session, CHANNEL, agent_id, contact_id,
                                                            CONVERSATION_WINDOW)
            if conversation_id is None:
                conversation_id = store.new_conversation(session, CHANNEL, agent_id, contact_id, wa_id)
            timings: dict[str, Any] = {"sent_by": "admin_api"}
            if len(sent) > 1:
                timings["whatsapp_ids"] = [m.wamid for m in sent]
            message_id = store.add_message(session, conversation_id, "assistant", text,
                                           external_id=sent[0].wamid, timings=timings)
            return conversation_id, message_id

        conversation_id, message_id = await self._db(record)
        return AdminSent(conversation_id, message_id, sent[0].wamid, contact_id, len(sent))


def _update_row(session: Session, row_id: int, **changes: Any) -> None:
    row = session.get(InboundMessage, row_id)
    if row is None:
        return
    for key, value in changes.items():
        setattr(row, key, value)
    row.updated_at = utcnow()
    session.add(row)


def _store_declined(session: Session, conversation_id: int, row: InboundMessage) -> int:
    """The user's non-text message (as ``[image]`` etc.) and our polite answer; returns the answer's id."""
    store.add_message(session, conversation_id, "user", f"[{row.kind}]", external_id=row.external_id)
    return store.add_message(session, conversation_id, "assistant", DECLINE_TEXT)
