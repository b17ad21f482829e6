"""The embedded backend with the REAL model (llama.cpp + packaged Gemma 3 270M, base, no chat template)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rag.chunking import chunk_text
from rag.extract import markdown_to_text
from tests.embedded_model import gguf_path
from voicebot.agent.demo import DEMO_DOCUMENT, DEMO_FIELDS
from voicebot.config import Settings
from voicebot.errors import LlmModelMissing, LlmUnavailable
from voicebot.llm import create_llm
from voicebot.llm.base import ChatMessage, Done, GenerationOptions, LlmEvent, TextDelta
from voicebot.llm.embedded import FEW_SHOT_PREAMBLE, EmbeddedLLM, build_transcript_prompt

PERSONA = str(DEMO_FIELDS["persona"])
QUESTIONS = [
    ("When are you open on Saturday?", r"10 ?am.*4 ?pm"),
    ("Where is the shop?", r"42 Harbor"),
    ("How much is a flat tire repair?", r"\b15\b"),
    ("How much does a bike service cost?", r"\b49\b"),
    ("How much does it cost to rent a bike?", r"\b25\b"),
    ("Hello, who am I speaking to?", r"\bEva\b"),
]


def demo_chunks() -> list[str]:
    """The demo document as the knowledge base chunks it (sentences joined by spaces)."""
    return chunk_text(markdown_to_text(DEMO_DOCUMENT.read_text(encoding="utf-8")), 500, 50)


def ask(question: str, history: tuple[ChatMessage, ...] = ()) -> list[ChatMessage]:
    return [ChatMessage("system", PERSONA), *history, ChatMessage("user", question)]


async def collect(stream: AsyncIterator[LlmEvent]) -> list[LlmEvent]:
    return [event async for event in stream]


def text_of(events: list[LlmEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def test_model_has_no_chat_template_so_the_transcript_prompt_is_used(embedded_llm: EmbeddedLLM) -> None:
    assert not embedded_llm.uses_chat_template
    assert not embedded_llm.supports_tools
    assert embedded_llm.default_model == "gemma-3-270m-q4_k_m"


async def test_answers_the_demo_knowledge_questions(embedded_llm: EmbeddedLLM) -> None:
    knowledge = demo_chunks()
    answers = {}
    for question, _pattern in QUESTIONS:
        events = await collect(embedded_llm.stream(ask(question), knowledge=knowledge,
                                                   options=GenerationOptions(max_tokens=48)))
        answers[question] = text_of(events)
    right = [q for q, pattern in QUESTIONS if re.search(pattern, answers[q])]
    logging.getLogger(__name__).info("embedded model: %d/%d right: %s", len(right), len(QUESTIONS), answers)
    # A 270M base model is not perfect; this is the quality floor the demo needs (measured: 6/6).
    assert len(right) >= 5, answers
    # One line per answer, no "Caller:" continuation, no leading space.
    for answer in answers.values():
        assert "\n" not in answer and "Caller:" not in answer and answer == answer.lstrip()


async def test_stream_events_and_token_counts(embedded_llm: EmbeddedLLM) -> None:
    events = await collect(embedded_llm.stream(ask("How much is a flat tire repair?"),
                                               knowledge=demo_chunks()))
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert len(deltas) >= 3  # streamed token by token, not in one piece
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason == "stop"
    assert done.prompt_tokens is not None and done.prompt_tokens > 100
    assert done.completion_tokens is not None and len(deltas) <= done.completion_tokens <= len(deltas) + 1
    assert all(not isinstance(e, Done) for e in events[:-1])


async def test_max_tokens_is_respected(embedded_llm: EmbeddedLLM) -> None:
    events = await collect(embedded_llm.stream(ask("Where is the shop?"), knowledge=demo_chunks(),
                                               options=GenerationOptions(max_tokens=3)))
    done = events[-1]
    assert isinstance(done, Done)
    assert done.finish_reason == "length"
    assert done.completion_tokens == 3
    assert len([e for e in events if isinstance(e, TextDelta)]) <= 3


async def test_cancelling_the_consumer_stops_generation(embedded_llm: EmbeddedLLM) -> None:
    knowledge = demo_chunks()
    options = GenerationOptions(max_tokens=200)
    question = ask("Tell me everything about the shop: hours, address, prices and phone.")
    full = await collect(embedded_llm.stream(question, knowledge=knowledge, options=options))
    full_done = full[-1]
    assert isinstance(full_done, Done)
    assert full_done.completion_tokens is not None and full_done.completion_tokens > 8  # precondition
    got_first = asyncio.Event()

    async def consume() -> None:
        async with contextlib.aclosing(embedded_llm.stream(question, knowledge=knowledge,
                                                           options=options)) as events:
            async for _ in events:
                got_first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_first.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Wait for the model thread to go idle, then look at how far llama.cpp got.
    await asyncio.wrap_future(embedded_llm._executor.submit(lambda: None))
    assert full_done.prompt_tokens is not None
    generated_after_cancel = embedded_llm._llama.n_tokens - full_done.prompt_tokens
    assert generated_after_cancel < full_done.completion_tokens - 4
    # The model is free again: the next request answers normally.
    again = await collect(embedded_llm.stream(ask("Where is the shop?"), knowledge=knowledge))
    assert "42 Harbor" in text_of(again)


def test_transcript_prompt_layout() -> None:
    history = [ChatMessage("user", "Hi\nthere"), ChatMessage("assistant", "Hello!"),
               ChatMessage("tool", "ignored")]
    prompt = build_transcript_prompt("You are Eva.\nBe brief.", ["# Hours\nOpen 9 to 5. Closed Sunday.", ""],
                                     history, "When do you open?")
    assert prompt.startswith(FEW_SHOT_PREAMBLE)  # constant prefix: llama.cpp reuses its evaluation
    tail = prompt[len(FEW_SHOT_PREAMBLE):]
    assert tail == ("\nInstructions: You are Eva. Be brief.\nKnowledge:\nHours\nOpen 9 to 5.\n"
                    "Closed Sunday.\n\nCaller: Hi there\nAgent: Hello!\nCaller: When do you open?\nAgent:")


@pytest.mark.models  # loads a model inline (the CLI / the backend factory), not through a fixture
async def test_long_history_is_trimmed_to_fit_the_context() -> None:
    small = await EmbeddedLLM.load(Settings().with_(llm_model_path=str(gguf_path())), n_ctx=512)
    try:
        history = tuple(ChatMessage("user" if i % 2 == 0 else "assistant", f"Message number {i} " * 10)
                        for i in range(40))
        events = await collect(small.stream(ask("Where is the shop?", history), knowledge=demo_chunks(),
                                            options=GenerationOptions(max_tokens=32)))
        done = events[-1]
        assert isinstance(done, Done)
        assert done.prompt_tokens is not None and done.prompt_tokens <= 512 - 32
    finally:
        await small.close()
        await small.close()  # idempotent
    with pytest.raises(LlmUnavailable):
        await collect(small.stream(ask("Hello?")))


async def test_missing_gguf_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LlmModelMissing) as info:
        await EmbeddedLLM.load(Settings().with_(llm_model_path=str(tmp_path / "nope.gguf")))
    assert info.value.code == "llm_model_missing" and info.value.field == "llm_model_path"


@pytest.mark.models  # loads a model inline (the CLI / the backend factory), not through a fixture
async def test_auto_falls_back_to_embedded_when_ollama_is_down(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = Settings().with_(llm="auto", ollama_url=f"http://127.0.0.1:{port}",
                                llm_model_path=str(gguf_path()))
    with caplog.at_level(logging.INFO, logger="voicebot.llm"):
        llm = await create_llm(settings)
    try:
        assert llm.name == "embedded"
        assert any("embedded" in r.getMessage() and "not reachable" in r.getMessage() for r in caplog.records)
    finally:
        await llm.close()
