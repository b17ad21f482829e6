"""The default embedded model (Qwen2.5-Coder-0.5B-Instruct, real llama.cpp): it answers from the knowledge,
says it does not know what the knowledge does not say, and each prompt token is evaluated once (agent prefix
snapshots, append-only calls).  One shared model instance; few requests (its prompt evaluation is slow)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.embedded_model import qwen_gguf_path, shared_qwen_llm
from voicebot.agent.core import CHANNEL_GUIDANCE
from voicebot.agent.demo import DEMO_DOCUMENT, DEMO_FIELDS
from voicebot.config import Settings
from voicebot.errors import SetupError
from voicebot.llm.base import ChatMessage, Done, GenerationOptions, LlmEvent, TextDelta, ToolCall, ToolSpec
from voicebot.llm.embedded import EmbeddedLLM
from voicebot.llm.qwen_gguf import GGUF_SIZE, assemble, stamp_ok

KNOWLEDGE = [DEMO_DOCUMENT.read_text(encoding="utf-8")]
OTHER = ["Paws Veterinary Clinic treats dogs, cats and rabbits. We refer horses to Hill Farm Vets. "
         "We are open Monday to Friday from 8 am to 7 pm. A check-up costs 45 dollars."]
OPTIONS = GenerationOptions(temperature=0.0, max_tokens=48)


@pytest.fixture(scope="module")
def qwen() -> EmbeddedLLM:
    return shared_qwen_llm()


def system(persona: str) -> list[ChatMessage]:
    return [ChatMessage("system", persona), ChatMessage("system", CHANNEL_GUIDANCE["voice"])]


async def ask(llm: EmbeddedLLM, history: list[ChatMessage], knowledge: list[str]) -> tuple[str, Done]:
    events: AsyncIterator[LlmEvent] = llm.stream(history, knowledge=knowledge, options=OPTIONS)
    collected = [event async for event in events]
    done = collected[-1]
    assert isinstance(done, Done)
    return "".join(e.text for e in collected if isinstance(e, TextDelta)), done


async def test_default_model_is_qwen_with_chatml(qwen: EmbeddedLLM) -> None:
    assert qwen.uses_chat_template and qwen.caches_prefix
    assert qwen.default_model == "qwen2.5-coder-0.5b-instruct-q4_k_m"
    assert stamp_ok(qwen_gguf_path()) or qwen_gguf_path().stat().st_size == GGUF_SIZE


async def test_a_call_evaluates_only_new_words_and_agents_keep_their_prefix(qwen: EmbeddedLLM) -> None:
    bike = system(str(DEMO_FIELDS["persona"]))
    call = [*bike, ChatMessage("user", "When are you open on Saturday?")]
    answer, first = await ask(qwen, call, KNOWLEDGE)
    assert re.search(r"10 ?am.*4 ?pm", answer), answer
    assert first.prompt_tokens_evaluated is not None and first.prompt_tokens is not None
    # Another agent in between (its own prefix), then the bike shop call goes on.
    vet = [*system("You are Sam, the phone assistant of Paws Veterinary Clinic."),
           ChatMessage("user", "Do you treat horses?")]
    vet_answer, _ = await ask(qwen, vet, OTHER)
    assert re.search(r"\bno\b|not|Hill Farm|refer", vet_answer, re.IGNORECASE), vet_answer
    call += [ChatMessage("assistant", answer), ChatMessage("user", "And how much is a flat tire repair?")]
    answer2, second = await ask(qwen, call, KNOWLEDGE)
    assert re.search(r"\b15\b", answer2), answer2
    assert second.prompt_tokens is not None and second.prompt_tokens > first.prompt_tokens
    # Only the caller's new words (and the chat markup around them) were evaluated.
    assert second.prompt_tokens_evaluated is not None and second.prompt_tokens_evaluated <= 40, second
    # A new call to the same agent starts from the agent's pinned prefix.
    _, fresh = await ask(qwen, [*bike, ChatMessage("user", "Where is the shop?")], KNOWLEDGE)
    assert fresh.prompt_tokens_evaluated is not None and fresh.prompt_tokens_evaluated <= 40, fresh
    stats = qwen.prefix_cache_stats()
    assert stats["restores"] >= 1 and stats["snapshots"] >= 2


async def test_prefill_pins_an_agents_prefix_before_its_first_caller(qwen: EmbeddedLLM) -> None:
    persona = system("You are Mia, the phone assistant of Golden Crust Bakery.")
    bakery = ["Golden Crust Bakery is open Tuesday to Saturday from 6 am to 2 pm. A croissant costs 3 dollars."]
    assert await qwen.prefill(persona, knowledge=bakery) > 50
    assert await qwen.prefill(persona, knowledge=bakery) == 0  # pinned: nothing left to evaluate
    answer, done = await ask(qwen, [*persona, ChatMessage("user", "How much is a croissant?")], bakery)
    assert re.search(r"\b3\b|three", answer), answer
    assert done.prompt_tokens_evaluated is not None and done.prompt_tokens_evaluated <= 40, done


async def test_what_the_knowledge_does_not_say_is_not_invented(qwen: EmbeddedLLM) -> None:
    history = [*system(str(DEMO_FIELDS["persona"])), ChatMessage("user", "Can you repair my car?")]
    answer, _ = await ask(qwen, history, KNOWLEDGE)
    assert re.search(r"(do not|don't) know|sorry|no\b|not", answer, re.IGNORECASE), answer
    assert not re.search(r"\byes\b", answer, re.IGNORECASE), answer


def test_assembly_refuses_a_part_set_that_does_not_match_the_pinned_hash(tmp_path: Path) -> None:
    parts = []
    for number in range(2):
        part = tmp_path / f"part{number:02d}.bin"
        part.write_bytes(b"not the model" * 100)
        parts.append(part)
    target = tmp_path / "model.gguf"
    with pytest.raises(SetupError, match="does not match its pinned hash"):
        assemble(target, parts=parts)
    assert not target.exists() and not (tmp_path / "model.gguf.partial").exists()
    import hashlib

    data = b"".join(p.read_bytes() for p in parts)
    ok = assemble(target, parts=parts, expected_sha256=hashlib.sha256(data).hexdigest(),
                  expected_size=len(data))
    assert ok.read_bytes() == data


async def test_offered_tools_stay_out_of_the_prompt_unless_enabled(qwen: EmbeddedLLM) -> None:
    """By default (``tools_in_prompt`` off: tools made the 0.5B model answer worse) the backend does not support
    tools, so tools a caller of ``stream`` offers must not reach the prompt, and no tool call comes out.  The
    prompt's token count shows it: a tool's JSON schema would add dozens of tokens."""
    assert not qwen.supports_tools
    history = [*system(str(DEMO_FIELDS["persona"])), ChatMessage("user", "Thanks, that is all. Please hang up.")]
    hang_up = ToolSpec("hang_up", "End the phone call politely, after saying goodbye.")
    short = GenerationOptions(temperature=0.0, max_tokens=4)
    plain = [e async for e in qwen.stream(history, knowledge=KNOWLEDGE, options=short)]
    offered = [e async for e in qwen.stream(history, tools=[hang_up], knowledge=KNOWLEDGE, options=short)]
    assert not [e for e in offered if isinstance(e, ToolCall)]
    plain_done, offered_done = plain[-1], offered[-1]
    assert isinstance(plain_done, Done) and isinstance(offered_done, Done)
    assert plain_done.prompt_tokens is not None
    assert offered_done.prompt_tokens == plain_done.prompt_tokens


@pytest.mark.models  # the assembled GGUF (its vocabulary only: no weights are loaded)
def test_the_real_tokenizer_sees_no_control_token_in_forged_text() -> None:
    """What the model is given: Qwen's own tokenizer, special tokens on (as the backend tokenizes), finds the
    turn markers only where the template put them, however a message tries to forge one."""
    from llama_cpp import Llama

    from tests.llm.test_chatml import FORGED
    from voicebot.llm.chatml import build_chat_prompt

    vocab = Llama(model_path=str(qwen_gguf_path()), vocab_only=True, verbose=False)
    im_start = vocab.tokenize(b"<|im_start|>", add_bos=False, special=True)
    im_end = vocab.tokenize(b"<|im_end|>", add_bos=False, special=True)
    tool_open = vocab.tokenize(b"<tool_call>", add_bos=False, special=True)
    assert len(im_start) == len(im_end) == len(tool_open) == 1  # each is one control token
    prompt = build_chat_prompt([ChatMessage("system", "You are Ana."), ChatMessage("user", FORGED)], [FORGED], [])
    tokens = vocab.tokenize(prompt.text.encode(), add_bos=False, special=True)
    assert tokens.count(im_start[0]) == 3 and tokens.count(im_end[0]) == 2  # system, user, assistant header
    assert tokens.count(tool_open[0]) == 0
    vocab.close()


async def test_speculative_decoding_says_word_for_word_what_plain_decoding_says(qwen: EmbeddedLLM) -> None:
    """Prompt-lookup guesses (voicebot.llm.speculative) save forward passes but never change a greedy reply;
    the guesses are used (some are kept), and the context after a reply is what the next turn expects."""
    plain = EmbeddedLLM.open(Settings().with_(llm_model_path=str(qwen_gguf_path())), speculative=False)
    assert qwen.speculative
    drafted, accepted = qwen.drafted, qwen.accepted
    try:
        bike = system(str(DEMO_FIELDS["persona"]))
        for question in ("When are you open on Saturday?", "How much is a flat tire repair?",
                         "Where is the shop?"):
            history = [*bike, ChatMessage("user", question)]
            expected, _ = await ask(plain, history, KNOWLEDGE)
            answer, done = await ask(qwen, history, KNOWLEDGE)
            assert answer == expected, (question, answer, expected)
            assert done.finish_reason == "stop"
            # The call goes on: only the new words are evaluated after a speculative reply.
            follow = [*history, ChatMessage("assistant", answer), ChatMessage("user", "Thanks. And on Sunday?")]
            expected, _ = await ask(plain, follow, KNOWLEDGE)
            answer, done = await ask(qwen, follow, KNOWLEDGE)
            assert answer == expected, (question, answer, expected)
            assert done.prompt_tokens_evaluated is not None and done.prompt_tokens_evaluated <= 40, done
    finally:
        plain.close_sync()
    assert qwen.drafted > drafted and qwen.accepted > accepted
    assert qwen.accepted - accepted <= qwen.drafted - drafted


async def test_a_second_callers_reply_comes_before_the_rest_of_a_long_one_and_neither_changes(
        qwen: EmbeddedLLM) -> None:
    """First sentences first: a reply past its first sentence is paused for a newly asked one (its KV state
    saved and restored), and both say exactly what they say alone."""
    import asyncio

    bike = system(str(DEMO_FIELDS["persona"]))
    long_one = [*bike, ChatMessage("user", "What are your opening hours?")]
    short_one = [*bike, ChatMessage("user", "Where is the shop?")]
    alone_long, _ = await ask(qwen, long_one, KNOWLEDGE)
    alone_short, _ = await ask(qwen, short_one, KNOWLEDGE)
    assert re.search(r"[.!?]\s+\S", alone_long), alone_long  # more than one sentence: there is a rest
    paused, finished = qwen.preemptions, []
    first_sentence = asyncio.Event()

    async def run(name: str, history: list[ChatMessage]) -> str:
        text = ""
        async for event in qwen.stream(history, knowledge=KNOWLEDGE, options=OPTIONS):
            if isinstance(event, TextDelta):
                text += event.text
                if re.search(r"[.!?]\s", text):
                    first_sentence.set()
            elif isinstance(event, Done):
                finished.append(name)
        return text

    long_task = asyncio.create_task(run("long", long_one))
    await asyncio.wait_for(first_sentence.wait(), 60)
    short = await run("short", short_one)
    long = await long_task
    assert (long, short) == (alone_long, alone_short)
    assert finished == ["short", "long"] and qwen.preemptions > paused
