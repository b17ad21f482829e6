"""The decision layer inside the agent core, on the voice channel: real SQLite and the local Ollama NDJSON
server as a model that fumbles (or makes) tool calls."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
from sqlalchemy.engine import Engine

from tests.agent.conftest import DemoWorld
from tests.agent.test_core import Demo, done_of, run
from tests.fakes.ollama_server import ChatScript, FakeOllama
from voicebot.agent.core import AgentCore
from voicebot.agent.store import AgentStore
from voicebot.llm.base import TextDelta, ToolCall
from voicebot.llm.ollama import OllamaLLM


@pytest.fixture
async def demo(demo_world: DemoWorld, demo_engine: Engine) -> Demo:
    store = AgentStore(demo_engine)
    agent = await store.get_agent(demo_world.demo_agent_id)
    assert agent.transfer_targets == {"front desk": "800"}  # what eva setup gives the demo agent
    return Demo(demo_world.settings, demo_engine, agent)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOllama]:
    async with FakeOllama() as server:
        yield server


@pytest.fixture
async def core(fake: FakeOllama, demo: Demo) -> AsyncIterator[AgentCore]:
    llm = OllamaLLM(demo.settings, url=fake.url, model="llama3.2", timeout=5.0)
    yield AgentCore(demo.settings, demo.engine, llm, None)
    await llm.close()


def calls_of(events: Sequence[object]) -> list[tuple[str, dict[str, object]]]:
    return [(e.name, dict(e.arguments)) for e in events if isinstance(e, ToolCall)]


@pytest.mark.parametrize("text", ["Put me through to a person, please.",
                                  "The caller pressed the keys 0 on the phone keypad. (DTMF: 0)"])
async def test_asking_for_a_person_transfers_without_the_model(demo: Demo, core: AgentCore, fake: FakeOllama,
                                                               text: str) -> None:
    fake.scripts.append(ChatScript(chunks=["Yes, I can speak to someone."]))  # what Qwen said: never used
    events = await run(core, demo.agent, None, "voice", text)
    assert calls_of(events) == [("transfer_call", {"target": "front desk"})]
    said = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert said == "Sure, I will put you through to the front desk now."
    done = done_of(events)
    assert done.timings["decision"] in ("transfer:asked",) and not fake.bodies("/api/chat")
    stored = (await core.messages(done.conversation_id))[-1]
    assert stored.tool_calls and stored.tool_calls[0]["name"] == "transfer_call"


async def test_yes_to_the_offer_after_an_unknown_answer_transfers(demo: Demo, core: AgentCore,
                                                                  fake: FakeOllama) -> None:
    fake.scripts.append(ChatScript(chunks=["I am sorry, I do not know that."]))
    first = await run(core, demo.agent, None, "voice", "Do you sell cars?")
    said = "".join(e.text for e in first if isinstance(e, TextDelta))
    assert said == "I am sorry, I do not know that. Would you like me to put you through to a colleague?"
    assert not calls_of(first)
    conversation = done_of(first).conversation_id
    second = await run(core, demo.agent, None, "voice", "Yes, please.", conversation_id=conversation)
    assert calls_of(second) == [("transfer_call", {"target": "front desk"})]


async def test_goodbye_is_answered_with_a_farewell_and_hangs_up_without_the_model(
        demo: Demo, core: AgentCore, fake: FakeOllama) -> None:
    # Qwen 0.5B answered "thanks, that's all, goodbye!" with "I am sorry, I do not know that." on the exam.
    fake.scripts.append(ChatScript(chunks=["I am sorry, I do not know that."]))
    asked = len(fake.requests)
    events = await run(core, demo.agent, None, "voice", "Thanks, that's all. Bye!")
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Thank you for calling. Goodbye!"
    assert calls_of(events) == [("hang_up", {})]
    assert done_of(events).text == "Thank you for calling. Goodbye!"
    assert len(fake.requests) == asked  # the model was not asked


async def test_the_models_hang_up_without_a_goodbye_is_ignored(demo: Demo, core: AgentCore,
                                                               fake: FakeOllama) -> None:
    # Seen with Qwen 0.5B: "can I speak to someone about my bill?" answered with hang_up.
    fake.scripts.append(ChatScript(chunks=["Let me check."], tool_calls=[{"name": "hang_up", "arguments": {}}]))
    events = await run(core, demo.agent, None, "voice", "What about my bill?")
    assert calls_of(events) == []
    assert done_of(events).tool_calls == ()
    # A call's model is offered the tools the voice loop executes (and the knowledge search), nothing else.
    offered = {t["function"]["name"] for t in fake.bodies("/api/chat")[-1].get("tools", [])}
    assert {"hang_up", "transfer_call"} <= offered <= {"hang_up", "transfer_call", "search_knowledge"}
