"""The real agent core on the phone: AgentResponder + AgentCore + OllamaLLM, the model being FakeOllama (a
deterministic server speaking Ollama's wire format), on real calls from callers with real phone numbers.

Unlike the pipeline-mechanics tests (a scripted responder), everything between the caller's words and the reply
is production code: conversation and contact rows, memory loading, the prompt, the Ollama client and its stream.
The fake "model" answers from what it is sent, so what the caller hears proves what reached the model:

* within one call, the second turn's answer needs the first turn (memory across turns);
* a WhatsApp message written earlier, then a call from the same number on a trunk that vouches for caller IDs:
  the call's answer needs the WhatsApp message (one contact across channels).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlmodel import col, select

from models import Call, CallTurn, Conversation
from models.db import session_scope
from tests.conftest import Caller
from tests.fakes.ollama_server import ChatScript, FakeOllama
from tests.voice.conftest import forget_contact, load, transcribe_regions
from tests.voice.test_call_security import verified_trunk  # noqa: F401 - fixture: a trunk that vouches
from voicebot.agent import store
from voicebot.agent.core import AgentCore
from voicebot.llm.ollama import OllamaLLM
from voicebot.pipeline.agent_responder import AgentResponder
from voicebot.server import EvaRuntime
from voicebot.sipcaller import Action, place_call_async
from voicebot.stt.whisper import WhisperStt

pytestmark = [pytest.mark.asterisk, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

ANNA = "+15551230001"
BORIS = "+15551230002"


def _said(body: dict[str, Any], pattern: str) -> str | None:
    """The first group of ``pattern`` in any user message the model was sent (newest last)."""
    for message in body.get("messages", []):
        if message.get("role") == "user":
            found = re.search(pattern, str(message.get("content", "")), re.IGNORECASE)
            if found:
                return found.group(1)
    return None


def remembering_model(body: dict[str, Any]) -> ChatScript:
    """A "model" whose answer depends on the whole conversation it is sent, as a real one's would."""
    last = next((str(m.get("content", "")) for m in reversed(body.get("messages", [])) if m.get("role") == "user"),
                "").lower()
    if "name is" in last and "what" not in last:
        return ChatScript(chunks=("Nice to meet you.",))
    if "what is my name" in last or "what's my name" in last:
        name = _said(body, r"my name is (\w+)")
        return ChatScript(chunks=(f"Your name is {name}." if name else "I don't know your name.",))
    if re.search(r"order number is \d+", last):
        return ChatScript(chunks=("Thank you for your message.",))
    number = _said(body, r"order number is (\d+)")  # said earlier (whatever Whisper made of the question)
    if number:
        return ChatScript(chunks=(f"Your order is number {number}.",))
    return ChatScript(chunks=("Thank you for your message.",))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def fake_ollama() -> AsyncIterator[FakeOllama]:
    async with FakeOllama(reply=remembering_model) as fake:
        yield fake


@pytest_asyncio.fixture(loop_scope="session")
async def ollama_agent(runtime: EvaRuntime, fake_ollama: FakeOllama) -> AsyncIterator[AgentCore]:
    """The voice app answers with the production agent core on an Ollama backend (the fake server)."""
    assert runtime.voice is not None and runtime.engine is not None
    settings = runtime.settings.with_(llm="ollama")
    llm = OllamaLLM(settings, url=fake_ollama.url, model="llama3.2", timeout=10.0)
    core = AgentCore(settings, runtime.engine, llm, None)
    scripted = runtime.voice.responder
    runtime.voice.responder = AgentResponder(runtime.engine, core)
    fake_ollama.requests.clear()
    try:
        yield core
    finally:
        runtime.voice.responder = scripted
        await llm.close()


def _last_call(runtime: EvaRuntime) -> tuple[Call, list[CallTurn]]:
    assert runtime.engine is not None
    with session_scope(runtime.engine) as session:
        call = session.exec(select(Call).order_by(col(Call.id).desc())).first()
        assert call is not None
        turns = list(session.exec(select(CallTurn).where(CallTurn.call_id == call.id).order_by(col(CallTurn.index))))
        session.expunge_all()
        return call, turns


async def test_the_second_turn_is_answered_from_the_first(
        runtime: EvaRuntime, caller: Caller, say: Callable[[str], Path], whisper: WhisperStt,
        ollama_agent: AgentCore, fake_ollama: FakeOllama) -> None:
    result = await place_call_async(caller.script(
        "100", Action("play", when_quiet=0.8, path=str(say("Hello, my name is Anna."))),
        Action("play", when_quiet=1.0, path=str(say("What is my name?"))),
        Action("hangup", when_quiet=2.5), timeout=40, from_user=ANNA))
    assert result.connected and not result.remote_hangup, result
    heard = transcribe_regions(whisper, load(result.record_path)).lower()
    assert "nice to meet you" in heard and "your name is anna" in heard, heard
    call, turns = _last_call(runtime)
    assert call.caller == ANNA
    speech = [t for t in turns if t.kind == "speech"]
    assert [t.bot_text for t in speech][:2] == ["Nice to meet you.", "Your name is Anna."], speech
    # The model was sent the first turn (the caller's words and its own answer) when asked the second.
    second = fake_ollama.bodies("/api/chat")[-1]["messages"]
    assert any(m["role"] == "assistant" and m["content"] == "Nice to meet you." for m in second), second


async def test_a_whatsapp_message_then_a_call_from_the_same_verified_number(
        runtime: EvaRuntime, caller: Caller, say: Callable[[str], Path], whisper: WhisperStt,
        ollama_agent: AgentCore, fake_ollama: FakeOllama, verified_trunk: str) -> None:  # noqa: F811
    assert runtime.engine is not None
    # Earlier, on WhatsApp (the same agent core, as the WhatsApp service calls it): the customer's order number.
    with session_scope(runtime.engine) as session:
        contact = store.find_or_create_contact(session, whatsapp_id=BORIS[1:], verified=True)
        demo = store.get_agent_by_name(session, "demo")
        session.expunge_all()
    conversation = await ollama_agent.start_conversation(int(demo.id or 0), contact.id, "whatsapp", "wa-boris")
    done = await ollama_agent.respond(demo, contact, "whatsapp", "Hi, my order number is 4711.",
                                      conversation_id=conversation)
    assert done.text == "Thank you for your message."
    try:
        # Then a call from that number, on the trunk that vouches for caller IDs.
        result = await place_call_async(caller.script(
            "100", Action("play", when_quiet=0.8, path=str(say("Which order did I ask about?"))),
            Action("hangup", when_quiet=2.5), timeout=30, from_user=BORIS, bind_ip=verified_trunk))
        assert result.connected, result
        heard = transcribe_regions(whisper, load(result.record_path)).lower()
        # The answer only a model that was sent the WhatsApp message gives (Whisper writes the number many ways;
        # the turn row below has it exactly).
        assert "your order is number" in heard, heard
        call, turns = _last_call(runtime)
        assert call.caller == BORIS
        assert any("4711" in t.bot_text for t in turns), [t.bot_text for t in turns]
        with session_scope(runtime.engine) as session:
            voice = session.exec(select(Conversation).where(Conversation.channel == "voice",
                                                            Conversation.external_id == call.channel_id)).one()
            assert voice.contact_id == contact.id  # one contact across WhatsApp and the phone
            assert call.conversation_id == voice.id  # the call row names its conversation
    finally:
        await forget_contact(runtime, int(contact.id or 0))
