"""Campaigns through the admin API on a real server and database: create, replace, delete, status transitions
(409 with a code on an illegal one), the CSV import report (every row accounted for; DNC numbers and numbers
already in the campaign reported; contacts found or created by phone), the audience with states, the do-not-call
list globally and per campaign, and analytics equal to counts computed from seeded rows (SQLite and PostgreSQL);
plus the durable claim of an attempt and its retry."""

from __future__ import annotations

import io
import random
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import FormData
from sqlmodel import col, select

from models import Agent, Contact
from models.campaigns import CampaignAttempt, CampaignEntry
from models.db import session_scope
from tests.api.conftest import Api
from voicebot.campaigns import store

CSV = (
    "phone,name,timezone,plan\n"
    "+34 600 000 001,Ana,,gold\n"
    "600000002,Bea,,silver\n"
    "+34600000001,Ana again,,gold\n"
    "garbage,Carl,,\n"
    "+12125550101,Dan,America/Los_Angeles,\n"
    "+34600000009,Blocked,,\n"
)


async def make_agent(api: Api, name: str = "seller") -> int:
    status, agent = await api.call("POST", "/api/v1/agents", role="designer", json={"name": name})
    assert status == 201, agent
    return int(agent["id"])


async def make_campaign(api: Api, **fields: Any) -> dict[str, Any]:
    body = {"name": "spring-sale", "country_code": "34", "timezone": "Europe/Madrid", **fields}
    status, campaign = await api.call("POST", "/api/v1/campaigns", role="designer", json=body)
    assert status == 201, campaign
    made: dict[str, Any] = campaign
    return made


async def upload(api: Api, campaign_id: int, data: str | bytes, role: str = "designer",
                 **fields: str) -> tuple[int, Any]:
    form = FormData()
    for key, value in fields.items():
        form.add_field(key, value)
    form.add_field("file", io.BytesIO(data.encode() if isinstance(data, str) else data), filename="list.csv",
                   content_type="text/csv")
    response = await api.client.post(f"/api/v1/campaigns/{campaign_id}/contacts/import", data=form,
                                     headers=api.auth(role))
    return response.status, await response.json()


async def test_create_read_replace_and_delete(api: Api) -> None:
    agent_id = await make_agent(api)
    campaign = await make_campaign(api, agent_id=agent_id, rules={
        "windows": {"mon": ["09:00-13:00", "16:00-20:00"], "sat": ["10:00-14:00"]},
        "pacing": {"max_concurrent": 3, "max_per_minute": 20, "reserve_inbound": 2},
        "retry": {"busy": {"max_attempts": 3, "interval_minutes": 15}},
        "arms": [{"name": "A", "agent_id": agent_id, "weight": 60}, {"name": "B", "agent_id": agent_id,
                                                                     "weight": 40}]})
    assert campaign["status"] == "draft" and campaign["contacts"] == {}
    assert campaign["rules"]["pacing"] == {"max_concurrent": 3, "max_per_minute": 20, "reserve_inbound": 2}
    assert campaign["rules"]["breaker"]["window_seconds"] == 120
    cid = campaign["id"]
    status, listed = await api.call("GET", "/api/v1/campaigns", role="viewer")
    assert status == 200 and [c["id"] for c in listed["items"]] == [cid] and listed["total"] == 1
    status, again = await api.call("POST", "/api/v1/campaigns", role="designer", json={"name": "spring-sale"})
    assert (status, again["error"]["code"]) == (409, "campaign_name_taken")
    replaced = {"name": "spring-sale-2", "flow": None, "agent_id": agent_id, "timezone": "America/Bogota",
                "start_at": "2026-12-01T09:00:00+01:00", "end_at": "2026-12-20T09:00:00Z"}
    status, changed = await api.call("PUT", f"/api/v1/campaigns/{cid}", role="designer", json=replaced)
    assert status == 200, changed
    assert (changed["name"], changed["timezone"], changed["rules"]["arms"]) == ("spring-sale-2", "America/Bogota", [])
    assert changed["start_at"] == "2026-12-01T08:00:00Z"
    status, _ = await api.call("DELETE", f"/api/v1/campaigns/{cid}", role="designer")
    assert status == 204
    status, gone = await api.call("GET", f"/api/v1/campaigns/{cid}", role="viewer")
    assert (status, gone["error"]["code"]) == (404, "not_found")


async def test_bad_configurations_are_clear_422s(api: Api) -> None:
    cases: list[tuple[dict[str, Any], str | None]] = [
        ({"name": "x", "timezone": "Mars/Base"}, "timezone"),
        ({"name": "x", "agent_id": 999}, "agent_id"),
        ({"name": "x", "flow": "no-such-flow"}, "flow"),
        ({"name": "x", "start_at": "2026-12-02T00:00:00Z", "end_at": "2026-12-01T00:00:00Z"}, "end_at"),
        ({"name": "x", "start_at": "2026-12-02T00:00:00"}, "start_at"),  # no zone: ambiguous
        ({"name": "x", "rules": {"windows": {"mon": ["9-5"]}}}, "rules.windows.mon.0"),
        ({"name": "x", "rules": {"pacing": {"max_concurrent": 0}}}, "rules.pacing.max_concurrent"),
        ({"name": "x", "rules": {"retry": {"answered": {"max_attempts": 2, "interval_minutes": 5}}}},
         "rules.retry.answered.[key]"),
        ({"name": "x", "rules": {"arms": [{"name": "A", "agent_id": 999}]}}, "rules.arms.0.agent_id"),
        ({"name": "x", "channel": "fax"}, "channel"),
        ({"name": "x", "country_code": "+34"}, "country_code"),
    ]
    for body, where in cases:
        status, answer = await api.call("POST", "/api/v1/campaigns", role="designer", json=body)
        assert status == 422, (body, answer)
        assert answer["error"]["field"] == where, (body, answer)
    # The agent's DTMF terminator (# by default) ends key input without a turn: never an opt-out key.
    agent_id = await make_agent(api)
    for rules in ({"opt_out_digit": "#"}, {"arms": [{"name": "A", "agent_id": agent_id}], "opt_out_digit": "#"}):
        status, answer = await api.call("POST", "/api/v1/campaigns", role="designer",
                                        json={"name": "x", "agent_id": agent_id, "rules": rules})
        assert (status, answer["error"]["field"]) == (422, "rules.opt_out_digit"), answer
    status, answer = await api.call("POST", "/api/v1/campaigns", role="designer",
                                    json={"name": "x", "agent_id": agent_id, "rules": {"opt_out_digit": "9"}})
    assert status == 201 and answer["rules"]["opt_out_digit"] == "9", answer


async def test_status_transitions_and_their_conflicts(api: Api) -> None:
    agent_id = await make_agent(api)
    cid = (await make_campaign(api, agent_id=agent_id))["id"]
    status, empty = await api.call("POST", f"/api/v1/campaigns/{cid}/start")
    assert (status, empty["error"]["code"]) == (409, "campaign_empty")
    assert (await upload(api, cid, "phone\n+34600000001\n"))[0] == 200
    status, body = await api.call("POST", f"/api/v1/campaigns/{cid}/pause", role="designer")
    assert (status, body["error"]["code"]) == (409, "campaign_transition_invalid")
    status, started = await api.call("POST", f"/api/v1/campaigns/{cid}/start", role="admin")
    assert (status, started["status"]) == (200, "running") and started["started_at"]
    status, body = await api.call("PUT", f"/api/v1/campaigns/{cid}", role="designer", json={"name": "y"})
    assert (status, body["error"]["code"]) == (409, "campaign_not_editable")
    status, body = await api.call("DELETE", f"/api/v1/campaigns/{cid}", role="designer")
    assert (status, body["error"]["code"]) == (409, "campaign_active")
    status, body = await api.call("POST", f"/api/v1/campaigns/{cid}/start", role="admin")
    assert (status, body["error"]["code"]) == (409, "campaign_transition_invalid")
    assert (await api.call("POST", f"/api/v1/campaigns/{cid}/pause", role="designer"))[1]["status"] == "paused"
    status, body = await api.call("POST", f"/api/v1/campaigns/{cid}/resume", role="designer")
    assert status == 403  # resuming dials again: admins
    assert (await api.call("POST", f"/api/v1/campaigns/{cid}/resume", role="admin"))[1]["status"] == "running"
    status, cancelled = await api.call("POST", f"/api/v1/campaigns/{cid}/cancel", role="designer")
    assert (status, cancelled["status"]) == (200, "cancelled") and cancelled["finished_at"]
    for action in ("start", "pause", "resume", "cancel"):
        status, body = await api.call("POST", f"/api/v1/campaigns/{cid}/{action}", role="admin")
        assert (status, body["error"]["code"]) == (409, "campaign_transition_invalid"), action
    status, body = await upload(api, cid, "phone\n+34600000002\n")
    assert (status, body["error"]["code"]) == (409, "campaign_closed")
    nobody = (await make_campaign(api, name="no-agent"))["id"]
    await upload(api, nobody, "phone\n+34600000001\n")
    status, body = await api.call("POST", f"/api/v1/campaigns/{nobody}/start")
    assert (status, body["error"]["code"]) == (409, "campaign_incomplete")
    mail = (await make_campaign(api, name="mail", channel="email", agent_id=agent_id))["id"]
    await upload(api, mail, "phone\n+34600000001\n")
    status, body = await api.call("POST", f"/api/v1/campaigns/{mail}/start")
    assert (status, body["error"]["code"], body["error"]["field"]) == (409, "campaign_incomplete",
                                                                       "rules.email_template")
    assert (await api.call("DELETE", f"/api/v1/campaigns/{cid}", role="designer"))[0] == 204


async def test_import_reports_every_row_and_finds_or_creates_contacts(api: Api) -> None:
    with session_scope(api.engine) as session:
        session.add(Contact(name="Known Bea", phone="+34600000002"))
    agent_id = await make_agent(api)
    cid = (await make_campaign(api, agent_id=agent_id, rules={"arms": [
        {"name": "A", "agent_id": agent_id, "weight": 50}, {"name": "B", "agent_id": agent_id, "weight": 50}]}))["id"]
    status, added = await api.call("POST", "/api/v1/dnc", role="designer", json={"phone": "+34 600 000 009"})
    assert status == 201 and added["phone"] == "+34600000009" and added["campaign_id"] is None
    status, report = await upload(api, cid, CSV)
    assert status == 200, report
    assert (report["rows"], report["imported"], report["contacts_created"], report["contacts_existing"]) == (6, 3, 2, 1)
    assert [(p["line"], p["reason"]) for p in report["duplicates"]] == [(4, "the same number as line 2")]
    assert [(p["line"], p["column"]) for p in report["invalid"]] == [(5, "phone")]
    assert [(p["line"], p["reason"]) for p in report["dnc"]] == [(7, "on the do-not-call list")]
    assert report["already_in_campaign"] == []
    assert report["timezones"] == {"column": 1, "country": 2, "campaign": 0}
    assert sum(report["arms"].values()) == 3 and set(report["arms"]) <= {"A", "B"}
    assert report["rows"] == report["imported"] + sum(len(report[k]) for k in
                                                      ("invalid", "duplicates", "dnc", "already_in_campaign"))
    # The same file again: nothing new, each row said why.
    status, second = await upload(api, cid, CSV)
    assert (second["imported"], [p["line"] for p in second["already_in_campaign"]]) == (0, [2, 3, 6])
    status, page = await api.call("GET", f"/api/v1/campaigns/{cid}/contacts?limit=2", role="viewer")
    assert status == 200 and page["total"] == 3 and len(page["items"]) == 2
    first = page["items"][0]
    assert (first["phone"], first["variables"], first["state"], first["timezone"]) == (
        "+34600000001", {"plan": "gold"}, "pending", "Europe/Madrid")
    status, page = await api.call("GET", f"/api/v1/campaigns/{cid}/contacts?state=reached", role="viewer")
    assert page["total"] == 0
    with session_scope(api.engine) as session:
        bea = session.exec(select(Contact).where(Contact.phone == "+34600000002")).one()
        assert bea.name == "Known Bea"  # found by phone, not renamed
        attempts = session.exec(select(CampaignAttempt).where(CampaignAttempt.campaign_id == cid)).all()
        assert len(attempts) == 3 and {a.number for a in attempts} == {1}
    status, shown = await api.call("GET", f"/api/v1/campaigns/{cid}", role="viewer")
    assert shown["contacts"] == {"pending": 3}
    # An override of the calling code for one file; a bad one refused.
    status, report = await upload(api, cid, "phone\n0612345678\n", country_code="33")
    assert report["imported"] == 1
    status, bad = await upload(api, cid, "phone\n0612345678\n", country_code="abc")
    assert (status, bad["error"]["field"]) == (422, "country_code")


async def test_hostile_uploads_are_refused_clearly(api: Api) -> None:
    cid = (await make_campaign(api))["id"]
    status, body = await upload(api, cid, b"name\nAna\n")
    assert (status, body["error"]["code"]) == (422, "csv_invalid")
    status, body = await upload(api, cid, b"phone\n" + b"+34600000001," * 500_000)
    assert status == 413, body
    response = await api.client.post(f"/api/v1/campaigns/{cid}/contacts/import", json={"file": "x"},
                                     headers=api.auth("designer"))
    assert response.status == 415
    status, body = await upload(api, 999999, "phone\n+34600000001\n")
    assert status == 404
    form = FormData(default_to_multipart=True)
    form.add_field("other", "x")
    response = await api.client.post(f"/api/v1/campaigns/{cid}/contacts/import", data=form,
                                     headers=api.auth("designer"))
    assert response.status == 422


async def test_the_dnc_list_globally_and_per_campaign(api: Api) -> None:
    one = (await make_campaign(api, name="one"))["id"]
    two = (await make_campaign(api, name="two"))["id"]
    status, own = await api.call("POST", f"/api/v1/campaigns/{one}/dnc", role="designer",
                                 json={"phone": "0034600000005", "note": "asked by mail"})
    assert status == 201 and (own["phone"], own["campaign_id"], own["source"]) == ("+34600000005", one, "api")
    status, again = await api.call("POST", f"/api/v1/campaigns/{one}/dnc", role="designer",
                                   json={"phone": "+34600000005"})
    assert again["id"] == own["id"]  # once per list
    status, bad = await api.call("POST", "/api/v1/dnc", role="designer", json={"phone": "600000005"})
    assert (status, bad["error"]["field"]) == (422, "phone")
    report_one = (await upload(api, one, "phone\n+34600000005\n+34600000006\n"))[1]
    report_two = (await upload(api, two, "phone\n+34600000005\n+34600000006\n"))[1]
    assert (len(report_one["dnc"]), report_one["imported"], len(report_two["dnc"]), report_two["imported"]) == (
        1, 1, 0, 2)
    assert (await api.call("GET", "/api/v1/dnc", role="viewer"))[1]["total"] == 0
    page = (await api.call("GET", f"/api/v1/campaigns/{one}/dnc?phone=%2B34%20600000005", role="viewer"))[1]
    assert [e["id"] for e in page["items"]] == [own["id"]]
    # A campaign's entry is not the global list's: 404 there; removed through its campaign, by an admin.
    assert (await api.call("DELETE", f"/api/v1/dnc/{own['id']}", role="admin"))[0] == 404
    assert (await api.call("DELETE", f"/api/v1/campaigns/{two}/dnc/{own['id']}", role="admin"))[0] == 404
    assert (await api.call("DELETE", f"/api/v1/campaigns/{one}/dnc/{own['id']}", role="designer"))[0] == 403
    assert (await api.call("DELETE", f"/api/v1/campaigns/{one}/dnc/{own['id']}", role="admin"))[0] == 204
    status, glob = await api.call("POST", "/api/v1/dnc", role="designer", json={"phone": "+34600000007"})
    with session_scope(api.engine) as session:
        assert store.load_dnc(session, two).is_blocked("+34600000007", two)
    assert (await api.call("DELETE", f"/api/v1/dnc/{glob['id']}", role="admin"))[0] == 204
    with session_scope(api.engine) as session:
        assert not store.load_dnc(session).is_blocked("+34600000007")
        entry, new = store.add_dnc(session, "+34 600 000 008", source="phrase", now=datetime.now(UTC))
        assert new and entry.source == "phrase"


async def test_claiming_an_attempt_is_exclusive_and_an_outcome_schedules_the_retry(api: Api) -> None:
    agent_id = await make_agent(api)
    cid = (await make_campaign(api, agent_id=agent_id, rules={
        "windows": {d: ["00:00-24:00"] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")},
        "retry": {"busy": {"max_attempts": 2, "interval_minutes": 10}}}))["id"]
    await upload(api, cid, "phone\n+34600000001\n")
    await api.call("POST", f"/api/v1/campaigns/{cid}/start")
    now = datetime.now(UTC) + timedelta(seconds=1)
    with session_scope(api.engine) as session:
        campaign = store.get_campaign(session, cid)
        snap = store.snapshot(session, campaign, now=now, in_flight=0)
        assert [d.phone for d in snap.due] == ["+34600000001"] and snap.scheduled_later == 0
        attempt_id = snap.due[0].attempt_id
        assert store.claim(session, attempt_id, "worker-1", now=now, lease=timedelta(minutes=2))
        assert not store.claim(session, attempt_id, "worker-2", now=now, lease=timedelta(minutes=2))
        assert store.snapshot(session, campaign, now=now, in_flight=1).due == []
    with session_scope(api.engine) as session:  # worker-1 died: its lease runs out, another worker takes it
        assert store.claim(session, attempt_id, "worker-2", now=now + timedelta(minutes=3),
                           lease=timedelta(minutes=2))
        decided = store.finish(session, attempt_id, "busy", now=now + timedelta(minutes=4), sip_cause="486")
        assert decided.retry is not None and decided.retry.number == 2
        snap = store.snapshot(session, store.get_campaign(session, cid), now=now + timedelta(minutes=4), in_flight=0)
        assert snap.due == [] and snap.scheduled_later == 1
        assert snap.next_due_at == now + timedelta(minutes=14)
        assert [r.outcome for r in snap.recent] == ["busy"]
        entry = session.exec(select(CampaignEntry).where(CampaignEntry.campaign_id == cid)).one()
        assert (entry.state, entry.attempts, entry.last_outcome) == ("pending", 1, "busy")


def seed_attempts(api: Api, cid: int) -> list[tuple[int, str, str | None, datetime | None, datetime | None]]:
    """40 entries in two arms with 1 to 3 attempts each over four days; returns (entry, arm, outcome, start, end)."""
    rng = random.Random(11)
    start = datetime(2026, 11, 20, 20, 0, tzinfo=UTC)  # evenings: local Madrid dates differ from UTC dates
    written = []
    with session_scope(api.engine) as session:
        for n in range(40):
            contact = Contact(phone=f"+3461000{n:04d}")
            session.add(contact)
            session.flush()
            assert contact.id is not None
            arm = "A" if n % 3 else "B"
            entry = CampaignEntry(campaign_id=cid, contact_id=contact.id, phone=contact.phone or "", arm=arm)
            session.add(entry)
            session.flush()
            assert entry.id is not None
            for number in range(1, rng.randrange(2, 5)):
                outcome = rng.choice(["answered", "busy", "no_answer", "failed", "voicemail", "dnc_skipped", None])
                began = start + timedelta(days=rng.randrange(4), hours=rng.randrange(6), minutes=rng.randrange(60))
                if outcome == "dnc_skipped":
                    began_at, ended_at = None, began
                elif outcome is None:
                    began_at = ended_at = None
                else:
                    began_at, ended_at = began, began + timedelta(seconds=rng.randrange(5, 300))
                session.add(CampaignAttempt(campaign_id=cid, entry_id=entry.id, number=number, arm=arm,
                                            outcome=outcome, started_at=began_at, ended_at=ended_at))
                written.append((entry.id, arm, outcome, began_at, ended_at))
    return written


async def test_analytics_equal_counts_from_the_seeded_rows(api_db: Api) -> None:
    api = api_db
    with session_scope(api.engine) as session:
        agent = Agent(name="a")
        session.add(agent)
        session.flush()
        agent_id = agent.id
    cid = (await make_campaign(api, agent_id=agent_id, rules={"arms": [
        {"name": "A", "agent_id": agent_id, "weight": 50}, {"name": "B", "agent_id": agent_id, "weight": 50}]}))["id"]
    rows = seed_attempts(api, cid)
    status, stats = await api.call("GET", f"/api/v1/campaigns/{cid}/analytics", role="viewer")
    assert status == 200, stats
    ended = [r for r in rows if r[2] is not None]
    outcomes = Counter(r[2] for r in ended)
    placed = [r for r in ended if r[2] != "dnc_skipped"]
    reached = {r[0] for r in rows if r[2] == "answered"}
    assert stats["attempts"] == len(placed)
    assert stats["pending_attempts"] == sum(1 for r in rows if r[2] is None)
    assert stats["reached"] == len(reached) and stats["contacts"] == 40
    assert stats["reach_rate"] == round(len(reached) / 40, 4)
    assert {k: v for k, v in stats["outcomes"].items() if v} == dict(outcomes)
    durations = [(r[4] - r[3]).total_seconds() for r in rows if r[2] == "answered" and r[3] and r[4]]
    assert stats["average_answered_seconds"] == round(sum(durations) / len(durations), 1)
    for arm_stats in stats["per_arm"]:
        arm = arm_stats["arm"]
        mine = [r for r in ended if r[1] == arm]
        assert arm_stats["attempts"] == sum(1 for r in mine if r[2] != "dnc_skipped")
        assert arm_stats["reached"] == len({r[0] for r in mine if r[2] == "answered"})
        assert {k: v for k, v in arm_stats["outcomes"].items() if v} == dict(Counter(r[2] for r in mine))
    assert [a["arm"] for a in stats["per_arm"]] == ["A", "B"]
    assert sum(a["contacts"] for a in stats["per_arm"]) == 40
    madrid = ZoneInfo("Europe/Madrid")
    days: dict[str, Counter[str | None]] = defaultdict(Counter)
    for r in ended:
        when = r[3] or r[4]
        assert when is not None
        days[when.astimezone(madrid).date().isoformat()][r[2]] += 1
    assert [d["day"] for d in stats["per_day"]] == sorted(days)
    for day in stats["per_day"]:
        assert {k: v for k, v in day["outcomes"].items() if v} == dict(days[day["day"]])
        assert day["reached"] == days[day["day"]]["answered"]
    empty = (await make_campaign(api, name="empty"))["id"]
    stats = (await api.call("GET", f"/api/v1/campaigns/{empty}/analytics", role="viewer"))[1]
    assert (stats["attempts"], stats["reach_rate"], stats["per_day"], stats["per_arm"][0]["arm"]) == (0, None, [], "")


async def test_erasing_or_merging_a_contact_in_a_campaign(api: Api) -> None:
    cid = (await make_campaign(api))["id"]
    await upload(api, cid, "phone\n+34600000001\n+34600000002\n")
    with session_scope(api.engine) as session:
        ids = {c.phone: c.id for c in session.exec(select(Contact)).all()}
    status, merged = await api.call("POST", f"/api/v1/contacts/{ids['+34600000001']}/merge",
                                    json={"from_contact_id": ids["+34600000002"]})
    assert status == 200, merged
    with session_scope(api.engine) as session:
        entries = session.exec(select(CampaignEntry).where(col(CampaignEntry.campaign_id) == cid)).all()
        assert len(entries) == 1 and entries[0].contact_id == ids["+34600000001"]  # one contact, one entry
    status, erased = await api.call("DELETE", f"/api/v1/contacts/{ids['+34600000001']}")
    assert status == 200, erased
    assert erased["erased"]["campaign_entries"] == 1
    with session_scope(api.engine) as session:
        assert session.exec(select(CampaignAttempt)).all() == []
