"""E-mail triage on real mail servers (dovecot, aiosmtpd): the real model sorts each mail into the admin's
categories, a complaint waits for a person (stored, seen, no answer, and later mail in its thread waits too until
it is released), a sales question is answered by the sales agent from its own address; a failing model never
stops a mail being answered.  The replies themselves come from a scripted model (the mechanics are the point)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import select

from channels.email import triage
from models import Agent, Category, Conversation, Message
from models.db import session_scope
from tests.channels.conftest import Dovecot, SmtpSink
from tests.channels.test_email_service import mail, make_mail
from voicebot.analysis import Analysis, Analyzer, CategorySpec
from voicebot.llm.base import ChatMessage, Done, GenerationOptions, LanguageModel, LlmEvent, TextDelta, ToolSpec
from voicebot.llm.embedded import EmbeddedLLM

SALES = "sales@shop.example"


def seed_rules(engine: Engine) -> int:
    with session_scope(engine) as session:
        sales = Agent(name="sales-desk", email_address=SALES, email_signature="The sales team")
        session.add(sales)
        session.flush()
        session.add(Category(name="complaint", description="unhappy with the service, wants redress",
                             needs_human=True))
        session.add(Category(name="sales", description="wants to buy something, asks prices or quotes",
                             route_agent_id=sales.id))
        session.add(Category(name="support", description="needs help with a product or service they have"))
        assert sales.id is not None
        return sales.id


def test_decisions_follow_the_rules() -> None:
    rules = triage.Rules((CategorySpec("complaint"), CategorySpec("sales")), {"sales": 7}, frozenset({"complaint"}))
    assert triage.decide(Analysis("negative", "complaint"), rules).held
    assert triage.decide(Analysis("neutral", "sales"), rules).agent_id == 7
    assert triage.decide(Analysis("neutral", "other"), rules) == triage.Decision(Analysis("neutral", "other"))
    assert triage.decide(None, rules) == triage.Decision(None)
    assert not triage.Rules((CategorySpec("x"),), {}, frozenset()).active


def test_a_route_to_an_inactive_or_missing_agent_is_no_route(sqlite_db: Engine) -> None:
    sales_id = seed_rules(sqlite_db)
    with session_scope(sqlite_db) as session:
        assert triage.load_rules(session).routes == {"sales": sales_id}
        agent = session.get(Agent, sales_id)
        assert agent is not None
        agent.active = False
        session.add(agent)
    with session_scope(sqlite_db) as session:
        rules = triage.load_rules(session)
    assert rules.routes == {} and rules.held == frozenset({"complaint"}) and rules.active


async def test_complaints_wait_for_a_person_and_sales_go_to_the_sales_agent(
        sqlite_db: Engine, dovecot: Dovecot, smtp_sink: SmtpSink, tmp_path: Path, qwen: EmbeddedLLM) -> None:
    seed_rules(sqlite_db)
    box = make_mail(sqlite_db, dovecot, smtp_sink, tmp_path)
    box.service.analyzer = Analyzer(qwen)  # the real model decides; the scripted one writes replies
    box.deliver(mail("This is the third time my order arrived broken. I am furious and I want a refund now.",
                     message_id="<c1@example.org>", subject="Broken again"))
    box.deliver(mail("Hi, how much does the premium plan cost? I'd like to buy it for my team of five.",
                     message_id="<s1@example.org>", subject="Premium plan", sender="Bo <bo@example.org>"))
    result = await box.service.poll_once()
    assert (result.unseen, result.held, result.answered) == (2, 1, 1)
    assert box.seen() == [("<c1@example.org>", True), ("<s1@example.org>", True)]  # nothing fetched again
    (reply,) = smtp_sink.messages  # the complaint got no automatic answer
    assert reply["To"] == "Bo <bo@example.org>" and SALES in reply["From"]
    assert "The sales team" in reply.get_body(("plain",)).get_content()  # type: ignore[union-attr]

    with session_scope(sqlite_db) as session:
        held = session.exec(select(Conversation).where(Conversation.needs_human)).one()
        stored = session.exec(select(Message).where(Message.conversation_id == held.id)).all()
        assert [(m.role, m.category, m.sentiment) for m in stored] == [("user", "complaint", "negative")]
        assert "furious" in stored[0].text and stored[0].analysis_status == "done"
        sold = session.exec(select(Conversation).where(Conversation.category == "sales")).one()
        sales_agent = session.exec(select(Agent).where(Agent.name == "sales-desk")).one()
        assert sold.agent_id == sales_agent.id and not sold.needs_human
        held_id = held.id

    # A second copy of the held mail (the same Message-ID, e.g. sent to two aliases) is a duplicate: seen, unanswered.
    box.deliver(mail("This is the third time my order arrived broken. I am furious and I want a refund now.",
                     message_id="<c1@example.org>", subject="Broken again"))
    again = await box.service.poll_once()
    assert (again.duplicates, again.held, again.answered) == (1, 0, 0) and len(smtp_sink.messages) == 1
    assert all(seen for _id, seen in box.seen())

    # More mail in the set-aside thread waits too, whatever it is about, until a person releases it.
    box.deliver(mail("Also, what are your opening hours?", message_id="<c2@example.org>", subject="Re: Broken again",
                     In_Reply_To="<c1@example.org>", References="<c1@example.org>"))
    assert (await box.service.poll_once()).held == 1 and len(smtp_sink.messages) == 1
    with session_scope(sqlite_db) as session:
        conversation = session.get(Conversation, held_id)
        assert conversation is not None
        conversation.needs_human = False
        session.add(conversation)
    box.deliver(mail("Thank you for the refund, all sorted now!", message_id="<c3@example.org>",
                     subject="Re: Broken again", In_Reply_To="<c1@example.org>", References="<c1@example.org>"))
    assert (await box.service.poll_once()).answered == 1 and len(smtp_sink.messages) == 2
    await box.service.close()


class Broken(LanguageModel):
    name = "broken"
    supports_tools = False

    @property
    def default_model(self) -> str:
        return "broken"

    async def stream(self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] = (),
                     knowledge: Sequence[str] = (),
                     options: GenerationOptions | None = None) -> AsyncGenerator[LlmEvent, None]:
        yield TextDelta("I'd say it is a complaint")  # not the JSON asked for
        yield Done("stop")

    async def list_models(self) -> list[str]:
        return []

    async def close(self) -> None:
        return None


async def test_a_failing_triage_never_stops_a_mail_being_answered(
        sqlite_db: Engine, dovecot: Dovecot, smtp_sink: SmtpSink, tmp_path: Path) -> None:
    seed_rules(sqlite_db)
    box = make_mail(sqlite_db, dovecot, smtp_sink, tmp_path)
    box.service.analyzer = Analyzer(Broken())
    box.deliver(mail("I am furious, refund me!", message_id="<f1@example.org>"))
    result = await box.service.poll_once()
    assert (result.answered, result.held) == (1, 0) and len(smtp_sink.messages) == 1
    with session_scope(sqlite_db) as session:
        user = session.exec(select(Message).where(Message.role == "user")).one()
        assert user.analysis_status == ""  # left for the background worker to try
    await box.service.close()
