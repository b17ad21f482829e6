"""Campaign analytics beyond the counts, on seeded rows (SQLite and PostgreSQL): conversions from the flow
variable the admin named, the A/B comparison (rates per contact, B - A, two-proportion z-test p-values computed
here by hand), the ROI from the admin's prices, and the CSV export of every attempt with formula-like cells
neutralised.  Every expected number is counted directly from the rows written."""

from __future__ import annotations

import csv
import io
import math
import random
from datetime import UTC, datetime, timedelta

from models import Agent, Call, Contact, Conversation, FlowRun
from models.campaigns import CampaignAttempt, CampaignEntry
from models.db import session_scope
from tests.api.conftest import Api
from tests.api.test_campaigns import make_campaign

ROI = {"cost_per_attempt": 0.1, "cost_per_minute": 0.5, "value_per_conversion": 20.0,
       "conversion_variable": "interested", "conversion_value": "yes"}
HOSTILE = ["=HYPERLINK(\"http://x\")", "+1+2", "-3", "@SUM(A1)", "\tTab", "\rReturn", "Plain"]


def p_value(xa: int, na: int, xb: int, nb: int) -> float:
    pooled = (xa + xb) / (na + nb)
    se = math.sqrt(pooled * (1 - pooled) * (1 / na + 1 / nb))
    z = (xb / nb - xa / na) / se
    return 2 * (1 - 0.5 * (1 + math.erf(abs(z) / math.sqrt(2))))


def seed(api: Api, cid: int, agent_id: int) -> list[dict[str, object]]:
    """60 entries in two arms, 1 to 3 attempts each; reached attempts have a conversation (or a call) whose flow run
    may have collected ``interested``.  Returns one dict per attempt."""
    rng = random.Random(7)
    start = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    rows: list[dict[str, object]] = []
    with session_scope(api.engine) as session:
        for n in range(60):
            contact = Contact(phone=f"+3462000{n:04d}", name=HOSTILE[n % len(HOSTILE)])
            session.add(contact)
            session.flush()
            assert contact.id is not None
            arm = "A" if n % 2 else "B"
            entry = CampaignEntry(campaign_id=cid, contact_id=contact.id, phone=contact.phone or "", arm=arm,
                                  variables={"note": HOSTILE[(n + 3) % len(HOSTILE)]})
            session.add(entry)
            session.flush()
            assert entry.id is not None
            for number in range(1, rng.randrange(2, 5)):
                outcome = rng.choice(["answered", "answered", "sent", "busy", "no_answer", "failed", "dnc_skipped"])
                began = start + timedelta(hours=rng.randrange(48))
                ended = began + timedelta(seconds=rng.randrange(10, 400))
                attempt = CampaignAttempt(campaign_id=cid, entry_id=entry.id, number=number, arm=arm,
                                          outcome=outcome, started_at=began, ended_at=ended)
                value = None
                if outcome in ("answered", "sent"):
                    conversation = Conversation(channel="voice" if outcome == "answered" else "whatsapp",
                                                agent_id=agent_id, contact_id=contact.id)
                    session.add(conversation)
                    session.flush()
                    value = rng.choice(["yes", " YES ", "no", "", None])
                    run = FlowRun(flow_name="survey", channel=conversation.channel, step="end",
                                  contact_id=contact.id, variables={} if value is None else {"interested": value})
                    if outcome == "answered" and rng.random() < 0.5:  # a call's flow run, found by its call
                        call = Call(channel_id=f"chan-{n}-{number}", direction="outbound")
                        session.add(call)
                        session.flush()
                        attempt.call_id, run.call_id = call.id, call.id
                    else:
                        attempt.conversation_id, run.conversation_id = conversation.id, conversation.id
                    session.add(run)
                session.add(attempt)
                rows.append({"entry": entry.id, "arm": arm, "outcome": outcome, "seconds":
                             (ended - began).total_seconds(), "value": value, "name": contact.name,
                             "phone": contact.phone})
    return rows


async def test_conversions_comparison_and_roi_equal_the_seeded_rows(api_db: Api) -> None:
    api = api_db
    with session_scope(api.engine) as session:
        agent = Agent(name="a")
        session.add(agent)
        session.flush()
        agent_id = agent.id
    assert agent_id is not None
    cid = (await make_campaign(api, agent_id=agent_id, rules={"roi": ROI, "arms": [
        {"name": "A", "agent_id": agent_id}, {"name": "B", "agent_id": agent_id}]}))["id"]
    rows = seed(api, cid, agent_id)
    status, stats = await api.call("GET", f"/api/v1/campaigns/{cid}/analytics", role="viewer")
    assert status == 200, stats

    contacts = {arm: len({r["entry"] for r in rows if r["arm"] == arm}) for arm in "AB"}
    reached = {arm: len({r["entry"] for r in rows if r["arm"] == arm and r["outcome"] in ("answered", "sent")})
               for arm in "AB"}
    converted = {arm: len({r["entry"] for r in rows if r["arm"] == arm and isinstance(r["value"], str)
                           and r["value"].strip().lower() == "yes"}) for arm in "AB"}
    assert stats["conversions"] == converted["A"] + converted["B"] > 0
    assert stats["conversion_rate"] == round(stats["conversions"] / 60, 4)
    for arm in stats["per_arm"]:
        name = arm["arm"]
        assert (arm["contacts"], arm["reached"], arm["converted"]) == (contacts[name], reached[name],
                                                                     converted[name])
        assert arm["conversion_rate"] == round(converted[name] / contacts[name], 4)
    comparison = stats["comparison"]
    assert (comparison["a"], comparison["b"]) == ("A", "B")
    for metric, counts in (("reached", reached), ("conversion", converted)):
        got = comparison[metric]
        assert got["rate_a"] == round(counts["A"] / contacts["A"], 4)
        assert got["difference"] == round(counts["B"] / contacts["B"] - counts["A"] / contacts["A"], 4)
        expected = p_value(counts["A"], contacts["A"], counts["B"], contacts["B"])
        assert abs(got["p_value"] - expected) < 1e-6 and got["significant"] == (expected < 0.05)

    placed = sum(1 for r in rows if r["outcome"] != "dnc_skipped")
    seconds = sum(float(str(r["seconds"])) for r in rows if r["outcome"] == "answered")
    cost = placed * 0.1 + seconds / 60 * 0.5
    value = stats["conversions"] * 20.0
    assert stats["attempts"] == placed
    assert stats["roi"] == {**{k: v for k, v in ROI.items() if k.startswith(("cost", "value"))},
                            "answered_minutes": round(seconds / 60, 2), "cost": round(cost, 2),
                            "value": round(value, 2), "net": round(value - cost, 2),
                            "roi": round((value - cost) / cost, 4),
                            "cost_per_conversion": round(cost / stats["conversions"], 2)}

    # The CSV: one line per attempt, cells a spreadsheet would run as formulas quoted.
    response = await api.client.get(f"/api/v1/campaigns/{cid}/analytics.csv", headers=api.auth("viewer"))
    assert response.status == 200 and response.content_type == "text/csv"
    assert response.headers["Content-Disposition"] == f'attachment; filename="campaign-{cid}.csv"'
    table = list(csv.reader(io.StringIO(await response.text(), newline="")))
    header, lines = table[0], table[1:]
    assert header[:4] == ["attempt_id", "entry_id", "contact_id", "contact_name"] and header[-1] == "var_note"
    assert len(lines) == len(rows)
    for line, row in zip(lines, rows, strict=True):
        assert all(not cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in line)
        name = str(row["name"])
        assert line[3] == ("'" + name if name.startswith(("=", "+", "-", "@", "\t", "\r")) else name)
        assert line[4] == "'" + str(row["phone"])
        assert line[header.index("outcome")] == row["outcome"]
        assert line[header.index("converted")] in ("yes", "no")
    assert sum(1 for line in lines if line[header.index("converted")] == "yes") == sum(
        1 for r in rows if any(o["entry"] == r["entry"] and isinstance(o["value"], str)
                               and o["value"].strip().lower() == "yes" for o in rows))
    status, _ = await api.call("GET", f"/api/v1/campaigns/{cid}/analytics.csv", role=None)
    assert status == 401


async def test_without_arms_or_prices_the_extras_stay_empty(api_db: Api) -> None:
    cid = (await make_campaign(api_db, name="plain"))["id"]
    status, stats = await api_db.call("GET", f"/api/v1/campaigns/{cid}/analytics", role="viewer")
    assert status == 200
    assert (stats["conversions"], stats["conversion_rate"], stats["comparison"]) == (0, None, None)
    assert stats["roi"]["cost"] == 0.0 and stats["roi"]["roi"] is None
    response = await api_db.client.get(f"/api/v1/campaigns/{cid}/analytics.csv", headers=api_db.auth("viewer"))
    assert (await response.text()).splitlines() == [",".join(
        ["attempt_id", "entry_id", "contact_id", "contact_name", "phone", "arm", "number", "outcome", "sip_cause",
         "due_at", "started_at", "ended_at", "duration_seconds", "call_id", "conversation_id", "converted"])]
