"""A real conversation: the demo agent answers from its knowledge with the real embedded LLM, on a real call."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlmodel import select

from models import Message
from models.db import session_scope
from tests.conftest import Caller
from tests.voice.conftest import heard_phrase, load, transcribe
from tests.voice.test_call_mechanics import _call_row
from voicebot.server import EvaRuntime
from voicebot.sipcaller import Action, place_call_async
from voicebot.stt.whisper import WhisperStt

pytestmark = pytest.mark.asyncio(loop_scope="session")  # asterisk/models marks: derived (tests/conftest.py)


@pytest.mark.usefixtures("real_agent")
async def test_caller_hears_the_greeting_and_an_answer_from_the_knowledge_base(
        runtime: EvaRuntime, caller: Caller, say: Callable[[str], Path], whisper: WhisperStt) -> None:
    question = say("How much does a flat tire repair cost?")
    result = await place_call_async(caller.script("100", Action("play", when_quiet=0.8, path=str(question)),
                                                  Action("hangup", when_quiet=2.5), timeout=25))
    assert result.connected, result
    heard = transcribe(whisper, load(result.record_path)).lower()
    assert heard_phrase(heard, "eva from sunnyside bike shop", 0.7), heard  # the demo agent's greeting
    assert re.search(r"\b15\b|fifteen", heard), heard  # "A flat tire repair costs 15 dollars."
    assert runtime.engine is not None
    with session_scope(runtime.engine) as session:
        reply = session.exec(select(Message).where(Message.role == "assistant")
                             .order_by(Message.id.desc())).first()  # type: ignore[union-attr]
        assert reply is not None and reply.citations, "the answer must cite the knowledge it used"
        # The demo document, by its title (every citation names some document: that alone proves nothing).
        assert any(c["title"] == "Sunny Side Bike Shop facts" for c in reply.citations), reply.citations
        assert all(c["document_id"] and c["chunk_id"] for c in reply.citations), reply.citations
    # The agent's prefix (persona, guidance, its small knowledge) was evaluated at start, as `eva run` does: this
    # call's first caller turn evaluated only its own words, not the 300-odd tokens before them.
    _call, turns = _call_row(runtime)
    turn = next((t for t in turns if t.kind == "speech"), None)
    assert turn is not None and turn.user_text and turn.prompt_tokens_evaluated is not None, turns
    assert turn.prompt_tokens_evaluated <= 40, turn
