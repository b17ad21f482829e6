"""The WhatsApp channel: webhook in, the agent core's reply out through the Cloud API.

Accepting a webhook (:meth:`WhatsAppService.accept`) checks the signature, parses the payload and writes every
new inbound message to ``inbound_messages`` *before* the webhook is answered; then it returns at once (Meta
expects a fast 200 and retries otherwise).  The answering runs in background tasks the service tracks:

* messages of one sender are answered one at a time, in order (a per-sender lock), so the conversation memory
  of the second message holds the first; ``concurrency`` bounds the replies generated at once;
* a text message gets the agent's reply (``AgentCore.respond``, channel ``whatsapp``), or a flow's when the
  conversation runs one or the message starts one (:mod:`voicebot.flows.conversation`; its turn is stored like an
  agent turn, so everything below holds for it too); a voice note is transcribed and answered like a text;
  locations, contacts and unsupported messages get a polite "text only" answer; reactions and system notices
  get none;
* an image, video, sticker or document is downloaded through the Graph API (:func:`fetch_media`: type allow-list,
  size limit, Meta's hosts only), kept below ``settings.media_dir`` (:mod:`channels.attachments`) and listed on the
  stored user message (``Message.attachments``); the reply is a short acknowledgement in the agent's language.  A
  caption is answered by the agent as a text turn, in the same message after the acknowledgement (so the stored
  reply is exactly what was sent, and a retry sends it as it was).  A file over the limit or of a type not
  accepted is listed with a note (``too_large``, ``refused``, ``unavailable``), not kept, and answered politely;
  only a download that may work later (the API unreachable) is retried.  A document of a type the knowledge
  pipeline reads (PDF, DOCX, plain text, Markdown) is offered to the agent's knowledge, through the same
  ``ingest_bytes`` as the admin upload, only when the admin enabled ``Agent.learn_from_media`` (note
  ``offered_to_knowledge``); a redelivery or retry offers the same bytes again, which the knowledge base
  recognises by their sha256;
* the reply is sent with :class:`~channels.whatsapp.client.WhatsAppClient` and its wamid stored on the
  assistant message, which is how a redelivered or recovered message is recognised as answered.

Nothing accepted is lost: a row stays ``pending`` until its reply was sent; retryable failures (rate limits,
outages) are tried again by a sweeper after ``retry_interval`` seconds, up to ``max_attempts``; pending rows
left by a shutdown are picked up when the service starts, those of a crashed worker once its lease ran out.
At most ``max_queued`` rows are in hand (tasks) at once; the rest wait in the database, and the sweeper takes
more as soon as there is room (backpressure without losing anything).

Exactly once, as far as it can be known: several workers may share one database.  A worker claims a row
(:func:`channels.store.claim_inbound`) before it generates anything, and records each reply part before and
after its POST (``sending_part``, ``sent_parts``), so a retry sends only the parts not yet sent.  A send whose
outcome is unknown (a timeout, a dropped connection, a crash during the POST) may have reached the customer:
the row becomes ``uncertain`` and is never resent automatically (the Cloud API has no idempotency key); the
admin API's send-message is the way to follow up.

Freshness: a message older than WhatsApp's 24-hour customer-service window when it arrives (Meta redelivers
for days after an outage) is stored, so it is not lost and a redelivery stays a duplicate, but marked
``expired`` and not answered: the Cloud API refuses a free-form reply outside the window, and a day-late answer
is not one the customer waits for.  Replays are no threat here: the signature covers the body, and the wamid
deduplicates.

:meth:`close` stops taking webhooks (503, so Meta redelivers later), lets running replies finish for a while,
then cancels the rest (they stay pending, released for the next start).  Delivery receipts (``statuses``) are
recorded on the sent message as ``timings["delivery"]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from dataclasses import replace as replace_fields
from datetime import timedelta
from functools import partial
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import unquote, urlsplit

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from channels import attachments, store
from channels.attachments import Attachment
from channels.whatsapp.client import WhatsAppClient, fetch_media
from channels.whatsapp.codec import (
    MAX_TEXT_CHARS,
    SentMessage,
    WaMedia,
    WaMessage,
    WaStatus,
    build_media_message,
    build_template_message,
    build_text_message,
    check_link,
    check_upload,
    parse_media,
    parse_webhook_body,
    split_text,
    verify_signature,
    verify_subscription,
)
from models import Agent, Contact, Conversation, InboundMessage, Message
from models.db import durable_session_scope, session_scope
from voicebot.agent.core import SEARCH_KNOWLEDGE, AgentCore
from voicebot.agent.store import AgentStore, normalize_whatsapp_id
from voicebot.campaigns.replies import answer_opt_out, campaign_agent
from voicebot.config import Settings
from voicebot.errors import Conflict, DocumentError, EvaError, InvalidInput, Unavailable, WhatsAppError
from voicebot.flows.conversation import ConversationFlows
from voicebot.i18n import phrase
from voicebot.media.decode import decode_audio

if TYPE_CHECKING:
    from voicebot.stt.whisper import SpeechRouter as FileTranscriber

log = logging.getLogger(__name__)

T = TypeVar("T")

CHANNEL = "whatsapp"
DECLINE_TEXT = phrase("whatsapp_text_only")
"""The answer to images, voice notes, documents, locations and other non-text messages (in English; the agent's
language picks the catalog's translation)."""
MAX_VOICE_NOTE_BYTES = 10 * 1024 * 1024
MAX_VOICE_NOTE_SECONDS = 120.0
"""Voice notes beyond these are answered as unclear (WhatsApp allows 16 MB; a caller-length question is far less)."""
CONVERSATION_WINDOW = timedelta(hours=24)
"""Messages within this time of the last one continue its conversation (WhatsApp's customer-service window)."""
MAX_MESSAGE_AGE = CONVERSATION_WINDOW
"""A message older than this when it arrives is stored as ``expired`` and not answered (see the module doc)."""
FILE_KINDS = frozenset({"image", "video", "sticker", "document"})
"""Inbound message types kept as files (audio is a voice note: transcribed, not kept)."""
_DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
INBOUND_TYPES: dict[str, tuple[str, ...]] = {
    "image": ("image/jpeg", "image/png", "image/webp"),
    "sticker": ("image/webp",),
    "video": ("video/mp4", "video/3gpp"),
    "document": ("application/pdf", _DOCX, "text/plain", "text/markdown", "text/csv", "application/msword",
                 "application/vnd.ms-excel", "application/vnd.ms-powerpoint",
                 "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                 "application/vnd.openxmlformats-officedocument.presentationml.presentation"),
}
"""The types kept per message type (WhatsApp's supported media types); anything else is refused politely (an
executable or an archive sent as a "document" is never written to disk)."""
MAX_INBOUND_BYTES = {"image": 5 * 1024 * 1024, "sticker": 512 * 1024, "video": 16 * 1024 * 1024}
"""WhatsApp's own limits per type; a document may be as large as a knowledge upload (``EVA_MAX_UPLOAD_MB``,
at most WhatsApp's 100 MB)."""
KNOWLEDGE_TYPES = {"application/pdf": ".pdf", _DOCX: ".docx", "text/plain": ".txt", "text/markdown": ".md"}
"""Document types the knowledge pipeline reads (``rag.extract``), with the extension it reads them by."""


@runtime_checkable
class KnowledgeIngest(Protocol):
    """What the channel needs from the knowledge base to offer a document (``rag.KnowledgeBase`` implements it)."""

    async def ingest_bytes(self, agent_id: int, data: bytes, filename: str, *, title: str = "",
                           description: str = "") -> Any: ...


@dataclass(frozen=True)
class Accepted:
    """What one webhook POST brought."""

    accepted: int
    """New messages stored for answering."""
    duplicates: int
    """Messages already received (a redelivery)."""
    ignored: int
    """Messages that get no answer (reactions, system notices, another business number's, those stored as
    expired) and malformed ones."""
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
                 max_attempts: int = 5, drain_timeout: float = 30.0, max_queued: int = 200,
                 claim_lease: float = 120.0, worker_id: str | None = None,
                 flows: ConversationFlows | None = None, stt: FileTranscriber | None = None,
                 knowledge: KnowledgeIngest | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.core = core
        found = getattr(core, "knowledge", None)
        self.knowledge = knowledge if knowledge is not None else (
            found if isinstance(found, KnowledgeIngest) else None)
        """Where documents go when an agent learns from media (default: the core's knowledge base)."""
        self.stt = stt
        """Transcribes voice notes (the calls' own Whisper); without it they get the "text only" answer."""
        self.flows = flows if flows is not None or core is None else ConversationFlows(
            engine, core, send_message=self._flow_send)
        """Flows answer before the agent (an active run, the agent's start_flow or a trigger phrase)."""
        self.contacts = AgentStore(engine)
        self._client = client
        self._owns_client = client is None
        self.retry_interval = retry_interval
        self.max_attempts = max_attempts
        self.drain_timeout = drain_timeout
        self.max_queued = max(0, max_queued)
        """Rows in hand at most (each a task, most waiting for the semaphore or their sender's lock)."""
        self.claim_lease = timedelta(seconds=claim_lease)
        """How long a claim holds without renewal: how soon a crashed worker's rows are answered by another."""
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._semaphore = asyncio.Semaphore(concurrency)
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight: set[int] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._backlog = False
        """More pending rows may wait in the database than were taken in hand."""
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
        stored, duplicates, expired = await asyncio.to_thread(self._store_inbound, wanted, time.time())
        resumed = await asyncio.to_thread(self._record_statuses, batch.statuses) if batch.statuses else []
        for row_id, sender in [*stored, *resumed]:
            self._spawn(row_id, sender)
        return Accepted(len(stored), duplicates, ignored + expired, len(batch.statuses))

    def _store_inbound(self, messages: Sequence[WaMessage],
                       now: float) -> tuple[list[tuple[int, str]], int, int]:
        """Store the new messages; returns (id, sender) of those to answer, the number of duplicates and the
        number stored as expired."""
        stored: list[tuple[int, str]] = []
        duplicates = expired_count = 0
        oldest = now - MAX_MESSAGE_AGE.total_seconds()
        for message in messages:
            # Meta's timestamp; 0 when it is missing or not a number (then the message is not judged stale).
            expired = 0 < message.timestamp < oldest
            # One transaction per message: a duplicate (unique channel + wamid) must not undo the others.
            try:
                # Durable before the 200: Meta does not deliver an acknowledged webhook again.
                with durable_session_scope(self.engine) as session:
                    exists = session.exec(select(InboundMessage.id).where(
                        InboundMessage.channel == CHANNEL, InboundMessage.external_id == message.wamid)).first()
                    if exists is not None:
                        duplicates += 1
                        continue
                    row = InboundMessage(channel=CHANNEL, external_id=message.wamid, sender=message.wa_id[:320],
                                         sender_name=message.profile_name[:200], kind=message.kind[:32],
                                         text=message.text, payload=dict(message.raw),
                                         status="expired" if expired else "pending",
                                         error="whatsapp_message_too_old" if expired else "")
                    session.add(row)
                    session.flush()
                    assert row.id is not None
                    if expired:
                        expired_count += 1
                        log.warning("not answering WhatsApp message %s: it is more than %s old", row.id,
                                    MAX_MESSAGE_AGE)
                    else:
                        stored.append((row.id, row.sender))
            except IntegrityError:  # the same message in a concurrent delivery won the insert
                duplicates += 1
        return stored, duplicates, expired_count

    def _record_statuses(self, statuses: Sequence[WaStatus]) -> list[tuple[int, str]]:
        """Record delivery receipts; returns (id, sender) of inbound rows a receipt made answerable again (an
        uncertain part that WhatsApp reports as sent)."""
        resumed: list[tuple[int, str]] = []
        with session_scope(self.engine) as session:
            for status in statuses:
                if status.status == "failed":
                    reasons = "; ".join(f"{e.code} {e.title} {e.details}".strip() for e in status.errors)
                    log.warning("WhatsApp could not deliver message %s: %s", status.wamid, reasons or "no reason")
                part = _parse_part_tag(status.callback_data)
                if part is not None and status.status in ("sent", "delivered", "read"):
                    found = store.resolve_part(session, CHANNEL, part[0], part[1], status.wamid)
                    if found is not None:
                        log.info("WhatsApp confirmed an uncertain reply part to message %s", found[0])
                        resumed.append(found)
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
        return resumed

    # ------------------------------------------------------------------ background answering
    def _spawn(self, row_id: int, sender: str) -> bool:
        """Take a stored row in hand, unless ``max_queued`` are; then it waits in the database for the
        sweeper (backpressure: nothing is lost, the queue in memory stays bounded)."""
        if row_id in self._inflight:
            return False
        if len(self._inflight) >= self.max_queued or self._closing:
            self._backlog = True
            return False
        self._inflight.add(row_id)
        task = asyncio.create_task(self._run(row_id, sender), name=f"whatsapp-inbound-{row_id}")
        self._tasks.add(task)

        def finished(done: asyncio.Task[None]) -> None:
            self._tasks.discard(done)
            self._inflight.discard(row_id)
            if self._backlog:
                self._wake.set()  # room again: the sweeper takes the next waiting rows now, not a minute later

        task.add_done_callback(finished)
        return True

    async def _run(self, row_id: int, sender: str) -> None:
        lock, users = self._locks.get(sender, (asyncio.Lock(), 0))
        self._locks[sender] = (lock, users + 1)
        try:
            async with lock, self._semaphore:
                if await self._process(row_id):
                    # The sender's next message may have waited for this one (it was not claimable while an
                    # older one was pending): take it now rather than at the next sweep.
                    following = await self._db(lambda s: store.next_pending_of_sender(s, CHANNEL, sender))
                    if following is not None and following != row_id:
                        self._spawn(following, sender)
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

    async def _settle(self, row_id: int, *, backoff: timedelta | None = None, **changes: Any) -> None:
        worker = self.worker_id
        if not await self._db(lambda s: store.settle_inbound(s, row_id, worker, backoff=backoff, **changes)):
            log.warning("WhatsApp message %s was taken over by another worker; its outcome is theirs", row_id)

    async def _process(self, row_id: int) -> bool:
        """Answer one row if it can be claimed; True when this worker settled it (no longer pending)."""
        worker, lease = self.worker_id, self.claim_lease
        row = await self._db(lambda s: store.claim_inbound(s, row_id, worker, lease))
        if row is None:
            return False  # answered, held by another worker, backing off, or waiting for an older message
        attempts = row.attempts + 1
        keeper = asyncio.create_task(self._keep_claim(row_id), name=f"whatsapp-lease-{row_id}")
        try:
            if row.sending_part is not None:
                # A worker died (or was cancelled) during this part's POST: it may have been delivered.
                log.warning("WhatsApp message %s: part %d of its reply may have been sent before an interruption; "
                            "not sending it again", row_id, row.sending_part + 1)
                await self._settle(row_id, status="uncertain", attempts=attempts, error="whatsapp_send_interrupted")
                return True
            conversation_id = await self._answer(row)
        except asyncio.CancelledError:
            # Shutdown: the row stays pending and is released, so the next start answers it at once.
            await asyncio.shield(self._settle(row_id))
            raise
        except EvaError as exc:
            return await self._failed(row_id, attempts, exc)
        except Exception:
            log.exception("WhatsApp message %s failed unexpectedly", row_id)
            await self._settle(row_id, status="failed", attempts=attempts, error="internal_error")
            return True
        else:
            if conversation_id is None:
                log.warning("WhatsApp message %s: the claim was lost mid-reply; the new holder goes on", row_id)
                return False
            await self._settle(row_id, status="done", attempts=attempts, error="", conversation_id=conversation_id)
            return True
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    async def _failed(self, row_id: int, attempts: int, exc: EvaError) -> bool:
        """Record a failed attempt; True when the row is settled for good (not to be retried)."""
        if isinstance(exc, WhatsAppError) and exc.maybe_delivered:
            log.warning("WhatsApp message %s: the reply may have been delivered ([%s] %s); it is not sent again "
                        "unless WhatsApp's receipt confirms it", row_id, exc.code, exc.message)
            worker, code = self.worker_id, exc.code
            await self._db(lambda s: store.settle_maybe_delivered(s, row_id, worker, attempts=attempts, error=code))
            return True
        retry = (isinstance(exc, WhatsAppError) and exc.retryable) or isinstance(exc, Unavailable)
        status = "pending" if retry and attempts < self.max_attempts else "failed"
        log.warning("WhatsApp message %s not answered (attempt %d): [%s] %s%s", row_id, attempts, exc.code,
                    exc.message, "; will retry" if status == "pending" else "")
        await self._settle(row_id, backoff=timedelta(seconds=self.retry_interval) if status == "pending" else None,
                           status=status, attempts=attempts, error=exc.code)
        return status != "pending"

    async def _keep_claim(self, row_id: int) -> None:
        """Renew the lease while the reply is generated and sent (a slow model must not let it lapse)."""
        worker, lease = self.worker_id, self.claim_lease
        while True:
            await asyncio.sleep(lease.total_seconds() / 3)
            try:
                if not await self._db(lambda s: store.renew_claim(s, row_id, worker, lease)):
                    return  # lost: begin_part refuses every further send
            except Exception:  # a database hiccup: try again at the next beat, the lease has slack
                log.exception("could not renew the claim on WhatsApp message %s", row_id)

    async def _answer(self, row: InboundMessage) -> int | None:
        """Reply to one claimed inbound message; returns its conversation id, None if the claim was lost."""
        assert self.core is not None and row.id is not None
        wa_id = normalize_whatsapp_id(row.sender)
        agent = await self._db(lambda s: store.channel_agent(s, self.settings.whatsapp_agent))
        # The wa_id is authenticated by Meta (the webhook is signed), so the contact may be shared across channels.
        contact = await self.contacts.find_or_create_contact(whatsapp_id=wa_id, name=row.sender_name,
                                                             verified=True)
        assert agent.id is not None and contact.id is not None
        contact_id = contact.id
        # Someone answering a campaign's template talks on with the campaign's agent, in its conversation.
        answering: Agent | None = await self._db(lambda s: campaign_agent(s, CHANNEL, contact_id, CONVERSATION_WINDOW))
        agent = answering or agent
        turn = await self._db(lambda s: store.find_turn(s, CHANNEL, row.external_id, contact_id=contact_id))
        if turn is not None and turn.answered:
            return turn.conversation_id  # answered before a crash, only the bookkeeping was lost
        if turn is not None and not turn.reply_complete and row.text.strip() and not row.sent_parts:
            # A reply cut off by a shutdown is not sent half-written: answer afresh.
            unfinished = turn
            await self._db(lambda s: store.discard_turn(s, unfinished))
            turn = None
        if turn is not None:
            # Generated but not (fully) sent (a crash, a failed send): send what was stored, do not generate again.
            conversation_id = turn.conversation_id
            text = turn.reply_text.strip() or agent.fallback_message
            stored_id = turn.assistant_message_id
            if stored_id is None:
                stored_id = await self._db(lambda s: store.add_message(s, conversation_id, "assistant", text))
            assistant_id = stored_id
            user_id = turn.user_message_id
            media = _file_of(row)
            if media is not None and not row.sent_parts and not await self._db(lambda s: _listed(s, user_id)):
                # The caption was answered but the file's listing and acknowledgement were not stored yet (a crash
                # in between): nothing was sent, so finish the turn as it would have been.
                listing, ack = await self._receive_media(media, agent, conversation_id)
                text = f"{ack}\n\n{text}"
                reply = text
                await self._db(lambda s: _attach(s, user_id, assistant_id, listing, reply))
        else:
            conversation_id = await self._conversation(agent, contact, wa_id)
            media = _file_of(row)
            received: tuple[Attachment, str] | None = None
            if media is not None:
                received = await self._receive_media(media, agent, conversation_id)
                if media.caption and row.text != media.caption:
                    # Kept on the inbox row like a voice note's words: a reply cut off by a shutdown is then
                    # generated afresh instead of sent half-written.
                    row_id, caption = row.id, media.caption
                    row.text = caption
                    await self._db(lambda s: _set_text(s, row_id, caption))
            if not row.text.strip() and row.kind == "audio" and self.stt is not None:
                heard = await self._voice_note_text(row, agent)
                if heard:
                    # Kept on the inbox row: a retry after a crash answers these words, not the audio again.
                    row_id, row.text = row.id, heard
                    await self._db(lambda s: _set_text(s, row_id, heard))
            # "STOP": the do-not-call list and a confirmation, stored as this message's turn, instead of a reply.
            opted = await answer_opt_out(self._db, channel=CHANNEL, address=wa_id, conversation_id=conversation_id,
                                         text=row.text, external_id=row.external_id, agent=agent)
            flowed = None
            if opted is None and row.text.strip() and self.flows is not None:
                flowed = await self.flows.handle(agent, contact, CHANNEL, row.text, conversation_id=conversation_id,
                                                 external_id=row.external_id, caller=wa_id)
            if opted is not None:
                text, assistant_id = opted.text, opted.assistant_message_id
            elif flowed is not None:
                text, assistant_id = flowed.text, flowed.assistant_message_id
            elif row.text.strip():
                done = await self.core.respond(agent, contact, CHANNEL, row.text, conversation_id=conversation_id,
                                               external_id=row.external_id, tools=(SEARCH_KNOWLEDGE,))
                if done.tool_calls:
                    log.info("WhatsApp reply asked for tools %s, which this channel does not run",
                             ", ".join(c.name for c in done.tool_calls))
                text, assistant_id = done.text, done.assistant_message_id
            elif received is not None:
                listing, text = received
                assistant_id = await self._db(lambda s: _store_received(s, conversation_id, row, listing, text))
            else:
                text = phrase("whatsapp_voice_unclear" if row.kind == "audio" and self.stt is not None
                              else "whatsapp_text_only", agent.language)
                assistant_id = await self._db(lambda s: _store_declined(s, conversation_id, row, text))
            if received is not None and row.text.strip():
                # The caption's answer follows the acknowledgement in the same message; the stored reply becomes
                # exactly what is sent, so a retry after a failed send sends it unchanged.
                listing, ack = received
                text = f"{ack}\n\n{text}"
                reply, external_id = text, row.external_id
                await self._db(lambda s: _attach_turn(s, contact_id, external_id, assistant_id, listing, reply))
        sent = await self._send_parts(row.id, row.external_id, wa_id, text, list(row.sent_parts or []))
        if sent is None:
            return None
        extra = {"whatsapp_ids": sent} if len(sent) > 1 else None
        await self._db(lambda s: store.record_sent(s, assistant_id, sent[0], extra))
        return conversation_id

    async def _voice_note_text(self, row: InboundMessage, agent: Agent) -> str:
        """What the voice note says ('' when it cannot be heard: too large, not audio, silence).  A download that
        may work later (the API unreachable) raises, so the row is retried."""
        assert self.stt is not None
        audio_part = (row.payload or {}).get("audio")
        media_id = audio_part.get("id") if isinstance(audio_part, dict) else None
        if not isinstance(media_id, str):
            return ""
        try:
            data, _mime = await fetch_media(self.client, media_id, max_bytes=MAX_VOICE_NOTE_BYTES)
            async with self.stt.file_slot:  # one file at a time, beside the API's uploads
                audio = await decode_audio(data, max_seconds=MAX_VOICE_NOTE_SECONDS)
                transcript = await self.stt.transcribe_file(audio, agent.language)
        except WhatsAppError as exc:
            if exc.retryable:
                raise
            log.warning("WhatsApp voice note %s not transcribed: [%s] %s", row.id, exc.code, exc.message)
            return ""
        except EvaError as exc:
            log.warning("WhatsApp voice note %s not transcribed: [%s] %s", row.id, exc.code, exc.message)
            return ""
        log.info("WhatsApp voice note %s transcribed (%.1f s of audio in %.2f s)", row.id, transcript.seconds,
                 transcript.processing_s)
        return transcript.text.strip()[:MAX_TEXT_CHARS]

    async def _receive_media(self, media: WaMedia, agent: Agent, conversation_id: int) -> tuple[Attachment, str]:
        """Download and keep an inbound file (and offer a document to the agent's knowledge when the admin allows
        it); returns its listing and the acknowledgement to send.  A file that cannot be accepted is listed with a
        note and answered politely; only a download that may work later raises (the row is retried)."""
        language = agent.language
        allowed = INBOUND_TYPES[media.kind]
        limit = MAX_INBOUND_BYTES.get(media.kind, min(self.settings.max_upload_mb, 100) * 1024 * 1024)
        name = attachments.clean_name(media.filename, fallback=media.kind) if media.filename else ""
        if not media.media_id:
            log.warning("WhatsApp %s without a usable media id: not downloaded", media.kind)
            return attachments.listed(name or media.kind, media.mime_type, None, note="unavailable"), \
                phrase("whatsapp_media_unavailable", language)
        try:
            data, mime = await fetch_media(self.client, media.media_id, max_bytes=limit, mime_prefixes=allowed)
            if mime not in allowed:  # a prefix of an allowed type is not one (image/jpegfoo)
                raise WhatsAppError(f"media of type {mime} is not accepted", code="whatsapp_media_refused")
        except WhatsAppError as exc:
            if exc.retryable:
                raise
            note, key = {"whatsapp_media_too_large": ("too_large", "whatsapp_media_too_large"),
                         "whatsapp_media_refused": ("refused", "whatsapp_media_refused")}.get(
                exc.code, ("unavailable", "whatsapp_media_unavailable"))
            log.warning("WhatsApp %s not accepted: [%s]", media.kind, exc.code)
            log.debug("WhatsApp %s not accepted: %s", media.kind, exc.message)  # it names the sender's type
            return attachments.listed(name or media.kind, media.mime_type, None, note=note), phrase(key, language)
        if not name:  # images, videos and stickers come without a name: one from the type
            name = f"{media.kind}{attachments.extension('', mime)}"
        kept = await asyncio.to_thread(attachments.keep_or_list, self.settings.media_dir, conversation_id, name, mime,
                                       data)
        log.info("WhatsApp %s kept (%d bytes) in conversation %s", media.kind, kept.size, conversation_id)
        log.debug("WhatsApp %s kept as %r", media.kind, kept.name)
        if media.kind == "document" and agent.learn_from_media:
            kept = replace_fields(kept, note=await self._offer_to_knowledge(agent, kept.name, mime, data))
        return kept, phrase(f"whatsapp_received_{media.kind}", language, name=kept.name)

    async def _offer_to_knowledge(self, agent: Agent, name: str, mime: str, data: bytes) -> str:
        """Submit a document to the agent's knowledge (the admin upload's ``ingest_bytes``); returns the note for
        its listing ('' when its type is not one the knowledge base reads)."""
        extension = KNOWLEDGE_TYPES.get(mime)
        if extension is None:
            return ""
        if self.knowledge is None:
            log.warning("agent %s learns from media, but no knowledge base runs in this process", agent.name)
            return "knowledge_unavailable"
        assert agent.id is not None
        stem = PurePath(name).stem if PurePath(name).suffix.lower() == extension else name
        filename = f"{stem}{extension}"  # the pipeline reads plain text and Markdown by their extension
        # The title says where it came from, never who sent it (a phone number is not knowledge to share).
        title = f"WhatsApp: {stem}"[:500]
        try:
            await self.knowledge.ingest_bytes(agent.id, data, filename, title=title,
                                              description="A document a contact sent on WhatsApp.")
        except Conflict as exc:
            if exc.code != "document_duplicate":
                log.warning("a WhatsApp document could not be offered to knowledge: [%s] %s", exc.code, exc.message)
                return "knowledge_unavailable"
            log.info("a WhatsApp document is already in agent %s's knowledge", agent.name)  # a retry, or a resend
        except DocumentError as exc:
            # The message names the sender's file: only at DEBUG.
            log.warning("a WhatsApp document was not taken into knowledge: [%s]", exc.code)
            log.debug("the knowledge base refused the WhatsApp document: %s", exc.message)
            return "knowledge_refused"
        except EvaError as exc:  # the knowledge base is closing or its store is down: the file is kept anyway
            log.warning("a WhatsApp document could not be offered to knowledge: [%s] %s", exc.code, exc.message)
            return "knowledge_unavailable"
        return "offered_to_knowledge"

    async def _send_parts(self, row_id: int, inbound_wamid: str, wa_id: str, text: str,
                          already: list[str]) -> list[str] | None:
        """Send the parts of ``text`` after the ``already`` sent ones, each recorded before and after its POST
        and tagged so that WhatsApp's receipt can settle a part whose answer was lost; returns every part's
        wamid, or None when the claim was lost (nothing more was sent)."""
        parts = split_text(text)
        if not parts:
            raise InvalidInput("the reply is empty", field="text")
        worker, lease = self.worker_id, self.claim_lease
        sent = list(already)
        for index in range(len(sent), len(parts)):
            if not await self._db(partial(store.begin_part, row_id=row_id, worker=worker, index=index, lease=lease)):
                return None
            try:
                payload = build_text_message(wa_id, parts[index])
                payload["biz_opaque_callback_data"] = _part_tag(inbound_wamid, index)
                message = await self.client.send(payload)
            except WhatsAppError as exc:
                if not exc.maybe_delivered:  # certainly not sent: the part may go later
                    await self._db(partial(store.finish_part, row_id=row_id, worker=worker, index=index, wamid=None))
                raise  # maybe delivered: sending_part stays set, so it is never sent again
            held = await self._db(partial(store.finish_part, row_id=row_id, worker=worker, index=index,
                                          wamid=message.wamid))
            sent.append(message.wamid)
            if not held and index + 1 < len(parts):
                return None
        return sent

    async def _conversation(self, agent: Agent, contact: Contact, wa_id: str) -> int:
        assert agent.id is not None and contact.id is not None
        agent_id, contact_id = agent.id, contact.id

        def find_or_start(session: Session) -> int:
            found = store.recent_conversation(session, CHANNEL, agent_id, contact_id, CONVERSATION_WINDOW)
            return found if found is not None else store.new_conversation(session, CHANNEL, agent_id, contact_id,
                                                                          wa_id)

        return await self._db(find_or_start)

    async def retry_pending(self) -> int:
        """Take in hand pending messages nobody holds (left by a crash, a shutdown or a retryable failure whose
        back-off is over), as many as ``max_queued`` leaves room for; returns how many were started."""
        if self._closing:
            return 0
        room = self.max_queued - len(self._inflight)
        if room <= 0:
            self._backlog = True
            return 0
        exclude = set(self._inflight)
        rows = await self._db(lambda s: store.claimable_inbound(s, CHANNEL, room, exclude))
        self._backlog = len(rows) >= room
        return sum(1 for row_id, sender in rows if self._spawn(row_id, sender))

    async def _sweep_forever(self) -> None:
        while True:
            self._wake.clear()
            try:
                started = await self.retry_pending()
                if started:
                    log.info("answering %d pending WhatsApp message(s)", started)
            except Exception:  # a database hiccup must not end the retries for good
                log.exception("could not look for pending WhatsApp messages")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.retry_interval):
                    await self._wake.wait()

    # ------------------------------------------------------------------ admin
    async def _flow_send(self, channel: str, to: str, text: str) -> bool:
        """A flow's ``send_message`` when no runtime wires both channels: this channel only."""
        if channel != CHANNEL:
            return False
        await self.send_message(to, text)
        return True

    async def send_message(self, to: str, text: str) -> AdminSent:
        """Send ``text`` to ``to`` (a WhatsApp id / international number) on behalf of the channel's agent and
        store it in the contact's WhatsApp conversation."""
        client = self.client
        wa_id = normalize_whatsapp_id(to)
        if not text.strip():
            raise InvalidInput("the message text is empty", field="text")
        contact_id = await self._outbound_contact(wa_id)
        sent = await client.send_text(wa_id, text)
        return await self._record_outbound(contact_id, wa_id, text, sent)

    async def send_template(self, to: str, name: str, language: str,
                            parameters: Sequence[str] = ()) -> AdminSent:
        """Send the approved template ``name`` (the way to write first, or after the 24-hour window) and store
        it as ``[template name (language)]: parameters`` in the contact's conversation."""
        client = self.client
        wa_id = normalize_whatsapp_id(to)
        payload = build_template_message(wa_id, name, language, tuple(parameters))  # refused before a contact exists
        contact_id = await self._outbound_contact(wa_id)
        sent = await client.send(payload)
        text = f"[template {name} ({language})]" + (": " + " | ".join(parameters) if parameters else "")
        return await self._record_outbound(contact_id, wa_id, text, [sent], extra={"template": name})

    async def send_media(self, to: str, kind: str, *, link: str | None = None, data: bytes | None = None,
                         filename: str = "", content_type: str = "", caption: str = "") -> AdminSent:
        """Send an image, document or audio by https ``link`` or as uploaded bytes (``data`` with its
        ``content_type``; uploaded to the Graph API, then sent by media id).  Uploaded bytes are kept with the
        stored message like an inbound file; a link is listed with the note ``link``."""
        client = self.client
        wa_id = normalize_whatsapp_id(to)
        if (link is None) == (data is None):
            raise InvalidInput("give either link or content_base64 (with filename and content_type)", field="link")
        mime = ""
        if data is not None:
            mime = check_upload(kind, content_type, len(data))
            name = attachments.clean_name(filename, fallback=f"{kind}{attachments.extension('', mime)}")
        else:
            check_link(link or "")
            last = unquote(urlsplit(link or "").path.rsplit("/", 1)[-1])
            name = attachments.clean_name(filename or last, fallback=kind)
        shown = name if kind == "document" else ""
        # Everything the send would refuse is refused now, before a contact is made or anything is uploaded.
        build_media_message(wa_id, kind, media_id="0" if data is not None else None, link=link, caption=caption,
                            filename=shown)
        contact_id = await self._outbound_contact(wa_id)
        media_id = await client.upload_media(data, mime, name, kind=kind) if data is not None else None
        sent = await client.send_media(wa_id, kind, media_id=media_id, link=link, caption=caption, filename=shown)
        text = caption.strip() or f"[{kind}]"
        extra: dict[str, Any] = {"media_id": media_id} if media_id else {"link": link}
        return await self._record_outbound(contact_id, wa_id, text, [sent], extra=extra,
                                           file=(name, mime, data) if data is not None else None,
                                           listing=None if data is not None
                                           else attachments.listed(name, "", None, note="link"))

    async def _outbound_contact(self, wa_id: str) -> int:
        contact = await self.contacts.find_or_create_contact(whatsapp_id=wa_id)
        assert contact.id is not None
        return contact.id

    async def _record_outbound(self, contact_id: int, wa_id: str, text: str, sent: list[SentMessage], *,
                               extra: dict[str, Any] | None = None, file: tuple[str, str, bytes] | None = None,
                               listing: Attachment | None = None) -> AdminSent:
        """Store a message sent through the admin API in the contact's WhatsApp conversation (with the file it
        carried, kept below the media folder)."""
        def conversation(session: Session) -> int:
            agent = session.exec(select(Agent).where(Agent.name == self.settings.whatsapp_agent)).first()
            agent_id = agent.id if agent is not None else None
            found = None
            if agent_id is not None:
                found = store.recent_conversation(session, CHANNEL, agent_id, contact_id, CONVERSATION_WINDOW)
            return found if found is not None else store.new_conversation(session, CHANNEL, agent_id, contact_id,
                                                                          wa_id)

        conversation_id = await self._db(conversation)
        if file is not None:
            name, mime, data = file
            listing = await asyncio.to_thread(attachments.keep_or_list, self.settings.media_dir, conversation_id, name,
                                              mime, data)
        timings: dict[str, Any] = {"sent_by": "admin_api", **(extra or {})}
        if len(sent) > 1:
            timings["whatsapp_ids"] = [m.wamid for m in sent]
        listed = [listing.to_dict()] if listing is not None else None

        def record(session: Session) -> int:
            message_id = store.add_message(session, conversation_id, "assistant", text,
                                           external_id=sent[0].wamid, timings=timings)
            if listed is not None:
                message = session.get(Message, message_id)
                assert message is not None
                message.attachments = listed
                session.add(message)
            return message_id

        message_id = await self._db(record)
        return AdminSent(conversation_id, message_id, sent[0].wamid, contact_id, len(sent))


PART_TAG = "eva-part:"


def _part_tag(inbound_wamid: str, index: int) -> str:
    """``biz_opaque_callback_data`` of a reply part (WhatsApp echoes it in the part's receipts; at most 512)."""
    return f"{PART_TAG}{inbound_wamid}:{index}"


def _parse_part_tag(data: str) -> tuple[str, int] | None:
    if not data.startswith(PART_TAG):
        return None
    wamid, _, index = data.removeprefix(PART_TAG).rpartition(":")
    return (wamid, int(index)) if wamid and index.isascii() and index.isdigit() and len(index) < 4 else None


def _set_text(session: Session, row_id: int, text: str) -> None:
    row = session.get(InboundMessage, row_id)
    if row is not None:
        row.text = text
        session.add(row)


def _store_declined(session: Session, conversation_id: int, row: InboundMessage, text: str) -> int:
    """The user's non-text message (as ``[image]`` etc.) and our polite answer; returns the answer's id."""
    store.add_message(session, conversation_id, "user", f"[{row.kind}]", external_id=row.external_id)
    return store.add_message(session, conversation_id, "assistant", text)


def _file_of(row: InboundMessage) -> WaMedia | None:
    """The file of an inbound image, video, sticker or document (None for other messages)."""
    return parse_media(row.payload or {}, row.kind) if row.kind in FILE_KINDS else None


def _store_received(session: Session, conversation_id: int, row: InboundMessage, listing: Attachment,
                    text: str) -> int:
    """The user's file (as ``[image]`` etc., listed in ``attachments``) and our acknowledgement; returns the
    acknowledgement's id."""
    user_id = store.add_message(session, conversation_id, "user", f"[{row.kind}]", external_id=row.external_id)
    _attach(session, user_id, None, listing, "")
    return store.add_message(session, conversation_id, "assistant", text)


def _attach_turn(session: Session, contact_id: int, external_id: str, assistant_id: int, listing: Attachment,
                 text: str) -> None:
    """List the file on the user message of a captioned file's turn and store the reply as sent."""
    turn = store.find_turn(session, CHANNEL, external_id, contact_id=contact_id)
    if turn is not None:
        _attach(session, turn.user_message_id, assistant_id, listing, text)


def _attach(session: Session, user_id: int, assistant_id: int | None, listing: Attachment, text: str) -> None:
    user = session.get(Message, user_id)
    if user is not None:
        user.attachments = [listing.to_dict()]
        session.add(user)
    reply = session.get(Message, assistant_id) if assistant_id is not None else None
    if reply is not None:
        reply.text = text
        session.add(reply)


def _listed(session: Session, user_id: int) -> bool:
    """Whether the user message already lists its file."""
    user = session.get(Message, user_id)
    return user is not None and bool(user.attachments)
