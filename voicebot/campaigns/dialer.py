"""The campaign dialer: places a running voice campaign's due attempts as real outbound calls through ARI.

One asyncio task (``campaign-dialer``) looks for running voice campaigns every few seconds and keeps one loop task
per campaign (``campaign-<id>``).  A loop reads a snapshot of the campaign from the database, asks the pure
scheduler (:func:`voicebot.campaigns.scheduler.plan`) what to do, and carries it out:

* ``dnc_skipped`` attempts are recorded at once;
* each attempt to dial is first **claimed** in the database (a conditional UPDATE with a lease, see
  :func:`voicebot.campaigns.store.claim`): of two workers, or of a worker and its restarted self, only one
  dials it;
* the claimed attempt becomes a call task (``campaign-<id>-attempt-<id>``) that originates through ARI on the
  campaign's first trunk, follows the channel's events (Eva's ARI app passes them on: :attr:`VoiceApp.listeners`)
  and records how it ended -- ``answered`` (the call row linked), ``busy``, ``no_answer`` or ``failed`` with the
  SIP/Q.850 cause -- with the retry the campaign's rules ask for written as a new due attempt;
* a trunk failure (the channel fails with a cause meaning the trunk is down, unreachable or congested, or the
  originate itself fails) moves the same attempt at once to the campaign's next trunk; busy and no answer never
  do.

Pacing comes from the scheduler; the calls counted as in flight are this campaign's channels Asterisk has up
(their ids name the campaign and attempt) plus the attempts this dialer is placing, so a restarted dialer counts
its predecessor's calls too, and inbound callers are counted from every other channel up.  A paused or cancelled
campaign dials nothing more: each dial re-reads the status just before it originates; calls already up finish.

Claims and restarts.  A claim holds a lease (the ring timeout plus a margin), renewed on every loop pass while the
call lasts.  :meth:`Dialer.close` stops new dials at once, lets ringing attempts end (bounded by the ring timeout)
and records answered calls as ``answered`` straight away (the conversation itself goes on in the voice app).  An
attempt whose lease ran out while claimed -- its worker crashed or was killed -- is never dialled again: it is
recorded ``uncertain`` (the contact may have been rung, or be talking to Eva right now; calling them again
uninvited is the worse mistake), so it is neither lost nor dialled twice.

Answering machines.  A campaign with ``rules.voicemail`` sends each picked-up call through the packaged
``eva-campaign-amd`` dialplan context (Asterisk's ``AMD()``, asterisk/config/extensions.conf) before the agent
speaks: the voice app's Stasis gate hands the call's first Stasis entry to the dialer, which continues the channel
there.  A person comes back into Stasis and talks with the agent (``answered``); a machine waits out its greeting,
hears the campaign's message (synthesized once with Piper into the instance's sounds) and is hung up
(``voicemail``, with AMD's cause).  Every answered campaign call also gets the do-not-call guard
(:mod:`voicebot.campaigns.oncall`).

Contact variables.  Each placed call carries its entry's variables (the contact's name and the import's extra
columns, bounded by :func:`voicebot.pipeline.variables.call_variables`), registered for the channel in the voice
app's ``call_variables`` before the originate: the greeting says them, the flow starts with them set and the
agent's LLM reads them as the call's context.

Phone numbers and contact variables are personal data: logged at DEBUG only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from models import Agent, Call, Contact
from models.campaigns import Campaign, CampaignAttempt, CampaignEntry
from models.db import session_scope
from models.trunks import SipTrunk
from voicebot.ari import AriClient, AriEvent
from voicebot.ari.handback import FLOW_VARIABLE
from voicebot.campaigns import store
from voicebot.campaigns.rules import CampaignRules, load_rules
from voicebot.campaigns.scheduler import Dial, plan
from voicebot.errors import AriError, EvaError
from voicebot.pipeline.variables import call_variables

log = logging.getLogger(__name__)

LOCAL_CARRIER_ENDPOINT = "carrier"
"""The pjsip endpoint of Eva's local carrier (asterisk/config/pjsip.conf): a campaign without trunks dials it."""
CHANNEL_PREFIX = "eva-camp-"
POLL_S = 2.0
"""The longest a loop sleeps between passes: how soon a new, resumed or paused campaign is noticed."""
ARI_TIMEOUT_S = 10.0
DB_TIMEOUT_S = 30.0
LEASE_MARGIN = timedelta(seconds=60)
"""A claim's lease is the ring timeout plus this; renewed on every pass while the call lasts."""
HANGUP_WAIT_S = 5.0
"""After Eva hangs up a call that rang too long, how long it waits for Asterisk to report the channel gone."""
AMD_CONTEXT = "eva-campaign-amd"
"""The packaged dialplan context (asterisk/config/extensions.conf) that runs ``AMD()`` on an answered call."""
AMD_DECIDES_S = 5.0
"""amd.conf's total analysis time: a call that lasted longer after pick-up was past detection."""
AMD_WAIT_S = 120.0
"""The longest detection, a machine's greeting and the message may take before Eva hangs up."""
LINK_WAIT_S = 1.0
"""How long an ended answered attempt waits for the voice app's call row (to link it).  The row is written as
the channel enters Stasis, so it is there; this only covers a database slower than the hang-up."""

Outcome = Literal["answered", "busy", "no_answer", "failed", "voicemail"]
VoicemailSound = Callable[[str, str, str], Awaitable[str]]
"""(message, language, voice) → what the dialplan's ``Playback()`` plays ('' when it cannot be made)."""

BUSY_CAUSES = frozenset({17})
"""Q.850 user busy (SIP 486/600)."""
NO_ANSWER_CAUSES = frozenset({0, 16, 18, 19, 31})
"""No user responding (18), no answer (19, SIP 480), and a channel cleared before anyone answered without a cause
(0, 16, 31: the callee's phone gave up ringing, Asterisk cancelled it)."""
TRUNK_FAILURE_CAUSES = frozenset({2, 3, 27, 34, 38, 41, 42, 47, 102})
"""Causes that say the trunk or network, not the callee, failed: no route to network/destination (2, 3),
destination out of order (27), no circuit available (34, SIP 503), network out of order (38, SIP 502), temporary
failure (41, SIP 500), switching equipment congestion (42), resource unavailable (47), timer expiry (102, SIP
504).  The same attempt is retried at once on the campaign's next trunk."""
TRUNK_FAILURE_SIP = frozenset({408, 500, 502, 503, 504})
"""SIP statuses (when Asterisk reports the technology cause) that mean the same."""
CAUSE_NAMES = {1: "unallocated number", 17: "busy", 18: "no user responding", 19: "no answer", 21: "rejected",
               22: "number changed", 27: "destination out of order", 28: "invalid number", 34: "no circuit",
               38: "network out of order", 41: "temporary failure", 42: "congestion", 47: "resource unavailable",
               102: "timer expiry"}


# ------------------------------ pure: causes → outcomes ---------------------------------------------
@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    failover: bool
    """Try the same attempt on the next trunk (a trunk failure)."""
    sip_cause: str


def sip_status(tech_cause: str) -> int | None:
    """The SIP status in Asterisk's technology cause (``"SIP 503 Service Unavailable"`` → 503), or None."""
    match = re.search(r"\b([1-6]\d\d)\b", tech_cause)
    return int(match.group(1)) if match else None


def cause_text(cause: int, tech_cause: str = "") -> str:
    """What :attr:`CampaignAttempt.sip_cause` records: ``"486 / cause 17 (busy)"``."""
    status = sip_status(tech_cause)
    named = f"cause {cause}" + (f" ({CAUSE_NAMES[cause]})" if cause in CAUSE_NAMES else "")
    return f"{status} / {named}" if status is not None else named


def classify(cause: int, tech_cause: str = "") -> Verdict:
    """How an attempt whose channel ended *before it was answered* ended, from the Q.850 cause (and the SIP status
    when Asterisk gives it).  Pure."""
    status = sip_status(tech_cause)
    text = cause_text(cause, tech_cause)
    if cause in BUSY_CAUSES or status in (486, 600):
        return Verdict("busy", False, text)
    if cause in TRUNK_FAILURE_CAUSES or status in TRUNK_FAILURE_SIP:
        return Verdict("failed", True, text)
    if cause in NO_ANSWER_CAUSES or status in (480, 487):
        return Verdict("no_answer", False, text)
    return Verdict("failed", False, text)  # rejected (21), unallocated (1), invalid number (28), ...


def originate_failure(error: EvaError) -> Verdict:
    """The originate request itself failed (endpoint missing, Asterisk refused it): a trunk failure."""
    return Verdict("failed", True, f"originate failed: {error.code}"[:64])


def channel_id_for(campaign_id: int, attempt_id: int, trunk_index: int) -> str:
    """The channel id of an attempt's call on one trunk (unique: a failover gets its own)."""
    return f"{CHANNEL_PREFIX}{campaign_id}-{attempt_id}-{trunk_index}-{uuid.uuid4().hex[:6]}"


def parse_channel_id(channel_id: str) -> tuple[int, int] | None:
    """(campaign id, attempt id) of a campaign call's channel, or None for any other channel."""
    match = re.fullmatch(rf"{CHANNEL_PREFIX}(\d+)-(\d+)-\d+-[0-9a-f]+", channel_id)
    return (int(match.group(1)), int(match.group(2))) if match else None


# ------------------------------ the dialer -----------------------------------------------------------
@dataclass
class _Watch:
    """What one originated channel did, filled from ARI events."""

    amd: bool = False
    """The call goes through answering-machine detection once picked up (then re-enters Stasis if a person)."""
    picked_up: asyncio.Event = field(default_factory=asyncio.Event)
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    """The channel entered Stasis for the voice app: a conversation with the agent."""
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    entries: int = 0
    cause: int = 0
    tech_cause: str = ""
    amd_status: str = ""
    amd_cause: str = ""


@dataclass
class _Placing:
    campaign_id: int
    attempt_id: int
    entry_id: int
    task: asyncio.Task[None] | None = None
    channel_id: str = ""
    answered: bool = False


@dataclass(frozen=True)
class _Plan:
    """What one attempt is placed with (read once, before dialling)."""

    endpoints: tuple[str, ...]
    agent_name: str
    flow: str
    ring_timeout_s: int
    caller_id: str
    language: str
    voice: str = ""
    voicemail: str | None = None
    """The message left on an answering machine; None: no detection."""
    opt_out_digit: str = ""
    """The key that puts the callee on the do-not-call list ('' none)."""
    variables: dict[str, str] = field(default_factory=dict)
    """The contact's variables for the answered call (:func:`voicebot.pipeline.variables.call_variables`)."""


class Dialer:
    """Dials running voice campaigns.  ``start()`` then ``close()`` (idempotent)."""

    def __init__(self, engine: Engine, ari: AriClient, *, worker: str,
                 listeners: list[Callable[[AriEvent], None]] | None = None,
                 responder_wrappers: dict[str, Any] | None = None,
                 call_variables: dict[str, dict[str, str]] | None = None,
                 stasis_gates: dict[str, Callable[[], None]] | None = None,
                 voicemail_sound: VoicemailSound | None = None, channel_capacity: int | None = None,
                 call_slots: Callable[[], int] | None = None, poll_s: float = POLL_S, batch: int = 50) -> None:
        """``listeners`` is the voice app's list of event listeners (the dialer adds itself); ``responder_wrappers``
        its per-channel responder wrappers (the do-not-call guard on answered campaign calls); ``call_variables``
        its per-channel contact variables (what the greeting, the flow and the agent know of the callee);
        ``call_slots`` the voice app's free call slots now (:mod:`voicebot.calls.admission`): a call is rung only
        into a slot no ringing call of this dialer has taken, so an answered campaign call is never turned away and
        never makes the worker carry more calls than it can."""
        self.engine = engine
        self.ari = ari
        self.worker = f"{worker}:dialer:{uuid.uuid4().hex[:8]}"
        self.listeners = listeners if listeners is not None else []
        self.responder_wrappers = responder_wrappers
        self.call_variables = call_variables
        self.stasis_gates = stasis_gates
        """The voice app's Stasis gates: without them (or without ``voicemail_sound``) no machine detection."""
        self.voicemail_sound = voicemail_sound
        self._gate_tasks: set[asyncio.Task[None]] = set()
        self.channel_capacity = channel_capacity
        self.call_slots = call_slots
        self._claiming = 0
        """Attempts between the slot check and their entry in ``_placing`` (a claim awaits the database)."""
        self.poll_s = poll_s
        self.batch = batch
        self._task: asyncio.Task[None] | None = None
        self._loops: dict[int, asyncio.Task[None]] = {}
        self._wake: dict[int, asyncio.Event] = {}
        self._placing: dict[int, _Placing] = {}
        """Attempt id → the call being placed for it by this dialer."""
        self._watches: dict[str, _Watch] = {}
        self._stopping = asyncio.Event()
        self._closed = False
        self.dialled: list[tuple[int, int, str]] = []
        """(campaign id, attempt id, endpoint) of every originate this dialer made, oldest first (at most 1000):
        what tests and debugging look at."""

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self._task is None and not self._closed:
            self.listeners.append(self.on_event)
            self._task = asyncio.create_task(self._run(), name="campaign-dialer")

    async def close(self, *, drain_s: float | None = None) -> None:
        """Stop dialling at once; wait for ringing attempts to end (at most ``drain_s``, by default the longest
        ring timeout plus a margin) and record answered ones.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        # The loops see the flag at their next await and end on their own, so none is cut off between claiming an
        # attempt and starting its call (that attempt would wait out its lease); one stuck longer is cancelled.
        tasks = [t for t in [self._task, *self._loops.values()] if t is not None]
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=DB_TIMEOUT_S + ARI_TIMEOUT_S)
            for task in stuck:
                task.cancel()
            if stuck:  # asyncio.wait, not await: a cancellation of close() itself must still propagate
                await asyncio.wait(stuck, timeout=5)
        placing = [p.task for p in self._placing.values() if p.task is not None]
        if placing:
            _, pending = await asyncio.wait(placing, timeout=drain_s if drain_s is not None else 125.0)
            for task in pending:
                task.cancel()  # its claim stays, and ends as ``uncertain`` when its lease runs out
            if pending:
                await asyncio.wait(pending, timeout=5)
        with contextlib.suppress(ValueError):
            self.listeners.remove(self.on_event)
        self._task = None
        self._loops.clear()

    async def _db(self, work: Callable[[Session], Any]) -> Any:
        def run() -> Any:
            with session_scope(self.engine) as session:
                return work(session)

        return await asyncio.wait_for(asyncio.to_thread(run), DB_TIMEOUT_S)

    # ------------------------------------------------------------------ events (from the voice app)
    def on_event(self, event: AriEvent) -> None:
        """Synchronous and quick: marks what happened to a channel this dialer watches."""
        watch = self._watches.get(event.channel_id)
        if watch is None:
            return
        if event.type == "StasisStart":
            watch.entries += 1
            watch.picked_up.set()
            if not watch.amd or watch.entries >= 2:
                watch.answered.set()
        elif event.type == "ChannelUserevent" and event.raw.get("eventname") == "EvaAmd":
            body = event.raw.get("userevent") or {}
            watch.amd_status = str(body.get("status", "")).strip().upper()[:16] if isinstance(body, dict) else ""
            watch.amd_cause = str(body.get("cause", "")).strip()[:40] if isinstance(body, dict) else ""
        elif event.type in ("ChannelHangupRequest", "ChannelDestroyed"):
            if event.cause and not watch.cause:
                watch.cause = event.cause
            tech = str(event.raw.get("tech_cause", "") or "")
            if tech and not watch.tech_cause:
                watch.tech_cause = tech
            if event.type == "ChannelDestroyed":
                watch.cause = event.cause or watch.cause
                watch.ended.set()

    # ------------------------------------------------------------------ campaigns
    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                running = await self._db(lambda s: list(s.exec(
                    select(Campaign.id).where(col(Campaign.status) == "running",
                                              col(Campaign.channel) == "voice")).all()))
                for campaign_id in running:
                    if campaign_id is not None and campaign_id not in self._loops:
                        self._wake[campaign_id] = asyncio.Event()
                        self._loops[campaign_id] = asyncio.create_task(self._campaign_loop(campaign_id),
                                                                       name=f"campaign-{campaign_id}")
                for campaign_id, task in list(self._loops.items()):
                    if task.done():
                        del self._loops[campaign_id]
                        if not task.cancelled() and task.exception() is not None:
                            log.error("campaign %s: dialer loop failed: %r", campaign_id, task.exception())
            except (EvaError, TimeoutError, OSError) as exc:
                log.warning("campaign dialer: could not list campaigns: %s", exc)
            except Exception:  # a database error must not end dialling for good
                log.exception("campaign dialer: pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.poll_s)

    async def _campaign_loop(self, campaign_id: int) -> None:
        wake = self._wake[campaign_id]
        while not self._stopping.is_set():
            try:
                keep, wake_at = await self._pass(campaign_id)
            except (EvaError, TimeoutError, OSError) as exc:
                log.warning("campaign %s: dialer pass failed: %s", campaign_id, exc)
                keep, wake_at = True, None
            except Exception:
                log.exception("campaign %s: dialer pass failed", campaign_id)
                keep, wake_at = True, None
            if not keep:
                return
            delay = self.poll_s
            if wake_at is not None:
                delay = max(0.05, min(delay, (wake_at - datetime.now(UTC)).total_seconds()))
            wake.clear()
            woken = asyncio.ensure_future(wake.wait())
            stopping = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait({woken, stopping}, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            finally:
                woken.cancel()
                stopping.cancel()

    async def _live_channels(self) -> list[dict[str, Any]] | None:
        try:
            return await asyncio.wait_for(self.ari.channels(), ARI_TIMEOUT_S)
        except (AriError, TimeoutError) as exc:
            log.warning("campaign dialer: could not list channels: %s", exc)
            return None

    async def _pass(self, campaign_id: int) -> tuple[bool, datetime | None]:
        """One look at the campaign: returns (keep looping, when to look again)."""
        now = datetime.now(UTC)
        mine = [p for p in self._placing.values() if p.campaign_id == campaign_id]
        channels = await self._live_channels()
        if channels is None:
            return True, None  # without Asterisk's view, pacing and the inbound reserve cannot be kept
        live_attempts = set()
        busy = 0
        for channel in channels:
            name, channel_id = str(channel.get("name", "")), str(channel.get("id", ""))
            if name.startswith(("UnicastRTP/", "WebSocket/", "Snoop/", "AudioSocket/")):
                continue
            busy += 1
            parsed = parse_channel_id(channel_id)
            if parsed is not None and parsed[0] == campaign_id:
                live_attempts.add(parsed[1])
        in_flight = len(live_attempts | {p.attempt_id for p in mine})
        mine_ids = [p.attempt_id for p in mine]
        worker = self.worker

        def look(session: Session) -> tuple[str, CampaignRules | None, Any, Any, list[int]]:
            campaign = session.get(Campaign, campaign_id)
            if campaign is None:
                return "deleted", None, None, None, []
            rules = load_rules(campaign.rules)
            lease = now + timedelta(seconds=rules.ring_timeout_s) + LEASE_MARGIN
            if mine_ids:  # our calls go on (also in a paused campaign): keep their claims
                session.execute(update(CampaignAttempt).where(col(CampaignAttempt.id).in_(mine_ids),
                                                              col(CampaignAttempt.claimed_by) == worker,
                                                              col(CampaignAttempt.outcome).is_(None))
                                .values(lease_until=lease))
            if campaign.status != "running" or campaign.channel != "voice":
                return campaign.status, None, None, None, []
            lost = _expire_lost_claims(session, campaign_id, now, worker, exclude=set(mine_ids))
            snap = store.snapshot(session, campaign, now=now, in_flight=in_flight, batch=self.batch,
                                  channels_busy=busy, channel_capacity=self.channel_capacity)
            return "running", rules, store.view(campaign), (snap, store.load_dnc(session, campaign_id)), lost

        _status, rules, view, loaded, lost = await self._db(look)
        if lost:
            log.warning("campaign %s: %d attempt(s) left by a stopped worker recorded as uncertain", campaign_id,
                        len(lost))
        if rules is None:
            return bool(mine), None  # paused, cancelled, completed: no new dials; our calls finish
        snap, dnc = loaded
        tick = plan(view, snap, dnc)
        if tick.skip:
            skipped = [s.attempt_id for s in tick.skip]

            def skip(session: Session) -> None:
                for attempt_id in skipped:
                    if store.claim(session, attempt_id, worker, now=now, lease=LEASE_MARGIN):
                        store.finish(session, attempt_id, "dnc_skipped", now=now, sip_cause="do-not-call list")
                        # Never dialled: no start time, so it takes no per-minute slot from calls.
                        session.execute(update(CampaignAttempt).where(col(CampaignAttempt.id) == attempt_id)
                                        .values(started_at=None))

            await self._db(skip)
            log.info("campaign %s: %d attempt(s) skipped (do-not-call)", campaign_id, len(skipped))
        if tick.stop is not None:
            stop = tick.stop

            def apply(session: Session) -> None:
                with contextlib.suppress(EvaError):  # someone else changed the status first
                    store.change_status(session, campaign_id, stop.action, now=now, reason=stop.reason)

            await self._db(apply)
            return bool(mine), None
        for index, dial in enumerate(tick.dial):
            if self._stopping.is_set():
                break
            left = self.slots_left()
            if left is not None and left <= 0:
                # Not claimed: they stay pending for the next look (a call ending wakes none of ours, so the
                # next look is at the poll interval at the latest).
                log.info("campaign %s: every call slot of this worker is taken; %d call(s) wait", campaign_id,
                         len(tick.dial) - index)
                return True, None
            await self._claim_and_place(campaign_id, rules, dial)
        return True, tick.wake_at

    def slots_left(self) -> int | None:
        """Call slots a new campaign call may still ring into (None: no limit): the voice app's free slots less
        this dialer's calls that ring (or are being claimed) and so hold none yet."""
        if self.call_slots is None:
            return None
        ringing = sum(1 for placing in self._placing.values() if not placing.answered)
        return self.call_slots() - ringing - self._claiming

    async def _claim_and_place(self, campaign_id: int, rules: CampaignRules, dial: Dial) -> None:
        now = datetime.now(UTC)
        lease = timedelta(seconds=rules.ring_timeout_s) + LEASE_MARGIN

        def take(session: Session) -> _Plan | None:
            campaign = session.get(Campaign, campaign_id)
            if campaign is None or campaign.status != "running":  # paused or cancelled a moment ago
                return None
            if not store.claim(session, dial.attempt_id, self.worker, now=now, lease=lease, entry_id=dial.entry_id):
                return None  # another worker took it
            return replace(_plan_of(session, campaign, rules, dial.arm),
                           variables=_entry_variables(session, dial.entry_id))

        self._claiming += 1
        try:
            placed = await self._db(take)
            if placed is None:
                return
            placing = _Placing(campaign_id, dial.attempt_id, dial.entry_id)
            self._placing[dial.attempt_id] = placing
        finally:
            self._claiming -= 1
        placing.task = asyncio.create_task(self._place(placing, placed, dial.phone),
                                           name=f"campaign-{campaign_id}-attempt-{dial.attempt_id}")

    # ------------------------------------------------------------------ one attempt
    async def _place(self, placing: _Placing, placed: _Plan, phone: str) -> None:
        outcome: Verdict = Verdict("failed", False, "no trunk")
        call_id: int | None = None
        try:
            endpoints = placed.endpoints if placed.agent_name or placed.flow else ()
            if not endpoints and placed.endpoints:
                outcome = Verdict("failed", False, "no active agent or flow")
            for index, endpoint in enumerate(endpoints):
                outcome = await self._ring(placing, placed, phone, index, endpoint)
                if placing.answered:
                    call_id = await self._call_id(placing.channel_id)
                    break
                if not outcome.failover:
                    break
                log.warning("campaign %s attempt %s: trunk %s failed (%s)%s", placing.campaign_id,
                            placing.attempt_id, endpoint, outcome.sip_cause,
                            "; trying the next trunk" if index + 1 < len(endpoints) else "")
        except asyncio.CancelledError:
            raise  # close() gave up waiting: the claim stays, and its lease ends it as uncertain
        except Exception:
            log.exception("campaign %s attempt %s failed", placing.campaign_id, placing.attempt_id)
            outcome = Verdict("answered", False, "") if placing.answered else Verdict("failed", False, "dialer error")
        attempt_id, ended = placing.attempt_id, datetime.now(UTC)

        def record(session: Session) -> None:
            row = session.get(CampaignAttempt, attempt_id)
            if row is None or row.outcome is not None or row.claimed_by != self.worker:
                return  # recorded elsewhere (the lease ran out and another worker closed it)
            store.finish(session, attempt_id, outcome.outcome, now=ended, sip_cause=outcome.sip_cause,
                         call_id=call_id)

        try:
            await asyncio.shield(self._db(record))
        except (EvaError, TimeoutError) as exc:  # e.g. the cancelled campaign was deleted while its call went on
            log.error("campaign %s attempt %s: could not record the outcome: %s", placing.campaign_id, attempt_id,
                      exc)
        finally:
            self._placing.pop(attempt_id, None)
            wake = self._wake.get(placing.campaign_id)
            if wake is not None:
                wake.set()  # a slot is free: look again now
        log.info("campaign %s attempt %s: %s%s", placing.campaign_id, attempt_id, outcome.outcome,
                 f" ({outcome.sip_cause})" if outcome.sip_cause else "")

    async def _ring(self, placing: _Placing, placed: _Plan, phone: str, index: int, endpoint: str) -> Verdict:
        """Originate on one trunk and follow the channel until it ends; the verdict of this try."""
        channel_id = channel_id_for(placing.campaign_id, placing.attempt_id, index)
        amd = placed.voicemail is not None and self.stasis_gates is not None
        watch = self._watches[channel_id] = _Watch(amd=amd)
        placing.channel_id = channel_id
        try:
            if self.responder_wrappers is not None:
                from voicebot.campaigns.oncall import dnc_guard

                self.responder_wrappers[channel_id] = dnc_guard(self.engine, phone, placed.language,
                                                                opt_out_digit=placed.opt_out_digit)
            if self.call_variables is not None and placed.variables:
                # Before the originate: the voice app reads them as the answered channel enters Stasis.
                self.call_variables[channel_id] = dict(placed.variables)
            args = f"did={phone},direction=outbound" + (f",agent={placed.agent_name}" if placed.agent_name else "")
            variables = self.ari.origin_variables(channel_id)
            if placed.flow and not placed.agent_name:
                variables[FLOW_VARIABLE] = placed.flow  # the voice app runs the flow (and its agent)
            if amd and self.stasis_gates is not None:
                sound = ""
                if placed.voicemail and self.voicemail_sound is not None:
                    try:
                        sound = await self.voicemail_sound(placed.voicemail, placed.language, placed.voice)
                    except EvaError as exc:
                        log.error("campaign %s: the voicemail message could not be synthesized: %s",
                                  placing.campaign_id, exc.message)
                # EVA_APP as a channel variable shadows the dialplan's global: after detection the person comes
                # back into this worker's application, whose dialer follows the call (another worker sharing the
                # Asterisk would answer it without the contact's variables or the do-not-call guard).
                variables.update({"EVA_CAMPAIGN_ARGS": args, "EVA_VOICEMAIL": sound, "EVA_APP": self.ari.app})

                def detect(channel_id: str = channel_id) -> None:
                    task = asyncio.create_task(self._detect(channel_id), name=f"campaign-amd-{channel_id}")
                    self._gate_tasks.add(task)
                    task.add_done_callback(self._gate_tasks.discard)

                self.stasis_gates[channel_id] = detect
            log.debug("campaign %s attempt %s: dialling %s on %s", placing.campaign_id, placing.attempt_id, phone,
                      endpoint)
            try:
                await asyncio.wait_for(self.ari.originate(
                    f"PJSIP/{phone}@{endpoint}", app_args=args, caller_id=placed.caller_id,
                    timeout=placed.ring_timeout_s + 5, channel_id=channel_id, variables=variables), ARI_TIMEOUT_S)
            except (AriError, TimeoutError) as exc:
                error = exc if isinstance(exc, AriError) else AriError("originate timed out", code="ari_timeout")
                log.warning("campaign %s attempt %s: originate on %s failed: %s", placing.campaign_id,
                            placing.attempt_id, endpoint, error.message)
                return originate_failure(error)
            self.dialled = [*self.dialled[-999:], (placing.campaign_id, placing.attempt_id, endpoint)]
            await _first(watch.picked_up, watch.ended, timeout=placed.ring_timeout_s)
            if watch.picked_up.is_set():
                return await self._answered(placing, watch, channel_id)
            if not watch.ended.is_set():  # rang out: Eva gives up on it
                with contextlib.suppress(AriError, TimeoutError):
                    await asyncio.wait_for(self.ari.hangup(channel_id, reason="no_answer"), ARI_TIMEOUT_S)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watch.ended.wait(), HANGUP_WAIT_S)
                if watch.picked_up.is_set():  # answered as the hang-up went out
                    return await self._answered(placing, watch, channel_id)
                return Verdict("no_answer", False, f"rang {placed.ring_timeout_s} s")
            return classify(watch.cause, watch.tech_cause)
        finally:
            self._watches.pop(channel_id, None)
            if self.stasis_gates is not None:
                self.stasis_gates.pop(channel_id, None)
            if self.call_variables is not None:
                self.call_variables.pop(channel_id, None)
            if self.responder_wrappers is not None:  # each trunk tried has its own channel id
                self.responder_wrappers.pop(channel_id, None)

    async def _answered(self, placing: _Placing, watch: _Watch, channel_id: str) -> Verdict:
        """The call was picked up: with detection, a machine is left the message (``voicemail``) and a person
        goes on to the agent; either way the call is followed to its end."""
        loop = asyncio.get_running_loop()
        picked_at = loop.time()
        if watch.amd:
            await self._through_detection(watch, channel_id)
            if not watch.answered.is_set():
                if not watch.ended.is_set() and not self._stopping.is_set():  # stuck: end it
                    with contextlib.suppress(AriError, TimeoutError):
                        await asyncio.wait_for(self.ari.hangup(channel_id), ARI_TIMEOUT_S)
                detail = f"amd {watch.amd_status or 'unknown'} {watch.amd_cause}".strip()[:64]
                # Without the verdict (its event was missed), a channel gone without coming back to Stasis went
                # the machine's way through the dialplan, unless it ended before detection could decide.
                guessed = not watch.amd_status and loop.time() - picked_at >= AMD_DECIDES_S
                if watch.amd_status == "MACHINE" or guessed:
                    return Verdict("voicemail", False, detail)
                return Verdict("answered", False, f"{detail}: hung up during detection"[:64])
        placing.answered = True
        await self._until_ended(watch)
        return Verdict("answered", False, "")

    async def _through_detection(self, watch: _Watch, channel_id: str) -> None:
        """Until the call is back in Stasis (a person), gone (a machine was left the message, or the callee hung
        up) or AMD_WAIT_S passed.  Events may stop while the channel is in the dialplan (an application's
        subscription can end with the channel's Stasis), so the channel is also looked up every second."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + AMD_WAIT_S
        while not (watch.answered.is_set() or watch.ended.is_set() or self._stopping.is_set()):
            if loop.time() > deadline:
                with contextlib.suppress(AriError, TimeoutError):
                    await asyncio.wait_for(self.ari.hangup(channel_id), ARI_TIMEOUT_S)
                return
            await _first(watch.answered, watch.ended, self._stopping, timeout=1.0)
            if watch.answered.is_set() or watch.ended.is_set():
                return
            try:
                found = await asyncio.wait_for(self.ari.request("GET", f"channels/{channel_id}", ok_missing=True),
                                               ARI_TIMEOUT_S)
            except (AriError, TimeoutError):
                continue
            if found is None:
                watch.ended.set()

    async def _detect(self, channel_id: str) -> None:
        """Send a picked-up campaign call from Stasis into the packaged answering-machine detection, and keep
        following its events there (the verdict arrives as a user event)."""
        try:
            await asyncio.wait_for(self.ari.continue_in_dialplan(channel_id, AMD_CONTEXT, "s"), ARI_TIMEOUT_S)
        except (AriError, TimeoutError) as exc:
            log.error("channel %s: could not start answering-machine detection: %s; hanging up", channel_id, exc)
            with contextlib.suppress(AriError, TimeoutError):
                await asyncio.wait_for(self.ari.hangup(channel_id), ARI_TIMEOUT_S)
            return
        try:
            await asyncio.wait_for(self.ari.request("POST", f"applications/{self.ari.app}/subscription",
                                                    params={"eventSource": f"channel:{channel_id}"}), ARI_TIMEOUT_S)
        except (AriError, TimeoutError) as exc:  # the channel lookups still see it end
            log.warning("channel %s: could not subscribe to its events during detection: %s", channel_id, exc)

    async def _until_ended(self, watch: _Watch) -> None:
        """An answered call lasts as long as the conversation; close() ends the wait early (the call goes on in the
        voice app, the attempt is recorded answered now)."""
        await _first(watch.ended, self._stopping)

    async def _call_id(self, channel_id: str) -> int | None:
        """The voice app's call row for an answered channel (it is written just after the answer)."""
        def find(session: Session) -> int | None:
            return session.exec(select(Call.id).where(col(Call.channel_id) == channel_id)
                                .order_by(col(Call.id))).first()

        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINK_WAIT_S
        while True:
            found: int | None = await self._db(find)
            if found is not None or loop.time() > deadline:
                return found
            await asyncio.sleep(0.2)


async def _first(*events: asyncio.Event, timeout: float | None = None) -> None:
    """Until one of ``events`` is set (or ``timeout``)."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


def voicemail_sounds(settings: Any, tts: Any) -> VoicemailSound:
    """Synthesizes a campaign's voicemail message (8 kHz WAV in the instance's sounds folder, once per text and
    voice) and returns the name Asterisk's ``Playback()`` finds it by.

    Calls of several campaigns with the same message ask at once: one synthesis per key (the others wait for it;
    a process makes one of these for all its dialers), and the file appears whole (written aside, then renamed),
    so ``Playback()`` never reads a half-written WAV."""
    from voicebot.asterisk.render import instance_path
    from voicebot.tts.voices import resolve_voice

    made: dict[str, str] = {}
    locks: dict[str, asyncio.Lock] = {}

    async def sound(text: str, language: str, voice: str) -> str:
        key = hashlib.sha256(f"{language}\n{voice}\n{text}".encode()).hexdigest()[:16]
        name = f"eva-campaign-vm-{key}"
        path = settings.sounds_dir / f"{name}.wav"
        async with locks.setdefault(key, asyncio.Lock()):
            if key not in made or not await asyncio.to_thread(path.exists):
                resolved = await asyncio.to_thread(resolve_voice, voice, language, settings.voices_dir)
                audio = await tts.speak(text, 8000, resolved)
                await asyncio.to_thread(write_wav_atomically, path, audio)
                made[key] = f"{instance_path(settings)}/sounds/{name}"
        return made[key]

    return sound


def write_wav_atomically(path: Path, audio: Any) -> None:
    """``audio`` as the WAV ``path`` in a folder Asterisk reads, whole or not at all (readers see old or new), with
    the sounds folder's group and mode (:func:`voicebot.asterisk.files.write_atomic`)."""
    import io

    from voicebot.asterisk.files import FILE_MODE, write_atomic
    from voicebot.audio import write_wav

    data = io.BytesIO()
    write_wav(data, audio)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data.getvalue(), mode=FILE_MODE, gid=path.parent.stat().st_gid)


# ------------------------------ blocking helpers (in a worker thread) -----------------------------------
def _plan_of(session: Session, campaign: Campaign, rules: CampaignRules, arm_name: str) -> _Plan:
    """The trunks, agent or flow, ring timeout and caller ID of one attempt (its arm's agent or flow wins)."""
    arm = next((a for a in rules.arms if a.name == arm_name), None)
    agent_id = arm.agent_id if arm is not None and (arm.agent_id or arm.flow) else campaign.agent_id
    flow = (arm.flow if arm is not None and (arm.agent_id or arm.flow) else campaign.flow_name) or ""
    agent = session.get(Agent, agent_id) if agent_id is not None else None
    agent_name = agent.name if agent is not None and agent.active else ""
    endpoints: list[str] = []
    if rules.trunk_ids:
        trunks = {t.id: t for t in session.exec(select(SipTrunk).where(col(SipTrunk.id).in_(rules.trunk_ids)))}
        # A deleted or disabled trunk is passed over (not a failure of the call).
        endpoints = [f"trunk-{trunks[t].name}" for t in rules.trunk_ids if t in trunks and trunks[t].enabled]
    else:
        endpoints = [LOCAL_CARRIER_ENDPOINT]
    language = str(agent.language or "en") if agent is not None else "en"
    voice = str(agent.voice or "") if agent is not None else ""
    voicemail = rules.voicemail.message if rules.voicemail is not None else None
    return _Plan(tuple(endpoints), agent_name, flow, rules.ring_timeout_s, rules.caller_id, language, voice,
                 voicemail, rules.opt_out_digit or "")


def _entry_variables(session: Session, entry_id: int) -> dict[str, str]:
    """The variables a call to entry ``entry_id`` carries: its contact's name and the import's columns, bounded
    (the same view the campaign's WhatsApp and e-mail templates get)."""
    entry = session.get(CampaignEntry, entry_id)
    if entry is None:
        return {}
    contact = session.get(Contact, entry.contact_id)
    return call_variables(contact.name if contact is not None else "", dict(entry.variables or {}))


def _expire_lost_claims(session: Session, campaign_id: int, now: datetime, worker: str, *,
                        exclude: set[int]) -> list[int]:
    """Attempts claimed by a worker whose lease ran out (it crashed, or was stopped mid-call): recorded
    ``uncertain``, never dialled again (see the module's note).  Each is taken with a conditional claim first, so
    of two workers one records it."""
    stale = session.exec(select(CampaignAttempt.id).where(
        col(CampaignAttempt.campaign_id) == campaign_id, col(CampaignAttempt.outcome).is_(None),
        col(CampaignAttempt.claimed_by) != "", col(CampaignAttempt.lease_until) < now)).all()
    lost: list[int] = []
    for attempt_id in stale:
        if attempt_id is None or attempt_id in exclude:
            continue
        started = session.exec(select(CampaignAttempt.started_at).where(col(CampaignAttempt.id) == attempt_id)).first()
        if store.claim(session, attempt_id, worker, now=now, lease=LEASE_MARGIN):
            store.finish(session, attempt_id, "uncertain", now=now, sip_cause="worker lost: lease expired")
            # claim() stamped the start anew; the call began when the lost worker dialled it.
            session.execute(update(CampaignAttempt).where(col(CampaignAttempt.id) == attempt_id)
                            .values(started_at=started or now))
            lost.append(attempt_id)
    return lost
