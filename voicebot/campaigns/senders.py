"""The text campaign sender: running WhatsApp and e-mail campaigns send their message to each contact.

One :class:`CampaignSender` per process (``channels.runtime`` starts it beside the channels).  Every
``interval`` seconds it takes each running WhatsApp or e-mail campaign whose channel is configured, asks the pure
scheduler (:func:`voicebot.campaigns.scheduler.plan`) what may go now -- the contact's daily windows, the
per-minute pacing, the end date, the circuit breaker, numbers on the do-not-call list (recorded ``dnc_skipped``)
-- and sends each attempt it was given:

* WhatsApp: the campaign's approved template (``rules.whatsapp_template``: name, language, and the contact
  variables that fill ``{{1}}``, ``{{2}}``... in order; ``name`` is the contact's name), through the Graph API;
* e-mail: the e-mail template named by ``rules.email_template`` rendered with the contact's variables (subject,
  plain text and HTML), From the address of the attempt's agent (its A/B arm's, else the campaign's), with a
  ``List-Unsubscribe`` header pointing back at that address.  The recipient is the ``email`` variable (an
  ``email`` column of the import), else the contact's address.

Exactly once: an attempt is taken with the same durable claim as the voice dialer's (``store.claim``, a
conditional UPDATE with a lease), so of two workers one sends it.  The claim is the intent to send: an attempt
found claimed before, whose lease ran out without an outcome (the worker died, or was stopped, mid-send), is
recorded ``uncertain`` and not sent again; so is one whose send timed out after the request left (the Cloud API
has no idempotency key, and SMTP may have accepted the mail).  A person decides about uncertain attempts.  A send
refused for certain is ``failed`` with the Graph or SMTP error code in ``sip_cause`` (and retried only as the
campaign's ``retry.failed`` rule says).  A sent message is stored as the first message of a new conversation of
the attempt's agent with the contact (``CampaignAttempt.conversation_id``), and the contact gets the WhatsApp id
or e-mail address it was sent to (when nobody else holds it), so a reply continues that conversation through the
normal channel with that agent (:func:`voicebot.campaigns.replies.campaign_agent` for WhatsApp; for e-mail the
reply is addressed to the agent's own address, which is why an e-mail campaign's agents need one).

Database work runs in worker threads, sends on the event loop (aiohttp) or in a thread (SMTP).  Contact data
(numbers, addresses) is logged at DEBUG only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import func, or_
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from channels import store as channel_store
from channels.email.message import build_message
from channels.email.service import own_display
from channels.email.templates import render, with_signature
from channels.whatsapp.codec import build_template_message
from models import Agent, Contact, utcnow
from models.campaigns import Campaign, CampaignAttempt, CampaignEntry, DncEntry
from models.db import session_scope
from models.email import EmailTemplate
from voicebot.agent.store import normalize_email
from voicebot.campaigns import store
from voicebot.campaigns.rules import CampaignRules, load_rules
from voicebot.campaigns.scheduler import Dial, Tick, plan
from voicebot.errors import Conflict, EmailError, EvaError, InvalidInput, Unavailable, WhatsAppError

if TYPE_CHECKING:
    from channels.email.service import EmailService
    from channels.whatsapp.service import WhatsAppService

log = logging.getLogger(__name__)

T = TypeVar("T")

TEXT_CHANNELS = ("whatsapp", "email")
LEASE = timedelta(minutes=10)
"""How long a claim holds: far longer than one send takes (the WhatsApp client's retries included)."""
BATCH = 50
"""Due attempts read per scheduling round (pacing usually allows fewer)."""
MAX_ROUNDS = 100
"""Scheduling rounds per campaign per pass (each sends what pacing allows; the next pass goes on)."""


@dataclass
class Pass:
    """What one pass over the running campaigns did."""

    sent: int = 0
    failed: int = 0
    uncertain: int = 0
    dnc_skipped: int = 0
    stopped: list[int] = field(default_factory=list)
    """Campaigns the scheduler completed or paused (the end date, the circuit breaker, all attempted)."""


@dataclass(frozen=True)
class Job:
    """A claimed attempt, ready to send."""

    attempt_id: int
    campaign_id: int
    channel: str
    agent_id: int | None
    contact_id: int
    to: str
    """The WhatsApp id or the e-mail address."""
    text: str
    """What is stored as the conversation's first message."""
    payload: dict[str, Any] | None = None
    message: EmailMessage | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------ what a text campaign needs to start -------------------------------
def _agents_of(campaign: Campaign, rules: CampaignRules) -> list[int | None]:
    """The agent of each way an entry may go: each arm's (its own, else the campaign's), or the campaign's."""
    if rules.arms:
        return [arm.agent_id if arm.agent_id is not None else campaign.agent_id for arm in rules.arms]
    return [campaign.agent_id]


def check_startable(session: Session, campaign: Campaign, rules: CampaignRules) -> None:
    """Conflict (``campaign_incomplete``) when a WhatsApp or e-mail campaign lacks what sending needs: an agent
    for every entry (the conversation's, which answers replies), the template, and for e-mail an address of each
    agent (replies are addressed to it, which is how they reach that agent)."""
    if campaign.channel not in TEXT_CHANNELS:
        raise Conflict(f"{campaign.channel} is not a channel campaigns send on", code="campaign_channel_unsupported",
                       field="channel")
    agents = _agents_of(campaign, rules)
    if any(agent_id is None for agent_id in agents):
        raise Conflict(f"a {campaign.channel} campaign needs an agent (agent_id, or one per A/B arm) to answer "
                       "replies", code="campaign_incomplete", field="agent_id")
    if campaign.channel == "whatsapp" and rules.whatsapp_template is None:
        raise Conflict("a WhatsApp campaign needs rules.whatsapp_template (an approved template's name, language "
                       "and parameters)", code="campaign_incomplete", field="rules.whatsapp_template")
    if campaign.channel == "email":
        if rules.email_template is None:
            raise Conflict("an e-mail campaign needs rules.email_template (the name of an e-mail template)",
                           code="campaign_incomplete", field="rules.email_template")
        if session.exec(select(EmailTemplate.id).where(EmailTemplate.name == rules.email_template)).first() is None:
            raise Conflict(f"there is no e-mail template named {rules.email_template!r}", code="campaign_incomplete",
                           field="rules.email_template")
        for agent_id in agents:
            agent = session.get(Agent, agent_id)
            if agent is None or not agent.email_address:
                name = agent.name if agent is not None else agent_id
                raise Conflict(f"agent {name} has no email_address: an e-mail campaign's mail comes From its agent, "
                               "and replies reach the agent at that address", code="campaign_incomplete",
                               field="agent_id")


# ------------------------------ database work (blocking, in worker threads) -----------------------
def _live_claims(session: Session, campaign_id: int, now: datetime) -> int:
    """Attempts of the campaign some worker holds now (in flight, for pacing)."""
    return int(session.exec(select(func.count()).select_from(CampaignAttempt).where(
        col(CampaignAttempt.campaign_id) == campaign_id, col(CampaignAttempt.outcome).is_(None),
        col(CampaignAttempt.claimed_by) != "", col(CampaignAttempt.lease_until) >= now)).one())


def _blocked(session: Session, campaign_id: int, phone: str, email: str | None) -> bool:
    """Whether the number or the address is on the do-not-call list now (global, or this campaign's): read at
    claim time, so an opt-out that arrived since the scheduling round is honoured."""
    matches = [col(DncEntry.phone) == phone] if phone else []
    if email:
        matches.append(col(DncEntry.email) == email)
    if not matches:
        return False
    return session.exec(select(DncEntry.id).where(
        or_(*matches), or_(col(DncEntry.campaign_id).is_(None), col(DncEntry.campaign_id) == campaign_id))
    ).first() is not None


def _reply_contact(session: Session, contact: Contact, attribute: str, value: str) -> int:
    """The contact a reply from ``value`` (a WhatsApp id or an e-mail address) will be found as: whoever holds it
    already, else the entry's contact, which gets it (so the channel finds the campaign's conversation)."""
    holder = session.exec(select(Contact).where(getattr(Contact, attribute) == value)).first()
    if holder is not None and holder.id is not None:
        return holder.id
    assert contact.id is not None
    if getattr(contact, attribute) is None:
        setattr(contact, attribute, value)
        session.add(contact)
        session.flush()
        return contact.id
    # The entry's contact has another address: a contact of its own for this one, as the channel would make.
    other = Contact(name=contact.name)
    setattr(other, attribute, value)
    session.add(other)
    session.flush()
    assert other.id is not None
    return other.id


def _variables(entry: CampaignEntry, contact: Contact) -> dict[str, str]:
    return {"name": contact.name or "", **entry.variables}


def _whatsapp_job(session: Session, attempt: CampaignAttempt, entry: CampaignEntry, contact: Contact,
                  rules: CampaignRules, agent_id: int | None) -> Job:
    template = rules.whatsapp_template
    if template is None:
        raise InvalidInput("the campaign has no WhatsApp template", code="campaign_incomplete",
                           field="rules.whatsapp_template")
    variables = _variables(entry, contact)
    parameters = []
    for name in template.parameters:
        value = variables.get(name, "").strip()
        if not value:
            raise InvalidInput(f"the contact has no value for the template parameter {name!r}",
                               code="template_variable_missing", field="rules.whatsapp_template.parameters")
        parameters.append(value)
    wa_id = entry.phone.removeprefix("+")
    payload = build_template_message(wa_id, template.name, template.language, tuple(parameters))
    text = f"[template {template.name} ({template.language})]" + (
        ": " + " | ".join(parameters) if parameters else "")
    contact_id = _reply_contact(session, contact, "whatsapp_id", wa_id)
    assert attempt.id is not None
    return Job(attempt.id, attempt.campaign_id, "whatsapp", agent_id, contact_id, wa_id, text, payload=payload,
               extra={"template": template.name})


def _email_job(session: Session, attempt: CampaignAttempt, entry: CampaignEntry, contact: Contact,
               rules: CampaignRules, agent: Agent | None, sender: Callable[[str], str], address: str) -> Job:
    template = session.exec(select(EmailTemplate).where(EmailTemplate.name == rules.email_template)).first()
    if template is None:
        raise InvalidInput(f"there is no e-mail template named {rules.email_template!r}",
                           code="email_template_missing", field="rules.email_template")
    variables = _variables(entry, contact)
    subject = render(template.subject, variables, html=False, field="subject")
    text = render(template.text, variables, html=False, field="text")
    html = render(template.html, variables, html=True, field="html") if template.html.strip() else ""
    own = agent.email_address if agent is not None and agent.email_address else ""
    if not own:
        raise InvalidInput("the attempt's agent has no email_address", code="campaign_incomplete", field="agent_id")
    message = build_message(sender=sender(own), to=address, subject=subject,
                            body=with_signature(text, agent.email_signature if agent is not None else ""),
                            html=html)
    # One-click unsubscribe in mail clients (RFC 2369): a mail to the agent, which the channel reads as an opt-out.
    message["List-Unsubscribe"] = f"<mailto:{own}?subject=unsubscribe>"
    contact_id = _reply_contact(session, contact, "email", address)
    assert attempt.id is not None
    return Job(attempt.id, attempt.campaign_id, "email", agent.id if agent is not None else None, contact_id,
               address, text, message=message, extra={"subject": subject, "template": template.name})


# ------------------------------ the worker --------------------------------------------------------
class CampaignSender:
    """Sends the messages of running WhatsApp and e-mail campaigns (see the module).  ``start()``, ``close()``."""

    def __init__(self, engine: Engine, *, whatsapp: WhatsAppService | None = None,
                 email: EmailService | None = None, interval: float = 5.0, lease: timedelta = LEASE,
                 worker_id: str | None = None, clock: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self.whatsapp = whatsapp
        self.email = email
        self.interval = interval
        self.lease = lease
        self.worker_id = worker_id or f"{socket.gethostname()[:100]}:{os.getpid()}:campaigns:{secrets.token_hex(4)}"
        self.clock = clock
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closing = False
        self._unready_logged: set[str] = set()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self._task is None and not self._closing:
            self._task = asyncio.create_task(self._run_forever(), name="campaign-sender")

    def wake(self) -> None:
        """Look at the campaigns now (a campaign was started or resumed) rather than at the next interval."""
        self._wake.set()

    async def close(self) -> None:
        """Stop: the send in hand finishes (its outcome is recorded), nothing new starts.  Idempotent."""
        self._closing = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(task, timeout=30.0)
            except TimeoutError:
                log.warning("the campaign sender did not stop within 30 s; cancelled")

    async def _run_forever(self) -> None:
        while not self._closing:
            self._wake.clear()
            try:
                done = await self.run_once()
                if done.sent or done.failed or done.uncertain or done.dnc_skipped:
                    log.info("campaigns: %d sent, %d failed, %d uncertain, %d do-not-call skipped", done.sent,
                             done.failed, done.uncertain, done.dnc_skipped)
            except Exception:  # a database hiccup must not end the campaigns for good
                log.exception("the campaign sender's pass failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()

    async def _db(self, fn: Callable[[Session], T]) -> T:
        def transaction() -> T:
            with session_scope(self.engine) as session:
                return fn(session)

        return await asyncio.to_thread(transaction)

    # ------------------------------------------------------------------ channels
    def _ready(self, wanted: set[str]) -> list[str]:
        """Those of ``wanted`` channels that can send now (configured); a campaign on another waits, its attempts
        untouched (said once in the log, not on every pass)."""
        ready = []
        for channel in sorted(wanted):
            try:
                if channel == "whatsapp":
                    if self.whatsapp is None:
                        raise Unavailable("no WhatsApp channel in this process", code="whatsapp_not_configured")
                    self.whatsapp.client  # noqa: B018 - raises Unavailable when sending is not configured
                else:
                    if self.email is None:
                        raise Unavailable("no e-mail channel in this process", code="email_not_configured")
                    self.email.sender  # noqa: B018 - the same
            except Unavailable as exc:
                if channel not in self._unready_logged:
                    self._unready_logged.add(channel)
                    log.info("%s campaigns wait: [%s] %s", channel, exc.code, exc.message)
                continue
            self._unready_logged.discard(channel)
            ready.append(channel)
        return ready

    def _display(self, address: str) -> str:
        assert self.email is not None
        return own_display(self.email.settings, address)

    # ------------------------------------------------------------------ one pass
    async def run_once(self) -> Pass:
        """One pass over the running text campaigns: send what their rules allow now."""
        done = Pass()
        running = await self._db(lambda s: [(i, channel) for i, channel in s.exec(
            select(Campaign.id, Campaign.channel)
            .where(col(Campaign.status) == "running", col(Campaign.channel).in_(TEXT_CHANNELS))
            .order_by(col(Campaign.id))).all() if i is not None])
        ready = self._ready({channel for _id, channel in running})
        for campaign_id, channel in running:
            if self._closing:
                break
            if channel in ready:
                await self._campaign(campaign_id, done)
        return done

    async def _campaign(self, campaign_id: int, done: Pass) -> None:
        for _round in range(MAX_ROUNDS):
            if self._closing:
                return
            now = self.clock()
            tick, skipped = await self._db(partial(self._schedule, campaign_id=campaign_id, now=now))
            done.dnc_skipped += skipped
            if tick is None:
                return
            if tick.stop is not None:
                done.stopped.append(campaign_id)
                return
            if not tick.dial:
                return
            for dial in tick.dial:
                if self._closing:
                    return
                await self._send(dial, done)

    def _schedule(self, session: Session, campaign_id: int, now: datetime) -> tuple[Tick | None, int]:
        """The scheduler's decision for the campaign now, with its skips and its stop applied."""
        campaign = session.get(Campaign, campaign_id)
        if campaign is None or campaign.status != "running" or campaign.channel not in TEXT_CHANNELS:
            return None, 0
        snap = store.snapshot(session, campaign, now=now, in_flight=_live_claims(session, campaign_id, now),
                              batch=BATCH)
        tick = plan(store.view(campaign), snap, store.load_dnc(session, campaign_id))
        skipped = 0
        for skip in tick.skip:
            if store.claim(session, skip.attempt_id, self.worker_id, now=now, lease=self.lease):
                store.finish(session, skip.attempt_id, "dnc_skipped", now=now)
                skipped += 1
        if tick.stop is not None:
            store.change_status(session, campaign_id, tick.stop.action, now=now, reason=tick.stop.reason)
        return tick, skipped

    def _take(self, session: Session, attempt_id: int, now: datetime) -> Job | str | None:
        """Claim one attempt and build its message; a string: the outcome it ended with unsent (``uncertain``,
        ``failed``, ``dnc_skipped``); None: another worker has it."""
        attempt = session.get(CampaignAttempt, attempt_id)
        if attempt is None or attempt.outcome is not None:
            return None
        running = session.get(Campaign, attempt.campaign_id)
        if running is None or running.status != "running":
            return None  # paused or cancelled since the round was planned: nothing more goes out
        taken_before = attempt.started_at is not None
        if not store.claim(session, attempt_id, self.worker_id, now=now, lease=self.lease):
            return None
        if taken_before:
            # Claimed by a worker that never recorded an outcome: it may have sent the message before it died.
            log.warning("campaign attempt %s was interrupted during its send; recorded uncertain, not sent again",
                        attempt_id)
            store.finish(session, attempt_id, "uncertain", now=now, sip_cause="send_interrupted")
            return "uncertain"
        campaign = store.get_campaign(session, attempt.campaign_id)
        entry = session.get(CampaignEntry, attempt.entry_id)
        contact = session.get(Contact, entry.contact_id) if entry is not None else None
        assert entry is not None and contact is not None  # foreign keys
        rules = load_rules(campaign.rules)
        arm = next((a for a in rules.arms if a.name == attempt.arm), None)
        agent_id = arm.agent_id if arm is not None and arm.agent_id is not None else campaign.agent_id
        agent = session.get(Agent, agent_id) if agent_id is not None else None
        address: str | None = None
        if campaign.channel == "email":
            raw = (entry.variables.get("email") or contact.email or "").strip()
            try:
                address = normalize_email(raw) if raw else None
            except InvalidInput:
                address = None
            if address is None:
                store.finish(session, attempt_id, "failed", now=now, sip_cause="no_email_address")
                return "failed"
        if _blocked(session, campaign.id or 0, entry.phone, address):  # the number blocks e-mail campaigns too
            store.finish(session, attempt_id, "dnc_skipped", now=now)
            return "dnc_skipped"
        try:
            if campaign.channel == "whatsapp":
                return _whatsapp_job(session, attempt, entry, contact, rules, agent_id)
            assert address is not None
            return _email_job(session, attempt, entry, contact, rules, agent, self._display, address)
        except InvalidInput as exc:  # a variable the template needs is missing, a value WhatsApp would refuse
            log.warning("campaign attempt %s cannot be sent: [%s] %s", attempt_id, exc.code, exc.message)
            store.finish(session, attempt_id, "failed", now=now, sip_cause=exc.code)
            return "failed"

    async def _send(self, dial: Dial, done: Pass) -> None:
        now = self.clock()
        taken = await self._db(lambda s: self._take(s, dial.attempt_id, now))
        if taken is None:
            return
        if isinstance(taken, str):
            self._count(done, taken)
            return
        job = taken
        try:
            external_id = await self._deliver(job)
        except asyncio.CancelledError:
            # Stopped mid-send: the message may be on its way.
            await asyncio.shield(self._end(job, "uncertain", "cancelled"))
            raise
        except WhatsAppError as exc:
            outcome = "uncertain" if exc.maybe_delivered else "failed"
            cause = f"{exc.code}:{exc.graph_code}" if exc.graph_code is not None else exc.code
            log.warning("campaign attempt %s: WhatsApp send %s ([%s] %s)", job.attempt_id, outcome, cause,
                        exc.message)
            await self._end(job, outcome, cause)
            self._count(done, outcome)
            return
        except EmailError as exc:
            # A timeout may have come after the server took the mail: never sent twice, so uncertain.
            outcome = "uncertain" if isinstance(exc.__cause__, TimeoutError) else "failed"
            log.warning("campaign attempt %s: e-mail send %s ([%s])", job.attempt_id, outcome, exc.code)
            log.debug("campaign attempt %s: %s", job.attempt_id, exc.message)  # may name the address
            await self._end(job, outcome, exc.code)
            self._count(done, outcome)
            return
        except EvaError as exc:
            log.warning("campaign attempt %s not sent: [%s] %s", job.attempt_id, exc.code, exc.message)
            await self._end(job, "failed", exc.code)
            self._count(done, "failed")
            return
        except Exception:
            # Unknown: whether the request went out cannot be told, so it is not sent again.
            log.exception("campaign attempt %s failed unexpectedly", job.attempt_id)
            await self._end(job, "uncertain", "internal_error")
            self._count(done, "uncertain")
            return
        log.debug("campaign attempt %s sent to %s", job.attempt_id, job.to)
        await self._db(lambda s: self._record(s, job, external_id))
        done.sent += 1

    async def _deliver(self, job: Job) -> str:
        """Send ``job``'s message; its channel id (wamid, Message-ID)."""
        if job.payload is not None:
            assert self.whatsapp is not None
            sent = await self.whatsapp.client.send(job.payload)
            return sent.wamid
        assert self.email is not None and job.message is not None
        await asyncio.to_thread(self.email.sender.send, job.message)
        return str(job.message["Message-ID"])

    @staticmethod
    def _count(done: Pass, outcome: str) -> None:
        if outcome == "uncertain":
            done.uncertain += 1
        elif outcome == "dnc_skipped":
            done.dnc_skipped += 1
        else:
            done.failed += 1

    async def _end(self, job: Job, outcome: str, cause: str) -> None:
        def end(session: Session) -> None:
            try:
                store.finish(session, job.attempt_id, outcome, now=self.clock(), sip_cause=cause)
            except Conflict:  # another worker recorded it meanwhile (its lease had run out): theirs stands
                log.warning("campaign attempt %s already had an outcome", job.attempt_id)

        await self._db(end)

    def _record(self, session: Session, job: Job, external_id: str) -> None:
        """The attempt sent, and the message as the start of the agent's conversation with the contact."""
        now = self.clock()
        try:
            store.finish(session, job.attempt_id, "sent", now=now)
        except Conflict:
            log.warning("campaign attempt %s already had an outcome; its message was sent", job.attempt_id)
        conversation_id = channel_store.new_conversation(session, job.channel, job.agent_id, job.contact_id,
                                                         job.to if job.channel == "whatsapp" else external_id)
        channel_store.add_message(session, conversation_id, "assistant", job.text, external_id=external_id,
                                  timings={"sent_by": "campaign", "campaign_id": job.campaign_id,
                                           "attempt_id": job.attempt_id, **job.extra})
        attempt = session.get(CampaignAttempt, job.attempt_id)
        if attempt is not None:
            attempt.conversation_id = conversation_id
            session.add(attempt)
