"""The campaign scheduler as a pure state machine, on a fake clock: calling windows (across midnight, across DST
changes), campaign dates, pacing (concurrency, per minute, inbound reserve), do-not-call skips, retries by outcome
until exhausted, A/B arm assignment, the circuit breaker, completion, and status transitions."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicebot.campaigns.dnc import DncList
from voicebot.campaigns.rules import CampaignRules, transition
from voicebot.campaigns.scheduler import (
    CampaignView,
    DueAttempt,
    RecentAttempt,
    Snapshot,
    after_outcome,
    assign_arm,
    in_window,
    next_window_start,
    plan,
)
from voicebot.errors import Conflict

NY = ZoneInfo("America/New_York")
MADRID = ZoneInfo("Europe/Madrid")
MONDAY = datetime(2026, 6, 1, tzinfo=UTC)  # a Monday
NOBODY = DncList()


def rules(**kwargs: Any) -> CampaignRules:
    return CampaignRules.model_validate(kwargs)


def campaign(status: str = "running", zone: str = "UTC", **kwargs: Any) -> CampaignView:
    given_rules = kwargs.pop("rules", None) or rules(windows={d: ["00:00-24:00"] for d in
                                                             ("mon", "tue", "wed", "thu", "fri", "sat", "sun")})
    return CampaignView(1, status, given_rules, zone, **kwargs)


def due(n: int, *, zone: str | None = None, first: int = 1) -> list[DueAttempt]:
    return [DueAttempt(i, i, f"+3460000{i:04d}", zone) for i in range(first, first + n)]


def at(local: datetime, tz: ZoneInfo) -> datetime:
    return local.replace(tzinfo=tz).astimezone(UTC)


# ------------------------------ windows -----------------------------------------------------------
def test_a_window_inside_a_day_opens_at_its_start_and_closes_at_its_end() -> None:
    office = rules(windows={"mon": ["09:00-18:00"]})
    assert not in_window(at(datetime(2026, 6, 1, 8, 59), MADRID), MADRID, office)
    assert in_window(at(datetime(2026, 6, 1, 9, 0), MADRID), MADRID, office)
    assert in_window(at(datetime(2026, 6, 1, 17, 59), MADRID), MADRID, office)
    assert not in_window(at(datetime(2026, 6, 1, 18, 0), MADRID), MADRID, office)
    assert not in_window(at(datetime(2026, 6, 2, 10, 0), MADRID), MADRID, office)  # Tuesday: no window


def test_a_window_across_midnight_belongs_to_the_day_it_starts() -> None:
    night = rules(windows={"mon": ["22:00-02:00"]})
    assert not in_window(at(datetime(2026, 6, 1, 21, 59), NY), NY, night)
    assert in_window(at(datetime(2026, 6, 1, 23, 30), NY), NY, night)
    assert in_window(at(datetime(2026, 6, 2, 1, 59), NY), NY, night)  # Tuesday morning: Monday's window
    assert not in_window(at(datetime(2026, 6, 2, 2, 0), NY), NY, night)
    assert not in_window(at(datetime(2026, 6, 1, 1, 0), NY), NY, night)  # Monday morning: Sunday has none
    assert not in_window(at(datetime(2026, 6, 2, 23, 0), NY), NY, night)  # Tuesday night: no window
    whole = rules(windows={"sun": ["18:00-24:00"]})
    assert in_window(at(datetime(2026, 5, 31, 23, 59), NY), NY, whole)
    assert not in_window(at(datetime(2026, 6, 1, 0, 0), NY), NY, whole)


def test_the_contacts_zone_decides_not_the_servers() -> None:
    office = rules(windows={"mon": ["09:00-18:00"]})
    now = datetime(2026, 6, 1, 14, 0, tzinfo=UTC)  # 16:00 in Madrid, 10:00 in New York, 07:00 in Los Angeles
    assert in_window(now, MADRID, office) and in_window(now, NY, office)
    assert not in_window(now, ZoneInfo("America/Los_Angeles"), office)
    view = campaign(rules=office, zone="Europe/Madrid")
    tick = plan(view, Snapshot(now=now, due=[DueAttempt(1, 1, "+12125550101", "America/New_York"),
                                             DueAttempt(2, 2, "+13105550102", "America/Los_Angeles"),
                                             DueAttempt(3, 3, "+34600000003", None)]), NOBODY)
    assert [d.attempt_id for d in tick.dial] == [1]  # max_concurrent 1: the first due in its window
    assert tick.held == {"outside_window": 1, "pacing": 1}
    # Los Angeles opens at 09:00 PDT = 16:00 UTC; the dialer is told to look again by then.
    assert tick.wake_at is not None and tick.wake_at <= datetime(2026, 6, 1, 14, 1, tzinfo=UTC)


def test_windows_follow_the_spring_dst_change() -> None:
    office = rules(windows={"sat": ["09:00-18:00"], "mon": ["09:00-18:00"]})
    # Madrid moves from UTC+1 to UTC+2 on Sunday 2026-03-29: 09:00 local is 08:00 UTC before, 07:00 UTC after.
    assert in_window(datetime(2026, 3, 28, 8, 0, tzinfo=UTC), MADRID, office)
    assert not in_window(datetime(2026, 3, 28, 7, 30, tzinfo=UTC), MADRID, office)
    assert in_window(datetime(2026, 3, 30, 7, 0, tzinfo=UTC), MADRID, office)
    assert not in_window(datetime(2026, 3, 30, 6, 59, tzinfo=UTC), MADRID, office)
    assert next_window_start(datetime(2026, 3, 28, 20, 0, tzinfo=UTC), MADRID, office) == \
        datetime(2026, 3, 30, 7, 0, tzinfo=UTC)
    # A window starting inside the skipped hour (New York, 2026-03-08, 02:00 -> 03:00) opens at the jump.
    gap = rules(windows={"sun": ["02:30-04:00"]})
    assert not in_window(datetime(2026, 3, 8, 6, 59, tzinfo=UTC), NY, gap)  # 01:59 EST
    assert in_window(datetime(2026, 3, 8, 7, 0, tzinfo=UTC), NY, gap)  # 03:00 EDT
    assert next_window_start(datetime(2026, 3, 8, 5, 0, tzinfo=UTC), NY, gap) == datetime(2026, 3, 8, 7, 0, tzinfo=UTC)


def test_windows_follow_the_autumn_dst_change() -> None:
    # New York repeats 01:00-02:00 on 2026-11-01: a window in that hour is open in both of its occurrences.
    repeated = rules(windows={"sun": ["01:00-01:30"]})
    assert in_window(datetime(2026, 11, 1, 5, 15, tzinfo=UTC), NY, repeated)  # 01:15 EDT
    assert in_window(datetime(2026, 11, 1, 6, 15, tzinfo=UTC), NY, repeated)  # 01:15 EST
    assert not in_window(datetime(2026, 11, 1, 5, 45, tzinfo=UTC), NY, repeated)
    assert next_window_start(datetime(2026, 11, 1, 4, 0, tzinfo=UTC), NY, repeated) == \
        datetime(2026, 11, 1, 5, 0, tzinfo=UTC)  # its first occurrence
    office = rules(windows={"mon": ["09:00-18:00"]})
    assert in_window(datetime(2026, 11, 2, 14, 0, tzinfo=UTC), NY, office)  # 09:00 EST
    assert not in_window(datetime(2026, 11, 2, 13, 30, tzinfo=UTC), NY, office)  # 08:30 EST (was 09:30 EDT)


def test_next_window_start_finds_the_next_opening_or_none() -> None:
    office = rules(windows={"mon": ["09:00-12:00", "15:00-18:00"]})
    assert next_window_start(at(datetime(2026, 6, 1, 13, 0), MADRID), MADRID, office) == \
        at(datetime(2026, 6, 1, 15, 0), MADRID)
    assert next_window_start(at(datetime(2026, 6, 1, 19, 0), MADRID), MADRID, office) == \
        at(datetime(2026, 6, 8, 9, 0), MADRID)  # next Monday


def test_bad_windows_are_refused() -> None:
    bad: list[dict[str, list[str]]] = [{"mon": ["9:00-18:00"]}, {"mon": ["09:00-09:00"]}, {"mon": ["25:00-26:00"]},
                                       {"xyz": []}, {}, {"mon": ["24:00-02:00"]}, {"mon": ["09:00-10:00"] * 5}]
    for windows in bad:
        with pytest.raises(ValueError):
            rules(windows=windows)


def test_without_windows_a_campaign_calls_weekdays_office_hours() -> None:
    default = rules()
    assert set(default.windows) == {"mon", "tue", "wed", "thu", "fri"}
    assert not in_window(datetime(2026, 6, 6, 12, 0, tzinfo=UTC), ZoneInfo("UTC"), default)  # a Saturday


# ------------------------------ dates and status --------------------------------------------------
def test_only_a_running_campaign_dials() -> None:
    for status in ("draft", "paused", "cancelled", "completed"):
        assert plan(campaign(status), Snapshot(now=MONDAY, due=due(3)), NOBODY).dial == ()


def test_before_the_start_date_nothing_is_dialled_and_after_the_end_it_completes() -> None:
    start, end = MONDAY + timedelta(hours=2), MONDAY + timedelta(days=2)
    view = campaign(start_at=start, end_at=end)
    before = plan(view, Snapshot(now=MONDAY, due=due(3)), NOBODY)
    assert before.dial == () and before.wake_at == start and before.stop is None
    assert len(plan(view, Snapshot(now=start, due=due(3)), NOBODY).dial) == 1
    after = plan(view, Snapshot(now=end, due=due(3)), NOBODY)
    assert after.dial == () and after.stop is not None
    assert (after.stop.status, after.stop.reason) == ("completed", "the end date passed")


def test_a_campaign_with_nothing_left_completes() -> None:
    done = plan(campaign(), Snapshot(now=MONDAY), NOBODY)
    assert done.stop is not None and done.stop.status == "completed"
    waiting = plan(campaign(), Snapshot(now=MONDAY, scheduled_later=1, next_due_at=MONDAY + timedelta(seconds=30)),
                   NOBODY)
    assert waiting.stop is None and waiting.wake_at == MONDAY + timedelta(seconds=30)
    idle = plan(campaign(), Snapshot(now=MONDAY, scheduled_later=1, next_due_at=MONDAY + timedelta(hours=5)), NOBODY)
    assert idle.wake_at == MONDAY + timedelta(seconds=60)  # looks again each minute (new imports, a resume)
    assert plan(campaign(), Snapshot(now=MONDAY, in_flight=1), NOBODY).stop is None  # a call still going


def test_status_transitions() -> None:
    assert transition("draft", "start") == "running"
    assert transition("running", "pause") == "paused"
    assert transition("paused", "resume") == "running"
    for status in ("draft", "running", "paused"):
        assert transition(status, "cancel") == "cancelled"
    assert transition("running", "trip") == "paused"
    assert transition("running", "complete") == "completed"
    for status, action in (("draft", "pause"), ("running", "start"), ("paused", "pause"), ("cancelled", "resume"),
                           ("completed", "start"), ("cancelled", "cancel"), ("draft", "resume")):
        with pytest.raises(Conflict) as caught:
            transition(status, action)
        assert caught.value.code == "campaign_transition_invalid"


# ------------------------------ pacing ------------------------------------------------------------
def paced(**pacing: int) -> CampaignView:
    return campaign(rules=rules(windows={"mon": ["00:00-24:00"]}, pacing=pacing))


def test_max_concurrent_counts_the_calls_in_flight() -> None:
    view = paced(max_concurrent=3, max_per_minute=100)
    assert len(plan(view, Snapshot(now=MONDAY, due=due(10)), NOBODY).dial) == 3
    tick = plan(view, Snapshot(now=MONDAY, in_flight=2, due=due(10)), NOBODY)
    assert [d.attempt_id for d in tick.dial] == [1] and tick.held == {"pacing": 9}
    assert plan(view, Snapshot(now=MONDAY, in_flight=5, due=due(10)), NOBODY).dial == ()


def test_max_per_minute_counts_attempts_started_in_the_last_60_seconds() -> None:
    view = paced(max_concurrent=50, max_per_minute=5)
    recent = [RecentAttempt(MONDAY - timedelta(seconds=s)) for s in (5, 20, 40, 59, 61, 90)]  # 4 inside the minute
    tick = plan(view, Snapshot(now=MONDAY, due=due(10), recent=recent), NOBODY)
    assert len(tick.dial) == 1
    full = [*recent, RecentAttempt(MONDAY - timedelta(seconds=1))]
    tick = plan(view, Snapshot(now=MONDAY, due=due(10), recent=full), NOBODY)
    assert tick.dial == () and tick.held == {"pacing": 10}
    # The oldest of the five in the window (59 s ago) leaves it in 1 s: that is when to look again.
    assert tick.wake_at == MONDAY + timedelta(seconds=1)


def test_the_inbound_reserve_keeps_channels_free_for_callers() -> None:
    view = paced(max_concurrent=10, max_per_minute=100, reserve_inbound=2)
    tick = plan(view, Snapshot(now=MONDAY, due=due(10), channels_busy=5, channel_capacity=10), NOBODY)
    assert len(tick.dial) == 3  # 10 channels - 2 kept for callers - 5 busy
    assert plan(view, Snapshot(now=MONDAY, due=due(10), channels_busy=8, channel_capacity=10), NOBODY).dial == ()
    assert len(plan(view, Snapshot(now=MONDAY, due=due(10)), NOBODY).dial) == 10  # capacity unknown


def test_pacing_holds_over_a_simulated_hour() -> None:
    """A fake clock ticking each second: calls last 45 s; at no moment are more than max_concurrent calls up, and
    no 60 s hold more than max_per_minute starts.  Every contact is dialled once, then the campaign completes."""
    view = paced(max_concurrent=4, max_per_minute=6)
    pending = deque(due(100))
    live: list[tuple[datetime, int]] = []
    starts: list[datetime] = []
    now = MONDAY
    completed_at = None
    for _ in range(3600 * 2):
        live = [(end, a) for end, a in live if end > now]
        recent = [RecentAttempt(s) for s in starts if s > now - timedelta(minutes=5)]
        tick = plan(view, Snapshot(now=now, in_flight=len(live), due=list(pending), recent=recent), NOBODY)
        if tick.stop is not None:
            completed_at = now
            break
        for dial in tick.dial:
            assert pending.popleft().attempt_id == dial.attempt_id  # oldest first
            live.append((now + timedelta(seconds=45), dial.attempt_id))
            starts.append(now)
        assert len(live) <= 4
        assert sum(1 for s in starts if now - timedelta(seconds=60) < s <= now) <= 6
        now += timedelta(seconds=1)
    assert completed_at is not None and len(starts) == 100
    # 4 concurrent 45 s calls allow ~5.3 per minute, under the per-minute cap: about 19 minutes in all.
    assert timedelta(minutes=17) < completed_at - MONDAY < timedelta(minutes=22)


# ------------------------------ do-not-call -------------------------------------------------------
def test_dnc_numbers_are_skipped_without_using_a_slot() -> None:
    attempts = due(4)
    dnc = DncList.of([(attempts[0].phone, None), (attempts[1].phone, 1), (attempts[2].phone, 2)])
    tick = plan(paced(max_concurrent=2, max_per_minute=10), Snapshot(now=MONDAY, due=attempts), dnc)
    assert [s.attempt_id for s in tick.skip] == [1, 2]  # global, and this campaign's; campaign 2's does not apply
    assert [d.attempt_id for d in tick.dial] == [3, 4]
    assert {s.outcome for s in tick.skip} == {"dnc_skipped"}
    assert dnc.is_blocked(attempts[2].phone, 2) and not dnc.is_blocked(attempts[2].phone, 1)
    everyone = DncList.of([(a.phone, None) for a in attempts])
    last = plan(paced(), Snapshot(now=MONDAY, due=attempts), everyone)
    assert len(last.skip) == 4 and last.stop is not None and last.stop.status == "completed"


# ------------------------------ retries -----------------------------------------------------------
RETRYING = rules(retry={"busy": {"max_attempts": 3, "interval_minutes": 10},
                        "no_answer": {"max_attempts": 2, "interval_minutes": 60},
                        "voicemail": {"max_attempts": 1, "interval_minutes": 5}})


def test_retries_follow_the_rule_of_the_outcome_until_exhausted() -> None:
    first = after_outcome(RETRYING, number=1, outcome="busy", now=MONDAY)
    assert first.entry_state == "pending" and first.retry is not None
    assert (first.retry.due_at, first.retry.number) == (MONDAY + timedelta(minutes=10), 2)
    assert after_outcome(RETRYING, number=2, outcome="busy", now=MONDAY).retry is not None
    assert after_outcome(RETRYING, number=3, outcome="busy", now=MONDAY) == after_outcome(
        RETRYING, number=3, outcome="busy", now=MONDAY + timedelta(days=1))
    assert after_outcome(RETRYING, number=3, outcome="busy", now=MONDAY).entry_state == "exhausted"
    no_answer = after_outcome(RETRYING, number=1, outcome="no_answer", now=MONDAY)
    assert no_answer.retry is not None and no_answer.retry.due_at == MONDAY + timedelta(hours=1)
    # Mixed outcomes: the attempt number counts every attempt; no_answer allows 2 in all.
    assert after_outcome(RETRYING, number=2, outcome="no_answer", now=MONDAY).entry_state == "exhausted"
    assert after_outcome(RETRYING, number=1, outcome="voicemail", now=MONDAY).entry_state == "exhausted"
    assert after_outcome(RETRYING, number=1, outcome="failed", now=MONDAY).entry_state == "exhausted"  # no rule
    assert after_outcome(RETRYING, number=1, outcome="answered", now=MONDAY).entry_state == "reached"
    assert after_outcome(RETRYING, number=1, outcome="dnc_skipped", now=MONDAY).entry_state == "dnc"


def test_a_busy_line_retried_three_times_on_the_fake_clock() -> None:
    """Dial, busy, wait the interval, dial again: three attempts, then the entry is given up."""
    view = replace(campaign(), rules=RETRYING.model_copy(update={"windows": {"mon": ["00:00-24:00"]}}))
    attempt = DueAttempt(1, 7, "+34600000007", None)
    now, dialled = MONDAY, []
    later: DueAttempt | None = attempt
    state = "pending"
    while later is not None and now < MONDAY + timedelta(hours=2):
        ready = [later] if later is not None and now >= MONDAY + timedelta(minutes=10) * (later.number - 1) else []
        tick = plan(view, Snapshot(now=now, due=ready, scheduled_later=0 if ready else 1), NOBODY)
        if tick.dial:
            dialled.append(now)
            decided = after_outcome(view.rules, number=later.number, outcome="busy", now=now)
            state = decided.entry_state
            later = replace(later, number=decided.retry.number) if decided.retry else None
        now += timedelta(minutes=1)
    assert dialled == [MONDAY, MONDAY + timedelta(minutes=10), MONDAY + timedelta(minutes=20)]
    assert state == "exhausted"


# ------------------------------ circuit breaker ---------------------------------------------------
def ended(outcome: str, seconds_ago: int) -> RecentAttempt:
    at_ = MONDAY - timedelta(seconds=seconds_ago)
    return RecentAttempt(at_ - timedelta(seconds=5), at_, outcome)


def test_the_breaker_trips_on_half_failures_over_120_seconds_with_at_least_five() -> None:
    trips = [ended("failed", 10), ended("failed", 20), ended("failed", 30), ended("answered", 40), ended("busy", 50)]
    tick = plan(campaign(), Snapshot(now=MONDAY, due=due(3), recent=trips), NOBODY)
    assert tick.dial == () and tick.stop is not None
    assert tick.stop.status == "paused" and tick.stop.action == "trip"
    assert "3 of the last 5 attempts failed within 120 s" in tick.stop.reason


def test_the_breaker_does_not_trip_below_its_thresholds() -> None:
    four = [ended("failed", s) for s in (10, 20, 30, 40)]
    assert plan(campaign(), Snapshot(now=MONDAY, due=due(1), recent=four), NOBODY).stop is None  # < 5 attempts
    old = [*four, ended("failed", 130)]  # the fifth is outside the window
    assert plan(campaign(), Snapshot(now=MONDAY, due=due(1), recent=old), NOBODY).stop is None
    answered = [ended("failed", 10), ended("failed", 20), *(ended("answered", s) for s in (30, 40, 50))]
    assert plan(campaign(), Snapshot(now=MONDAY, due=due(1), recent=answered), NOBODY).stop is None  # 40 %
    busy = [ended("busy", s) for s in (10, 20, 30, 40, 50, 60)]  # callees' answers, not failures
    assert plan(campaign(), Snapshot(now=MONDAY, due=due(1), recent=busy), NOBODY).stop is None
    off = campaign(rules=rules(windows={"mon": ["00:00-24:00"]}, breaker={"enabled": False}))
    all_failed = [ended("failed", s) for s in range(5, 60, 5)]
    assert plan(off, Snapshot(now=MONDAY, due=due(1), recent=all_failed), NOBODY).stop is None
    strict = campaign(rules=rules(windows={"mon": ["00:00-24:00"]},
                                  breaker={"window_seconds": 60, "min_attempts": 2, "failure_ratio": 0.9}))
    assert plan(strict, Snapshot(now=MONDAY, recent=[ended("failed", 5), ended("failed", 6)]), NOBODY).stop


# ------------------------------ A/B arms ----------------------------------------------------------
def test_arms_are_deterministic_and_follow_their_weights() -> None:
    split = rules(arms=[{"name": "A", "agent_id": 1, "weight": 70}, {"name": "B", "agent_id": 2, "weight": 30}])
    assigned = [assign_arm(split.arms, 5, contact) for contact in range(1, 10001)]
    assert assigned == [assign_arm(split.arms, 5, contact) for contact in range(1, 10001)]
    share = Counter(assigned)["A"] / len(assigned)
    assert 0.68 < share < 0.72, share
    assert assign_arm([], 5, 1) == ""
    assert Counter(assign_arm(split.arms, 6, e) for e in range(1, 10001)) != Counter(assigned)  # per campaign


def test_bad_arms_are_refused() -> None:
    for arms in ([{"name": "A", "agent_id": 1}, {"name": "A", "agent_id": 2}],
                 [{"name": "A", "agent_id": 1}, {"name": "B"}],
                 [{"name": "A", "agent_id": 1}, {"name": "B", "agent_id": 2}, {"name": "C", "agent_id": 3}],
                 [{"name": "A", "agent_id": 1, "weight": 0}]):
        with pytest.raises(ValueError):
            rules(arms=arms)


def test_the_dial_carries_the_entrys_arm() -> None:
    tick = plan(campaign(), Snapshot(now=MONDAY, due=[DueAttempt(1, 1, "+34600000001", None, arm="B")]), NOBODY)
    assert tick.dial[0].arm == "B"


# ------------------------------ invariants --------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.integers(0, 6), st.integers(0, 10), st.integers(1, 5), st.integers(1, 8),
       st.lists(st.tuples(st.sampled_from(["Europe/Madrid", "America/New_York", "Asia/Tokyo", None]),
                          st.booleans()), max_size=12),
       st.integers(0, 24 * 60 - 1), st.integers(0, 12))
def test_plan_never_dials_more_than_allowed_a_blocked_number_or_outside_a_window(
        day: int, in_flight: int, concurrent: int, per_minute: int, entries: list[tuple[str | None, bool]],
        minute: int, started: int) -> None:
    view = campaign(rules=rules(windows={"mon": ["09:00-12:00"], "wed": ["20:00-01:00"], "sat": ["10:00-14:00"]},
                                pacing={"max_concurrent": concurrent, "max_per_minute": per_minute}),
                    zone="Europe/Madrid")
    now = MONDAY + timedelta(days=day, minutes=minute)
    attempts = [DueAttempt(i, i, f"+3460000{i:04d}", tz) for i, (tz, _) in enumerate(entries, 1)]
    dnc = DncList.of([(a.phone, None) for a, (_, blocked) in zip(attempts, entries, strict=True) if blocked])
    recent = [RecentAttempt(now - timedelta(seconds=5 * i)) for i in range(started)]
    tick = plan(view, Snapshot(now=now, in_flight=in_flight, due=attempts, recent=recent, scheduled_later=1), dnc)
    assert len(tick.dial) <= max(0, min(concurrent - in_flight, per_minute - min(started, 12)))
    dialled = {d.attempt_id for d in tick.dial}
    skipped = {s.attempt_id for s in tick.skip}
    assert not dialled & skipped
    assert skipped == {a.attempt_id for a, (_, blocked) in zip(attempts, entries, strict=True) if blocked}
    for attempt in attempts:
        if attempt.attempt_id in dialled:
            assert in_window(now, ZoneInfo(attempt.timezone or "Europe/Madrid"), view.rules)
    assert len(dialled) + len(skipped) + sum(tick.held.values()) == len(attempts)
    assert tick.wake_at is None or tick.wake_at > now - timedelta(seconds=1)


def test_plan_refuses_a_naive_clock() -> None:
    with pytest.raises(ValueError):
        plan(campaign(), Snapshot(now=datetime(2026, 6, 1, 12, 0)), NOBODY)


def test_windows_are_local_dates_not_utc_dates() -> None:
    # 23:30 UTC on Monday is already Tuesday 08:30 in Tokyo.
    tokyo = rules(windows={"tue": ["08:00-09:00"]})
    assert in_window(datetime.combine(date(2026, 6, 1), time(23, 30), tzinfo=UTC), ZoneInfo("Asia/Tokyo"), tokyo)
