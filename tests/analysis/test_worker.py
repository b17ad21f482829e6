"""The analysis worker: a batch of contacts' messages analysed by the real model and stored; claims that keep two
workers from analysing one message twice; the pause while the model is busy; failures that are not retried."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, Sequence

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from models import Agent, Category, Contact, Conversation, Message
from models.db import session_scope
from voicebot.analysis import Analyzer, CategorySpec
from voicebot.analysis.worker import AnalysisWorker, claim, model_busy
from voicebot.llm.base import ChatMessage, Done, GenerationOptions, LanguageModel, LlmEvent, TextDelta, ToolSpec
from voicebot.llm.embedded import EmbeddedLLM
from voicebot.metrics import CALLS_ACTIVE

CATEGORIES = [("sales", "wants to buy something, asks prices or quotes"),
              ("support", "needs help with a product or service they have"),
              ("complaint", "unhappy with the service, wants redress"),
              ("spam", "unsolicited advertising, prizes, scams")]


def seed(engine: Engine, texts: Sequence[tuple[str, str, str]], *, categories: bool = True) -> list[int]:
    """Messages (channel, role, text), one conversation per channel; returns their ids in order."""
    with session_scope(engine) as session:
        agent = Agent(name="shop")
        contact = Contact(name="Ann", email="ann@example.org")
        session.add(agent)
        session.add(contact)
        if categories:
            for name, description in CATEGORIES:
                session.add(Category(name=name, description=description))
        session.flush()
        conversations: dict[str, int] = {}
        ids: list[int] = []
        for channel, role, text in texts:
            if channel not in conversations:
                conversation = Conversation(channel=channel, agent_id=agent.id, contact_id=contact.id)
                session.add(conversation)
                session.flush()
                assert conversation.id is not None
                conversations[channel] = conversation.id
            message = Message(conversation_id=conversations[channel], role=role, text=text)
            session.add(message)
            session.flush()
            assert message.id is not None
            ids.append(message.id)
    return ids


def rows(engine: Engine) -> dict[int, Message]:
    with Session(engine) as session:
        return {m.id or 0: m for m in session.exec(select(Message)).all()}


async def test_a_batch_of_messages_gets_sentiment_and_category_from_the_real_model(
        sqlite_engine: Engine, qwen: EmbeddedLLM) -> None:
    ids = seed(sqlite_engine, [
        ("email", "user", "This is the third time my order arrived broken. I am furious and want a refund now."),
        ("email", "assistant", "I'm sorry to hear that."),
        ("whatsapp", "user", "Thanks so much, the technician was great and everything works now!"),
        ("voice", "user", "Hi, how much does the premium plan cost? I'd like to buy it for my team."),
        ("voice", "user", ""),
    ])
    worker = AnalysisWorker(sqlite_engine, Analyzer(qwen))
    snapshots = qwen.prefix_cache_stats()["snapshots"]
    progress = await worker.run_once()
    # Bookkeeping replies keep no KV snapshot (they would evict a call's): at most the pinned analysis prefix.
    assert qwen.prefix_cache_stats()["snapshots"] <= snapshots + 1
    assert (progress.done, progress.failed, progress.lost) == (3, 0, 0)
    stored = rows(sqlite_engine)
    complaint, reply, thanks, price, empty = (stored[i] for i in ids)
    assert (complaint.sentiment, complaint.category, complaint.analysis_status) == ("negative", "complaint", "done")
    assert thanks.sentiment == "positive" and thanks.analysis_status == "done"
    assert price.category == "sales" and price.analysis_status == "done"
    # Only contacts' words with text are analysed: the agent's reply and an empty turn are left alone.
    assert (reply.analysis_status, reply.sentiment) == ("", None)
    assert empty.analysis_status == ""
    with Session(sqlite_engine) as session:
        voice = session.exec(select(Conversation).where(Conversation.channel == "voice")).one()
        assert voice.category == "sales"  # the conversation carries its latest message's category
    assert (await worker.run_once()).done == 0  # nothing is analysed twice


class Scripted(LanguageModel):
    """A model that answers every analysis with a fixed reply and records the messages it was shown."""

    name = "scripted"
    supports_tools = False

    def __init__(self, reply: str = '{"sentiment": "neutral", "category": "other"}', delay: float = 0.0) -> None:
        self.reply = reply
        self.delay = delay
        self.seen: list[str] = []

    @property
    def default_model(self) -> str:
        return "scripted"

    async def stream(self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] = (),
                     knowledge: Sequence[str] = (),
                     options: GenerationOptions | None = None) -> AsyncGenerator[LlmEvent, None]:
        assert options is not None and options.json_schema is not None  # analysis always constrains its reply
        self.seen.append(messages[-1].content)
        await asyncio.sleep(self.delay)
        yield TextDelta(self.reply)
        yield Done("stop")

    async def list_models(self) -> list[str]:
        return ["scripted"]

    async def close(self) -> None:
        return None


async def test_two_workers_on_one_database_never_analyse_a_message_twice(engine: Engine) -> None:
    texts = [f"message number {n}" for n in range(24)]
    seed(engine, [("chat", "user", t) for t in texts])
    models = [Scripted(delay=0.01), Scripted(delay=0.01)]
    workers = [AnalysisWorker(engine, Analyzer(m), batch=5) for m in models]
    while True:
        results = await asyncio.gather(*(w.run_once() for w in workers))
        if not any(r.done for r in results):
            break
    seen = models[0].seen + models[1].seen
    assert sorted(seen) == sorted(texts)  # each exactly once, between them
    assert models[0].seen and models[1].seen  # and both took part
    assert all(m.analysis_status == "done" for m in rows(engine).values())


async def test_the_worker_waits_while_the_model_is_busy_with_people(sqlite_engine: Engine) -> None:
    seed(sqlite_engine, [("voice", "user", "hello there"), ("voice", "user", "one more")])
    model = Scripted()
    busy = [True]
    worker = AnalysisWorker(sqlite_engine, Analyzer(model), busy=lambda: busy[0])
    task = asyncio.create_task(worker.run_once())
    await asyncio.sleep(1.2)
    assert model.seen == [] and not task.done()  # a call is up: not one analysis
    busy[0] = False
    progress = await asyncio.wait_for(task, 10)
    assert progress.done == 2 and model.seen == ["hello there", "one more"]


async def test_closing_mid_batch_hands_back_the_messages_not_reached(sqlite_engine: Engine) -> None:
    ids = seed(sqlite_engine, [("chat", "user", f"m{n}") for n in range(3)])
    worker = AnalysisWorker(sqlite_engine, Analyzer(Scripted()), busy=lambda: True)
    await worker.start()
    await asyncio.sleep(0.5)
    await worker.close()
    await worker.close()  # idempotent
    stored = rows(sqlite_engine)
    assert [stored[i].analysis_status for i in ids] == ["", "", ""]
    with session_scope(sqlite_engine) as session:  # so another worker can take them at once
        assert len(claim(session, "other-worker", 10)) == 3


async def test_an_unreadable_analysis_is_marked_failed_and_not_retried(sqlite_engine: Engine) -> None:
    (message_id,) = seed(sqlite_engine, [("email", "user", "hello")])
    model = Scripted(reply="I think it is positive")
    worker = AnalysisWorker(sqlite_engine, Analyzer(model))
    assert (await worker.run_once()).failed == 1
    assert rows(sqlite_engine)[message_id].analysis_status == "failed"
    assert (await worker.run_once()).failed == 0 and len(model.seen) == 1


async def test_a_message_erased_while_it_is_analysed_is_simply_gone(sqlite_engine: Engine) -> None:
    (message_id,) = seed(sqlite_engine, [("email", "user", "please forget me")])

    class Eraser(Scripted):
        async def stream(self, messages: Sequence[ChatMessage], **kwargs: object) -> AsyncGenerator[LlmEvent, None]:
            with session_scope(sqlite_engine) as session:
                row = session.get(Message, message_id)
                assert row is not None
                session.delete(row)
            yield TextDelta(json.dumps({"sentiment": "neutral", "category": "other"}))
            yield Done("stop")

    progress = await AnalysisWorker(sqlite_engine, Analyzer(Eraser())).run_once()
    assert (progress.done, progress.lost) == (0, 1) and message_id not in rows(sqlite_engine)


async def test_the_model_counts_as_busy_while_a_call_is_up_or_a_reply_generates(qwen: EmbeddedLLM) -> None:
    busy = model_busy(qwen)
    assert not busy() and qwen.in_flight == 0
    CALLS_ACTIVE.inc()
    try:
        assert busy()
    finally:
        CALLS_ACTIVE.dec()
    events = qwen.stream([ChatMessage("user", "Say hello.")], options=GenerationOptions(max_tokens=30))
    async with contextlib.aclosing(events) as stream:
        async for _event in stream:
            assert busy() and qwen.in_flight == 1  # counted while it generates
            break  # closed early, as a barge-in does
    assert qwen.in_flight == 0 and not busy()
    task = asyncio.create_task(anext(qwen.stream([ChatMessage("user", "Count to ten.")])))
    await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    assert qwen.in_flight == 1
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.05)
    assert qwen.in_flight == 0


async def test_after_a_call_uses_the_model_an_analysis_evaluates_only_the_new_message(qwen: EmbeddedLLM) -> None:
    """Instructions and example turns are pinned in the KV cache: a reply for someone else in between (a call's
    turn) does not make the next analysis evaluate them again."""
    categories = [CategorySpec(name, description) for name, description in CATEGORIES]
    analyzer = Analyzer(qwen)
    await analyzer.analyze("Do you have this in blue?", categories)
    between = qwen.stream([ChatMessage("system", "You are a pirate who answers in one short line."),
                           ChatMessage("user", "Where is the treasure?")], options=GenerationOptions(max_tokens=8))
    async for _event in between:
        pass
    await analyzer.analyze("My router keeps dropping the connection every evening.", categories)
    evaluated, _seconds = qwen.last_prompt_eval
    assert evaluated < 40, evaluated  # the message and the reply header, not the ~300 tokens before them
