"""The e-mail channel: unseen mail in (IMAP), the agent core's reply out (SMTP), threaded.

Every ``imap_poll_interval`` seconds the poller opens the inbox, and for each unseen message (oldest first):

1. reads it without marking it seen (``BODY.PEEK``), unless the server says it is larger than
   ``EVA_EMAIL_MAX_BYTES``, and reduces it to its new text (:mod:`channels.email.message`) in a child process with
   a time limit (:mod:`channels.email.parse_worker`): mail is written by anyone, and nothing it contains may stall
   the event loop that clocks the calls' audio.  A message too large, unparseable or too slow to parse is refused:
   logged with the reason and marked seen.  Auto-replies, bounces, list mail and our own mail are never answered
   (mail loops);
2. claims it in the database (:mod:`channels.email.receipts`, keyed by sender and Message-ID), so of several
   workers polling one inbox exactly one answers it, and a Message-ID reused by another sender is a new message;
   over an hourly limit it waits instead (see *Rate limits* below);
3. finds the contact by its From address and the conversation by threading (In-Reply-To/References against the
   Message-IDs already stored, ours and theirs), else starts one; picks the agent (:meth:`EmailService._agent_for`:
   the active agent whose ``email_address`` the mail was for, else ``EVA_EMAIL_AGENT``), which answers From its
   address.  Triage (:mod:`channels.email.triage`), when a category carries a rule: the model's category of the
   mail may route it to another agent, or set it aside for a person (stored, marked seen, no answer; later mail in
   that conversation waits too until it is released);
4. gets the reply from the agent core (channel ``email``, external id = the Message-ID), or from a flow when the
   thread runs one or the mail starts one (:mod:`voicebot.flows.conversation`), and sends it by SMTP, to
   the From address only (never to a Reply-To: the reply is written with From's memory), with
   In-Reply-To/References and a ``Re:`` subject.  The mail's attachments (bounded in the parse) are kept under
   ``media_dir`` (:mod:`channels.attachments`) and listed on the stored user message; the agent reads only their
   names, appended to the text as ``(attached: invoice.pdf)``;
5. only then marks the message seen.

A crash anywhere before 5 leaves the mail unseen, so it is handled again (by any worker once the claim's lease
ends); a reply that was generated but not sent is sent as stored rather than generated again.  When SMTP or IMAP is
down the round stops and the mail waits for the next poll.  A message that keeps failing for other reasons is
marked seen after ``max_failures`` polls (and logged), so one poisonous mail cannot block the inbox.  All
IMAP/SMTP/database/file I/O runs in worker threads.  Mail from any of our addresses (``EVA_SMTP_FROM`` and every
agent's ``email_address``, active or not) is never answered: two agents must not answer each other.

Rate limits (hourly, all workers together, counted by when each answer is given): per sender
(``email_replies_per_sender_hour``), and two budgets for everyone: senders answered before this hour (known
contacts, ``email_replies_known_per_hour``) and all others (``email_replies_per_hour``).  From is written by
whoever sends the mail, so an attacker can vary it at will: with one shared budget, a flood of invented senders
would have every real customer's mail refused.  Now it spends only the budget for unknown senders, and the known
ones keep theirs (forging a known customer's exact address still works, but is limited per sender).  Mail over a
limit is never dropped: its receipt waits (``waiting``, with the reason), the message stays unseen, and a later
poll answers it, once, when the limit allows, oldest first.  While a budget stays spent, waiting mail is not
fetched or parsed again (the poller remembers which budget each waits for, up to ``MAX_WAITING_REMEMBERED``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from email.headerregistry import Address
from email.utils import parseaddr
from pathlib import Path
from typing import Literal, TypeVar

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from channels import attachments, store
from channels.email import receipts, triage
from channels.email.message import (
    MAX_OUTGOING_ATTACHMENTS,
    InboundEmail,
    MailAttachment,
    OutgoingFile,
    build_message,
    build_reply,
    new_message_id,
)
from channels.email.parse_worker import ParseWorker
from channels.email.templates import reply_html, with_signature
from channels.email.transport import ImapMailbox, SmtpSender
from models import Agent, Contact, Message, utcnow
from models.db import session_scope
from voicebot.agent.core import SEARCH_KNOWLEDGE, AgentCore, Citation
from voicebot.agent.store import AgentStore, get_agent_by_name, normalize_email
from voicebot.analysis import Analyzer
from voicebot.analysis.worker import record as record_analysis
from voicebot.campaigns.replies import answer_opt_out
from voicebot.config import Settings
from voicebot.errors import EmailError, EvaError, InvalidInput, NotFound, Unavailable
from voicebot.flows.conversation import ConversationFlows

log = logging.getLogger(__name__)

T = TypeVar("T")

CHANNEL = "email"
DEFAULT_CHAT_SUBJECT = "Your question"
FLOW_MESSAGE_SUBJECT = "A message for you"
"""The subject of a mail a flow's ``send_message`` action sends."""
DEFAULT_CLAIM_LEASE = timedelta(minutes=30)
"""How long a worker's claim on a message holds: longer than any reply takes to generate (a worker that dies
holding one delays that message by this much)."""
RATE_WINDOW = timedelta(hours=1)
MAX_WAITING_REMEMBERED = 10_000
"""Waiting messages whose budget the poller remembers (beyond that, such mail is fetched again on each poll)."""
MAX_NAMED_ATTACHMENTS = 10
"""Attachment names appended to the text the agent reads (the rest are counted)."""


@dataclass
class PollResult:
    """What one pass over the inbox did."""

    unseen: int = 0
    answered: int = 0
    duplicates: int = 0
    skipped: int = 0
    """Not to be answered (auto-replies, own mail, unreadable or empty mail); marked seen."""
    failed: int = 0
    """Left unseen for the next poll (or given up on after ``max_failures``)."""
    refused: int = 0
    """Refused with a logged reason (too large, unparseable, too slow to parse, no sender); marked seen."""
    limited: int = 0
    """Over a rate limit: waiting (``email_receipts``), left unseen and answered once the limit allows."""
    busy: int = 0
    """Claimed by another worker, which answers it and marks it seen; left as it is."""
    held: int = 0
    """Triage set it aside for a person (stored, no answer sent); marked seen."""


Outcome = Literal["answered", "duplicate", "skipped", "refused", "limited", "busy", "failed", "held"]


@dataclass(frozen=True)
class Handled:
    """What became of one message, and why when it was not answered (an error code)."""

    outcome: Outcome
    reason: str = ""
    waits_for: str = ""
    """For ``limited``: the budget it waits for (``known``, ``unknown`` or ``sender:<address>``)."""


@dataclass(frozen=True)
class EmailSent:
    conversation_id: int
    message_id: int
    email_message_id: str
    contact_id: int


@dataclass(frozen=True)
class EmailChatResult:
    reply: str
    conversation_id: int
    message_id: int
    email_message_id: str
    citations: tuple[Citation, ...] = field(default_factory=tuple)


class EmailService:
    """One per process.  ``start()`` runs the poller when IMAP is configured; ``close()`` stops it after the
    message in hand."""

    def __init__(self, settings: Settings, engine: Engine, core: AgentCore | None, *,
                 mailbox: Callable[[], ImapMailbox] | None = None, sender: SmtpSender | None = None,
                 poll_interval: float | None = None, max_failures: int = 3, drain_timeout: float = 30.0,
                 claim_lease: timedelta = DEFAULT_CLAIM_LEASE, flows: ConversationFlows | None = None,
                 analyzer: Analyzer | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.core = core
        self.analyzer = analyzer if analyzer is not None or core is None else Analyzer(core.llm)
        """Triage's: a mail's category may route it to another agent or set it aside (``channels.email.triage``)."""
        self.flows = flows if flows is not None or core is None else ConversationFlows(
            engine, core, send_message=self._flow_send)
        """Flows answer before the agent (an active run, the agent's start_flow or a trigger phrase)."""
        self.contacts = AgentStore(engine)
        self._mailbox = mailbox or (lambda: ImapMailbox.from_settings(settings))
        self._sender = sender
        self.poll_interval = settings.imap_poll_interval if poll_interval is None else poll_interval
        self.max_failures = max_failures
        self.drain_timeout = drain_timeout
        self.claim_lease = claim_lease
        self.worker_id = f"{socket.gethostname()[:120]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        """This service's name on the claims it takes (unique per instance, so two in one process are two)."""
        self._failures: dict[str, int] = {}
        self._waiting: dict[str, str] = {}
        """``mailbox:uid`` → the budget that message waits for (see ``MAX_WAITING_REMEMBERED``)."""
        self._spent: set[str] = set()
        """Budgets found spent in the current poll: mail known to wait for one of them is not fetched again."""
        self._poll_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ configuration
    @property
    def receiving(self) -> bool:
        return bool(self.settings.imap_host)

    @property
    def sender(self) -> SmtpSender:
        if self._sender is None:
            if not self.settings.smtp_host:
                raise Unavailable("e-mail sending is not configured (set EVA_SMTP_HOST)",
                                  code="email_not_configured")
            self._sender = SmtpSender.from_settings(self.settings)
        return self._sender

    @property
    def from_address(self) -> str:
        """Our address: EVA_SMTP_FROM, else the SMTP or IMAP login when it is an address."""
        for candidate in (self.settings.smtp_from, self.settings.smtp_user, self.settings.imap_user):
            _name, address = parseaddr(candidate)
            if "@" in address:
                return address.strip()
        raise Unavailable("set EVA_SMTP_FROM: the address e-mail replies come from", code="email_not_configured")

    def _need_core(self) -> AgentCore:
        if self.core is None:
            raise Unavailable("no agent core (language model) runs in this process", code="llm_unavailable")
        return self.core

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self.receiving and self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self._poll_forever(), name="email-poller")

    async def close(self) -> None:
        """Stop polling: the message being answered is finished (up to ``drain_timeout``), the rest stay unseen.
        Idempotent."""
        self._stop.set()
        if self._task is not None:
            _done, pending = await asyncio.wait([self._task], timeout=self.drain_timeout)
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._task = None

    async def _poll_forever(self) -> None:
        while not self._stop.is_set():
            try:
                result = await self.poll_once()
                if result.unseen:
                    log.info("e-mail poll: %d unseen, %d answered, %d duplicates, %d skipped, %d refused, "
                             "%d over the rate limits, %d answered by another worker, %d failed", result.unseen,
                             result.answered, result.duplicates, result.skipped, result.refused, result.limited,
                             result.busy, result.failed)
            except (EmailError, Unavailable) as exc:
                log.warning("e-mail poll failed: [%s] %s", exc.code, exc.message)
            except Exception:  # the poller must outlive any one bad round
                log.exception("e-mail poll failed unexpectedly")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.poll_interval)

    # ------------------------------------------------------------------ polling
    async def poll_once(self) -> PollResult:
        """One pass over the unseen mail of the inbox (see the module docstring)."""
        if not self.receiving:
            raise Unavailable("e-mail receiving is not configured (set EVA_IMAP_HOST)", code="email_not_configured")
        self._need_core()
        async with self._poll_lock:
            result = PollResult()
            self._spent = set()
            mailbox = self._mailbox()
            await asyncio.to_thread(mailbox.open)
            try:
                async with ParseWorker(max_bytes=self.settings.email_max_bytes,
                                       timeout=self.settings.email_parse_timeout,
                                       attachment_max_bytes=self.settings.email_attachment_max_bytes) as parser:
                    uids = await asyncio.to_thread(mailbox.unseen)
                    result.unseen = len(uids)
                    for uid in uids:
                        if self._stop.is_set():
                            break
                        if not await self._poll_message(mailbox, parser, uid, result):
                            break
            finally:
                await asyncio.to_thread(mailbox.close)
            return result

    async def _poll_message(self, mailbox: ImapMailbox, parser: ParseWorker, uid: int, result: PollResult) -> bool:
        """Handle one unseen message; False when the round should stop (the server side is down)."""
        key = f"{mailbox.mailbox}:{uid}"
        if self._waiting.get(key) in self._spent:
            result.limited += 1  # still waiting for a budget this round found spent: not fetched or parsed again
            return True
        try:
            raw = await asyncio.to_thread(mailbox.fetch, uid, self.settings.email_max_bytes)
            if raw is None:
                return True
            handled = await self._handle(raw, parser)
        except InvalidInput as exc:
            # Too large, unparseable, too slow to parse, no sender: it can never be answered, so it is marked seen
            # (and stays in the mailbox for a person) rather than fetched again on every poll.
            log.warning("e-mail %s refused: [%s] %s; marked seen without an answer", key, exc.code, exc.message)
            handled = Handled("refused", exc.code)
        except Unavailable as exc:  # no agent, no sender address: nothing can be answered now
            log.warning("e-mail %s not answered: [%s] %s", key, exc.code, exc.message)
            result.failed += 1
            return False
        except EmailError as exc:
            result.failed += 1
            if exc.retryable and (exc.code.startswith("smtp") or exc.code.startswith("imap")):
                log.warning("e-mail %s not answered, the mail server is unavailable: %s", key, exc.message)
                return False
            if not self._give_up(key, exc.code, exc.message):
                return True
            handled = Handled("failed", exc.code)
        except Exception as exc:
            log.exception("e-mail %s failed unexpectedly", key)
            result.failed += 1
            if not self._give_up(key, "internal_error", str(exc)):
                return True
            handled = Handled("failed", "internal_error")
        self._failures.pop(key, None)
        if handled.outcome == "busy":  # another worker is answering it and marks it seen
            result.busy += 1
            return True
        if handled.outcome == "limited":
            self._spent.add(handled.waits_for)
            if key not in self._waiting:
                log.warning("e-mail %s waits: [%s] over the rate limit; left unseen (email_receipts), answered "
                            "when the limit allows", key, handled.reason)
                if len(self._waiting) < MAX_WAITING_REMEMBERED:
                    self._waiting[key] = handled.waits_for
            result.limited += 1
            return True
        self._waiting.pop(key, None)
        await asyncio.to_thread(mailbox.mark_seen, uid)
        if handled.outcome != "failed":
            counter = {"answered": "answered", "duplicate": "duplicates", "skipped": "skipped",
                       "refused": "refused", "limited": "limited", "held": "held"}[handled.outcome]
            setattr(result, counter, getattr(result, counter) + 1)
        return True

    def _give_up(self, key: str, code: str, message: str) -> bool:
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        if failures < self.max_failures:
            log.warning("e-mail %s failed (%d of %d): [%s] %s", key, failures, self.max_failures, code, message)
            return False
        log.error("e-mail %s failed %d times ([%s] %s); marking it seen without an answer", key, failures, code,
                  message)
        return True

    async def _db(self, fn: Callable[[Session], T]) -> T:
        def transaction() -> T:
            with session_scope(self.engine) as session:
                return fn(session)

        return await asyncio.to_thread(transaction)

    async def _handle(self, raw: bytes, parser: ParseWorker) -> Handled:
        """Answer one raw message (parsed in ``parser``'s child process, never on the event loop)."""
        core = self._need_core()
        mail = await parser.parse(raw)
        own = await self._own_addresses()
        if mail.auto_generated or mail.sender in own:
            log.debug("not answering %s: automatic or our own mail", mail.message_id)
            return Handled("skipped")
        text = with_attachment_names(mail.text.strip() or mail.subject.strip(), mail.attachments)
        if not text:
            return Handled("skipped")
        sender = normalize_email(mail.sender)
        if mail.reply_to_header and mail.reply_to_header != sender:
            # F4: the answer is written with the memory of the From contact, so it goes to From only.
            log.debug("e-mail %s: Reply-To %s ignored, the answer goes to From %s", mail.message_id,
                      mail.reply_to_header, sender)
        key = receipts.Key(sender, mail.message_id)
        owner = self.worker_id
        claim = await self._db(lambda s: receipts.claim(s, key, owner, self.claim_lease, subject=mail.subject,
                                                        text=text))
        if claim == "done":
            return Handled("duplicate")
        if claim == "busy":
            return Handled("busy")
        try:
            return await self._answer(core, mail, key, text)
        except asyncio.CancelledError:
            await asyncio.shield(self._release(key, "cancelled"))
            raise
        except Exception as exc:
            await self._release(key, getattr(exc, "code", "internal_error"))
            raise

    async def _release(self, key: receipts.Key, reason: str) -> None:
        owner = self.worker_id
        try:
            await self._db(lambda s: receipts.release(s, key, owner, reason))
        except Exception:  # the claim then ends with its lease; the original error is the one to report
            log.exception("releasing the claim on an e-mail failed")

    async def _admit(self, key: receipts.Key) -> Handled | None:
        """Count the claimed message against its budgets, or say what it waits for (None: answer it now)."""
        per_sender = self.settings.email_replies_per_sender_hour
        totals = {"known": self.settings.email_replies_known_per_hour,
                  "unknown": self.settings.email_replies_per_hour}
        owner = self.worker_id
        since = utcnow() - RATE_WINDOW

        def decide(session: Session) -> Handled | None:
            use = receipts.usage(session, key, since)
            if per_sender > 0 and use.mine >= per_sender:
                waits = Handled("limited", "email_rate_limited_sender", f"sender:{key.sender}")
            elif 0 < totals[use.budget] <= use.spent:
                reason = "email_rate_limited_known" if use.budget == "known" else "email_rate_limited"
                waits = Handled("limited", reason, use.budget)
            else:
                receipts.assign(session, key, owner, use.budget)
                return None
            receipts.settle(session, key, owner, receipts.WAITING, waits.reason)
            return waits

        return await self._db(decide)

    async def _answer(self, core: AgentCore, mail: InboundEmail, key: receipts.Key, text: str) -> Handled:
        owner = self.worker_id
        waits = await self._admit(key)
        if waits is not None:
            return waits
        agent = await self._agent_for(mail)
        contact = await self.contacts.find_or_create_contact(email=key.sender, name=mail.sender_name)
        assert agent.id is not None and contact.id is not None
        contact_id = contact.id
        turn = await self._db(lambda s: store.find_turn(s, CHANNEL, mail.message_id, contact_id=contact_id))
        if turn is not None and turn.answered:
            await self._db(lambda s: receipts.settle(s, key, owner, "answered"))
            return Handled("duplicate")
        if turn is not None and not turn.reply_complete:
            unfinished = turn
            await self._db(lambda s: store.discard_turn(s, unfinished))
            turn = None
        if turn is not None and turn.assistant_message_id is not None:
            reply_text, assistant_id = turn.reply_text, turn.assistant_message_id
            # Sent From and signed by the agent that wrote it (triage may have routed it away from the addressed one).
            stored_in = turn.conversation_id
            writer: Agent | None = await self._db(lambda s: store.conversation_agent(s, stored_in))
            agent = writer or agent
            # Stored before a crash, perhaps without its files: listing them again is idempotent.
            await self._attach(turn.conversation_id, turn.user_message_id, mail.attachments)
        else:
            conversation_id = await self._thread(agent, contact, mail)
            # "Unsubscribe": the do-not-call list and a confirmation, stored as this mail's turn, instead of a reply.
            opted = await answer_opt_out(self._db, channel=CHANNEL, address=key.sender,
                                         conversation_id=conversation_id, text=text, external_id=mail.message_id,
                                         agent=agent)
            # A conversation set aside waits for its person, whatever the new mail is about (no model time spent).
            if opted is None and await self._db(lambda s: store.needs_human(s, conversation_id)):
                return await self._hold(conversation_id, mail, text, triage.Decision(None), key)
            decision = triage.Decision(None) if opted is not None else await self._triage(mail, text)
            if decision.held:
                return await self._hold(conversation_id, mail, text, decision, key)
            if decision.agent_id is not None and decision.agent_id != agent.id:
                # The routed agent takes the conversation over: it answers, and a resend after a crash is its too.
                routed_id = decision.agent_id
                routed: Agent | None = await self._db(lambda s: store.assign_agent(s, conversation_id, routed_id))
                agent = routed or agent
            flowed = None
            if self.flows is not None and opted is None:
                flowed = await self.flows.handle(agent, contact, CHANNEL, text, conversation_id=conversation_id,
                                                 external_id=mail.message_id, caller=key.sender)
            if opted is not None:
                reply_text, assistant_id, user_id = opted.text, opted.assistant_message_id, opted.user_message_id
            elif flowed is not None:
                reply_text, assistant_id = flowed.text, flowed.assistant_message_id
                user_id = flowed.user_message_id
            else:
                done = await core.respond(agent, contact, CHANNEL, text[:8000], conversation_id=conversation_id,
                                          external_id=mail.message_id, tools=(SEARCH_KNOWLEDGE,))
                if done.tool_calls:
                    log.info("e-mail reply asked for tools %s, which this channel does not run",
                             ", ".join(c.name for c in done.tool_calls))
                reply_text, assistant_id, user_id = done.text, done.assistant_message_id, done.user_message_id
            await self._attach(conversation_id, user_id, mail.attachments)
            if decision.analysis is not None:  # triage's analysis is the message's: the worker need not redo it
                analysis = decision.analysis
                await self._db(lambda s: record_analysis(s, user_id, analysis))
        # Text and HTML, both closed with the agent's signature (the stored reply stays the agent's words); From
        # the agent's own address when it has one.
        reply = build_reply(mail, with_signature(reply_text, agent.email_signature),
                            sender=own_display(self.settings, self._address_of(agent)),
                            html=reply_html(reply_text, agent.email_signature))
        lease = self.claim_lease
        if not await self._db(lambda s: receipts.renew(s, key, owner, lease)):
            # The claim ran out while the reply was made, and another worker took the mail over: it answers.
            log.warning("e-mail reply not sent: another worker took the mail over when this one's claim ran out")
            return Handled("busy", "claim_taken_over")
        await asyncio.to_thread(self.sender.send, reply)

        def sent(session: Session) -> None:
            store.record_sent(session, assistant_id, str(reply["Message-ID"]))
            receipts.settle(session, key, owner, "answered")

        await self._db(sent)
        return Handled("answered")

    async def _triage(self, mail: InboundEmail, text: str) -> triage.Decision:
        """What the admin's category rules say of this mail (no rules, no model: nothing to decide)."""
        rules = await self._db(triage.load_rules)
        if not rules.active or self.analyzer is None:
            return triage.Decision(None)
        try:
            # The body alone: measured, a subject line in front pulled a clear complaint into "support".
            analysis = await self.analyzer.analyze(text, rules.categories)
        except EvaError as exc:  # the mail is answered as without triage, never lost over it
            log.warning("e-mail triage failed ([%s]); the mail is answered by the agent it was addressed to", exc.code)
            log.debug("e-mail %s: triage failed: %s", mail.message_id, exc.message)  # may echo the mail's words
            return triage.Decision(None)
        decision = triage.decide(analysis, rules)
        log.info("e-mail triage: category %s → %s", analysis.category,
                 "held for a person" if decision.held else f"agent {decision.agent_id}" if decision.agent_id
                 else "the addressed agent")
        return decision

    async def _hold(self, conversation_id: int, mail: InboundEmail, text: str, decision: triage.Decision,
                    key: receipts.Key) -> Handled:
        """Store the mail in its conversation, set aside for a person, and answer nothing (one transaction)."""
        owner = self.worker_id

        media_dir = self.settings.media_dir

        def hold(session: Session) -> None:
            # Files kept in the same transaction that settles the receipt: once settled, the mail is never read
            # again, so nothing of it may be left for later.
            message_id = store.add_message(session, conversation_id, "user", text[:8000],
                                           external_id=mail.message_id)
            if mail.attachments:
                row = session.get(Message, message_id)
                assert row is not None
                row.attachments = [kept.to_dict() for kept in keep_files(media_dir, conversation_id, mail.attachments)]
                session.add(row)
            if decision.analysis is not None:
                record_analysis(session, message_id, decision.analysis)
            store.set_needs_human(session, conversation_id)
            receipts.settle(session, key, owner, "held", "triage_needs_human")

        await self._db(hold)
        return Handled("held", "triage_needs_human")

    async def _own_addresses(self) -> frozenset[str]:
        """Every address we send from: EVA_SMTP_FROM's and every agent's (inactive ones too), lower-cased."""
        addresses = await self._db(agent_addresses)
        return frozenset({self.from_address.lower(), *addresses})

    async def _agent_for(self, mail: InboundEmail) -> Agent:
        """The agent that answers ``mail``: the active agent whose ``email_address`` it was for (Delivered-To
        first, then To, then Cc), else ``EVA_EMAIL_AGENT`` (which must be active: Unavailable otherwise).

        The one place the choice is made.  Seam for triage: a category of the mail's text may pick another agent
        here (before the fallback), so everything after (threading, the From address, the signature) follows."""
        recipients = mail.recipients

        def choose(session: Session) -> Agent:
            addressed = addressed_agent(session, recipients)
            return addressed if addressed is not None else store.channel_agent(session, self.settings.email_agent)

        return await self._db(choose)

    def _address_of(self, agent: Agent | None) -> str:
        """The address ``agent``'s mail goes From: its own, else the channel's."""
        return agent.email_address if agent is not None and agent.email_address else self.from_address

    async def _attach(self, conversation_id: int, message_id: int, files: Sequence[MailAttachment]) -> None:
        """Keep ``files`` for the conversation and list them on message ``message_id`` (unless it lists some
        already: a turn answered again after a crash)."""
        if not files:
            return
        media_dir = self.settings.media_dir

        def attach(session: Session) -> None:
            message = session.get(Message, message_id)
            if message is None or message.attachments:
                return
            message.attachments = [kept.to_dict() for kept in keep_files(media_dir, conversation_id, files)]
            session.add(message)

        await self._db(attach)

    async def _thread(self, agent: Agent, contact: Contact, mail: InboundEmail) -> int:
        assert agent.id is not None and contact.id is not None
        agent_id, contact_id = agent.id, contact.id

        def find_or_start(session: Session) -> int:
            found = store.conversation_with_message(session, CHANNEL, contact_id, mail.thread_ids)
            return found if found is not None else store.new_conversation(session, CHANNEL, agent_id, contact_id,
                                                                          mail.thread_root)

        return await self._db(find_or_start)

    # ------------------------------------------------------------------ admin
    async def _flow_send(self, channel: str, to: str, text: str) -> bool:
        """A flow's ``send_message`` when no runtime wires both channels: this channel only."""
        if channel != CHANNEL:
            return False
        await self.send(to, FLOW_MESSAGE_SUBJECT, text)
        return True

    async def named_agent(self, name: str | None, *, active: bool = True) -> Agent | None:
        """The agent named ``name`` (None for None): InvalidInput ``agent_not_found`` when there is none, and
        ``agent_inactive`` when ``active`` and it is deactivated (it cannot answer)."""
        if name is None:
            return None

        def find(session: Session) -> Agent:
            try:
                agent = get_agent_by_name(session, name)
            except NotFound as exc:
                raise InvalidInput(f"there is no agent named {name!r}", code="agent_not_found",
                                   field="agent") from exc
            if active and not agent.active:
                raise InvalidInput(f"the agent {name!r} is not active", code="agent_inactive", field="agent")
            return agent

        return await self._db(find)

    async def send(self, to: str, subject: str, body: str, *, html: str = "", agent: Agent | None = None,
                   files: Sequence[OutgoingFile] = ()) -> EmailSent:
        """Send an e-mail from the channel (not generated) and store it as the start of a conversation; with
        ``html`` it goes as text + HTML alternatives, with ``files`` as attachments beside them (kept and listed
        on the stored message).  With ``agent`` it goes From the agent's address (when it has one), its text
        closed with the agent's signature (``html`` is sent as given), and the conversation is the agent's."""
        sender = self.sender
        address = normalize_email(to)
        if not body.strip():
            raise InvalidInput("the body is empty", field="body")
        files = check_outgoing(files, self.settings.email_attachment_max_bytes)
        own = self._address_of(agent)
        contact = await self.contacts.find_or_create_contact(email=address)
        assert contact.id is not None
        contact_id = contact.id
        text = with_signature(body, agent.email_signature) if agent is not None else body
        message = build_message(sender=own_display(self.settings, own), to=address, subject=subject, body=text,
                                html=html, attachments=files)
        message_id = str(message["Message-ID"])
        await asyncio.to_thread(sender.send, message)
        media_dir = self.settings.media_dir

        def record(session: Session) -> tuple[int, int]:
            chosen = agent if agent is not None else session.exec(
                select(Agent).where(Agent.name == self.settings.email_agent)).first()
            conversation_id = store.new_conversation(session, CHANNEL, chosen.id if chosen else None, contact_id,
                                                     message_id)
            stored = store.add_message(session, conversation_id, "assistant", body, external_id=message_id,
                                       timings={"sent_by": "admin_api", "subject": subject})
            if files:
                row = session.get(Message, stored)
                assert row is not None
                row.attachments = [attachments.keep_or_list(media_dir, conversation_id, f.name, f.content_type,
                                                    f.data).to_dict() for f in files]
                session.add(row)
            return conversation_id, stored

        conversation_id, stored_id = await self._db(record)
        return EmailSent(conversation_id, stored_id, message_id, contact_id)

    async def chat(self, address: str, text: str, subject: str = "", *,
                   agent_name: str | None = None) -> EmailChatResult:
        """Answer ``text`` as if ``address`` had written it, and e-mail the agent's reply there; ``agent_name``
        chooses the agent (else ``EVA_EMAIL_AGENT``), and so the address the reply comes from."""
        core = self._need_core()
        sender = self.sender
        address = normalize_email(address)
        agent = await self.named_agent(agent_name)
        if agent is None:
            agent = await self._db(lambda s: store.channel_agent(s, self.settings.email_agent))
        own = self._address_of(agent)
        contact = await self.contacts.find_or_create_contact(email=address)
        assert agent.id is not None and contact.id is not None
        message_id = new_message_id(own)
        agent_id, contact_id = agent.id, contact.id
        conversation_id = await self._db(
            lambda s: store.new_conversation(s, CHANNEL, agent_id, contact_id, message_id))
        flowed = None
        citations: tuple[Citation, ...] = ()
        if self.flows is not None:
            flowed = await self.flows.handle(agent, contact, CHANNEL, text, conversation_id=conversation_id,
                                             caller=address)
        if flowed is not None:
            reply_text, assistant_id = flowed.text, flowed.assistant_message_id
        else:
            done = await core.respond(agent, contact, CHANNEL, text, conversation_id=conversation_id,
                                      tools=(SEARCH_KNOWLEDGE,))
            reply_text, assistant_id, citations = done.text, done.assistant_message_id, done.citations
        message = build_message(sender=own_display(self.settings, own), to=address,
                                subject=subject.strip() or DEFAULT_CHAT_SUBJECT,
                                body=with_signature(reply_text, agent.email_signature), message_id=message_id,
                                html=reply_html(reply_text, agent.email_signature))
        await asyncio.to_thread(sender.send, message)
        await self._db(lambda s: store.record_sent(s, assistant_id, message_id))
        return EmailChatResult(reply_text, conversation_id, assistant_id, message_id, citations)


def own_display(settings: Settings, address: str) -> str:
    """The From header for ``address``: EVA_SMTP_FROM as configured when it is that address (it may carry a display
    name); another address (an agent's) under EVA_SMTP_FROM's display name, the brand the contact knows; else the
    bare address."""
    configured = settings.smtp_from.strip()
    name, configured_address = parseaddr(configured)
    if not configured or configured_address.strip().lower() == address.lower():
        return configured or address
    if name.strip():
        try:
            return str(Address(name.strip(), addr_spec=address))
        except (ValueError, IndexError):  # an address the header registry cannot format: sent bare
            return address
    return address


def agent_addresses(session: Session) -> list[str]:
    """The agents' e-mail addresses (active or not), lower-cased."""
    rows = session.exec(select(Agent.email_address).where(col(Agent.email_address).is_not(None))).all()
    return [row.lower() for row in rows if row]


def addressed_agent(session: Session, recipients: Sequence[str]) -> Agent | None:
    """The active agent whose address comes first in ``recipients``, or None."""
    wanted = [r for r in recipients if r][:200]
    if not wanted:
        return None
    found = {(a.email_address or "").lower(): a for a in session.exec(
        select(Agent).where(col(Agent.email_address).in_(wanted), col(Agent.active).is_(True))).all()}
    return next((found[r] for r in wanted if r in found), None)


def with_attachment_names(text: str, files: Sequence[MailAttachment]) -> str:
    """``text`` with the names of the attachments the sender meant (not the body's inline images) appended, so
    the agent knows they exist: ``(attached: invoice.pdf, photo.jpg)``.  Names only: no file reaches the model."""
    names = [f.name for f in files if f.note != "inline"]
    if not names:
        return text
    listed = ", ".join(names[:MAX_NAMED_ATTACHMENTS])
    if len(names) > MAX_NAMED_ATTACHMENTS:
        listed += f" and {len(names) - MAX_NAMED_ATTACHMENTS} more"
    return f"{text}\n\n(attached: {listed})".strip()


def keep_files(media_dir: Path, conversation_id: int,
               files: Sequence[MailAttachment]) -> list[attachments.Attachment]:
    """Keep the files that came with their bytes and list the rest (blocking: run it in a thread)."""
    listed = []
    for file in files:
        if file.data is None:
            listed.append(attachments.Attachment(file.name, file.content_type, file.size, file.sha256,
                                                 note=file.note or "not_kept"))
            continue
        kept = attachments.keep_or_list(media_dir, conversation_id, file.name, file.content_type, file.data)
        listed.append(replace(kept, note=file.note) if file.note and kept.path else kept)
    return listed


def check_outgoing(files: Sequence[OutgoingFile], max_bytes: int) -> tuple[OutgoingFile, ...]:
    """Files to send, names cleaned and types checked; InvalidInput when there are too many or together they
    are larger than ``max_bytes``."""
    if len(files) > MAX_OUTGOING_ATTACHMENTS:
        raise InvalidInput(f"at most {MAX_OUTGOING_ATTACHMENTS} attachments", field="attachments")
    total = sum(len(f.data) for f in files)
    if total > max_bytes:
        raise InvalidInput(f"the attachments are {total} bytes together, more than the {max_bytes} allowed "
                           "(EVA_EMAIL_ATTACHMENT_MAX_BYTES)", code="attachments_too_large", field="attachments")
    return tuple(OutgoingFile.of(f.name, f.content_type, f.data) for f in files)
