"""End-to-end voice fixtures: Eva's runtime (real ARI app, Whisper, Piper) against the session's real Asterisk.

Pipeline-mechanics tests drive the agent with ``ScriptedResponder`` (same interface as the agent core); the
knowledge test uses the real agent core with the embedded model.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from models.db import make_engine, upgrade
from voicebot.agent.core import AgentCore
from voicebot.agent.demo import seed_demo
from voicebot.asterisk.process import Asterisk
from voicebot.audio import Audio, read_wav, write_wav
from voicebot.config import Settings
from voicebot.pipeline.agent_responder import AgentResponder
from voicebot.pipeline.responder import CallContext, ReplyDone, ReplyEvent, TextDelta, ToolCall
from voicebot.server import EvaRuntime
from voicebot.stt.whisper import WhisperStt
from voicebot.tts.piper import PiperTts

Script = Callable[[str], Any]


class ScriptedResponder:
    """Replies by a per-test script: ``script(text)`` returns a str, a list of str deltas, a ToolCall list, or
    raises.  ``delay`` seconds between deltas simulates a slow LLM."""

    def __init__(self) -> None:
        self.script: Script = lambda text: f"You said: {text}"
        self.delay = 0.0
        self.heard: list[str] = []
        self.interrupted: list[tuple[int | None, str]] = []
        self.cancelled = 0

    async def respond(self, ctx: CallContext, text: str) -> AsyncIterator[ReplyEvent]:
        self.heard.append(text)
        result = self.script(text)
        parts = result if isinstance(result, list) else [result]
        try:
            for part in parts:
                if isinstance(part, ToolCall):
                    yield part
                    continue
                if self.delay:
                    await asyncio.sleep(self.delay)
                yield TextDelta(part)
            yield ReplyDone(text="".join(p for p in parts if isinstance(p, str)), message_id=len(self.heard))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def mark_interrupted(self, ctx: CallContext, message_id: int | None, spoken_text: str) -> None:
        self.interrupted.append((message_id, spoken_text))


@pytest.fixture(scope="session")
def voice_settings(eva_settings: Settings, asterisk: Asterisk) -> Settings:
    """The test instance's database with what `eva setup` seeds: the demo agent, route 100, its knowledge."""
    engine = make_engine(eva_settings.effective_database_url)
    upgrade(engine)
    seed_demo(eva_settings, engine)
    engine.dispose()
    return eva_settings


@pytest.fixture(scope="session")
def responder() -> ScriptedResponder:
    return ScriptedResponder()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def runtime(voice_settings: Settings, responder: ScriptedResponder) -> AsyncIterator[EvaRuntime]:
    rt = EvaRuntime(voice_settings, responder=responder, with_api=False)
    await rt.start()
    try:
        yield rt
    finally:
        await rt.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def agent_responder(runtime: EvaRuntime) -> AsyncIterator[AgentResponder]:
    """The real agent core (embedded Gemma 3 270M + Chroma knowledge) behind the voice channel."""
    from rag import KnowledgeBase
    from voicebot.llm import create_llm

    settings = runtime.settings.with_(llm="embedded")
    assert runtime.engine is not None
    llm = await create_llm(settings)
    kb = KnowledgeBase(settings, runtime.engine)
    await runtime.warm_up(llm, kb)  # as `eva run` does: no model loading inside the first call
    try:
        yield AgentResponder(runtime.engine, AgentCore(settings, runtime.engine, llm, kb))
    finally:
        await kb.close()
        await llm.close()


@pytest_asyncio.fixture(loop_scope="session")
async def real_agent(runtime: EvaRuntime, agent_responder: AgentResponder) -> AsyncIterator[None]:
    """The call answered by the real agent core instead of the scripted responder, for one test."""
    assert runtime.voice is not None and runtime.engine is not None
    # As `eva run` does at start: every routed agent's prompt prefix is evaluated before its first caller.  Again
    # for each test, because earlier tests in this worker may have changed an agent or pinned other prefixes;
    # without it the caller's first turn evaluated ~300 prompt tokens (10 s on a loaded machine) and the caller
    # hung up unanswered.  Already pinned, it evaluates nothing.
    await runtime.warm_agents(runtime.engine, agent_responder.core)
    scripted = runtime.voice.responder
    runtime.voice.responder = agent_responder
    try:
        yield
    finally:
        runtime.voice.responder = scripted


@pytest.fixture(autouse=True)
def _reset_responder(responder: ScriptedResponder) -> None:
    responder.script = lambda text: f"You said: {text}"
    responder.delay = 0.0
    responder.heard.clear()
    responder.interrupted.clear()
    responder.cancelled = 0


@pytest.fixture(scope="session")
def whisper() -> WhisperStt:
    return WhisperStt()


@pytest.fixture(scope="session")
def say(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Synthesize what the caller says (Piper) to a WAV file; cached per text."""
    tts = PiperTts()
    folder = tmp_path_factory.mktemp("say")
    cache: dict[str, Path] = {}

    def make(text: str) -> Path:
        if text not in cache:
            path = folder / f"say{len(cache)}.wav"
            write_wav(path, tts.synthesize_blocking(text, 16000))
            cache[text] = path
        return cache[text]

    return make


def transcribe(whisper: WhisperStt, audio: Audio, start: float = 0.0, end: float | None = None) -> str:
    a = int(start * audio.rate)
    b = len(audio.samples) if end is None else int(end * audio.rate)
    return str(whisper.transcribe_blocking(audio.samples[a:b], audio.rate).text)


def transcribe_regions(whisper: WhisperStt, audio: Audio) -> str:
    """Transcribe each stretch of speech on its own: on a long call recording mostly made of silence, one pass of
    Whisper over a 30 s window can drop a short sentence as "no speech"."""
    from voicebot.audio import voiced_regions

    return " ".join(transcribe(whisper, audio, max(0.0, start - 0.2), end + 0.2)
                    for start, end in voiced_regions(audio, min_gap_s=0.6))


async def until(check: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    """Poll a state (no fixed sleep): the first truthy value of ``check()``."""
    for _ in range(int(timeout / 0.05)):
        value = check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def heard_phrase(heard: str, phrase: str, min_ratio: float = 0.8) -> bool:
    """Whether ``phrase`` was heard, allowing for Whisper's spelling of what it hears.

    Whisper writes names and run-together words its own way ("cennyside", "sunny side", "by shop" for "bike
    shop"); an exact substring check then fails a call that went right.  This compares the phrase, spaces and
    punctuation removed, with every run of about as many heard words, and accepts a close enough match.  It is
    still a real check: a phrase that was not said matches nothing at 0.8.
    """
    import unicodedata
    from difflib import SequenceMatcher

    def plain(text: str) -> str:  # accents off ("día" -> "dia"), so Spanish words stay whole
        decomposed = unicodedata.normalize("NFKD", text.lower().replace("'", ""))
        return "".join(c for c in decomposed if not unicodedata.combining(c))

    words = re.findall(r"[a-z0-9]+", plain(heard))
    target = "".join(re.findall(r"[a-z0-9]+", plain(phrase)))
    n = len(re.findall(r"[a-z0-9]+", plain(phrase)))
    for size in range(max(1, n - 1), n + 3):
        for i in range(0, max(1, len(words) - size + 1)):
            if SequenceMatcher(None, "".join(words[i:i + size]), target).ratio() >= min_ratio:
                return True
    return False


def load(path: str) -> Audio:
    return read_wav(path)


async def forget_contact(runtime: EvaRuntime, contact_id: int, *, within: float = 15.0) -> None:
    """Erase a contact as the admin API does (other tests of the session call from the same numbers), once
    its last call has been recorded as ended (an erasure is refused while the person is on a call)."""
    from admin_api.contacts import erase
    from models import Contact
    from models.db import session_scope
    from voicebot.errors import Conflict

    engine = runtime.engine
    assert engine is not None

    def run() -> None:
        with session_scope(engine) as session:
            if session.get(Contact, contact_id) is not None:
                erase(session, contact_id, "test")

    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            await asyncio.to_thread(run)
            return
        except Conflict:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.2)
