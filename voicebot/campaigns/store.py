"""Campaigns in the database: create, replace, delete, change status, import an audience (and apply its segment),
the do-not-call list, analytics, and the durable claiming of due attempts the dialer will use.

Blocking functions on an open ``Session`` (the admin API runs them in worker threads, the CLI directly); each
leaves committing to its caller's transaction, so an import is all or nothing.  Phone numbers are personal data:
they are logged at DEBUG only.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from models import Agent, Contact, Flow
from models.campaigns import Campaign, CampaignAttempt, CampaignEntry, DncEntry
from models.trunks import SipTrunk
from voicebot.campaigns.dnc import DncList
from voicebot.campaigns.importer import ParsedCsv, Problem
from voicebot.campaigns.phones import to_e164
from voicebot.campaigns.rules import (
    DELETABLE,
    EDITABLE,
    OUTCOMES,
    REACHED,
    CampaignRules,
    load_rules,
    transition,
    zone,
)
from voicebot.campaigns.scheduler import (
    AfterOutcome,
    CampaignView,
    DueAttempt,
    RecentAttempt,
    Snapshot,
    after_outcome,
    assign_arm,
)
from voicebot.campaigns.segments import EXCLUDED, matcher, subject
from voicebot.errors import Conflict, InvalidInput, NotFound

log = logging.getLogger(__name__)

CHUNK = 500
"""Values per ``IN (...)``: well under SQLite's and PostgreSQL's parameter limits."""
IMPORTABLE = frozenset({"draft", "paused", "running"})
DNC_SOURCES = ("import", "api", "phrase", "dtmf", "reply")
RECENT = timedelta(minutes=5)
"""How far back :func:`snapshot` reads attempts for pacing and the breaker (more than either looks at)."""


def _chunks(values: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), CHUNK):
        yield values[start:start + CHUNK]


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


# ------------------------------ campaigns ---------------------------------------------------------
def get_campaign(session: Session, campaign_id: int) -> Campaign:
    campaign = session.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFound(f"campaign {campaign_id} does not exist", field="campaign_id")
    return campaign


def view(campaign: Campaign) -> CampaignView:
    """What the scheduler reads of a campaign."""
    assert campaign.id is not None
    return CampaignView(campaign.id, campaign.status, load_rules(campaign.rules), campaign.timezone,
                        campaign.start_at, campaign.end_at)


def _check(session: Session, data: dict[str, Any], campaign_id: int | None) -> None:
    """References exist and the settings agree with each other; InvalidInput (422) names the field."""
    holder = session.exec(select(Campaign.id).where(Campaign.name == data["name"])).first()
    if holder is not None and holder != campaign_id:
        raise Conflict(f"a campaign named {data['name']!r} exists", code="campaign_name_taken", field="name")
    zone(data["timezone"])
    start, end = data.get("start_at"), data.get("end_at")
    if start is not None and end is not None and end <= start:
        raise InvalidInput("end_at must be after start_at", field="end_at")
    rules = CampaignRules.model_validate(data["rules"])
    agents = [(data.get("agent_id"), "agent_id")] + [(a.agent_id, f"rules.arms.{i}.agent_id")
                                                     for i, a in enumerate(rules.arms)]
    flows = [(data.get("flow_name"), "flow")] + [(a.flow, f"rules.arms.{i}.flow") for i, a in enumerate(rules.arms)]
    for agent_id, where in agents:
        agent = session.get(Agent, agent_id) if agent_id is not None else None
        if agent_id is not None and agent is None:
            raise InvalidInput(f"agent {agent_id} does not exist", field=where)
        if agent is not None and rules.opt_out_digit and rules.opt_out_digit == (agent.dtmf_terminator or ""):
            # The terminator alone ends key input without a turn: the callee would press it and never be put on the
            # list.
            raise InvalidInput(f"the opt-out key {rules.opt_out_digit} is agent {agent_id}'s DTMF terminator, "
                               "which never reaches the call as a key: choose another", field="rules.opt_out_digit")
    for name, where in flows:
        if name is not None and session.exec(select(Flow.id).where(Flow.name == name)).first() is None:
            raise InvalidInput(f"there is no flow named {name!r}", field=where)
    for index, trunk_id in enumerate(rules.trunk_ids):
        if session.get(SipTrunk, trunk_id) is None:
            raise InvalidInput(f"trunk {trunk_id} does not exist", field=f"rules.trunk_ids.{index}")


def create_campaign(session: Session, data: dict[str, Any]) -> Campaign:
    """``data``: the columns of :class:`Campaign` a person sets (name ... rules), already schema-checked."""
    _check(session, data, None)
    campaign = Campaign(**data)
    session.add(campaign)
    session.flush()
    return campaign


def replace_campaign(session: Session, campaign_id: int, data: dict[str, Any], *, now: datetime) -> Campaign:
    """Replace the configuration of a draft or paused campaign (its audience and attempts stay; a changed segment is
    applied to the audience in the same transaction: :func:`resegment`)."""
    campaign = get_campaign(session, campaign_id)
    if campaign.status not in EDITABLE:
        raise Conflict(f"a {campaign.status} campaign cannot be changed; pause it first",
                       code="campaign_not_editable", field="status")
    _check(session, data, campaign_id)
    segment_before = (campaign.rules or {}).get("segment") or []
    for key, value in data.items():
        setattr(campaign, key, value)
    campaign.updated_at = now
    session.add(campaign)
    session.flush()
    if ((campaign.rules or {}).get("segment") or []) != segment_before:  # a full pass only when it changed
        resegment(session, campaign, now=now)
    return campaign


def delete_campaign(session: Session, campaign_id: int) -> dict[str, int]:
    """Delete a campaign that is not dialling, with its audience, attempts and its own do-not-call entries (the
    global list stays).  Returns rows removed per kind."""
    campaign = get_campaign(session, campaign_id)
    if campaign.status not in DELETABLE:
        raise Conflict(f"a {campaign.status} campaign cannot be deleted; cancel it first",
                       code="campaign_active", field="status")
    counts = {
        "attempts": _rowcount(session.execute(delete(CampaignAttempt)
                                              .where(col(CampaignAttempt.campaign_id) == campaign_id))),
        "entries": _rowcount(session.execute(delete(CampaignEntry)
                                             .where(col(CampaignEntry.campaign_id) == campaign_id))),
        "dnc": _rowcount(session.execute(delete(DncEntry).where(col(DncEntry.campaign_id) == campaign_id))),
    }
    session.delete(campaign)
    session.flush()
    return counts


def change_status(session: Session, campaign_id: int, action: str, *, now: datetime, reason: str = "") -> Campaign:
    """Apply a status action (start, pause, resume, cancel; complete and trip come from the scheduler)."""
    campaign = get_campaign(session, campaign_id)
    after = transition(campaign.status, action)
    if action in ("start", "resume"):
        rules = load_rules(campaign.rules)
        if campaign.channel != "voice":
            from voicebot.campaigns.senders import check_startable  # the text sender's own requirements

            check_startable(session, campaign, rules)
        if campaign.agent_id is None and campaign.flow_name is None and not rules.arms:
            raise Conflict("the campaign has no agent, flow or A/B arms to talk with", code="campaign_incomplete",
                           field="agent_id")
        entries = session.exec(select(func.count()).select_from(CampaignEntry)
                               .where(col(CampaignEntry.campaign_id) == campaign_id)).one()
        if not entries:
            raise Conflict("the campaign has no contacts; import some first", code="campaign_empty")
        if action == "start" and not session.exec(
                select(func.count()).select_from(CampaignEntry)
                .where(col(CampaignEntry.campaign_id) == campaign_id, col(CampaignEntry.state) != EXCLUDED)).one():
            # Started, it would complete at once ("every contact was attempted") with nobody called, and a
            # completed campaign's segment can no longer be changed.
            raise Conflict("every contact is outside the campaign's segment; change the segment first",
                           code="campaign_empty", field="rules.segment")
        if campaign.end_at is not None and campaign.end_at <= now:
            raise Conflict("the campaign's end date has passed", code="campaign_ended", field="end_at")
    campaign.status = after
    campaign.status_reason = reason[:500]
    if action == "start":
        campaign.started_at = now
    if after in ("cancelled", "completed"):
        campaign.finished_at = now
    campaign.updated_at = now
    session.add(campaign)
    session.flush()
    log.info("campaign %s: %s -> %s%s", campaign_id, action, after, f" ({reason})" if reason else "")
    return campaign


def entry_counts(session: Session, campaign_ids: list[int]) -> dict[int, dict[str, int]]:
    """Per campaign: entries per state."""
    if not campaign_ids:
        return {}
    counts: dict[int, dict[str, int]] = {}
    for campaign_id, state, count in session.exec(
            select(CampaignEntry.campaign_id, CampaignEntry.state, func.count())
            .where(col(CampaignEntry.campaign_id).in_(campaign_ids))
            .group_by(col(CampaignEntry.campaign_id), col(CampaignEntry.state))).all():
        counts.setdefault(campaign_id, {})[state] = int(count)
    return counts


# ------------------------------ import ------------------------------------------------------------
def _problems(items: list[Problem]) -> list[dict[str, Any]]:
    return [{"line": p.line, "reason": p.reason, "column": p.column} for p in items]


def apply_import(session: Session, campaign_id: int, parsed: ParsedCsv, *, now: datetime) -> dict[str, Any]:
    """Add the parsed rows to the campaign's audience: contacts found by phone or created, one entry each with its
    variables, zone and A/B arm, and a first attempt due now.  Rows whose number is on the do-not-call list or
    already in this campaign are reported, not added; rows outside the campaign's segment are added as
    ``excluded``, with no attempt, and counted.  Returns the import report."""
    campaign = get_campaign(session, campaign_id)
    if campaign.status not in IMPORTABLE:
        raise Conflict(f"contacts cannot be added to a {campaign.status} campaign", code="campaign_closed",
                       field="status")
    rules = load_rules(campaign.rules)
    dnc = load_dnc(session, campaign_id)
    phones = [row.phone for row in parsed.rows]
    contact_of: dict[str, int] = {}
    name_of: dict[str, str] = {}  # a known contact keeps its name, and the segment sees that one (as resegment)
    for chunk in _chunks(phones):
        for contact_id, phone, name in session.exec(select(Contact.id, Contact.phone, Contact.name)
                                                    .where(col(Contact.phone).in_(chunk))).all():
            if contact_id is not None and phone is not None:
                contact_of[phone] = contact_id
                name_of[phone] = name or ""
    already = set(session.exec(select(CampaignEntry.contact_id)
                               .where(col(CampaignEntry.campaign_id) == campaign_id)).all())
    blocked: list[Problem] = []
    repeated: list[Problem] = []
    new_contacts: dict[str, str] = {}  # phone → name, of the contacts to create
    taken = []
    for row in parsed.rows:
        if dnc.is_blocked(row.phone, campaign_id):
            blocked.append(Problem(row.line, "on the do-not-call list", "phone"))
            continue
        known = contact_of.get(row.phone)
        if known is not None and known in already:
            repeated.append(Problem(row.line, "already in this campaign", "phone"))
            continue
        if known is None:
            new_contacts[row.phone] = row.name
        taken.append(row)
    # Core bulk inserts: building 50,000 ORM objects three times over took most of a big import's time.
    if new_contacts:
        session.execute(insert(Contact), [{"name": name, "phone": phone, "phone_verified": False, "created_at": now}
                                          for phone, name in new_contacts.items()])
        for chunk in _chunks(list(new_contacts)):
            for contact_id, phone in session.exec(select(Contact.id, Contact.phone)
                                                  .where(col(Contact.phone).in_(chunk))).all():
                if contact_id is not None and phone is not None:
                    contact_of[phone] = contact_id
    arm_of = {row.phone: assign_arm(rules.arms, campaign_id, contact_of[row.phone]) for row in taken}
    inside = matcher(rules.segment)
    state_of = {row.phone: "pending" if inside(subject(row.variables, name=name_of.get(row.phone, row.name),
                                                       phone=row.phone, timezone=row.timezone)) else EXCLUDED
                for row in taken}
    called = [row for row in taken if state_of[row.phone] == "pending"]
    if taken:
        session.execute(insert(CampaignEntry), [
            {"campaign_id": campaign_id, "contact_id": contact_of[row.phone], "phone": row.phone,
             "variables": row.variables, "timezone": row.timezone, "arm": arm_of[row.phone],
             "state": state_of[row.phone], "attempts": 0, "last_outcome": None, "created_at": now,
             "updated_at": now} for row in taken])
        entry_of: dict[int, int] = {}
        for chunk in _chunks([contact_of[row.phone] for row in called]):
            for entry_id, contact_id in session.exec(select(CampaignEntry.id, CampaignEntry.contact_id).where(
                    col(CampaignEntry.campaign_id) == campaign_id, col(CampaignEntry.contact_id).in_(chunk))).all():
                if entry_id is not None:
                    entry_of[contact_id] = entry_id
        _open_attempts(session, campaign_id, [(entry_of[contact_of[row.phone]], 1, arm_of[row.phone])
                                              for row in called], now=now)
    arms = Counter(arm_of.values())
    zones = Counter(row.timezone_source for row in taken)
    log.info("campaign %s: imported %d of %d rows, %d outside the segment (%d invalid, %d duplicate, "
             "%d do-not-call, %d already in it)", campaign_id, len(taken), parsed.data_rows, len(taken) - len(called),
             len(parsed.invalid), len(parsed.duplicates), len(blocked), len(repeated))
    return {
        "rows": parsed.data_rows, "imported": len(taken), "excluded": len(taken) - len(called),
        "blank_lines": parsed.blank_lines,
        "encoding": parsed.encoding, "delimiter": parsed.delimiter, "columns": parsed.columns,
        "contacts_created": len(new_contacts), "contacts_existing": len(taken) - len(new_contacts),
        "timezones": {source: zones.get(source, 0) for source in ("column", "country", "campaign")},
        "arms": dict(arms),
        "invalid": _problems(parsed.invalid), "duplicates": _problems(parsed.duplicates),
        "dnc": _problems(blocked), "already_in_campaign": _problems(repeated),
    }


def _open_attempts(session: Session, campaign_id: int, rows: list[tuple[int, int, str]], *, now: datetime) -> None:
    """Insert one attempt due now per ``(entry id, attempt number, arm)``, in one statement (none for no rows:
    ``execute(insert, [])`` would insert one row of defaults)."""
    if rows:
        session.execute(insert(CampaignAttempt), [
            {"campaign_id": campaign_id, "entry_id": entry_id, "number": number, "arm": arm, "due_at": now,
             "claimed_by": "", "lease_until": None, "outcome": None, "sip_cause": "", "call_id": None,
             "started_at": None, "ended_at": None, "created_at": now}
            for entry_id, number, arm in rows])


def resegment(session: Session, campaign: Campaign, *, now: datetime) -> dict[str, int]:
    """Apply the campaign's (new) segment to the entries it may still move, in the caller's transaction: pending
    entries outside it become excluded, and their open attempts that no worker holds are withdrawn (closed with
    the outcome ``excluded``, never started); excluded entries inside it become pending again: their withdrawn
    attempt reopens as it was (a retry keeps its due time and number), or, for an entry never tried, a first
    attempt is due now.  Entries being called, reached, exhausted or on the do-not-call list stay as they are.
    Returns how many entries went each way (``excluded``, ``included``).

    Exactly once: a worker takes an attempt with a conditional UPDATE of that row (:func:`claim`, on an open row
    only), so either it took the row first (the withdrawal skips it, and the entry, no longer pending or still
    holding an open attempt, is not excluded) or it finds the row closed and dials nothing.  Withdrawn, not
    deleted: SQLite gives a deleted highest id to the next row inserted, and a dialer holding an older snapshot
    would then claim someone else's attempt by that id.  Entries are switched by conditional UPDATEs too, and an
    attempt is opened only for an entry this call switched (RETURNING), so two overlapping replaces cannot give
    one entry two open attempts."""
    assert campaign.id is not None
    inside = matcher(load_rules(campaign.rules).segment)
    leaving: list[int] = []
    coming: list[int] = []
    for entry_id, state, variables, phone, timezone, name in session.execute(  # six columns: past sqlmodel's select
            sa_select(col(CampaignEntry.id), col(CampaignEntry.state), col(CampaignEntry.variables),
                      col(CampaignEntry.phone), col(CampaignEntry.timezone), col(Contact.name))
            .join(Contact, col(Contact.id) == col(CampaignEntry.contact_id))
            .where(col(CampaignEntry.campaign_id) == campaign.id,
                   col(CampaignEntry.state).in_(("pending", EXCLUDED)))).all():
        if entry_id is None:
            continue
        wanted = inside(subject(variables or {}, name=name or "", phone=phone, timezone=timezone))
        if state == "pending" and not wanted:
            leaving.append(entry_id)
        elif state == EXCLUDED and wanted:
            coming.append(entry_id)
    excluded = included = 0
    still_open = (select(CampaignAttempt.id).where(col(CampaignAttempt.entry_id) == col(CampaignEntry.id),
                                                   col(CampaignAttempt.outcome).is_(None)).exists())
    for chunk in _chunks(leaving):
        # ended_at stays None: the pacing and the circuit breaker read recently ended attempts, and this is none.
        session.execute(update(CampaignAttempt).where(col(CampaignAttempt.entry_id).in_(chunk),
                                                      col(CampaignAttempt.outcome).is_(None),
                                                      col(CampaignAttempt.claimed_by) == "")
                        .values(outcome=EXCLUDED).execution_options(synchronize_session=False))
        excluded += _rowcount(session.execute(
            update(CampaignEntry).where(col(CampaignEntry.id).in_(chunk), col(CampaignEntry.state) == "pending",
                                        ~still_open)
            .values(state=EXCLUDED, updated_at=now).execution_options(synchronize_session=False)))
    for chunk in _chunks(coming):
        moved = session.execute(
            update(CampaignEntry).where(col(CampaignEntry.id).in_(chunk), col(CampaignEntry.state) == EXCLUDED)
            .values(state="pending", updated_at=now)
            .returning(col(CampaignEntry.id), col(CampaignEntry.attempts), col(CampaignEntry.arm))
            .execution_options(synchronize_session=False)).all()
        # An entry has at most one withdrawn attempt: excluded, it has no open one; included, that one reopens.
        withdrawn: dict[int, int] = {entry_id: attempt_id for entry_id, attempt_id in session.execute(
            sa_select(col(CampaignAttempt.entry_id), func.max(col(CampaignAttempt.id)))
            .where(col(CampaignAttempt.entry_id).in_([row[0] for row in moved]),
                   col(CampaignAttempt.outcome) == EXCLUDED)
            .group_by(col(CampaignAttempt.entry_id))).all()}
        if withdrawn:
            session.execute(update(CampaignAttempt).where(col(CampaignAttempt.id).in_(list(withdrawn.values())),
                                                          col(CampaignAttempt.outcome) == EXCLUDED)
                            .values(outcome=None).execution_options(synchronize_session=False))
        _open_attempts(session, campaign.id, [(entry_id, attempts + 1, arm) for entry_id, attempts, arm in moved
                                              if entry_id not in withdrawn], now=now)
        included += len(moved)
    session.flush()
    log.info("campaign %s: segment applied, %d entries excluded, %d included again", campaign.id, excluded,
             included)
    return {"excluded": excluded, "included": included}


# ------------------------------ do-not-call -------------------------------------------------------
def load_dnc(session: Session, campaign_id: int | None = None) -> DncList:
    """The global list, and ``campaign_id``'s own (None: every campaign's)."""
    query = select(DncEntry.phone, DncEntry.email, DncEntry.campaign_id)
    if campaign_id is not None:
        query = query.where(or_(col(DncEntry.campaign_id).is_(None), col(DncEntry.campaign_id) == campaign_id))
    # An e-mail opt-out's address sits in the same sets as numbers: "+<digits>" and "x@y" never collide.
    return DncList.of((phone or email or "", campaign) for phone, email, campaign in session.exec(query).all())


def add_dnc(session: Session, phone: str, *, campaign_id: int | None = None, source: str = "api", note: str = "",
            now: datetime) -> tuple[DncEntry, bool]:
    """Block a number (E.164 or international form) globally or for one campaign.  Returns the entry and whether it
    is new (adding a number twice keeps the first entry).  This is the function the channels call when a contact
    opts out (source ``phrase``, ``dtmf`` or ``reply``)."""
    if source not in DNC_SOURCES:
        raise InvalidInput(f"source must be one of {', '.join(DNC_SOURCES)}", field="source")
    number = to_e164(phone)
    if campaign_id is not None:
        get_campaign(session, campaign_id)
    same = col(DncEntry.campaign_id).is_(None) if campaign_id is None else col(DncEntry.campaign_id) == campaign_id
    existing = session.exec(select(DncEntry).where(col(DncEntry.phone) == number, same)).first()
    if existing is not None:
        return existing, False
    entry = DncEntry(phone=number, campaign_id=campaign_id, source=source, note=note[:200], created_at=now)
    session.add(entry)
    session.flush()
    log.info("do-not-call entry %s added (%s, campaign %s)", entry.id, source, campaign_id)
    log.debug("do-not-call number %s", number)
    return entry, True


def remove_dnc(session: Session, dnc_id: int, *, campaign_id: int | None) -> None:
    """Take an entry off the global list (``campaign_id`` None) or off that campaign's; an entry of the other list
    is not found there."""
    entry = session.get(DncEntry, dnc_id)
    if entry is None or entry.campaign_id != campaign_id:
        raise NotFound(f"do-not-call entry {dnc_id} does not exist", field="dnc_id")
    session.delete(entry)
    session.flush()


# ------------------------------ dialling (durable claims) -----------------------------------------
def snapshot(session: Session, campaign: Campaign, *, now: datetime, in_flight: int, batch: int = 200,
             channels_busy: int | None = None, channel_capacity: int | None = None) -> Snapshot:
    """The scheduler's input for ``campaign`` now: due unclaimed attempts (oldest first, at most ``batch``), how
    many wait for later, and the attempts of the last minutes."""
    open_attempt = and_(col(CampaignAttempt.campaign_id) == campaign.id, col(CampaignAttempt.outcome).is_(None))
    free = or_(col(CampaignAttempt.claimed_by) == "", col(CampaignAttempt.lease_until) < now)
    due_rows = session.exec(
        select(CampaignAttempt, CampaignEntry).join(CampaignEntry, col(CampaignEntry.id) == CampaignAttempt.entry_id)
        .where(open_attempt, free, col(CampaignAttempt.due_at) <= now)
        .order_by(col(CampaignAttempt.due_at), col(CampaignAttempt.id)).limit(batch)).all()
    later = session.exec(select(func.count(), func.min(CampaignAttempt.due_at))
                         .where(open_attempt, col(CampaignAttempt.due_at) > now)).one()
    since = now - RECENT
    recent = session.exec(select(CampaignAttempt.started_at, CampaignAttempt.ended_at, CampaignAttempt.outcome)
                          .where(col(CampaignAttempt.campaign_id) == campaign.id,
                                 or_(col(CampaignAttempt.started_at) > since,
                                     col(CampaignAttempt.ended_at) > since))).all()
    due = [DueAttempt(a.id or 0, e.id or 0, e.phone, e.timezone, a.arm, a.number) for a, e in due_rows]
    return Snapshot(now=now, in_flight=in_flight, due=due, scheduled_later=int(later[0]), next_due_at=later[1],
                    recent=[RecentAttempt(*r) for r in recent], channels_busy=channels_busy,
                    channel_capacity=channel_capacity)


def claim(session: Session, attempt_id: int, worker: str, *, now: datetime, lease: timedelta,
          entry_id: int | None = None) -> bool:
    """Take one due attempt for ``worker`` (a conditional UPDATE: of two workers, one wins); True if taken.

    A dialer passes the ``entry_id`` its snapshot saw with the attempt: SQLite may give an erased attempt's id to
    a new row (another contact's), and the dialer dials the number of its snapshot, so the pair must still hold."""
    result = session.execute(
        update(CampaignAttempt)
        .where(col(CampaignAttempt.id) == attempt_id, col(CampaignAttempt.outcome).is_(None),
               *([col(CampaignAttempt.entry_id) == entry_id] if entry_id is not None else []),
               or_(col(CampaignAttempt.claimed_by) == "", col(CampaignAttempt.lease_until) < now))
        .values(claimed_by=worker[:200], lease_until=now + lease, started_at=now))
    if _rowcount(result) != 1:
        return False
    session.execute(update(CampaignEntry).where(col(CampaignEntry.id) == select(CampaignAttempt.entry_id)
                                                .where(col(CampaignAttempt.id) == attempt_id).scalar_subquery())
                    .values(state="calling", updated_at=now))
    return True


def finish(session: Session, attempt_id: int, outcome: str, *, now: datetime, sip_cause: str = "",
           call_id: int | None = None) -> AfterOutcome:
    """Record how an attempt ended, and schedule the retry the campaign's rules ask for (a new attempt row)."""
    if outcome not in OUTCOMES:
        raise InvalidInput(f"outcome must be one of {', '.join(OUTCOMES)}", field="outcome")
    attempt = session.get(CampaignAttempt, attempt_id)
    if attempt is None:
        raise NotFound(f"attempt {attempt_id} does not exist", field="attempt_id")
    if attempt.outcome is not None:
        raise Conflict(f"attempt {attempt_id} already ended ({attempt.outcome})", code="attempt_ended")
    campaign = get_campaign(session, attempt.campaign_id)
    entry = session.get(CampaignEntry, attempt.entry_id)
    assert entry is not None  # a foreign key
    attempt.outcome, attempt.sip_cause, attempt.ended_at = outcome, sip_cause[:64], now
    attempt.call_id = call_id
    attempt.claimed_by, attempt.lease_until = "", None
    decided = after_outcome(load_rules(campaign.rules), number=attempt.number, outcome=outcome, now=now)
    entry.state, entry.last_outcome, entry.updated_at = decided.entry_state, outcome, now
    entry.attempts = max(entry.attempts, attempt.number) if outcome != "dnc_skipped" else entry.attempts
    if decided.retry is not None:
        retry = CampaignAttempt(campaign_id=attempt.campaign_id, entry_id=entry.id or 0,
                                number=decided.retry.number, arm=attempt.arm, due_at=decided.retry.due_at,
                                created_at=now)
        if not _in_segment(session, campaign, entry):
            # The segment changed while this call was in progress (resegment leaves such entries alone): the
            # retry is made withdrawn, as resegment would have made it, and comes back if the segment does.
            entry.state, retry.outcome = EXCLUDED, EXCLUDED
        session.add(retry)
    session.add_all([attempt, entry])
    session.flush()
    return decided


def _in_segment(session: Session, campaign: Campaign, entry: CampaignEntry) -> bool:
    segment = load_rules(campaign.rules).segment
    if not segment:
        return True
    contact = session.get(Contact, entry.contact_id)
    return matcher(segment)(subject(entry.variables or {}, name=(contact.name if contact else "") or "",
                                    phone=entry.phone, timezone=entry.timezone))


# ------------------------------ analytics ---------------------------------------------------------
def _tally(outcomes: Counter[str]) -> dict[str, int]:
    return {outcome: outcomes.get(outcome, 0) for outcome in OUTCOMES}


def analytics(session: Session, campaign: Campaign) -> dict[str, Any]:
    """Attempts, contacts reached, outcomes, per A/B arm and per day (the campaign's zone), from the rows.  Rates
    are per contact in the segment: ``excluded`` entries are counted in ``contacts`` (the list holds them) but in
    no rate, and not in the per-arm contacts (nobody tries to reach them)."""
    assert campaign.id is not None
    tz = zone(campaign.timezone)
    entries: Counter[str] = Counter()
    states: Counter[str] = Counter()
    entries_per_arm: Counter[str] = Counter()
    for arm, state, count in session.exec(
            select(CampaignEntry.arm, CampaignEntry.state, func.count())
            .where(col(CampaignEntry.campaign_id) == campaign.id)
            .group_by(col(CampaignEntry.arm), col(CampaignEntry.state))).all():
        states[state] += int(count)
        entries["all"] += int(count)
        if state != EXCLUDED:
            entries_per_arm[arm] += int(count)
            entries["targeted"] += int(count)
    outcomes: Counter[str] = Counter()
    arm_outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    day_outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    reached: set[int] = set()
    reached_per_arm: dict[str, set[int]] = defaultdict(set)
    pending = 0
    answered_seconds: list[float] = []
    rows = session.exec(select(CampaignAttempt).where(col(CampaignAttempt.campaign_id) == campaign.id)
                        .execution_options(yield_per=2000))
    for row in rows:
        entry_id, arm, outcome, started, ended = row.entry_id, row.arm, row.outcome, row.started_at, row.ended_at
        if outcome is None:
            pending += 1
            continue
        if outcome == EXCLUDED:  # withdrawn before it started (its entry left the segment): no attempt made
            continue
        outcomes[outcome] += 1
        arm_outcomes[arm][outcome] += 1
        when = started or ended
        if when is not None:
            day_outcomes[when.astimezone(tz).date().isoformat()][outcome] += 1
        if outcome in REACHED:
            reached.add(entry_id)
            reached_per_arm[arm].add(entry_id)
            if outcome == "answered" and started is not None and ended is not None:
                answered_seconds.append((ended - started).total_seconds())

    def placed(counts: Counter[str]) -> int:
        return sum(n for outcome, n in counts.items() if outcome != "dnc_skipped")  # calls actually placed

    arms = [arm.name for arm in load_rules(campaign.rules).arms] or [""]
    arms += sorted(set(entries_per_arm) - set(arms))  # rows of arms the campaign no longer has
    return {
        "campaign_id": campaign.id, "status": campaign.status, "status_reason": campaign.status_reason,
        "contacts": entries["all"], "excluded": states.get(EXCLUDED, 0), "entries_by_state": dict(states),
        "attempts": placed(outcomes), "pending_attempts": pending, "reached": len(reached),
        "reach_rate": round(len(reached) / entries["targeted"], 4) if entries["targeted"] else None,
        "average_answered_seconds": round(sum(answered_seconds) / len(answered_seconds), 1)
        if answered_seconds else None,
        "outcomes": _tally(outcomes),
        "per_arm": [{"arm": arm, "contacts": entries_per_arm.get(arm, 0), "attempts": placed(arm_outcomes[arm]),
                     "reached": len(reached_per_arm[arm]),
                     "reach_rate": round(len(reached_per_arm[arm]) / entries_per_arm[arm], 4)
                     if entries_per_arm.get(arm) else None,
                     "outcomes": _tally(arm_outcomes[arm])} for arm in arms],
        "per_day": [{"day": day, "attempts": placed(counts),
                     "reached": sum(counts.get(outcome, 0) for outcome in REACHED),
                     "outcomes": _tally(counts)} for day, counts in sorted(day_outcomes.items())],
    }


# ------------------------------ contacts merged or erased -----------------------------------------
def move_entries(session: Session, from_contact: int, into_contact: int) -> int:
    """A merge: ``from_contact``'s campaign entries become ``into_contact``'s, except in campaigns where the kept
    contact already has one (there the duplicate goes, with its attempts: one person is called once)."""
    kept = select(CampaignEntry.campaign_id).where(col(CampaignEntry.contact_id) == into_contact)
    doubles = list(session.exec(select(CampaignEntry.id).where(col(CampaignEntry.contact_id) == from_contact,
                                                               col(CampaignEntry.campaign_id).in_(kept))).all())
    if doubles:
        session.execute(delete(CampaignAttempt).where(col(CampaignAttempt.entry_id).in_(doubles)))
        session.execute(delete(CampaignEntry).where(col(CampaignEntry.id).in_(doubles)))
    return _rowcount(session.execute(update(CampaignEntry).where(col(CampaignEntry.contact_id) == from_contact)
                                     .values(contact_id=into_contact)))


def erase_entries(session: Session, contact_id: int) -> int:
    """An erasure: the contact's campaign entries and their attempts go (before the calls the attempts point at).
    Do-not-call entries stay: they hold only the number, and keeping it is how the opt-out keeps being honoured."""
    entries = select(CampaignEntry.id).where(col(CampaignEntry.contact_id) == contact_id)
    session.execute(delete(CampaignAttempt).where(col(CampaignAttempt.entry_id).in_(entries)))
    return _rowcount(session.execute(delete(CampaignEntry).where(col(CampaignEntry.contact_id) == contact_id)))
