"""The dialer's scheduling logic as a pure state machine: what to dial now, what to retry, when to stop.

No I/O, no clock, no asyncio.  The dialer (the next piece to build) loads a :class:`Snapshot` -- the time, the
calls in flight, the attempts of the last minutes, the attempts now due -- and the do-not-call list, asks
:func:`plan` for a :class:`Tick`, and carries it out: it claims and dials ``tick.dial`` (each with its A/B arm),
records ``tick.skip`` as ``dnc_skipped``, applies ``tick.stop`` to the campaign, and sleeps until
``tick.wake_at`` or the next outcome.  When an attempt ends it asks :func:`after_outcome` what follows: a retry
row due at some time, or the entry's final state.

Rules, in the order :func:`plan` applies them:

1. Only a ``running`` campaign dials.  Before ``start_at`` nothing is dialled (wake at the start); at or after
   ``end_at`` the campaign completes ("the end date passed"), whatever is left.
2. Circuit breaker: when at least ``breaker.min_attempts`` attempts ended in the last ``breaker.window_seconds``
   and at least ``breaker.failure_ratio`` of them ``failed`` (a trunk or network failure: busy, no answer and
   voicemail are the callee's answers, not failures), the campaign is paused with the reason; nothing is dialled.
3. Due attempts of numbers on the do-not-call list are skipped (recorded ``dnc_skipped``), whatever the pacing.
4. An attempt is dialled only inside one of its contact's local windows (the entry's zone, else the campaign's),
   computed from the UTC instant through ``zoneinfo``: across midnight, and across a DST change (a window that
   starts in the skipped spring-forward hour opens when the clocks reach the window; an autumn hour that
   happens twice is inside the window both times).
5. Pacing: no more than ``max_concurrent - in_flight`` new calls, no more than ``max_per_minute`` attempts started
   in any 60 s, and, when the system's channel capacity is known, never so many that fewer than
   ``reserve_inbound`` channels stay free for callers.
6. When nothing is due, nothing is scheduled later and nothing is in flight, the campaign completes.

A/B arms are assigned by :func:`assign_arm`: a hash of the campaign and contact ids against the arms' weights, so
the same entry always gets the same arm (a retry keeps it, a restart or a re-import does not reshuffle).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from voicebot.campaigns.dnc import DncList
from voicebot.campaigns.rules import REACHED, WEEKDAYS, Arm, CampaignRules, parse_window, zone

PACING_WINDOW = timedelta(seconds=60)
IDLE_WAKE = timedelta(seconds=60)
"""How long a dialer with nothing to do waits before looking again (new imports, a resumed campaign)."""
SEARCH_DAYS = 8
"""How far ahead :func:`next_window_start` looks (a week, and the day a window crossing midnight started on)."""

EntryState = Literal["pending", "calling", "reached", "exhausted", "dnc"]


# ------------------------------ inputs ------------------------------------------------------------
@dataclass(frozen=True)
class CampaignView:
    id: int
    status: str
    rules: CampaignRules
    timezone: str = "UTC"
    start_at: datetime | None = None
    end_at: datetime | None = None


@dataclass(frozen=True)
class DueAttempt:
    """An attempt whose ``due_at`` has come, not claimed by anyone, with what the scheduler needs of its entry."""

    attempt_id: int
    entry_id: int
    phone: str
    timezone: str | None
    """The entry's zone; None: the campaign's."""
    arm: str = ""
    number: int = 1


@dataclass(frozen=True)
class RecentAttempt:
    started_at: datetime | None
    ended_at: datetime | None = None
    outcome: str | None = None


@dataclass(frozen=True)
class Snapshot:
    now: datetime
    """Timezone-aware."""
    in_flight: int = 0
    """This campaign's calls in progress (claimed attempts that have not ended)."""
    due: Sequence[DueAttempt] = ()
    """Due attempts, oldest first (the dialer may pass a bounded batch)."""
    scheduled_later: int = 0
    """Attempts of this campaign not yet due (retries waiting)."""
    next_due_at: datetime | None = None
    """When the earliest of those falls due."""
    recent: Sequence[RecentAttempt] = ()
    """Attempts started or ended in the last few minutes (pacing and the circuit breaker)."""
    channels_busy: int | None = None
    """Every call on the system (inbound and outbound, this campaign's included); None: unknown."""
    channel_capacity: int | None = None
    """Calls the system carries at once; None: unknown (then the inbound reserve cannot be applied)."""


# ------------------------------ outputs -----------------------------------------------------------
@dataclass(frozen=True)
class Dial:
    attempt_id: int
    entry_id: int
    phone: str
    arm: str


@dataclass(frozen=True)
class Skip:
    attempt_id: int
    entry_id: int
    outcome: Literal["dnc_skipped"] = "dnc_skipped"


@dataclass(frozen=True)
class Stop:
    status: Literal["paused", "completed"]
    action: Literal["trip", "complete"]
    reason: str


@dataclass(frozen=True)
class Tick:
    dial: tuple[Dial, ...] = ()
    skip: tuple[Skip, ...] = ()
    stop: Stop | None = None
    wake_at: datetime | None = None
    held: dict[str, int] = field(default_factory=dict)
    """Due attempts not dialled now, by reason: ``outside_window``, ``pacing``."""


@dataclass(frozen=True)
class Retry:
    due_at: datetime
    number: int


@dataclass(frozen=True)
class AfterOutcome:
    entry_state: EntryState
    retry: Retry | None = None


# ------------------------------ windows -----------------------------------------------------------
def _windows_of(rules: CampaignRules) -> dict[int, list[tuple[time, time | None]]]:
    return {WEEKDAYS.index(day): [parse_window(w) for w in windows] for day, windows in rules.windows.items()}


def in_window(now: datetime, tz: ZoneInfo, rules: CampaignRules) -> bool:
    """Whether ``now`` is inside a calling window, in local time of ``tz``."""
    local = now.astimezone(tz)
    clock = local.time().replace(tzinfo=None)
    windows = _windows_of(rules)
    today, yesterday = local.weekday(), (local.weekday() - 1) % 7
    for start, end in windows.get(today, []):
        if end is None or end > start:  # within the day
            if start <= clock and (end is None or clock < end):
                return True
        elif clock >= start:  # crosses midnight: the part before midnight
            return True
    # The part after midnight of yesterday's windows that cross it.
    return any(end is not None and end <= start and clock < end for start, end in windows.get(yesterday, []))


def _first_instant(day: date, wall: time, tz: ZoneInfo) -> datetime:
    """The first instant (UTC) at which the clocks of ``tz`` show ``wall`` or later on ``day``.  A wall time the
    clocks skip (spring forward) is first passed at the transition itself, found minute by minute between the two
    readings of the skipped time; a time that happens twice (autumn) counts from its first occurrence."""
    early = datetime.combine(day, wall, tzinfo=tz).astimezone(UTC)
    if early.astimezone(tz).replace(tzinfo=None) == datetime.combine(day, wall):
        return early  # the wall time exists
    late = datetime.combine(day, wall, tzinfo=tz).replace(fold=1).astimezone(UTC)
    low, high = min(early, late), max(early, late)
    probe = low
    while probe < high and probe.astimezone(tz).replace(tzinfo=None) < datetime.combine(day, wall):
        probe += timedelta(minutes=1)
    return probe


def next_window_start(now: datetime, tz: ZoneInfo, rules: CampaignRules) -> datetime | None:
    """The first instant after ``now`` at which a window is open (UTC), or None if no window ever opens."""
    local = now.astimezone(tz)
    windows = _windows_of(rules)
    best: datetime | None = None
    for offset in range(SEARCH_DAYS):
        day = (local + timedelta(days=offset)).date()
        for start, _end in windows.get(day.weekday(), []):
            opening = _first_instant(day, start, tz)
            if opening > now and (best is None or opening < best):
                best = opening
        if best is not None:
            return best
    return best


# ------------------------------ arms --------------------------------------------------------------
def assign_arm(arms: Sequence[Arm], campaign_id: int, contact_id: int) -> str:
    """The arm of a campaign's entry (one per contact), by weight; deterministic: the same ids give the same arm on
    any machine, so the arm is known before the entry row is written."""
    if not arms:
        return ""
    total = sum(arm.weight for arm in arms)
    digest = hashlib.sha256(f"{campaign_id}:{contact_id}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") % total
    for arm in arms:
        if point < arm.weight:
            return arm.name
        point -= arm.weight
    return arms[-1].name  # not reached: the points cover [0, total)


# ------------------------------ plan --------------------------------------------------------------
def breaker_reason(rules: CampaignRules, now: datetime, recent: Sequence[RecentAttempt]) -> str | None:
    """Why the circuit breaker trips now, or None."""
    breaker = rules.breaker
    if not breaker.enabled:
        return None
    since = now - timedelta(seconds=breaker.window_seconds)
    ended = [a for a in recent if a.ended_at is not None and since < a.ended_at <= now and a.outcome is not None
             and a.outcome != "dnc_skipped"]
    if len(ended) < breaker.min_attempts:
        return None
    failed = sum(1 for a in ended if a.outcome == "failed")
    if failed / len(ended) < breaker.failure_ratio:
        return None
    return (f"circuit breaker: {failed} of the last {len(ended)} attempts failed within {breaker.window_seconds} s "
            f"(the limit is {breaker.failure_ratio:.0%}); check the trunk, then resume")


def free_slots(rules: CampaignRules, snapshot: Snapshot) -> tuple[int, datetime | None]:
    """How many calls may start now, and when a per-minute slot frees up if none may."""
    pacing = rules.pacing
    slots = pacing.max_concurrent - snapshot.in_flight
    since = snapshot.now - PACING_WINDOW
    started = sorted(a.started_at for a in snapshot.recent
                     if a.started_at is not None and since < a.started_at <= snapshot.now)
    per_minute = pacing.max_per_minute - len(started)
    frees_at = started[len(started) - pacing.max_per_minute] + PACING_WINDOW if per_minute <= 0 else None
    slots = min(slots, per_minute)
    if snapshot.channel_capacity is not None and snapshot.channels_busy is not None:
        slots = min(slots, snapshot.channel_capacity - pacing.reserve_inbound - snapshot.channels_busy)
    return max(0, slots), frees_at


def plan(campaign: CampaignView, snapshot: Snapshot, dnc: DncList) -> Tick:
    """What the dialer does now (see the module's rules)."""
    now = snapshot.now
    if now.tzinfo is None:
        raise ValueError("the scheduler works on timezone-aware instants")
    if campaign.status != "running":
        return Tick()
    rules = campaign.rules
    if campaign.end_at is not None and now >= campaign.end_at:
        return Tick(stop=Stop("completed", "complete", "the end date passed"))
    if campaign.start_at is not None and now < campaign.start_at:
        return Tick(wake_at=campaign.start_at)
    reason = breaker_reason(rules, now, snapshot.recent)
    if reason is not None:
        return Tick(stop=Stop("paused", "trip", reason))

    slots, frees_at = free_slots(rules, snapshot)
    default_zone = zone(campaign.timezone)
    zones: dict[str, ZoneInfo] = {}
    dial: list[Dial] = []
    skip: list[Skip] = []
    held: Counter[str] = Counter()
    closed_zones: set[str] = set()
    for attempt in snapshot.due:
        if dnc.is_blocked(attempt.phone, campaign.id):
            skip.append(Skip(attempt.attempt_id, attempt.entry_id))
            continue
        name = attempt.timezone or campaign.timezone
        tz = zones.get(name) or zones.setdefault(name, zone(name) if attempt.timezone else default_zone)
        if not in_window(now, tz, rules):
            held["outside_window"] += 1
            closed_zones.add(name)
            continue
        if len(dial) >= slots:
            held["pacing"] += 1
            continue
        dial.append(Dial(attempt.attempt_id, attempt.entry_id, attempt.phone, attempt.arm))

    if not dial and not held and snapshot.scheduled_later == 0 and snapshot.in_flight == 0:
        return Tick(skip=tuple(skip), stop=Stop("completed", "complete", "every contact was attempted"))

    wakes: list[datetime] = [now + IDLE_WAKE]
    if snapshot.next_due_at is not None:
        wakes.append(max(now, snapshot.next_due_at))
    if held["pacing"] and frees_at is not None:
        wakes.append(frees_at)
    for name in closed_zones:
        opening = next_window_start(now, zones[name], rules)
        if opening is not None:
            wakes.append(opening)
    return Tick(dial=tuple(dial), skip=tuple(skip), wake_at=min(wakes), held=dict(held))


def after_outcome(rules: CampaignRules, *, number: int, outcome: str, now: datetime) -> AfterOutcome:
    """What follows attempt ``number`` of an entry ending with ``outcome``: a retry (a new attempt, due later) while
    the outcome's rule allows more attempts, else the entry's final state."""
    if outcome in REACHED:  # a call answered, or a campaign message sent
        return AfterOutcome("reached")
    if outcome == "dnc_skipped":
        return AfterOutcome("dnc")
    rule = next((r for key, r in rules.retry.items() if key == outcome), None)  # unknown outcomes have no rule
    if rule is None or number >= rule.max_attempts:
        return AfterOutcome("exhausted")
    return AfterOutcome("pending", Retry(now + timedelta(minutes=rule.interval_minutes), number + 1))
