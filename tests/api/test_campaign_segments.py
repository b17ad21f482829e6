"""Audience segments through the admin API on a real server and database (SQLite and PostgreSQL): an import keeps
the rows outside the segment as ``excluded`` entries without attempts and counts them; the audience listing,
the campaign's counts and the analytics show them; replacing the segment of a paused campaign moves pending
entries out (their open attempts go, so a dialer holding an older snapshot claims nothing) and excluded ones back
in (one attempt each, numbered after the tries already made), leaves entries being called or done alone, and
never leaves an entry with two open attempts; a campaign whose remaining entries are all excluded completes; and
a bad segment is a 422 naming the condition."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import col, select

from models.campaigns import CampaignAttempt, CampaignEntry
from models.db import session_scope
from tests.api.conftest import Api
from tests.api.test_campaigns import make_agent, make_campaign, upload
from voicebot.campaigns import scheduler, store

ALWAYS = {d: ["00:00-24:00"] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
GOLD_OR_SILVER = [{"variable": "plan", "op": "in", "values": ["gold", "silver"]}]
CSV = ("phone,name,plan,age\n"
       "+34600000001,Ana,Gold,40\n"
       "+34600000002,Bea, silver ,17\n"
       "+34600000003,Carl,bronze,55\n"
       "+34600000004,Dan,BRONZE,n/a\n"
       "+34600000005,Eve,,30\n")


def audience(api: Api, cid: int) -> dict[str, tuple[str, list[tuple[int, str | None, bool]]]]:
    """phone → (entry state, [(attempt number, outcome, claimed)]), and the invariants every state must keep."""
    with session_scope(api.engine) as session:
        entries = session.exec(select(CampaignEntry).where(col(CampaignEntry.campaign_id) == cid)).all()
        attempts = session.exec(select(CampaignAttempt).where(col(CampaignAttempt.campaign_id) == cid)
                                .order_by(col(CampaignAttempt.id))).all()
    out = {}
    for entry in entries:
        mine = [(a.number, a.outcome, bool(a.claimed_by)) for a in attempts if a.entry_id == entry.id]
        still_open = [a for a in mine if a[1] is None]
        numbers = [a[0] for a in mine]
        assert len(numbers) == len(set(numbers)), (entry.phone, mine)  # no try twice
        if entry.state == "excluded":
            assert still_open == [], (entry.phone, mine)  # never dialled
        elif entry.state in ("pending", "calling"):
            assert len(still_open) == 1, (entry.phone, mine)  # exactly one next try
        out[entry.phone] = (entry.state, mine)
    return out


async def put_segment(api: Api, campaign: dict[str, Any], segment: list[dict[str, Any]]) -> dict[str, Any]:
    rules = {**campaign["rules"], "segment": segment}
    body = {key: campaign[key] for key in ("name", "agent_id", "timezone", "country_code")} | {"rules": rules}
    status, changed = await api.call("PUT", f"/api/v1/campaigns/{campaign['id']}", role="designer", json=body)
    assert status == 200, changed
    out: dict[str, Any] = changed
    return out


async def test_import_excludes_rows_outside_the_segment_and_a_new_segment_moves_them(api_db: Api) -> None:
    api = api_db
    agent_id = await make_agent(api)
    campaign = await make_campaign(api, agent_id=agent_id, rules={
        "windows": ALWAYS, "retry": {"busy": {"max_attempts": 3, "interval_minutes": 10}},
        "segment": GOLD_OR_SILVER})
    cid = campaign["id"]
    assert campaign["rules"]["segment"] == [{"variable": "plan", "op": "in", "value": None,
                                             "values": ["gold", "silver"]}]
    status, report = await upload(api, cid, CSV)
    assert status == 200, report
    assert (report["rows"], report["imported"], report["excluded"]) == (5, 5, 3)
    assert audience(api, cid) == {
        "+34600000001": ("pending", [(1, None, False)]), "+34600000002": ("pending", [(1, None, False)]),
        "+34600000003": ("excluded", []), "+34600000004": ("excluded", []), "+34600000005": ("excluded", [])}
    status, page = await api.call("GET", f"/api/v1/campaigns/{cid}/contacts?state=excluded", role="viewer")
    assert status == 200 and page["total"] == 3
    assert [e["variables"]["plan"] for e in page["items"]] == ["bronze", "BRONZE", ""]
    shown = (await api.call("GET", f"/api/v1/campaigns/{cid}", role="viewer"))[1]
    assert shown["contacts"] == {"pending": 2, "excluded": 3}
    stats = (await api.call("GET", f"/api/v1/campaigns/{cid}/analytics", role="viewer"))[1]
    assert (stats["contacts"], stats["excluded"], stats["pending_attempts"]) == (5, 3, 2)
    assert stats["per_arm"][0]["contacts"] == 2  # only the segment is tried

    # Dial: Ana busy (a retry is scheduled), Bea's call still in progress; then pause.
    assert (await api.call("POST", f"/api/v1/campaigns/{cid}/start", role="admin"))[0] == 200
    now = datetime.now(UTC) + timedelta(seconds=1)
    with session_scope(api.engine) as session:
        snap = store.snapshot(session, store.get_campaign(session, cid), now=now, in_flight=0)
        due = {d.phone: d.attempt_id for d in snap.due}
        assert set(due) == {"+34600000001", "+34600000002"}
        assert store.claim(session, due["+34600000001"], "w1", now=now, lease=timedelta(minutes=5))
        store.finish(session, due["+34600000001"], "busy", now=now, sip_cause="486")
        assert store.claim(session, due["+34600000002"], "w1", now=now, lease=timedelta(hours=1))
    with session_scope(api.engine) as session:  # a dialer's view taken before the change
        stale = store.snapshot(session, store.get_campaign(session, cid), now=now + timedelta(minutes=11),
                               in_flight=1)
        assert [d.phone for d in stale.due] == ["+34600000001"]
    assert (await api.call("POST", f"/api/v1/campaigns/{cid}/pause", role="designer"))[0] == 200

    # Only the bronze ones (and the numeric condition refuses "n/a"): Ana out, Carl in, Bea's call untouched.
    changed = await put_segment(api, campaign, [{"variable": "plan", "op": "eq", "value": "bronze"},
                                                {"variable": "age", "op": "ge", "value": 18}])
    assert changed["contacts"] == {"excluded": 3, "calling": 1, "pending": 1}
    assert audience(api, cid) == {
        "+34600000001": ("excluded", [(1, "busy", False), (2, "excluded", False)]),  # its retry withdrawn
        "+34600000002": ("calling", [(1, None, True)]),
        "+34600000003": ("pending", [(1, None, False)]),
        "+34600000004": ("excluded", []), "+34600000005": ("excluded", [])}
    with session_scope(api.engine) as session:  # the stale snapshot's attempt is closed: nobody dials it
        assert not store.claim(session, stale.due[0].attempt_id, "w2", now=now + timedelta(minutes=11),
                               lease=timedelta(minutes=5))
    again = await put_segment(api, changed, [{"variable": "plan", "op": "eq", "value": "bronze"},
                                             {"variable": "age", "op": "ge", "value": 18}])
    assert again["contacts"] == changed["contacts"]

    # No segment: everyone not done is pending again; Ana's withdrawn retry reopens (still her second try).
    everyone = await put_segment(api, again, [])
    assert everyone["contacts"] == {"pending": 4, "calling": 1}
    after = audience(api, cid)
    assert after["+34600000001"] == ("pending", [(1, "busy", False), (2, None, False)])
    with session_scope(api.engine) as session:
        reopened = session.get(CampaignAttempt, stale.due[0].attempt_id)
        assert reopened is not None and reopened.entry_id == stale.due[0].entry_id  # the same row, the same entry
    assert after["+34600000004"] == ("pending", [(1, None, False)])
    with session_scope(api.engine) as session:  # Bea's call ends: the segment never touched her attempt
        store.finish(session, due["+34600000002"], "answered", now=now + timedelta(minutes=12))
    assert audience(api, cid)["+34600000002"] == ("reached", [(1, "answered", False)])
    await put_segment(api, everyone, GOLD_OR_SILVER)
    final = audience(api, cid)
    assert final["+34600000002"][0] == "reached"  # done entries are never moved
    assert {phone: state for phone, (state, _) in final.items()} == {
        "+34600000001": "pending", "+34600000002": "reached", "+34600000003": "excluded",
        "+34600000004": "excluded", "+34600000005": "excluded"}
    assert final["+34600000003"][1] == [(1, "excluded", False)]
    stats = (await api.call("GET", f"/api/v1/campaigns/{cid}/analytics", role="viewer"))[1]
    assert (stats["excluded"], stats["reached"], stats["reach_rate"]) == (3, 1, 0.5)
    # Withdrawn attempts were never made: not in the attempts, the outcomes or the waiting ones.
    assert (stats["attempts"], stats["pending_attempts"]) == (2, 1)
    assert {k: v for k, v in stats["outcomes"].items() if v} == {"busy": 1, "answered": 1}
    # The export agrees: the two attempts made and Ana's open retry, not the withdrawn ones.
    import csv
    import io

    response = await api.client.get(f"/api/v1/campaigns/{cid}/analytics.csv", headers=api.auth("viewer"))
    exported = list(csv.DictReader(io.StringIO(await response.text())))
    assert sorted(row["outcome"] for row in exported) == ["", "answered", "busy"], exported


async def test_a_campaign_whose_remaining_entries_are_excluded_completes(api_db: Api) -> None:
    api = api_db
    agent_id = await make_agent(api)
    campaign = await make_campaign(api, agent_id=agent_id, rules={
        "windows": ALWAYS, "segment": [{"variable": "plan", "op": "eq", "value": "platinum"}]})
    cid = campaign["id"]
    status, report = await upload(api, cid, CSV)
    assert status == 200 and report["excluded"] == 5, report
    # Nobody in the segment: starting would complete at once with nobody called, so it is refused.
    status, body = await api.call("POST", f"/api/v1/campaigns/{cid}/start", role="admin")
    assert (status, body["error"]["code"], body["error"]["field"]) == (409, "campaign_empty", "rules.segment")
    campaign = await put_segment(api, campaign, [{"variable": "plan", "op": "eq", "value": "gold"}])
    assert (await api.call("POST", f"/api/v1/campaigns/{cid}/start", role="admin"))[0] == 200
    now = datetime.now(UTC) + timedelta(seconds=1)
    with session_scope(api.engine) as session:  # Ana, the one gold contact, is reached
        (ana,) = store.snapshot(session, store.get_campaign(session, cid), now=now, in_flight=0).due
        assert store.claim(session, ana.attempt_id, "w1", now=now, lease=timedelta(minutes=5))
        store.finish(session, ana.attempt_id, "answered", now=now)
    with session_scope(api.engine) as session:
        campaign_row = store.get_campaign(session, cid)
        snap = store.snapshot(session, campaign_row, now=now, in_flight=0)
        tick = scheduler.plan(store.view(campaign_row), snap, store.load_dnc(session, cid))
    assert (snap.due, snap.scheduled_later, tick.dial) == ([], 0, ())
    assert tick.stop is not None and tick.stop.action == "complete"


async def test_a_bad_segment_is_a_422_naming_the_condition(api: Api) -> None:
    cases: list[tuple[list[Any], str, str]] = [
        ([{"variable": "plan", "op": "like", "value": "g"}], "rules.segment.0.op", "Input should be"),
        ([{"variable": "plan", "op": "in"}], "rules.segment.0", "in needs values"),
        ([{"variable": "plan", "op": "exists"}, {"variable": "age", "op": "gt", "value": "old"}], "rules.segment.1",
         "gt needs a number"),
        ([{"variable": "plan", "op": "exists"}] * 11, "rules.segment", "at most 10"),
    ]
    for segment, field, text in cases:
        status, answer = await api.call("POST", "/api/v1/campaigns", role="designer",
                                        json={"name": "x", "rules": {"segment": segment}})
        assert (status, answer["error"]["field"]) == (422, field), answer
        assert text in answer["error"]["message"], answer
    campaign = await make_campaign(api)
    status, answer = await api.call("PUT", f"/api/v1/campaigns/{campaign['id']}", role="designer", json={
        "name": "spring-sale", "rules": {"segment": [{"variable": "plan", "op": "in", "values": []}]}})
    assert (status, answer["error"]["field"]) == (422, "rules.segment.0"), answer


async def test_a_call_in_progress_when_the_segment_changes_retries_only_if_its_contact_is_still_in_it(
        api: Api) -> None:
    """The segment leaves an entry being called alone; when that call then ends busy, its retry is made only
    for a contact still in the segment (a review found it scheduled, and the contact called again, regardless)."""
    agent_id = await make_agent(api)
    campaign = await make_campaign(api, agent_id=agent_id, rules={
        "windows": ALWAYS, "retry": {"busy": {"max_attempts": 3, "interval_minutes": 10}}})
    cid = campaign["id"]
    assert (await upload(api, cid, CSV))[0] == 200
    assert (await api.call("POST", f"/api/v1/campaigns/{cid}/start", role="admin"))[0] == 200
    now = datetime.now(UTC) + timedelta(seconds=1)
    with session_scope(api.engine) as session:
        due = {d.phone: d.attempt_id for d in store.snapshot(session, store.get_campaign(session, cid), now=now,
                                                              in_flight=0, batch=10).due}
        for phone in ("+34600000001", "+34600000002"):  # Ana (40) and Bea (17) both on the line
            assert store.claim(session, due[phone], "w1", now=now, lease=timedelta(hours=1))
    assert (await api.call("POST", f"/api/v1/campaigns/{cid}/pause", role="designer"))[0] == 200
    changed = await put_segment(api, campaign, [{"variable": "age", "op": "ge", "value": 18}])
    assert changed["contacts"]["calling"] == 2
    with session_scope(api.engine) as session:
        for phone in ("+34600000001", "+34600000002"):
            store.finish(session, due[phone], "busy", now=now + timedelta(seconds=5), sip_cause="486")
    after = audience(api, cid)
    assert after["+34600000001"] == ("pending", [(1, "busy", False), (2, None, False)])  # 40: retried
    assert after["+34600000002"] == ("excluded", [(1, "busy", False), (2, "excluded", False)])  # 17: withdrawn
    # Back in the segment, her retry reopens (still her second try), as for any withdrawn attempt.
    await put_segment(api, changed, [])
    assert audience(api, cid)["+34600000002"] == ("pending", [(1, "busy", False), (2, None, False)])
