"""Tools chosen by the LLM work on real calls: agent core + Ollama backend (against a local server speaking
Ollama's NDJSON wire format, since no real Ollama runs here) + the voice loop, through real Asterisk."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from sqlmodel import col, select

from models import Call, Message
from models.db import session_scope
from tests.conftest import Caller
from tests.fakes.ollama_server import ChatScript, FakeOllama
from tests.voice.conftest import load, transcribe
from voicebot.agent.core import AgentCore
from voicebot.llm.ollama import OllamaLLM
from voicebot.pipeline.agent_responder import AgentResponder
from voicebot.server import EvaRuntime
from voicebot.sipcaller import Action, place_call_async
from voicebot.stt.whisper import WhisperStt

pytestmark = pytest.mark.asyncio(loop_scope="session")  # asterisk/models marks: derived (tests/conftest.py)


@pytest_asyncio.fixture(loop_scope="session")
async def ollama_agent(runtime: EvaRuntime) -> AsyncIterator[FakeOllama]:
    assert runtime.voice is not None and runtime.engine is not None
    async with FakeOllama() as server:
        llm = OllamaLLM(runtime.settings, url=server.url, model="llama3.2")
        scripted = runtime.voice.responder
        runtime.voice.responder = AgentResponder(runtime.engine, AgentCore(runtime.settings, runtime.engine, llm))
        try:
            yield server
        finally:
            runtime.voice.responder = scripted
            await llm.close()


async def test_a_goodbye_ends_the_call_with_the_farewell_without_asking_the_model(
        runtime: EvaRuntime, caller: Caller, ollama_agent: FakeOllama, say: Callable[[str], Path],
        whisper: WhisperStt) -> None:
    # A model that would fumble it: the decision layer answers a goodbye itself (the farewell, then hang_up).
    ollama_agent.scripts.append(ChatScript(chunks=("I am sorry, I do not know that.",)))
    asked = len(ollama_agent.bodies("/api/chat"))
    result = await place_call_async(caller.script(
        "100", Action("play", when_quiet=0.8, path=str(say("That is all, bye."))), timeout=30))
    # Eva ended it (remote_hangup), well before the caller's own 30 s limit would have.
    assert result.connected and result.remote_hangup and result.duration < 25, result
    heard = transcribe(whisper, load(result.record_path)).lower()
    assert "goodbye" in heard and "do not know" not in heard, heard
    assert len(ollama_agent.bodies("/api/chat")) == asked  # the model was not asked
    assert runtime.engine is not None
    with session_scope(runtime.engine) as session:
        call = session.exec(select(Call).order_by(col(Call.id).desc())).first()
        assert call is not None and call.outcome == "completed"
        reply = session.exec(select(Message).where(Message.role == "assistant")
                             .order_by(col(Message.id).desc())).first()
        assert reply is not None and reply.tool_calls and reply.tool_calls[0]["name"] == "hang_up"
