"""Flows on the text channels: a booking flow end to end on WhatsApp (signed webhooks into the admin API, replies
to the local Graph API server) and on e-mail (real dovecot and aiosmtpd), the service replaced mid-flow so the
run's state can only come from the database, re-prompts and the fallback, trigger phrases and ``start_flow``,
the agent answering inside the flow and after it, and a message that comes again after a crash not fed twice.
A scripted model stands in for the agent (its words are beside the point here)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from admin_api.app import create_app
from channels.email.service import EmailService
from channels.whatsapp.client import WhatsAppClient
from channels.whatsapp.codec import signature
from channels.whatsapp.service import WhatsAppService
from models import Agent, Conversation, Flow, FlowRun, InboundMessage, Message
from models.db import session_scope
from tests.api.conftest import offline_settings
from tests.channels.conftest import Dovecot, ScriptedLLM, SmtpSink
from tests.channels.test_email_service import mail, mail_settings
from tests.channels.test_whatsapp_service import APP_SECRET, SENDER, VERIFY_TOKEN, WEBHOOK, no_sleep, text_payload
from tests.fakes.graph_server import FakeGraph
from voicebot.agent.core import AgentCore
from voicebot.flows.runner import FlowRunner
from voicebot.flows.spec import check_flow, parse_flow

EXAMPLES = Path(__file__).resolve().parents[2] / "voicebot" / "flows" / "examples"

BOOKING: dict[str, Any] = {
    "name": "booking", "start_step": "name",
    "steps": [
        {"id": "name", "say": "Let's book your appointment. What is your name?",
         "collect": {"var": "name", "type": "text", "max_length": 80}, "next": "date"},
        {"id": "date", "say": "Thank you, {name}. Which day would you like to come in?",
         "collect": {"var": "date", "type": "date"},
         "no_match": "Sorry, I didn't get the day.", "max_retries": 1, "fallback": "desk", "next": "phone"},
        {"id": "phone", "say": "On which phone number can we reach you?",
         "collect": {"var": "phone", "type": "phone"}, "next": "booked"},
        {"id": "booked", "say": "Booked: {name} on {date}, phone {phone}. See you then!", "end": "booked"},
        {"id": "desk", "say": "Let me hand you to the front desk.",
         "action": {"type": "transfer", "target": "front desk"}},
    ],
}
ASK_NAME = "Let's book your appointment. What is your name?"
ASK_DATE = "Thank you, Maria Lopez. Which day would you like to come in?"
ASK_PHONE = "On which phone number can we reach you?"
BOOKED = "Booked: Maria Lopez on 2027-03-05, phone +4915112345678. See you then!"
BOOKED_VARS = {"name": "Maria Lopez", "date": "2027-03-05", "phone": "+4915112345678"}


def install(engine: Engine, flow: dict[str, Any], **agent: Any) -> None:
    """Store ``flow`` (checked as the admin API checks it) and give the demo agent ``agent``'s fields."""
    check_flow(parse_flow(flow["start_step"], flow["steps"]))
    with session_scope(engine) as session:
        session.add(Flow(name=flow["name"], start_step=flow["start_step"], steps=flow["steps"]))
        row = session.exec(select(Agent).where(Agent.name == "demo")).one()
        for name, value in agent.items():
            setattr(row, name, value)
        session.add(row)


def rows(engine: Engine, model: Any) -> list[Any]:
    with session_scope(engine) as session:
        return list(session.exec(select(model).order_by(col(model.id))).all())


def turns(engine: Engine) -> list[tuple[str, str]]:
    return [(m.role, m.text) for m in rows(engine, Message)]


# ---------------------------------------------------------------------------------------------- WhatsApp
@dataclass
class WhatsApp:
    """One Eva process's WhatsApp side: its own service, agent core and flow runner, and its webhook."""

    service: WhatsAppService
    client: TestClient[web.Request, web.Application]
    llm: ScriptedLLM

    async def say(self, wamid: str, text: str) -> dict[str, Any]:
        body = json.dumps(text_payload(wamid, text)).encode()
        response = await self.client.post(WEBHOOK, data=body, headers={
            "Content-Type": "application/json", "X-Hub-Signature-256": signature(APP_SECRET, body)})
        answer: dict[str, Any] = await response.json()
        assert response.status == 200, answer
        await self.service.drain()
        return answer


@asynccontextmanager
async def whatsapp(engine: Engine, graph: FakeGraph, tmp_path: Path) -> AsyncIterator[WhatsApp]:
    settings = offline_settings(tmp_path / "data", whatsapp_app_secret=APP_SECRET, whatsapp_verify_token=VERIFY_TOKEN,
                                whatsapp_token=graph.token, whatsapp_phone_number_id=graph.phone_number_id,
                                whatsapp_api_url=graph.api_url)
    llm = ScriptedLLM()
    client = WhatsAppClient.from_settings(settings, sleep=no_sleep, timeout=15.0)
    service = WhatsAppService(settings, engine, AgentCore(settings, engine, llm), client=client)
    app = create_app(settings, engine, offline_asterisk=True, whatsapp=service)
    http: TestClient[web.Request, web.Application] = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await http.start_server()
    try:
        yield WhatsApp(service, http, llm)
    finally:
        await service.close()
        await client.close()
        await http.close()


def sent(graph: FakeGraph) -> list[str]:
    return [m["text"]["body"] for m in graph.sent]


async def test_whatsapp_booking_by_trigger_survives_a_restart_then_the_agent_answers_again(
        sqlite_db: Engine, graph: FakeGraph, tmp_path: Path) -> None:
    install(sqlite_db, BOOKING, flow_triggers={"booking": ["book", "appointment"]})
    async with whatsapp(sqlite_db, graph, tmp_path) as first:
        await first.say("wamid.1", "Hi, do you repair e-bikes?")
        await first.say("wamid.2", "I'd like to book an appointment")
        await first.say("wamid.3", "Maria Lopez")
        assert sent(graph) == ["You said: Hi, do you repair e-bikes?", ASK_NAME, ASK_DATE]
        (run,) = rows(sqlite_db, FlowRun)
        assert (run.flow_name, run.status, run.step, run.variables["name"]) == ("booking", "active", "date",
                                                                                "Maria Lopez")
        # Meta redelivers a flow message: it is not answered (nor fed to the flow) twice.
        assert (await first.say("wamid.3", "Maria Lopez"))["duplicates"] == 1
    assert len(graph.sent) == 3

    # A new process: nothing of the first survives but the database.
    async with whatsapp(sqlite_db, graph, tmp_path) as second:
        await second.say("wamid.4", "5/3/2027")
        await second.say("wamid.5", "+49 151 12345678")
        assert sent(graph)[3:] == [ASK_PHONE, BOOKED]
        assert second.llm.calls == []  # the flow's turns need no model
        (run,) = rows(sqlite_db, FlowRun)
        assert (run.status, run.result, run.channel) == ("ended", "booked", "whatsapp")
        assert {k: run.variables[k] for k in BOOKED_VARS} == BOOKED_VARS
        assert run.variables["caller"] == SENDER

        # The run is over: the agent carries on, with the flow's turns in its memory.
        await second.say("wamid.6", "Thanks! Where are you?")
        assert sent(graph)[5:] == ["You said: Thanks! Where are you?"]
        (call,) = second.llm.calls
        assert [m.content for m in call if m.role in ("user", "assistant")] == [
            "Hi, do you repair e-bikes?", "You said: Hi, do you repair e-bikes?",
            "I'd like to book an appointment", ASK_NAME, "Maria Lopez", ASK_DATE, "5/3/2027", ASK_PHONE,
            "+49 151 12345678", BOOKED, "Thanks! Where are you?"]

    (conversation,) = rows(sqlite_db, Conversation)
    assert turns(sqlite_db) == [
        ("user", "Hi, do you repair e-bikes?"), ("assistant", "You said: Hi, do you repair e-bikes?"),
        ("user", "I'd like to book an appointment"), ("assistant", ASK_NAME),
        ("user", "Maria Lopez"), ("assistant", ASK_DATE),
        ("user", "5/3/2027"), ("assistant", ASK_PHONE),
        ("user", "+49 151 12345678"), ("assistant", BOOKED),
        ("user", "Thanks! Where are you?"), ("assistant", "You said: Thanks! Where are you?")]
    messages = rows(sqlite_db, Message)
    assert [m.external_id for m in messages if m.role == "user"] == [f"wamid.{i}" for i in range(1, 7)]
    # Every reply was sent exactly once, and its wamid recorded on its message.
    assert all(m.external_id.startswith("wamid.") and m.conversation_id == conversation.id
               for m in messages if m.role == "assistant")
    assert len({m.external_id for m in messages if m.role == "assistant"}) == 6 == len(graph.sent)
    assert {r.status for r in rows(sqlite_db, InboundMessage)} == {"done"}
    assert messages[9].timings == {"flow": "booking", "flow_run": run.id, "flow_step": "booked",
                                   "flow_result": "booked"}
