"""The agent core end to end: real SQLite, real Chroma knowledge (the demo document), the real embedded model;
the Ollama backend (against the local NDJSON server) where a tool-calling or failing model is needed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from models import Agent, Contact, Message
from models.db import session_scope
from rag import KnowledgeBase
from tests.agent.conftest import DemoWorld
from tests.fakes.ollama_server import ChatScript, FakeOllama
from voicebot.agent.core import (
    HANG_UP,
    SEARCH_KNOWLEDGE,
    TRANSFER_CALL,
    AgentCore,
    ReplyDone,
    ReplyEvent,
    ReplyStarted,
)
from voicebot.agent.store import AgentStore
from voicebot.config import Settings
from voicebot.errors import InvalidInput, NotFound
from voicebot.llm.base import (
    ChatMessage,
    GenerationOptions,
    LanguageModel,
    LlmEvent,
    TextDelta,
    ToolCall,
    ToolSpec,
)
from voicebot.llm.embedded import EmbeddedLLM
from voicebot.llm.ollama import OllamaLLM


class Recording(LanguageModel):
    """Delegates to a real backend and keeps what the core asked it (to check memory, prompts and knowledge)."""

    def __init__(self, inner: LanguageModel) -> None:
        self.inner = inner
        self.name = inner.name
        self.supports_tools = inner.supports_tools
        self.caches_prefix = inner.caches_prefix  # the core takes the same knowledge path as with the bare model
        self.calls: list[tuple[list[ChatMessage], list[str], list[str], GenerationOptions | None]] = []

    @property
    def default_model(self) -> str:
        return self.inner.default_model

    async def stream(self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] = (),
                     knowledge: Sequence[str] = (),
                     options: GenerationOptions | None = None) -> AsyncGenerator[LlmEvent, None]:
        self.calls.append((list(messages), [t.name for t in tools], list(knowledge), options))
        async with contextlib.aclosing(self.inner.stream(messages, tools=tools, knowledge=knowledge,
                                                         options=options)) as events:
            async for event in events:
                yield event

    async def list_models(self) -> list[str]:
        return await self.inner.list_models()

    async def close(self) -> None:
        return None


@dataclass(frozen=True)
class Demo:
    """The seeded demo world as one fixture: settings, an engine on its database, the demo agent."""

    settings: Settings
    engine: Engine
    agent: Agent


@pytest.fixture
async def demo(demo_world: DemoWorld, demo_engine: Engine) -> Demo:
    agent = await AgentStore(demo_engine).get_agent(demo_world.demo_agent_id)
    return Demo(demo_world.settings, demo_engine, agent)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOllama]:
    async with FakeOllama() as server:
        yield server


@pytest.fixture
async def ollama_llm(fake: FakeOllama, demo_world: DemoWorld) -> AsyncIterator[OllamaLLM]:
    llm = OllamaLLM(demo_world.settings, url=fake.url, model="llama3.2", timeout=5.0)
    yield llm
    await llm.close()


async def contact(engine: Engine, *, verified: bool = False, **ids: str) -> Contact:
    return await AgentStore(engine).find_or_create_contact(phone=ids.get("phone"), whatsapp_id=ids.get("whatsapp_id"),
                                                           email=ids.get("email"), verified=verified)


async def run(core: AgentCore, agent: Agent, who: Contact | None, channel: str, text: str,
              **kwargs: Any) -> list[ReplyEvent]:
    async with contextlib.aclosing(core.reply(agent, who, channel, text, **kwargs)) as events:
        return [event async for event in events]


def done_of(events: list[ReplyEvent]) -> ReplyDone:
    assert isinstance(events[-1], ReplyDone)
    return events[-1]


async def test_reply_streams_persists_timings_and_cites_knowledge(
        demo: Demo, knowledge: KnowledgeBase,
        embedded_llm: EmbeddedLLM) -> None:
    llm = Recording(embedded_llm)
    core = AgentCore(demo.settings, demo.engine, llm, knowledge)
    who = await contact(demo.engine, phone="+15550001111")
    events = await run(core, demo.agent, who, "voice", "How much is a flat tire repair?")
    started = events[0]
    assert isinstance(started, ReplyStarted)
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert len(deltas) >= 3
    done = done_of(events)
    assert done.text == "".join(d.text for d in deltas)
    assert "15" in done.text
    assert not done.fallback and done.error is None
    assert done.citations and done.citations[0].title == "Sunny Side Bike Shop facts"
    assert done.citations[0].chunk_id and done.citations[0].document_id > 0
    assert {"retrieval_ms", "llm_first_token_ms", "total_ms"} <= set(done.timings)
    assert done.timings["llm_first_token_ms"] <= done.timings["total_ms"]
    assert done.completion_tokens and done.prompt_tokens

    stored = await core.messages(started.conversation_id)
    assert [(m.role, m.id) for m in stored] == [("user", started.user_message_id),
                                                ("assistant", started.assistant_message_id)]
    user, assistant = stored
    assert user.text == "How much is a flat tire repair?"
    assert assistant.text == done.text
    assert assistant.timings is not None and assistant.timings["total_ms"] == done.timings["total_ms"]
    assert assistant.citations is not None
    assert assistant.citations[0]["chunk_id"] == done.citations[0].chunk_id
    assert assistant.citations[0]["title"] == "Sunny Side Bike Shop facts"
    assert assistant.completion_tokens == done.completion_tokens
    # The knowledge reached the model: the demo chunk with the price, not just the question.
    assert done.timings["llm_backend"] == "embedded"
    (_messages, _tools, given, _options), = llm.calls
    assert any("A flat tire repair costs 15 dollars." in chunk for chunk in given), given
    assert all("How much is a flat tire repair?" not in chunk for chunk in given)


async def test_memory_spans_channels_for_one_contact_and_only_that_contact(
        demo: Demo, embedded_llm: EmbeddedLLM) -> None:
    llm = Recording(embedded_llm)
    core = AgentCore(demo.settings, demo.engine, llm, None)
    carla = await contact(demo.engine, phone="+15550002222", verified=True)  # a trunk that attests caller ID
    stranger = await contact(demo.engine, phone="+15550003333")
    await run(core, demo.agent, stranger, "voice", "I am the stranger, remember me.")
    first = done_of(await run(core, demo.agent, carla, "voice", "Hello, this is Carla calling."))
    # Later Carla writes on WhatsApp: the WhatsApp id finds the same contact, and the call is in memory.
    carla_wa = await contact(demo.engine, whatsapp_id="15550002222", verified=True)
    assert carla_wa.id == carla.id
    second = done_of(await run(core, demo.agent, carla_wa, "whatsapp", "Do you remember me?"))
    assert second.conversation_id != first.conversation_id
    messages = llm.calls[-1][0]
    turns = [(m.role, m.content) for m in messages if m.role != "system"]
    assert turns == [("user", "Hello, this is Carla calling."), ("assistant", first.text),
                     ("user", "Do you remember me?")]
    assert messages[0] == ChatMessage("system", demo.agent.persona)  # persona first, on its own
    assert "WhatsApp" in messages[1].content  # channel guidance


async def test_memory_is_limited_to_the_last_messages(demo: Demo, embedded_llm: EmbeddedLLM) -> None:
    llm = Recording(embedded_llm)
    core = AgentCore(demo.settings, demo.engine, llm, None, memory_messages=2)
    who = await contact(demo.engine, email="memory@example.org")
    conversation: int | None = None
    for text in ("first", "second", "third"):
        conversation = done_of(await run(core, demo.agent, who, "email", f"Message {text}.",
                                         conversation_id=conversation)).conversation_id
    memory = [m.content for m in llm.calls[-1][0] if m.role != "system"]
    assert memory[0] == "Message second." and memory[-1] == "Message third." and len(memory) == 3


async def test_anonymous_caller_only_remembers_this_conversation(
        demo: Demo, embedded_llm: EmbeddedLLM) -> None:
    llm = Recording(embedded_llm)
    core = AgentCore(demo.settings, demo.engine, llm, None)
    await run(core, demo.agent, None, "voice", "Someone else entirely.")
    conversation = await core.start_conversation(demo.agent.id or 0, None, "voice", external_id="call-1")
    await run(core, demo.agent, None, "voice", "Hi there.", conversation_id=conversation)
    await run(core, demo.agent, None, "voice", "Still me.", conversation_id=conversation)
    users = [m.content for m in llm.calls[-1][0] if m.role == "user"]
    assert users == ["Hi there.", "Still me."]


async def test_llm_down_yields_the_fallback_message(demo: Demo, knowledge: KnowledgeBase,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    llm = OllamaLLM(demo.settings, url="http://127.0.0.1:9", timeout=2.0)  # port 9: nothing listens
    core = AgentCore(demo.settings, demo.engine, llm, knowledge)
    events = await run(core, demo.agent, None, "voice", "Are you open on Sunday?")
    done = done_of(events)
    assert done.fallback and done.error == "llm_unavailable"
    assert done.text == demo.agent.fallback_message
    assert [e.text for e in events if isinstance(e, TextDelta)] == [demo.agent.fallback_message]
    stored = await core.messages(done.conversation_id)
    assert stored[-1].text == demo.agent.fallback_message
    assert stored[0].text == "Are you open on Sunday?"  # the caller's words are never lost
    assert any("llm_unavailable" in r.getMessage() for r in caplog.records)
    await llm.close()


@pytest.mark.parametrize(("script", "error"), [
    (ChatScript(status=500, error="boom"), "llm_error"),  # refused outright
    (ChatScript(chunks=["never"], error_after=0), "llm_error"),  # an error line before the first chunk
    (ChatScript(chunks=[""]), "llm_empty_reply"),
])
async def test_llm_errors_yield_the_fallback(demo: Demo,
                                             fake: FakeOllama, ollama_llm: OllamaLLM, script: ChatScript,
                                             error: str) -> None:
    fake.scripts.append(script)
    core = AgentCore(demo.settings, demo.engine, ollama_llm, None)
    done = done_of(await run(core, demo.agent, None, "chat", "Hello?"))
    assert done.fallback and done.error == error and done.text == demo.agent.fallback_message


async def test_missing_model_yields_fallback(demo: Demo,
                                             fake: FakeOllama, ollama_llm: OllamaLLM) -> None:
    agent = demo.agent.model_copy(update={"llm_model": "not-pulled"})
    core = AgentCore(demo.settings, demo.engine, ollama_llm, None)
    done = done_of(await run(core, agent, None, "chat", "Hello?"))
    assert done.fallback and done.error == "llm_model_missing"
    assert fake.bodies("/api/chat")[0]["model"] == "not-pulled"


async def test_llm_timeout_yields_fallback(demo: Demo,
                                           fake: FakeOllama, ollama_llm: OllamaLLM) -> None:
    fake.scripts.append(ChatScript(chunks=["too", " late"], delay=1.0))
    core = AgentCore(demo.settings.with_(llm_timeout=0.3), demo.engine, ollama_llm, None)
    done = done_of(await run(core, demo.agent, None, "voice", "Hello?"))
    assert done.fallback and done.error == "llm_timeout"


async def test_failure_after_partial_text_keeps_the_text(demo: Demo, fake: FakeOllama,
                                                         ollama_llm: OllamaLLM) -> None:
    fake.scripts.append(ChatScript(chunks=["We open", " at nine", " and"], error_after=2))
    core = AgentCore(demo.settings, demo.engine, ollama_llm, None)
    done = done_of(await run(core, demo.agent, None, "voice", "When do you open?"))
    assert done.text == "We open at nine" and not done.fallback and done.error == "llm_error"


async def test_reply_never_exceeds_max_tokens(demo: Demo,
                                              fake: FakeOllama, ollama_llm: OllamaLLM,
                                              embedded_llm: EmbeddedLLM) -> None:
    agent = demo.agent.model_copy(update={"max_tokens": 5})
    # A server that ignores num_predict: the core stops it.
    fake.scripts.append(ChatScript(chunks=[f" word{i}" for i in range(300)]))
    core = AgentCore(demo.settings, demo.engine, ollama_llm, None)
    events = await run(core, agent, None, "chat", "Talk a lot.")
    assert len([e for e in events if isinstance(e, TextDelta)]) == 5
    assert done_of(events).timings["finish_reason"] == "length"
    assert fake.bodies("/api/chat")[0]["options"]["num_predict"] == 5
    # The real model is told the limit and keeps it.
    real = AgentCore(demo.settings, demo.engine, embedded_llm, None)
    done = done_of(await run(real, agent, None, "chat", "Tell me everything about the shop."))
    assert done.completion_tokens is not None and done.completion_tokens <= 5


async def test_tool_calls_are_surfaced_and_search_knowledge_runs_in_the_core(
        demo: Demo, knowledge: KnowledgeBase,
        fake: FakeOllama, ollama_llm: OllamaLLM) -> None:
    fake.scripts.append(ChatScript(chunks=[], tool_calls=[{"name": "search_knowledge",
                                                           "arguments": {"query": "tire repair price"}}]))
    fake.scripts.append(ChatScript(chunks=["A flat tire repair costs 15 dollars.", " Transferring you."],
                                   tool_calls=[{"name": "transfer_call", "arguments": {"target": "workshop"}},
                                               {"name": "launch_rocket", "arguments": {}},
                                               {"name": "send_email", "arguments": {"subject": "no body"}}]))
    core = AgentCore(demo.settings, demo.engine, ollama_llm, knowledge, knowledge_threshold=0.99)
    events = await run(core, demo.agent, None, "voice", "How much to fix my tire? Then put me through.")
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [(c.name, dict(c.arguments)) for c in calls] == [("transfer_call", {"target": "workshop"})]
    done = done_of(events)
    assert done.tool_calls == tuple(calls)
    # Nothing passed the 0.99 threshold up front, so the citations come from the tool's search.
    assert done.citations and done.citations[0].title == "Sunny Side Bike Shop facts"
    first, second = fake.bodies("/api/chat")
    assert {t["function"]["name"] for t in first["tools"]} == {
        TRANSFER_CALL.name, HANG_UP.name, SEARCH_KNOWLEDGE.name}  # send_* are not executed on calls
    tool_message = second["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["tool_name"] == "search_knowledge"
    assert "15 dollars" in tool_message["content"]
    assert second["messages"][-2]["tool_calls"][0]["function"]["name"] == "search_knowledge"
    stored = (await core.messages(done.conversation_id))[-1]
    assert {c["name"] for c in stored.tool_calls or []} == {"transfer_call", "search_knowledge"}


async def test_tools_offered_depend_on_the_channel(demo: Demo, fake: FakeOllama,
                                                  ollama_llm: OllamaLLM) -> None:
    fake.scripts.append(ChatScript(chunks=["Bye."], tool_calls=[{"name": "hang_up", "arguments": {}}]))
    core = AgentCore(demo.settings, demo.engine, ollama_llm, None)
    events = await run(core, demo.agent, None, "whatsapp", "Bye")
    assert not [e for e in events if isinstance(e, ToolCall)]  # hang_up is not a WhatsApp tool
    # Only tools something executes: nothing on WhatsApp (search_knowledge only with a knowledge base) ...
    assert not fake.bodies("/api/chat")[0].get("tools")
    # ... and on a call exactly what the voice loop runs (no send_whatsapp/send_email that nothing would send).
    fake.scripts.append(ChatScript(chunks=["Hello."]))
    await run(core, demo.agent, None, "voice", "Hi")
    assert {t["function"]["name"] for t in fake.bodies("/api/chat")[1]["tools"]} == {TRANSFER_CALL.name,
                                                                                   HANG_UP.name}
    await run(core, demo.agent, None, "voice", "Hi", tools=[])
    assert not fake.bodies("/api/chat")[2].get("tools")


async def test_cancellation_stores_partial_reply_and_mark_interrupted(
        demo: Demo, fake: FakeOllama,
        ollama_llm: OllamaLLM) -> None:
    fake.scripts.append(ChatScript(chunks=["Our shop", " is open", *[" and more"] * 100], delay=0.05))
    core = AgentCore(demo.settings, demo.engine, ollama_llm, None)
    started: list[ReplyStarted] = []
    spoken = asyncio.Event()

    async def speak() -> None:
        async with contextlib.aclosing(core.reply(demo.agent, None, "voice", "When are you open?")) as events:
            async for event in events:
                if isinstance(event, ReplyStarted):
                    started.append(event)
                elif isinstance(event, TextDelta) and event.text == " is open":
                    spoken.set()

    task = asyncio.create_task(speak())
    await asyncio.wait_for(spoken.wait(), 10)
    task.cancel()  # barge-in
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(fake.disconnected.wait(), 5)  # the LLM stream was closed
    message_id = started[0].assistant_message_id
    stored = (await core.messages(started[0].conversation_id))[-1]
    assert stored.id == message_id and stored.timings and stored.timings["cancelled"] is True
    assert stored.text.startswith("Our shop is open") and len(stored.text) < 60
    await core.mark_interrupted(message_id, "Our shop")
    stored = (await core.messages(started[0].conversation_id))[-1]
    assert stored.text == "Our shop"
    assert stored.timings and stored.timings["interrupted"] is True
    assert stored.timings["generated_text"].startswith("Our shop is open")
    with pytest.raises(NotFound):
        await core.mark_interrupted(started[0].user_message_id, "x")  # not an assistant message


async def test_knowledge_failure_still_answers(demo: Demo,
                                               embedded_llm: EmbeddedLLM) -> None:
    kb = KnowledgeBase(demo.settings, demo.engine)
    await kb.close()  # every search now fails
    core = AgentCore(demo.settings, demo.engine, embedded_llm, kb)
    done = done_of(await run(core, demo.agent, None, "voice", "Where is the shop?"))
    assert done.text and not done.fallback and not done.citations
    assert done.timings["retrieval_error"] == "knowledge_closed"


BAD_INPUT = [
    ("voice", "   ", None, InvalidInput, "text"),
    ("voice", "x" * 8001, None, InvalidInput, "text"),
    ("fax", "hello", None, InvalidInput, "channel"),
    ("voice", "hello", 987654, NotFound, "conversation_id"),
]


@pytest.mark.parametrize("case", BAD_INPUT, ids=["blank", "too-long", "channel", "conversation"])
async def test_bad_input_is_rejected_and_nothing_stored(
        demo: Demo, embedded_llm: EmbeddedLLM,
        case: tuple[str, str, int | None, type[Exception], str]) -> None:
    channel, text, conversation_id, error, field = case
    core = AgentCore(demo.settings, demo.engine, embedded_llm, None)
    who = await contact(demo.engine, phone="+15550009999")
    with pytest.raises(error) as info:
        await run(core, demo.agent, who, channel, text, conversation_id=conversation_id)
    assert getattr(info.value, "field", None) == field
    from sqlmodel import Session, select

    from models import Conversation

    with Session(demo.engine) as session:
        assert not session.exec(select(Conversation).where(Conversation.contact_id == who.id)).all()


async def test_respond_collects_the_reply(demo: Demo,
                                          knowledge: KnowledgeBase, embedded_llm: EmbeddedLLM) -> None:
    core = AgentCore(demo.settings, demo.engine, embedded_llm, knowledge)
    done = await core.respond(demo.agent, None, "email", "How much does a bike service cost?")
    assert "49" in done.text and done.citations


async def test_a_text_contact_is_answered_in_the_language_they_write_when_the_agent_allows_it(
        demo: Demo, fake: FakeOllama, ollama_llm: OllamaLLM) -> None:
    from voicebot.i18n import phrase

    store = AgentStore(demo.engine)
    assert demo.agent.id is not None
    agent = await store.update_agent(demo.agent.id, {"languages": ["es"]})
    core = AgentCore(demo.settings, demo.engine, ollama_llm, None)
    fake.scripts.extend([ChatScript(chunks=["Abrimos a las 9."]), ChatScript(chunks=["We open at 9."]),
                         ChatScript(chunks=["Abrimos a las 9."])])
    spanish = done_of(await run(core, agent, None, "whatsapp", "Hola, ¿a qué hora abren el sábado?"))
    english = done_of(await run(core, agent, None, "whatsapp", "Hi, when do you open on Saturday?"))
    call = done_of(await run(core, agent, None, "voice", "Hola, ¿a qué hora abren el sábado?"))
    systems = [" ".join(m["content"] for m in body["messages"] if m["role"] == "system")
               for body in fake.bodies("/api/chat")]
    assert phrase("answer_language", "es") in systems[0] and phrase("guidance_whatsapp", "es") in systems[0]
    assert phrase("guidance_whatsapp", "en") in systems[1] and "español" not in systems[1]
    assert "español" not in systems[2]  # calls keep the agent's language: its voice and speech model are English
    with session_scope(demo.engine) as session:
        stored = {m.id: m.timings or {} for m in session.exec(select(Message).where(Message.role == "assistant"))}
    assert stored[spanish.assistant_message_id]["language"] == "es"
    assert stored[english.assistant_message_id]["language"] == "en"
    assert stored[call.assistant_message_id]["language"] == "en"
    assert (await store.get_agent(demo.agent.id)).language == "en"  # the agent itself is unchanged


async def test_agent_languages_are_validated(demo: Demo) -> None:
    assert demo.agent.id is not None
    for bad in (["english"], "es", ["es"] * 9, [""]):
        with pytest.raises(InvalidInput) as caught:
            await AgentStore(demo.engine).update_agent(demo.agent.id, {"languages": bad})
        assert caught.value.field == "languages"
    with pytest.raises(InvalidInput):
        await AgentStore(demo.engine).update_agent(demo.agent.id, {"language": "Spanish"})


class SlowKnowledge:
    """A knowledge base that takes its time (a cold embedding model, a busy Chroma server)."""

    async def search(self, agent_id: int, query: str, *, limit: int = 5, threshold: float = 0.0) -> list[Any]:
        await asyncio.sleep(30)
        return []


async def test_a_reply_cancelled_while_its_messages_are_stored_is_closed_as_cancelled(
        demo: Demo, ollama_llm: OllamaLLM) -> None:
    """A caller who barges in, or a chat visitor who leaves, before the reply even started: the turn's messages
    were being written in a thread that commits anyway, so the stored reply must say it was cancelled."""
    core = AgentCore(demo.settings, demo.engine, ollama_llm, SlowKnowledge())
    with session_scope(demo.engine) as session:
        before = len(session.exec(select(Message)).all())
    task = asyncio.create_task(run(core, demo.agent, None, "chat", "Are you open on Sunday?"))
    await asyncio.sleep(0.5)  # the messages are stored, the knowledge search is still running
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    with session_scope(demo.engine) as session:
        added = list(session.exec(select(Message).order_by(col(Message.id))).all())[before:]
    assert [(m.role, m.text) for m in added] == [("user", "Are you open on Sunday?"), ("assistant", "")]
    assert added[1].timings is not None and added[1].timings["cancelled"] is True


async def test_a_consumer_that_stops_after_the_first_event_leaves_a_cancelled_reply(
        demo: Demo, ollama_llm: OllamaLLM) -> None:
    core = AgentCore(demo.settings, demo.engine, ollama_llm)
    events = core.reply(demo.agent, None, "chat", "Are you open on Sunday?")
    started = await anext(events)
    assert isinstance(started, ReplyStarted)
    await events.aclose()  # the client went away as soon as the session event was sent
    with session_scope(demo.engine) as session:
        reply = session.get(Message, started.assistant_message_id)
        assert reply is not None and reply.timings is not None and reply.timings["cancelled"] is True
