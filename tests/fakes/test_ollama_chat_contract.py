"""Contract test of FakeOllama's ``/api/chat``: the stream, tool calls included, is what Ollama sends today, checked
on the raw NDJSON lines and through the official ``ollama`` client (whose pydantic models validate every line).
These test the double, not Eva: they are what lets the Eva tests that talk to the fake stand for the real server.

Ollama 0.12+ gives every tool call an ``id`` and its ``function`` an ``index`` (the call's place in the reply); the
fake sends both, so a client that needs them, or chokes on them, shows up here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fakes.ollama_server import ChatScript, FakeOllama

TOOLS: list[dict[str, Any]] = [{"type": "function", "function": {"name": "hang_up", "description": "End the call.",
                                           "parameters": {"type": "object", "properties": {}}}},
         {"type": "function", "function": {"name": "transfer_call", "description": "Transfer the call.",
                                           "parameters": {"type": "object", "properties": {
                                               "target": {"type": "string"}}, "required": ["target"]}}}]
SCRIPT = ChatScript(chunks=("One", " moment."), tool_calls=(
    {"name": "transfer_call", "arguments": {"target": "sales"}}, {"name": "hang_up", "arguments": {}}))


@pytest.fixture
async def fake() -> AsyncIterator[FakeOllama]:
    async with FakeOllama() as server:
        yield server


async def _raw_lines(fake: FakeOllama, body: dict[str, Any]) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.post(f"{fake.url}/api/chat", json=body) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/x-ndjson"
        return [json.loads(line) for line in (await response.text()).splitlines() if line.strip()]


async def test_the_stream_on_the_wire_has_tool_call_ids_and_indexes(fake: FakeOllama) -> None:
    fake.scripts.append(SCRIPT)
    lines = await _raw_lines(fake, {"model": "llama3.2", "messages": [{"role": "user", "content": "sales"}],
                                    "tools": TOOLS})
    *parts, final = lines
    assert all(not p["done"] and p["message"]["role"] == "assistant" for p in parts)
    assert "".join(p["message"]["content"] for p in parts) == "One moment."
    calls = [c for p in parts for c in p["message"].get("tool_calls", [])]
    assert [c["function"]["index"] for c in calls] == [0, 1]
    assert [c["function"]["name"] for c in calls] == ["transfer_call", "hang_up"]
    assert calls[0]["function"]["arguments"] == {"target": "sales"}  # an object, not a JSON string
    ids = [c["id"] for c in calls]
    assert all(isinstance(i, str) and i.startswith("call_") for i in ids) and len(set(ids)) == 2
    assert final["done"] is True and final["done_reason"] == "stop"
    assert isinstance(final["prompt_eval_count"], int) and isinstance(final["eval_count"], int)


async def test_the_official_client_parses_the_stream_with_its_tool_calls(fake: FakeOllama) -> None:
    import ollama

    fake.scripts.extend([SCRIPT, SCRIPT])
    client = ollama.AsyncClient(host=fake.url)
    try:
        stream = await client.chat(model="llama3.2", messages=[{"role": "user", "content": "sales"}], tools=TOOLS,
                                   stream=True)
        text, calls, done = "", [], None
        async for part in stream:
            text += part.message.content or ""
            calls += [(c.function.name, dict(c.function.arguments)) for c in part.message.tool_calls or ()]
            if part.done:
                done = part
        assert text == "One moment."
        assert calls == [("transfer_call", {"target": "sales"}), ("hang_up", {})]
        assert done is not None and done.done_reason == "stop" and done.prompt_eval_count == SCRIPT.prompt_eval_count
        # stream=false: the same reply in one object
        whole = await client.chat(model="llama3.2", messages=[{"role": "user", "content": "sales"}], tools=TOOLS,
                                  stream=False)
        assert whole.message.content == "One moment." and whole.done
        assert [c.function.name for c in whole.message.tool_calls or ()] == ["transfer_call", "hang_up"]
    finally:
        await client.close()  # type: ignore[no-untyped-call]


async def test_eva_reads_the_tool_calls_with_ids_unique_within_the_reply(fake: FakeOllama) -> None:
    from voicebot.config import Settings
    from voicebot.llm.base import ChatMessage, Done, TextDelta, ToolCall, ToolSpec
    from voicebot.llm.ollama import OllamaLLM

    fake.scripts.append(SCRIPT)
    llm = OllamaLLM(Settings(), url=fake.url, model="llama3.2", timeout=5.0)
    try:
        specs = [ToolSpec(t["function"]["name"], t["function"]["description"], t["function"]["parameters"])
                 for t in TOOLS]
        events = [e async for e in llm.stream([ChatMessage("user", "sales")], tools=specs)]
    finally:
        await llm.close()
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "One moment."
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [(c.name, dict(c.arguments)) for c in calls] == [("transfer_call", {"target": "sales"}), ("hang_up", {})]
    assert len({c.id for c in calls}) == 2 and all(c.id for c in calls)
    assert isinstance(events[-1], Done) and events[-1].finish_reason == "tool_calls"
