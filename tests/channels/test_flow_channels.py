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
from channels.runtime import start_channels
from channels.whatsapp.client import WhatsAppClient
from channels.whatsapp.codec import signature
from channels.whatsapp.service import WhatsAppService
from models import Agent, Conversation, Flow, FlowRun, InboundMessage, Message, utcnow
from models.db import session_scope
from tests.api.conftest import offline_settings
from tests.channels.conftest import Dovecot, ScriptedLLM, SmtpSink, plain_of
from tests.channels.test_email_service import mail, mail_settings
from tests.channels.test_whatsapp_service import APP_SECRET, SENDER, VERIFY_TOKEN, WEBHOOK, no_sleep, text_payload
from tests.fakes.graph_server import FakeGraph, Reply
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
OUTAGE = Reply(status=503, body={"error": {"message": "Service unavailable", "code": 2}})
BOOKED_VARS = {"name": "Maria Lopez", "date": "2027-03-05", "phone": "+4915112345678"}


def install(engine: Engine, flow: dict[str, Any], **agent: Any) -> None:
    """Store ``flow`` (checked as the admin API checks it; replacing a seeded one of that name) and give the
    demo agent ``agent``'s fields."""
    check_flow(parse_flow(flow["start_step"], flow["steps"]))
    with session_scope(engine) as session:
        row = session.exec(select(Flow).where(Flow.name == flow["name"])).first() or Flow(
            name=flow["name"], start_step=flow["start_step"])
        row.start_step, row.steps, row.enabled, row.updated_at = flow["start_step"], flow["steps"], True, utcnow()
        session.add(row)
        demo = session.exec(select(Agent).where(Agent.name == "demo")).one()
        for name, value in {"start_flow": None, "flow_triggers": {}, **agent}.items():
            setattr(demo, name, value)
        session.add(demo)


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
async def whatsapp(engine: Engine, graph: FakeGraph, tmp_path: Path, **service: Any) -> AsyncIterator[WhatsApp]:
    settings = offline_settings(tmp_path / "data", whatsapp_app_secret=APP_SECRET, whatsapp_verify_token=VERIFY_TOKEN,
                                whatsapp_token=graph.token, whatsapp_phone_number_id=graph.phone_number_id,
                                whatsapp_api_url=graph.api_url)
    llm = ScriptedLLM()
    client = WhatsAppClient.from_settings(settings, sleep=no_sleep, timeout=15.0)
    channel = WhatsAppService(settings, engine, AgentCore(settings, engine, llm), client=client, **service)
    app = create_app(settings, engine, offline_asterisk=True, whatsapp=channel)
    http: TestClient[web.Request, web.Application] = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await http.start_server()
    try:
        yield WhatsApp(channel, http, llm)
    finally:
        await channel.close()
        await client.close()
        await http.close()


def sent(graph: FakeGraph) -> list[str]:
    return [m["text"]["body"] for m in graph.sent]


async def test_whatsapp_booking_by_trigger_survives_a_restart_then_the_agent_answers_again(
        any_db: Engine, graph: FakeGraph, tmp_path: Path) -> None:
    install(any_db, BOOKING, flow_triggers={"booking": ["book", "appointment"]})
    async with whatsapp(any_db, graph, tmp_path) as first:
        await first.say("wamid.1", "Hi, do you repair e-bikes?")
        await first.say("wamid.2", "I'd like to book an appointment")
        await first.say("wamid.3", "Maria Lopez")
        assert sent(graph) == ["You said: Hi, do you repair e-bikes?", ASK_NAME, ASK_DATE]
        (run,) = rows(any_db, FlowRun)
        assert (run.flow_name, run.status, run.step, run.variables["name"]) == ("booking", "active", "date",
                                                                                "Maria Lopez")
        # Meta redelivers a flow message: it is not answered (nor fed to the flow) twice.
        assert (await first.say("wamid.3", "Maria Lopez"))["duplicates"] == 1
    assert len(graph.sent) == 3

    # A new process: nothing of the first survives but the database.
    async with whatsapp(any_db, graph, tmp_path) as second:
        await second.say("wamid.4", "5/3/2027")
        await second.say("wamid.5", "+49 151 12345678")
        assert sent(graph)[3:] == [ASK_PHONE, BOOKED]
        assert second.llm.calls == []  # the flow's turns need no model
        (run,) = rows(any_db, FlowRun)
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

    (conversation,) = rows(any_db, Conversation)
    assert turns(any_db) == [
        ("user", "Hi, do you repair e-bikes?"), ("assistant", "You said: Hi, do you repair e-bikes?"),
        ("user", "I'd like to book an appointment"), ("assistant", ASK_NAME),
        ("user", "Maria Lopez"), ("assistant", ASK_DATE),
        ("user", "5/3/2027"), ("assistant", ASK_PHONE),
        ("user", "+49 151 12345678"), ("assistant", BOOKED),
        ("user", "Thanks! Where are you?"), ("assistant", "You said: Thanks! Where are you?")]
    messages = rows(any_db, Message)
    assert [m.external_id for m in messages if m.role == "user"] == [f"wamid.{i}" for i in range(1, 7)]
    # Every reply was sent exactly once, and its wamid recorded on its message.
    assert all(m.external_id.startswith("wamid.") and m.conversation_id == conversation.id
               for m in messages if m.role == "assistant")
    assert len({m.external_id for m in messages if m.role == "assistant"}) == 6 == len(graph.sent)
    assert {r.status for r in rows(any_db, InboundMessage)} == {"done"}
    assert messages[9].timings == {"flow": "booking", "flow_run": run.id, "flow_step": "booked",
                                   "flow_result": "booked"}


async def test_a_flow_reply_whose_send_failed_is_sent_once_later_without_feeding_the_flow_again(
        sqlite_db: Engine, graph: FakeGraph, tmp_path: Path) -> None:
    install(sqlite_db, BOOKING, flow_triggers={"booking": ["book"]})
    async with whatsapp(sqlite_db, graph, tmp_path, retry_interval=0) as eva:
        await eva.say("wamid.1", "book please")
        await eva.say("wamid.2", "Maria Lopez")
        graph.replies.extend([OUTAGE] * 3)  # every try of the next reply's first attempt fails
        await eva.say("wamid.3", "5/3/2027")
        assert len(graph.sent) == 2 and rows(sqlite_db, InboundMessage)[-1].status == "pending"
        assert await eva.service.retry_pending() == 1
        await eva.service.drain()
        await eva.say("wamid.4", "+49 151 12345678")
    assert sent(graph) == [ASK_NAME, ASK_DATE, ASK_PHONE, BOOKED]
    assert [r.attempts for r in rows(sqlite_db, InboundMessage)] == [1, 1, 2, 1]
    assert [text for role, text in turns(sqlite_db) if role == "user"] == [
        "book please", "Maria Lopez", "5/3/2027", "+49 151 12345678"]
    (run,) = rows(sqlite_db, FlowRun)
    assert (run.result, {k: run.variables[k] for k in BOOKED_VARS}) == ("booked", BOOKED_VARS)


async def test_invalid_answers_are_reprompted_then_the_fallback_hands_over_and_the_agent_carries_on(
        sqlite_db: Engine, graph: FakeGraph, tmp_path: Path) -> None:
    install(sqlite_db, BOOKING, flow_triggers={"booking": ["book"]})
    async with whatsapp(sqlite_db, graph, tmp_path) as eva:
        for number, text in enumerate(["Can I book a repair?", "Maria Lopez", "whenever", "no idea, sorry"]):
            await eva.say(f"wamid.{number}", text)
        assert sent(graph) == [
            ASK_NAME, ASK_DATE,
            f"Sorry, I didn't get the day. {ASK_DATE}",  # the re-prompt: what was wrong, then the question
            "Let me hand you to the front desk. I have passed this conversation on to front desk; "
            "a person will reply here."]
        (run,) = rows(sqlite_db, FlowRun)
        assert (run.status, run.result, run.step) == ("ended", "transferred", "desk")
        assert "date" not in run.variables and run.variables["name"] == "Maria Lopez"
        assert rows(sqlite_db, Message)[-1].timings["handover"] == "front desk"
        await eva.say("wamid.9", "Are you open on Sunday?")
        assert sent(graph)[4:] == ["You said: Are you open on Sunday?"]
        # The trigger phrase starts the flow again, afresh.
        await eva.say("wamid.10", "OK then, book me in")
        assert sent(graph)[5:] == [ASK_NAME]
    assert [(r.status, r.step) for r in rows(sqlite_db, FlowRun)] == [("ended", "desk"), ("active", "name")]


async def test_a_transfer_to_a_target_the_agent_does_not_have_takes_the_fallback(
        sqlite_db: Engine, graph: FakeGraph, tmp_path: Path) -> None:
    flow = {"name": "handover", "start_step": "ask", "steps": [
        {"id": "ask", "say": "Passing you on.", "action": {"type": "transfer", "target": "sales"},
         "fallback": "sorry"},
        {"id": "sorry", "say": "Nobody is free; please write again later.", "end": "no_agent"}]}
    install(sqlite_db, flow, flow_triggers={"handover": ["a person"]})
    async with whatsapp(sqlite_db, graph, tmp_path) as eva:
        await eva.say("wamid.1", "I want a person")
    assert sent(graph) == ["Passing you on. Nobody is free; please write again later."]
    (run,) = rows(sqlite_db, FlowRun)
    assert (run.result, "handover" in (rows(sqlite_db, Message)[-1].timings or {})) == ("no_agent", False)


# ---------------------------------------------------------------------------------------------- e-mail
def email_service(engine: Engine, dovecot: Dovecot, sink: SmtpSink, tmp_path: Path, user: str,
                  llm: ScriptedLLM | None = None) -> EmailService:
    settings = mail_settings(tmp_path, dovecot, sink, user)
    return EmailService(settings, engine, AgentCore(settings, engine, llm or ScriptedLLM()))


def answer_to(reply: Any, body: str, number: int) -> bytes:
    """Ada's answer to our ``reply``, quoting it, in its thread."""
    quoted = "\n".join(f"> {line}" for line in plain_of(reply).strip().splitlines())
    return mail(f"{body}\n\nOn Mon, Eva <eva@shop.example> wrote:\n{quoted}", message_id=f"<a{number}@example.org>",
                subject="Re: Appointment", In_Reply_To=reply["Message-ID"],
                References=f"{reply.get('References', '')} {reply['Message-ID']}".strip())


async def test_email_booking_survives_a_new_service_mid_flow_in_one_thread(
        sqlite_db: Engine, dovecot: Dovecot, smtp_sink: SmtpSink, tmp_path: Path) -> None:
    install(sqlite_db, BOOKING, flow_triggers={"booking": ["appointment"]})
    user = "eva-flow-booking"
    first = email_service(sqlite_db, dovecot, smtp_sink, tmp_path, user)
    dovecot.deliver(user, mail("Hello, I need an appointment for my bike.", message_id="<a0@example.org>",
                               subject="Appointment"))
    assert (await first.poll_once()).answered == 1
    dovecot.deliver(user, answer_to(smtp_sink.messages[-1], "Maria Lopez", 1))
    assert (await first.poll_once()).answered == 1
    assert (await first.poll_once()).unseen == 0  # answered mail is marked seen: never answered again
    await first.close()
    bodies = [plain_of(m).strip() for m in smtp_sink.messages]
    assert bodies == [ASK_NAME, ASK_DATE]

    second = email_service(sqlite_db, dovecot, smtp_sink, tmp_path, user)
    try:
        dovecot.deliver(user, answer_to(smtp_sink.messages[-1], "5/3/2027", 2))
        assert (await second.poll_once()).answered == 1
        dovecot.deliver(user, answer_to(smtp_sink.messages[-1], "+49 151 12345678", 3))
        assert (await second.poll_once()).answered == 1
    finally:
        await second.close()
    assert [plain_of(m).strip() for m in smtp_sink.messages][2:] == [ASK_PHONE, BOOKED]
    assert [m["In-Reply-To"] for m in smtp_sink.messages] == [f"<a{i}@example.org>" for i in range(4)]
    assert all(seen for _id, seen in dovecot.flags(user))
    (conversation,) = rows(sqlite_db, Conversation)
    (run,) = rows(sqlite_db, FlowRun)
    assert (run.channel, run.status, run.result, run.conversation_id) == ("email", "ended", "booked",
                                                                          conversation.id)
    assert {k: run.variables[k] for k in BOOKED_VARS} == BOOKED_VARS
    assert run.variables["caller"] == "ada@example.org"
    # Only Ada's new words are the flow's input (the quoted reply is not), and each reply is stored once with
    # the Message-ID it was sent under.
    messages = rows(sqlite_db, Message)
    assert [m.text for m in messages if m.role == "user"] == [
        "Hello, I need an appointment for my bike.", "Maria Lopez", "5/3/2027", "+49 151 12345678"]
    assert [m.external_id for m in messages if m.role == "assistant"] == [m["Message-ID"] for m in smtp_sink.messages]


QUESTION = "Do you integrate with calendars? " + "We use a shared calendar for every vet in the clinic. " * 12
"""Longer than the engine keeps of an input (500 characters): the agent must read all of it."""


def lead_flow() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / "lead-qualification.json").read_text())
    return data


def extracting(messages: Any) -> str:
    """The scripted model: reads a team size out of words the parser cannot, otherwise echoes."""
    last = messages[-1].content
    if last.startswith("Value wanted: the number of people in the team"):
        return "12" if "dozen" in last else "NONE"
    return f"You said: {last}" if len(last) <= 300 else f"You wrote {len(last)} characters."


async def test_the_lead_qualification_example_starts_a_new_conversation_and_hands_over_to_the_agent(
        sqlite_db: Engine, dovecot: Dovecot, smtp_sink: SmtpSink, tmp_path: Path) -> None:
    install(sqlite_db, lead_flow(), start_flow="lead-qualification")
    user = "eva-flow-lead"
    llm = ScriptedLLM(extracting)
    service = email_service(sqlite_db, dovecot, smtp_sink, tmp_path, user, llm)
    try:
        dovecot.deliver(user, mail("Hello there", message_id="<a0@example.org>", subject="Appointment"))
        await service.poll_once()
        for number, text in enumerate(["A booking system for our clinic", "We are a dozen people", "asap",
                                       "ada@clinic.example", QUESTION, "bye"], start=1):
            dovecot.deliver(user, answer_to(smtp_sink.messages[-1], text, number))
            assert (await service.poll_once()).answered == 1
    finally:
        await service.close()
    bodies = [plain_of(m).strip() for m in smtp_sink.messages]
    assert bodies == [
        "Hi! Thanks for getting in touch. In a few words, what are you looking for?",
        "Thanks. How many people are in your team?",
        "When would you like to start? Reply now, this quarter, or later.",
        "Great. Which e-mail address should our team use?",
        "Thank you! Since you want to start now, someone from our team will write to ada@clinic.example today. "
        "If you have any questions meanwhile, just ask.",
        f"You wrote {len(QUESTION.strip())} characters.",  # the agent, inside the flow's handover step
        "Thanks for your time. Goodbye!"]
    (run,) = rows(sqlite_db, FlowRun)
    assert (run.status, run.result) == ("ended", "qualified")
    assert {k: run.variables[k] for k in ("need", "team_size", "timeline", "email")} == {
        "need": "A booking system for our clinic", "team_size": "12", "timeline": "now",
        "email": "ada@clinic.example"}
    # The agent's answer is one turn of the conversation (its own rows folded into the flow's), and the agent
    # was asked with the flow's turns in its memory.
    assert len(QUESTION) > 500
    assert turns(sqlite_db)[10:12] == [("user", QUESTION.strip()),
                                       ("assistant", f"You wrote {len(QUESTION.strip())} characters.")]
    (agent_call,) = [c for c in llm.calls if c[-1].content == QUESTION.strip()]
    assert [m.content for m in agent_call if m.role == "user"][:2] == ["Hello there",
                                                                        "A booking system for our clinic"]


# ---------------------------------------------------------------------------------------------- crash windows
HOURS: dict[str, Any] = {
    "name": "hours", "start_step": "menu",
    "steps": [
        {"id": "menu", "say": "Reply hours for our opening hours, or desk for a person.",
         "collect": {"var": "choice", "type": "choice", "choices": {"hours": ["hours"], "desk": ["desk"]}},
         "branches": [{"when": {"var": "choice", "equals": "desk"}, "next": "desk"}], "next": "hours"},
        {"id": "hours", "ask_agent": "What are your opening hours?", "next": "more"},
        {"id": "more", "say": "Anything else? Reply yes or no.", "collect": {"var": "more", "type": "yes_no"},
         "branches": [{"when": {"var": "more", "equals": "yes"}, "next": "menu"}], "next": "bye"},
        {"id": "bye", "say": "Goodbye!", "end": "completed"},
        {"id": "desk", "say": "One moment.", "action": {"type": "transfer", "target": "front desk"}},
    ],
}


async def test_ask_agent_is_answered_by_the_agent_as_part_of_the_flow_turn(
        sqlite_db: Engine, graph: FakeGraph, tmp_path: Path) -> None:
    install(sqlite_db, HOURS, flow_triggers={"hours": ["menu"]})
    async with whatsapp(sqlite_db, graph, tmp_path) as eva:
        await eva.say("wamid.1", "menu please")
        await eva.say("wamid.2", "hours")
        (call,) = eva.llm.calls
    assert call[-1].content == "What are your opening hours?"
    assert sent(graph) == ["Reply hours for our opening hours, or desk for a person.",
                           "You said: What are your opening hours? Anything else? Reply yes or no."]
    # The agent's question and answer are folded into the turn: the history is what the customer saw.
    assert turns(sqlite_db) == [
        ("user", "menu please"), ("assistant", "Reply hours for our opening hours, or desk for a person."),
        ("user", "hours"), ("assistant", "You said: What are your opening hours? Anything else? Reply yes or no.")]
    (run,) = rows(sqlite_db, FlowRun)
    assert (run.status, run.step) == ("active", "more")


async def test_a_message_that_comes_again_after_a_crash_is_not_fed_to_the_flow_twice(
        any_db: Engine, graph: FakeGraph, tmp_path: Path) -> None:
    install(any_db, BOOKING, flow_triggers={"booking": ["book"]})
    async with whatsapp(any_db, graph, tmp_path) as eva:
        await eva.say("wamid.1", "book please")
        await eva.say("wamid.2", "Maria Lopez")
        (run,) = rows(any_db, FlowRun)
        # A worker crashes right after the run took the next message, before its turn was stored: the run is
        # at the phone step, and the message is still unanswered, so it is handled again.
        assert run.id is not None
        await FlowRunner(any_db).answer(run.id, "5/3/2027")
        await eva.say("wamid.3", "5/3/2027")
        await eva.say("wamid.4", "+49 151 12345678")
    assert sent(graph) == [ASK_NAME, ASK_DATE, ASK_PHONE, BOOKED]
    (run,) = rows(any_db, FlowRun)
    assert (run.result, {k: run.variables[k] for k in BOOKED_VARS}) == ("booked", BOOKED_VARS)


async def test_a_run_left_waiting_for_a_lost_agent_answer_gets_it_and_goes_on(
        sqlite_db: Engine, graph: FakeGraph, tmp_path: Path) -> None:
    install(sqlite_db, HOURS, flow_triggers={"hours": ["menu"]})
    async with whatsapp(sqlite_db, graph, tmp_path) as eva:
        await eva.say("wamid.1", "menu please")
        (run,) = rows(sqlite_db, FlowRun)
        assert run.id is not None
        # The crash came while the agent was answering: the run waits for that answer (not for input).
        waiting = await FlowRunner(sqlite_db).answer(run.id, "hours")
        assert waiting.agent_request is not None
        await eva.say("wamid.2", "hours")
        await eva.say("wamid.3", "no")
    assert sent(graph) == ["Reply hours for our opening hours, or desk for a person.",
                           "You said: What are your opening hours? Anything else? Reply yes or no.", "Goodbye!"]
    (run,) = rows(sqlite_db, FlowRun)
    assert (run.status, run.result, run.variables["more"]) == ("ended", "completed", "no")


# ---------------------------------------------------------------------------------------------- the runtime
async def test_a_flow_on_whatsapp_sends_an_email_through_the_runtime(
        sqlite_db: Engine, graph: FakeGraph, smtp_sink: SmtpSink, tmp_path: Path) -> None:
    flow = {"name": "confirm", "start_step": "email", "steps": [
        {"id": "email", "say": "Which e-mail address should get the confirmation?",
         "collect": {"var": "email", "type": "email"}, "next": "send"},
        {"id": "send", "action": {"type": "send_message", "channel": "email", "to": "{email}",
                                  "text": "Your repair is booked (WhatsApp {caller})."},
         "fallback": "failed", "next": "done"},
        {"id": "done", "say": "Sent to {email}.", "end": "sent"},
        {"id": "failed", "say": "Sorry, I could not send it.", "end": "not_sent"}]}
    install(sqlite_db, flow, start_flow="confirm")
    settings = offline_settings(
        tmp_path / "data", smtp_host=smtp_sink.host, smtp_port=smtp_sink.port, smtp_starttls=False,
        smtp_from="eva@shop.example", whatsapp_token=graph.token, whatsapp_phone_number_id=graph.phone_number_id,
        whatsapp_api_url=graph.api_url, whatsapp_app_secret=APP_SECRET)
    channels = await start_channels(settings, sqlite_db, AgentCore(settings, sqlite_db, ScriptedLLM()))
    try:
        for wamid, text in (("wamid.1", "Hello"), ("wamid.2", "ada@example.org")):
            body = json.dumps(text_payload(wamid, text)).encode()
            await channels.whatsapp.accept(body, signature(APP_SECRET, body))
            await channels.whatsapp.drain()
    finally:
        await channels.close()
    assert sent(graph) == ["Which e-mail address should get the confirmation?", "Sent to ada@example.org."]
    (message,) = smtp_sink.messages
    assert (message["To"], plain_of(message).strip()) == ("ada@example.org",
                                                              f"Your repair is booked (WhatsApp {SENDER}).")
    (run,) = rows(sqlite_db, FlowRun)
    assert run.result == "sent"


async def test_a_run_whose_step_the_designer_removed_ends_and_the_agent_answers(
        sqlite_db: Engine, graph: FakeGraph, tmp_path: Path) -> None:
    install(sqlite_db, BOOKING, flow_triggers={"booking": ["book"]})
    async with whatsapp(sqlite_db, graph, tmp_path) as eva:
        await eva.say("wamid.1", "book please")
        await eva.say("wamid.2", "Maria Lopez")  # the run now waits at "date"
        shorter = {**BOOKING, "steps": [{**BOOKING["steps"][0], "next": "thanks"},
                                        {"id": "thanks", "say": "Thanks!", "end": "done"}]}
        install(sqlite_db, shorter, flow_triggers={"booking": ["book"]})
        await eva.say("wamid.3", "5/3/2027")
    assert sent(graph) == [ASK_NAME, ASK_DATE, "You said: 5/3/2027"]
    (run,) = rows(sqlite_db, FlowRun)
    assert (run.status, run.result) == ("ended", "flow_changed")


async def test_the_email_chat_entry_starts_a_flow_that_the_customers_reply_continues(
        sqlite_db: Engine, dovecot: Dovecot, smtp_sink: SmtpSink, tmp_path: Path) -> None:
    install(sqlite_db, BOOKING, flow_triggers={"booking": ["appointment"]})
    user = "eva-flow-chat"
    service = email_service(sqlite_db, dovecot, smtp_sink, tmp_path, user)
    try:
        result = await service.chat("ada@example.org", "I would like an appointment", subject="Appointment")
        assert result.reply == ASK_NAME
        dovecot.deliver(user, answer_to(smtp_sink.messages[-1], "Maria Lopez", 1))
        assert (await service.poll_once()).answered == 1
    finally:
        await service.close()
    assert [plain_of(m).strip() for m in smtp_sink.messages] == [ASK_NAME, ASK_DATE]
    (run,) = rows(sqlite_db, FlowRun)
    assert (run.conversation_id, run.step, run.variables["name"]) == (result.conversation_id, "date", "Maria Lopez")
