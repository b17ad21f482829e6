"""WhatsApp campaigns end to end: a campaign created, imported and started through the admin API; the sender
(:mod:`voicebot.campaigns.senders`) posts each contact the approved template to the local Graph API server (the
exact documented JSON, parameters from the contact's variables); a second worker, a restart after a crash
mid-send and a send that timed out send nothing twice; a Graph refusal is ``failed`` with its code; a reply
continues with the campaign's agent in the campaign's conversation; the contact's window and the per-minute pacing
hold sends until they allow them; "darme de baja" puts the number on the
do-not-call list with a confirmation instead of an agent reply, and that contact's next attempt is skipped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from models import Agent, Conversation, Message, utcnow
from models.campaigns import CampaignAttempt, DncEntry
from models.db import session_scope
from tests.api.test_campaigns import upload
from tests.channels.test_whatsapp_service import World, make_world, payload
from tests.fakes.graph_server import FakeGraph, Reply, graph_error
from voicebot.campaigns import store
from voicebot.campaigns.senders import CampaignSender
from voicebot.i18n import phrase

ALWAYS = {day: ["00:00-24:00"] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
TEMPLATE = {"name": "spring_offer", "language": "es", "parameters": ["name", "plan"]}
CSV = "phone,name,plan\n+34600000001,Ana,gold\n+34600000002,Bea,silver\n+34600000003,Carl,\n"


@pytest.fixture
async def world(sqlite_db: Engine, graph: FakeGraph, tmp_path: Path) -> AsyncIterator[World]:
    w = await make_world(sqlite_db, graph, tmp_path, client_timeout=0.5)
    yield w
    await w.service.close()
    await w.service.client.close()
    await w.api.client.close()


def seller(engine: Engine) -> int:
    with session_scope(engine) as session:
        agent = Agent(name="seller", language="es")
        session.add(agent)
        session.flush()
        assert agent.id is not None
        return agent.id


async def campaign(world: World, name: str, csv: str, agent_id: int, *, start: bool = True,
                   **rules: Any) -> int:
    body = {"name": name, "channel": "whatsapp", "agent_id": agent_id, "timezone": "Europe/Madrid",
            "rules": {"windows": ALWAYS, "pacing": {"max_per_minute": 50}, "whatsapp_template": TEMPLATE, **rules}}
    status, made = await world.api.call("POST", "/api/v1/campaigns", role="designer", json=body)
    assert status == 201, made
    status, report = await upload(world.api, made["id"], csv)
    assert status == 200, report
    if start:
        status, started = await world.api.call("POST", f"/api/v1/campaigns/{made['id']}/start", role="admin")
        assert (status, started["status"]) == (200, "running"), started
    return int(made["id"])


def template_json(to: str, *parameters: str) -> dict[str, Any]:
    """The Cloud API's documented template message (what the Graph API must receive)."""
    return {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to, "type": "template",
            "template": {"name": "spring_offer", "language": {"code": "es"},
                         "components": [{"type": "body",
                                         "parameters": [{"type": "text", "text": p} for p in parameters]}]}}


def attempts(engine: Engine, campaign_id: int) -> list[CampaignAttempt]:
    with session_scope(engine) as session:
        return list(session.exec(select(CampaignAttempt).where(CampaignAttempt.campaign_id == campaign_id)
                                 .order_by(col(CampaignAttempt.id))).all())


def text_from(wa_id: str, text: str, wamid: str) -> dict[str, Any]:
    data = payload("text_message")
    value = data["entry"][0]["changes"][0]["value"]
    value["contacts"][0]["wa_id"] = wa_id
    value["messages"][0].update({"from": wa_id, "id": wamid, "text": {"body": text}})
    return data


async def test_the_template_goes_to_each_contact_once(world: World) -> None:
    agent_id = seller(world.engine)
    cid = await campaign(world, "spring", CSV, agent_id)
    sender = CampaignSender(world.engine, whatsapp=world.service, worker_id="worker-1")
    done = await sender.run_once()
    assert (done.sent, done.failed) == (2, 1)
    assert world.graph.sent == [template_json("34600000001", "Ana", "gold"),
                                template_json("34600000002", "Bea", "silver")]
    ana, bea, carl = attempts(world.engine, cid)
    assert (ana.outcome, bea.outcome) == ("sent", "sent") and ana.ended_at is not None and not ana.claimed_by
    assert (carl.outcome, carl.sip_cause) == ("failed", "template_variable_missing")  # no plan: nothing sent
    with session_scope(world.engine) as session:
        for attempt, text in ((ana, "[template spring_offer (es)]: Ana | gold"),
                              (bea, "[template spring_offer (es)]: Bea | silver")):
            conversation = session.get(Conversation, attempt.conversation_id)
            assert conversation is not None
            assert (conversation.channel, conversation.agent_id) == ("whatsapp", agent_id)
            (first,) = session.exec(select(Message).where(Message.conversation_id == conversation.id)).all()
            assert (first.role, first.text) == ("assistant", text) and first.external_id.startswith("wamid.")
            assert (first.timings or {})["campaign_id"] == cid

    # Another worker, and this one again: every attempt has its outcome, nothing is sent twice.
    for again in (CampaignSender(world.engine, whatsapp=world.service, worker_id="worker-2"), sender):
        assert (await again.run_once()).sent == 0
    assert len(world.graph.sent) == 2
    status, stats = await world.api.call("GET", f"/api/v1/campaigns/{cid}/analytics", role="viewer")
    assert (status, stats["reached"], stats["outcomes"]["sent"], stats["outcomes"]["failed"]) == (200, 2, 2, 1)


async def test_a_send_interrupted_or_timed_out_is_uncertain_and_never_resent(world: World) -> None:
    agent_id = seller(world.engine)
    cid = await campaign(world, "spring", CSV.replace("+34600000003,Carl,", "+34600000003,Carl,bronze"),
                         agent_id)
    ana, bea, carl = attempts(world.engine, cid)
    # A worker that died mid-send an hour ago: it claimed Ana's attempt, its lease has run out.
    with session_scope(world.engine) as session:
        assert store.claim(session, ana.id or 0, "dead-worker", now=utcnow() - timedelta(hours=1),
                           lease=timedelta(minutes=10))
    world.graph.replies.append(Reply(delay=2.0))  # Bea's send: the API answers after the client gave up
    world.graph.replies.append(Reply(status=400, body=graph_error("error_recipient_not_allowed")))  # Carl's
    done = await CampaignSender(world.engine, whatsapp=world.service).run_once()
    assert (done.sent, done.uncertain, done.failed) == (0, 2, 1)
    ana, bea, carl = attempts(world.engine, cid)
    assert (ana.outcome, ana.sip_cause) == ("uncertain", "send_interrupted")
    assert (bea.outcome, bea.sip_cause) == ("uncertain", "whatsapp_timeout")
    assert (carl.outcome, carl.sip_cause) == ("failed", "whatsapp_rejected:131030")
    assert [m["to"] for m in world.graph.sent] == ["34600000002"]  # Ana's was never posted; Bea's maybe delivered
    assert (await CampaignSender(world.engine, whatsapp=world.service).run_once()).sent == 0
    assert [m["to"] for m in world.graph.sent] == ["34600000002"]
    assert bea.conversation_id is None


async def test_replies_continue_with_the_campaign_agent_and_an_opt_out_blocks_the_next_attempt(
        world: World) -> None:
    agent_id = seller(world.engine)
    spring = await campaign(world, "spring", CSV, agent_id)
    autumn = await campaign(world, "autumn", CSV, agent_id, start=False)  # imported before anyone opted out
    sender = CampaignSender(world.engine, whatsapp=world.service)
    await sender.run_once()
    ana_attempt, bea_attempt, _carl = attempts(world.engine, spring)

    # Bea answers the template: the campaign's agent (not the channel's demo agent) replies, in that conversation.
    status, body = await world.post(text_from("34600000002", "¿Cuánto cuesta?", "wamid.bea-1"))
    assert (status, body["accepted"]) == (200, 1)
    await world.service.drain()
    assert world.graph.sent[-1]["text"]["body"] == "You said: ¿Cuánto cuesta?"
    with session_scope(world.engine) as session:
        user = session.exec(select(Message).where(Message.external_id == "wamid.bea-1")).one()
        assert user.conversation_id == bea_attempt.conversation_id
        conversation = session.get(Conversation, user.conversation_id)
        assert conversation is not None and conversation.agent_id == agent_id

    # Ana opts out: the do-not-call list, a confirmation in her language, no model time; a redelivery is a no-op.
    calls = len(world.llm.calls)
    opt_out = text_from("34600000001", "Por favor, darme de baja", "wamid.ana-stop")
    for _ in range(2):
        assert (await world.post(opt_out))[0] == 200
        await world.service.drain()
    assert world.graph.sent[-1]["text"]["body"] == phrase("campaign_opted_out", "es")
    assert sum(1 for m in world.graph.sent if m["to"] == "34600000001" and m["type"] == "text") == 1
    assert len(world.llm.calls) == calls
    with session_scope(world.engine) as session:
        (entry,) = session.exec(select(DncEntry)).all()
        assert (entry.phone, entry.campaign_id, entry.source) == ("+34600000001", None, "reply")
        stop = session.exec(select(Message).where(Message.external_id == "wamid.ana-stop")).one()
        assert stop.conversation_id == ana_attempt.conversation_id

    # The next campaign reaches Bea and Carl's attempt fails (no plan); Ana's is skipped, never sent.
    assert (await world.api.call("POST", f"/api/v1/campaigns/{autumn}/start", role="admin"))[0] == 200
    before = len(world.graph.sent)
    done = await sender.run_once()
    assert (done.sent, done.dnc_skipped) == (1, 1)
    ana_next, bea_next, _ = attempts(world.engine, autumn)
    assert (ana_next.outcome, bea_next.outcome) == ("dnc_skipped", "sent")
    assert [m["to"] for m in world.graph.sent[before:]] == ["34600000002"]


async def test_windows_and_pacing_hold_sends_until_they_allow_them(world: World) -> None:
    agent_id = seller(world.engine)
    cid = await campaign(world, "spring", CSV.replace("+34600000003,Carl,", "+34600000003,Carl,bronze"), agent_id,
                         windows={"mon": ["09:00-18:00"]}, pacing={"max_per_minute": 2})
    madrid = ZoneInfo("Europe/Madrid")
    ahead = (utcnow() + timedelta(days=7)).astimezone(madrid)
    sunday = datetime.combine(ahead.date() + timedelta(days=6 - ahead.weekday()), time(23, 30), tzinfo=madrid)
    clock = [sunday]
    sender = CampaignSender(world.engine, whatsapp=world.service, clock=lambda: clock[0])
    assert (await sender.run_once()).sent == 0 and world.graph.sent == []  # Sunday night: outside the window
    clock[0] = sunday + timedelta(hours=9, minutes=31)  # Monday 09:01 in Madrid
    assert (await sender.run_once()).sent == 2  # two a minute
    assert [a.outcome for a in attempts(world.engine, cid)] == ["sent", "sent", None]
    clock[0] += timedelta(seconds=30)
    assert (await sender.run_once()).sent == 0
    clock[0] += timedelta(seconds=31)  # the first send is more than a minute old
    assert (await sender.run_once()).sent == 1
    assert [m["to"] for m in world.graph.sent] == ["34600000001", "34600000002", "34600000003"]


async def test_two_workers_at_once_send_each_template_once(any_db: Engine, graph: FakeGraph,
                                                           tmp_path: Path) -> None:
    w = await make_world(any_db, graph, tmp_path)
    try:
        agent_id = seller(w.engine)
        rows = "".join(f"+346000001{n:02d},C{n},gold\n" for n in range(12))
        cid = await campaign(w, "spring", "phone,name,plan\n" + rows, agent_id, pacing={"max_per_minute": 100,
                                                                                        "max_concurrent": 4})
        workers = [CampaignSender(w.engine, whatsapp=w.service, worker_id=f"worker-{n}") for n in range(2)]
        done = await asyncio.gather(*(worker.run_once() for worker in workers))
        assert sum(d.sent for d in done) == 12
        assert sorted(m["to"] for m in graph.sent) == sorted(f"346000001{n:02d}" for n in range(12))
        assert [a.outcome for a in attempts(w.engine, cid)] == ["sent"] * 12
    finally:
        await w.service.close()
        await w.service.client.close()
        await w.api.client.close()
