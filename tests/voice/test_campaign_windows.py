"""A calling window closing mid-campaign, on real calls: real Asterisk, Eva's runtime and its dialer, a SIP trunk
created through the admin API and a pjsua2 callee behind it.

The campaign's windows are real local times (UTC here) that end at the next minute boundary at least
``BEFORE_MIN_S`` seconds ahead and open again one minute later -- windows are ``HH:MM`` wide, so a minute closed
is the shortest gap there is, and the test takes that minute plus the wait for the boundary (about 75 to 135 s).
Nothing fakes the clock: the dialer reads the time itself.

Five contacts at one call at a time: the first picks up and hangs up, the second rings on past the close (the
window ends dialling, not calls in progress), the other three are still due when the window closes.  What is
proven: the calls placed before the close are placed, none is placed while the window is closed, the three wait as
pending attempts (unclaimed, not started, their entries pending, the campaign still running rather than
"completed"), and they are placed once the window opens again, one attempt each.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
from sqlmodel import col, select

from models.campaigns import Campaign, CampaignEntry
from models.db import session_scope
from tests.api.conftest import Api, voice_admin_api
from tests.voice.test_campaign_dialer import attempts, callee, incoming, make_campaign, until
from voicebot.campaigns.rules import WEEKDAYS
from voicebot.server import EvaRuntime

pytestmark = [pytest.mark.asterisk, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

BEFORE_MIN_S = 12
"""At least this long between the start and the close: the first call and the second's dial happen before it."""


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api(runtime: EvaRuntime) -> AsyncIterator[Api]:
    """The admin API on the voice runtime's database (the trunk is created through it, as an admin would)."""
    async with voice_admin_api(runtime) as api:
        yield api


def hhmm(moment: datetime) -> str:
    return moment.strftime("%H:%M")


def windows_closing_at(close: datetime) -> dict[str, list[str]]:
    """Windows (UTC) open from the start of today until ``close``, shut for the minute after it, open again from
    ``close`` + 1 minute to the end of that day.  ``close`` is on a minute boundary; at midnight the first window
    is the whole of the day before."""
    reopen = close + timedelta(minutes=1)
    windows: dict[str, list[str]] = {}
    if hhmm(close) == "00:00":
        windows[WEEKDAYS[(close - timedelta(days=1)).weekday()]] = ["00:00-24:00"]
    else:
        windows[WEEKDAYS[close.weekday()]] = [f"00:00-{hhmm(close)}"]
    windows.setdefault(WEEKDAYS[reopen.weekday()], []).append(f"{hhmm(reopen)}-24:00")
    return windows


async def test_a_window_closing_mid_campaign_stops_new_dials_until_it_opens_again(
        api: Api, runtime: EvaRuntime) -> None:
    engine = runtime.engine
    assert engine is not None and runtime.dialer is not None
    picks_up, rings, later = "+15557080001", "+15557080002", ["+15557080003", "+15557080004", "+15557080005"]
    started, t0 = datetime.now(UTC), time.monotonic()
    close = (started + timedelta(seconds=BEFORE_MIN_S)).replace(second=0, microsecond=0) + timedelta(minutes=1)
    reopen = close + timedelta(minutes=1)
    before_s = (close - started).total_seconds()
    # The second contact rings until the campaign's ring timeout, which ends a few seconds after the close.
    ring_timeout = int(before_s) + 6
    trunk_id, heard = await callee(
        api, "camp-window", "127.0.0.41", answer_briefly={picks_up: 1.5, later[0]: 1.5},
        refuse={rings: 180, later[1]: 486, later[2]: 486}, calls=5, timeout=before_s + 150)
    campaign_id = make_campaign(engine, "window-close", [picks_up, rings, *later], trunk_ids=[trunk_id],
                                windows=windows_closing_at(close), ring_timeout_s=ring_timeout,
                                pacing={"max_concurrent": 1, "max_per_minute": 30})
    print(f"\nwindow: started {started:%H:%M:%S}, closes {close:%H:%M:%S} ({before_s:.1f} s later), "
          f"reopens {reopen:%H:%M:%S}; ring timeout {ring_timeout} s")

    # The ringing call outlives the close; once it ends, the dialer has a free slot and three due attempts.
    await until(lambda: all(a.outcome is not None for a, p in attempts(engine, campaign_id) if p == rings),
                before_s + ring_timeout + 20, "the ringing call ended")
    ended_rings = datetime.now(UTC)
    assert ended_rings < reopen, "the ringing call ended after the window reopened: nothing was tested"
    dialled_while_closed = len(runtime.dialer.dialled)
    # Watch the closed window until just before it opens: a dial would show as a started attempt.
    while datetime.now(UTC) < reopen - timedelta(seconds=1):
        rows = attempts(engine, campaign_id)
        assert not [p for a, p in rows if p in later and a.started_at is not None], rows
        await asyncio.sleep(0.5)
    rows = attempts(engine, campaign_id)
    waiting = [a for a, p in rows if p in later]
    assert len(waiting) == 3 and all(a.outcome is None and a.claimed_by == "" and a.started_at is None
                                     for a in waiting), waiting  # pending: neither lost nor claimed
    with session_scope(engine) as session:
        campaign = session.get(Campaign, campaign_id)
        assert campaign is not None and campaign.status == "running", campaign  # held, not "every contact done"
        states = {e.phone: e.state for e in session.exec(
            select(CampaignEntry).where(col(CampaignEntry.campaign_id) == campaign_id)).all()}
    assert [states[p] for p in later] == ["pending"] * 3, states
    assert len(runtime.dialer.dialled) == dialled_while_closed  # nothing dialled, for any campaign's trunk, meanwhile

    await until(lambda: len(attempts(engine, campaign_id)) == 5
                and all(a.outcome is not None for a, _ in attempts(engine, campaign_id)),
                60, "the held attempts placed and ended after the window reopened")
    result = await heard
    took = time.monotonic() - t0
    rows = attempts(engine, campaign_id)
    placed = {p: a for a, p in rows}
    assert len(placed) == 5 and all(a.number == 1 for a, _ in rows), rows  # one attempt each, none lost or doubled
    for phone in (picks_up, rings):
        start = placed[phone].started_at
        assert start is not None and start.replace(tzinfo=UTC) < close, (phone, start)
    after: list[datetime] = []
    for phone in later:
        start = placed[phone].started_at
        assert start is not None and start.replace(tzinfo=UTC) >= reopen, (phone, start)
        after.append(start.replace(tzinfo=UTC))
    assert [placed[p].outcome for p in (picks_up, rings, *later)] == [
        "answered", "no_answer", "answered", "busy", "busy"], rows
    assert all(incoming(result, p) == 1 for p in (picks_up, rings, *later)), result.events
    print("window outcomes (contact, started, outcome):")
    for phone in (picks_up, rings, *later):
        attempt = placed[phone]
        assert attempt.started_at is not None
        print(f"  {phone} | {attempt.started_at:%H:%M:%S.%f} | {attempt.outcome}")
    print(f"the first held attempt was dialled {(min(after) - reopen).total_seconds():.2f} s after the reopening; "
          f"the ringing call ended {(ended_rings - close).total_seconds():.1f} s after the close; test {took:.0f} s")
