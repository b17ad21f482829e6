"""The Ollama backend against a local server speaking Ollama's NDJSON wire format (tests/fakes)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Sequence

import pytest

from tests.fakes.ollama_server import ChatScript, FakeOllama
from voicebot.config import Settings
from voicebot.errors import LlmError, LlmModelMissing, LlmTimeout, LlmUnavailable
from voicebot.llm import create_llm, model_available
from voicebot.llm.base import ChatMessage, Done, GenerationOptions, LlmEvent, TextDelta, ToolCall, ToolSpec
from voicebot.llm.ollama import OllamaLLM

MESSAGES = [ChatMessage("system", "You are a test agent."), ChatMessage("user", "Hi there")]
HANG_UP = ToolSpec("hang_up", "End the call.")
TRANSFER = ToolSpec("transfer_call", "Transfer the call.",
                    {"type": "object", "properties": {"target": {"type": "string"}}, "required": ["target"]})


@pytest.fixture
async def fake() -> AsyncIterator[FakeOllama]:
    async with FakeOllama() as server:
        yield server


@pytest.fixture
async def llm(fake: FakeOllama) -> AsyncIterator[OllamaLLM]:
    backend = OllamaLLM(Settings(), url=fake.url, model="llama3.2", timeout=5.0)
    yield backend
    await backend.close()


async def collect(stream: AsyncIterator[LlmEvent]) -> list[LlmEvent]:
    return [event async for event in stream]


def text_of(events: Sequence[LlmEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def test_streams_text_deltas_in_order_then_done_with_token_counts(fake: FakeOllama,
                                                                        llm: OllamaLLM) -> None:
    fake.scripts.append(ChatScript(chunks=["We open", " at 9", " am."], prompt_eval_count=33))
    events = await collect(llm.stream(MESSAGES, options=GenerationOptions(temperature=0.1, max_tokens=42)))
    assert [type(e) for e in events] == [TextDelta, TextDelta, TextDelta, Done]
    assert text_of(events) == "We open at 9 am."
    done = events[-1]
    assert isinstance(done, Done)
    assert (done.finish_reason, done.prompt_tokens, done.completion_tokens) == ("stop", 33, 3)
    body = fake.bodies("/api/chat")[0]
    assert body["model"] == "llama3.2"
    assert body["stream"] is True
    assert body["options"]["num_predict"] == 42
    assert body["options"]["temperature"] == 0.1
    assert [m["role"] for m in body["messages"]] == ["system", "user"]


async def test_knowledge_is_put_into_the_system_message(fake: FakeOllama, llm: OllamaLLM) -> None:
    await collect(llm.stream(MESSAGES, knowledge=["Opening hours: 9 to 5.", "Address: 1 Main St."]))
    system = fake.bodies("/api/chat")[0]["messages"][0]
    assert system["role"] == "system"
    assert system["content"].startswith("You are a test agent.")
    assert "[1] Opening hours: 9 to 5." in system["content"]
    assert "[2] Address: 1 Main St." in system["content"]


async def test_tools_are_offered_and_tool_calls_come_back_as_events(fake: FakeOllama, llm: OllamaLLM) -> None:
    fake.scripts.append(ChatScript(chunks=["Transferring you now."],
                                   tool_calls=[{"name": "transfer_call", "arguments": {"target": "sales"}}]))
    events = await collect(llm.stream(MESSAGES, tools=[TRANSFER, HANG_UP]))
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert len(calls) == 1
    assert (calls[0].name, dict(calls[0].arguments)) == ("transfer_call", {"target": "sales"})
    assert calls[0].id
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason == "tool_calls"
    offered = fake.bodies("/api/chat")[0]["tools"]
    assert [t["function"]["name"] for t in offered] == ["transfer_call", "hang_up"]
    assert offered[0]["type"] == "function"
    assert offered[0]["function"]["parameters"]["required"] == ["target"]


async def test_tool_results_and_earlier_tool_calls_are_sent_in_ollama_format(fake: FakeOllama,
                                                                             llm: OllamaLLM) -> None:
    history = [*MESSAGES,
               ChatMessage("assistant", "", tool_calls=(ToolCall("search_knowledge", {"query": "hours"}),)),
               ChatMessage("tool", "Open 9 to 5.", tool_name="search_knowledge")]
    await collect(llm.stream(history, tools=[HANG_UP]))
    sent = fake.bodies("/api/chat")[0]["messages"]
    assert sent[2]["tool_calls"] == [
        {"function": {"name": "search_knowledge", "arguments": {"query": "hours"}}}]
    assert sent[3] == {"role": "tool", "content": "Open 9 to 5.", "tool_name": "search_knowledge"}


async def test_model_without_tool_support_is_retried_without_tools(fake: FakeOllama, llm: OllamaLLM) -> None:
    fake.tools_supported = False
    events = await collect(llm.stream(MESSAGES, tools=[HANG_UP]))
    assert text_of(events) == "Hello there."
    bodies = fake.bodies("/api/chat")
    assert "tools" in bodies[0] and bodies[0]["tools"]
    assert not bodies[1].get("tools")
    # Remembered: the next request does not offer tools at all.
    await collect(llm.stream(MESSAGES, tools=[HANG_UP]))
    assert len(fake.bodies("/api/chat")) == 3
    assert not fake.bodies("/api/chat")[2].get("tools")


async def test_length_finish_reason(fake: FakeOllama, llm: OllamaLLM) -> None:
    fake.scripts.append(ChatScript(chunks=["a", "b"], done_reason="length"))
    events = await collect(llm.stream(MESSAGES, options=GenerationOptions(max_tokens=2)))
    assert isinstance(events[-1], Done) and events[-1].finish_reason == "length"


async def test_missing_model_has_its_own_code(fake: FakeOllama) -> None:
    backend = OllamaLLM(Settings(), url=fake.url, model="mistral")
    try:
        with pytest.raises(LlmModelMissing) as info:
            await collect(backend.stream(MESSAGES))
        assert info.value.code == "llm_model_missing"
        assert "mistral" in info.value.message
    finally:
        await backend.close()


@pytest.mark.parametrize("status", [400, 500, 503])
async def test_http_errors_raise_llm_error_with_the_server_message(fake: FakeOllama, llm: OllamaLLM,
                                                                   status: int) -> None:
    fake.scripts.append(ChatScript(status=status, error="out of memory"))
    with pytest.raises(LlmError) as info:
        await collect(llm.stream(MESSAGES))
    assert info.value.code == "llm_error"
    assert str(status) in info.value.message and "out of memory" in info.value.message


async def test_error_mid_stream_raises_after_the_text_so_far(fake: FakeOllama, llm: OllamaLLM) -> None:
    fake.scripts.append(ChatScript(chunks=["one", " two", " three"], error_after=2, error="GPU fell over"))
    seen: list[LlmEvent] = []
    with pytest.raises(LlmError) as info:
        async for event in llm.stream(MESSAGES):
            seen.append(event)
    assert text_of(seen) == "one two"
    assert "GPU fell over" in info.value.message
    assert type(info.value) is LlmError


async def test_malformed_line_raises_llm_error(fake: FakeOllama, llm: OllamaLLM) -> None:
    fake.scripts.append(ChatScript(chunks=["ok", "never"], malformed_after=1))
    with pytest.raises(LlmError) as info:
        await collect(llm.stream(MESSAGES))
    assert "malformed" in info.value.message


async def test_stream_that_ends_without_done_raises(fake: FakeOllama, llm: OllamaLLM) -> None:
    fake.scripts.append(ChatScript(chunks=["half"], end_early=True))
    with pytest.raises(LlmError) as info:
        await collect(llm.stream(MESSAGES))
    assert "ended before" in info.value.message


async def test_server_down_raises_llm_unavailable() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = OllamaLLM(Settings(), url=f"http://127.0.0.1:{port}", timeout=2.0)
    try:
        with pytest.raises(LlmUnavailable) as info:
            await collect(backend.stream(MESSAGES))
        assert info.value.code == "llm_unavailable"
        with pytest.raises(LlmUnavailable):
            await backend.list_models()
    finally:
        await backend.close()


async def test_stalled_stream_raises_llm_timeout(fake: FakeOllama) -> None:
    backend = OllamaLLM(Settings(), url=fake.url, timeout=0.3)
    fake.scripts.append(ChatScript(chunks=["slow"], delay=1.0))
    try:
        with pytest.raises(LlmTimeout) as info:
            await collect(backend.stream(MESSAGES))
        assert info.value.code == "llm_timeout"
    finally:
        await backend.close()


async def test_cancelling_the_consumer_closes_the_stream(fake: FakeOllama, llm: OllamaLLM) -> None:
    fake.scripts.append(ChatScript(chunks=[f" w{i}" for i in range(200)], delay=0.02))
    got_first = asyncio.Event()

    async def consume() -> None:
        async with contextlib.aclosing(llm.stream(MESSAGES)) as events:
            async for _event in events:
                got_first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(fake.disconnected.wait(), 5)
    assert fake.chunks_sent < 200


async def test_list_models_and_close_is_idempotent(fake: FakeOllama) -> None:
    backend = OllamaLLM(Settings(), url=fake.url)
    assert await backend.list_models() == ["llama3.2:latest", "nomic-embed-text:latest"]
    await backend.close()
    await backend.close()
    with pytest.raises(LlmUnavailable):
        await collect(backend.stream(MESSAGES))


def test_model_names_match_with_and_without_latest_tag() -> None:
    assert model_available("llama3.2", ["llama3.2:latest"])
    assert model_available("llama3.2:latest", ["llama3.2"])
    assert not model_available("llama3.2:1b", ["llama3.2:latest"])


async def test_auto_uses_ollama_when_it_has_the_model(fake: FakeOllama) -> None:
    settings = Settings().with_(llm="auto", ollama_url=fake.url, ollama_model="llama3.2")
    backend = await create_llm(settings)
    try:
        assert backend.name == "ollama"
    finally:
        await backend.close()


async def test_explicit_ollama_and_bad_choice(fake: FakeOllama) -> None:
    from voicebot.errors import ConfigError

    backend = await create_llm(Settings().with_(llm="ollama", ollama_url=fake.url))
    assert backend.name == "ollama" and backend.supports_tools
    await backend.close()
    with pytest.raises(ConfigError) as info:
        await create_llm(Settings().with_(llm="openai"))
    assert info.value.field == "llm"


def test_a_turns_system_note_is_not_sent_to_ollama() -> None:
    """Ollama joins every system message into one system prompt: a turn's note would land there, away from its
    question, and change the prompt's start every turn."""
    from voicebot.llm.base import ChatMessage
    from voicebot.llm.chatml import SystemNote
    from voicebot.llm.ollama import build_chat_payload

    payload = build_chat_payload([ChatMessage("system", "You are Mia."), ChatMessage("user", "Hi"),
                                  ChatMessage("assistant", "Hello."),
                                  SystemNote("system", "Relevant knowledge: On Monday we are closed."),
                                  ChatMessage("user", "Are you open on Monday?")], ["Closed on Monday."])
    assert [m["role"] for m in payload] == ["system", "user", "assistant", "user"]
    assert "Relevant knowledge" not in str(payload)


async def test_an_analysis_goes_to_ollama_as_structured_output(fake: FakeOllama, llm: OllamaLLM) -> None:
    """The analysis asks for JSON matching a schema: Ollama takes it as ``format`` (its structured outputs), and the
    reply is read back as the analysis."""
    from voicebot.analysis import Analyzer, CategorySpec
    from voicebot.analysis.classifier import reply_schema

    categories = [CategorySpec("sales", "wants to buy")]
    fake.scripts.append(ChatScript(chunks=['{"sentiment": ', '"positive", "category": "sales"}']))
    analysis = await Analyzer(llm).analyze("I'd love to buy two!", categories)
    assert (analysis.sentiment, analysis.category) == ("positive", "sales")
    body = fake.bodies("/api/chat")[0]
    assert body["format"] == reply_schema(categories)
    assert body["options"]["temperature"] == 0.0
    await collect(llm.stream(MESSAGES))
    assert "format" not in fake.bodies("/api/chat")[1]  # a conversation's reply is free text


async def test_a_request_counts_as_in_flight_from_the_start_even_before_its_first_token(
        fake: FakeOllama, llm: OllamaLLM) -> None:
    fake.scripts.append(ChatScript(chunks=["slow", " start"], delay=0.4))
    task = asyncio.create_task(collect(llm.stream(MESSAGES)))
    await asyncio.sleep(0.2)  # the request is out, no token back yet (the prompt is being evaluated)
    assert llm.in_flight == 1
    assert text_of(await task) == "slow start" and llm.in_flight == 0
    fake.scripts.append(ChatScript(chunks=["never", " read"], delay=0.4))
    task = asyncio.create_task(collect(llm.stream(MESSAGES)))
    await asyncio.sleep(0.2)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert llm.in_flight == 0
    fake.scripts.append(ChatScript(status=500, error="boom"))
    with contextlib.suppress(Exception):
        await collect(llm.stream(MESSAGES))
    assert llm.in_flight == 0
